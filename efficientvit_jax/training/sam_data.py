"""The data of a SAM fine-tuning run: a segmentation dataset's splits, each image's instances
found once (``training.sam_prompts``), batches of images with their prompts.

Any layout ``find_seg_splits`` reads serves (the generic ``images/`` + ``masks/`` one above
all): the masks' connected components of every object class are the instances. Class 0 is
the background, not an object, when the dataset names it so (``classes.txt``'s first line
``background``, as ``data.digits_seg`` writes it); otherwise every class is.

The masks are read, checked and turned into instance maps before any training (a bad file
stops the run there, one line naming it, or with ``skip_bad`` is left out and listed); the
images are read when needed: once to compute their embeddings when the encoder is frozen,
every step it is trained. A training batch is a pure function of ``(seed, epoch, position)``:
the epoch's order from ``(seed, epoch)``, each image's prompts from ``(seed, epoch, its
index)``, so a resumed run sees the batches the straight run saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from efficientvit_jax.data.loader import epoch_order
from efficientvit_jax.data.segmentation import SegDataset, read_mask
from efficientvit_jax.training.sam_prompts import (
    Instances,
    PromptSpec,
    eval_rng,
    find_instances,
    object_table,
    prompt_rng,
    sample_prompts,
)

SAM_STREAM = (11,)  # ``epoch_order``'s extra entropy word for SAM runs' data order
BACKGROUND_NAMES = ("background", "_background_", "bg")


@dataclasses.dataclass(frozen=True)
class SamSplit:
    """One split's images (paths) and their instances, in the same order."""

    paths: tuple[str, ...]
    instances: tuple[Instances, ...]
    skipped: tuple[tuple[str, str], ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def count(self) -> int:
        """Instances in the whole split."""
        return sum(i.count for i in self.instances)


def background_class(classes: tuple[str, ...]) -> int | None:
    """0 when the dataset names its class 0 as background, else ``None``."""
    return 0 if classes and classes[0].strip().lower() in BACKGROUND_NAMES else None


def _image_size(path: str) -> tuple[int, int]:
    """``(H, W)`` from the file's header (``ValueError`` naming an unreadable file)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {' '.join(str(e).split())}") from None


def read_split(
    dataset: SegDataset, mask_size: int, prompt_size: int, min_area: int, skip_bad: bool = False
) -> SamSplit:
    """Every mask of ``dataset`` as ``Instances`` (checked against its image's size)."""
    objects = object_table(len(dataset.classes), background_class(dataset.classes),
                           dataset.ignore_index)  # fmt: skip
    paths, found, skipped = [], [], list(dataset.skipped)
    for image, mask in zip(dataset.images, dataset.masks, strict=True):
        try:
            labels = read_mask(mask, dataset.layout, len(dataset.classes))
            h, w = _image_size(image)
            if labels.shape != (h, w):
                raise ValueError(
                    f"image {image} is {w}x{h} but its mask {mask} is "
                    f"{labels.shape[1]}x{labels.shape[0]} (width x height)"
                )
        except ValueError as e:
            if not skip_bad:
                raise
            skipped.append((image, str(e)))
            continue
        paths.append(image)
        found.append(find_instances(labels, objects, mask_size, prompt_size, min_area,
                                    dataset.ignore_index))  # fmt: skip
    return SamSplit(tuple(paths), tuple(found), tuple(skipped))


def load_inputs(
    paths: list[str] | tuple[str, ...], image_size: int, data_format: str
) -> np.ndarray:
    """The encoder's inputs of image files, as ``SamPredictor`` prepares them (longest side
    resized, normalised, padded): ``[N, 3, S, S]`` float32 (``[N, S, S, 3]`` for NHWC)."""
    from efficientvit_jax.data.image import load_image
    from efficientvit_jax.sam.transforms import preprocess

    return np.stack([preprocess(np.asarray(load_image(p)), image_size, data_format) for p in paths])


def _stack(prompts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([p[k] for p in prompts]) for k in prompts[0]}


def prompt_batch(split: SamSplit, rows: np.ndarray, spec: PromptSpec, rngs: list) -> dict:
    """The prompts of images ``rows`` (``[B, K, ...]``) and their instance grids ``[B, m, m]``."""
    batch = _stack(
        [sample_prompts(split.instances[i], spec, rng) for i, rng in zip(rows, rngs, strict=True)]
    )
    batch["grid"] = np.stack([split.instances[i].grid for i in rows])
    return batch


def train_batches(
    split: SamSplit, spec: PromptSpec, features: Callable[[np.ndarray], np.ndarray],
    batch_size: int, seed: int,
) -> Callable[[int, int], Iterator[dict[str, np.ndarray]]]:  # fmt: skip
    """``(epoch, first batch) -> batches``: ``features(rows)`` (embeddings or encoder inputs)
    under ``"features"``, the prompts of ``prompt_batch``; the last short batch dropped."""

    def epoch_batches(epoch: int, first: int) -> Iterator[dict[str, np.ndarray]]:
        order = epoch_order(len(split), seed=seed, epoch=epoch, stream=SAM_STREAM)
        for b in range(first, len(split) // batch_size):
            rows = order[b * batch_size : (b + 1) * batch_size]
            batch = prompt_batch(split, rows, spec, [prompt_rng(seed, epoch, int(i)) for i in rows])
            yield {"features": features(rows), **batch}

    return epoch_batches


def held_out_batches(split: SamSplit, spec: PromptSpec, batch_size: int) -> list[dict]:
    """The held-out prompts (``EVAL_SEED``: the same in every run) in batches of
    ``batch_size`` images, the last one padded with weight-0 rows; ``"rows"`` names the
    images (the padding repeats the last)."""
    out = []
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(start + batch_size, len(split)))
        pad = batch_size - len(rows)
        rows = np.r_[rows, np.full(pad, rows[-1])]
        batch = prompt_batch(split, rows, spec, [eval_rng(int(i)) for i in rows])
        if pad:
            batch["weight"][-pad:] = 0.0
        out.append({"rows": rows, **batch})
    return out


def split_info(split: SamSplit) -> dict[str, Any]:
    return {"images": len(split), "instances": split.count}


__all__ = [
    "SAM_STREAM",
    "SamSplit",
    "background_class",
    "held_out_batches",
    "load_inputs",
    "prompt_batch",
    "read_split",
    "split_info",
    "train_batches",
]
