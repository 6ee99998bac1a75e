"""Training data of a segmentation run: a dataset's train and val splits (Cityscapes', ADE20K's
or the generic ``train/`` + ``val/``) as a ``job.Source``.

Training batches come from the classifier's file pipeline (``data.pipeline.TrainPipeline``:
worker threads, the order of ``(seed, epoch)``, each image's randomness from ``(seed, epoch,
position)``, each process decoding only its rows, skipped files), so a segmentation batch is
as much a pure function of ``(seed, epoch, position)`` as a classifier's and a resume is as
exact. The pipeline carries one array per sample: ``pack`` lays the augmented image and its
mask end to end in one float32 vector (class indices are exact in float32), ``unpack`` splits
each batch back into ``images`` and ``labels`` ``[B, H, W]`` int32.

Held-out batches are the val split prepared as ``efficientvit-jax eval`` prepares it
(``data.seg_transform.mit_eval_transform`` of the layout: Cityscapes at 1024x2048, ADE20K's
shorter side at 512, other data with its sides rounded up to multiples of 32) with labels at
the image's own size, grouped by image size (one compiled shape per size), padded and masked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from efficientvit_jax.data.loader import ImageLoader
from efficientvit_jax.data.pipeline import TrainPipeline
from efficientvit_jax.data.segmentation import (
    SegDataset,
    check_seg_dataset,
    find_seg_dataset,
    read_mask,
    without,
)
from efficientvit_jax.training.folders import held_out_rows
from efficientvit_jax.training.job import Source


@dataclasses.dataclass(frozen=True)
class SegSplits:
    """The training and held-out splits of one dataset (same layout, same classes)."""

    train: SegDataset
    val: SegDataset

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes

    @property
    def layout(self) -> str:
        return self.train.layout


def find_seg_splits(root: str, *, skip_bad: bool = False) -> SegSplits:
    """The train and val splits under ``root`` (one-line ``ValueError`` for a single split
    folder, splits that disagree, fewer than two classes, or a held-out sample that cannot
    be scored; with ``skip_bad`` such samples are left out and listed in ``val.skipped``)."""
    train = find_seg_dataset(root, "train", skip_missing=skip_bad)
    val = find_seg_dataset(root, "val", skip_missing=skip_bad)
    if train.root == val.root:
        raise ValueError(
            f"--data {root} is one split ({train.root}); training needs the dataset's root, "
            "with its train and val splits (generic: train/ and val/, each images/ + masks/)"
        )
    if (train.layout, train.classes) != (val.layout, val.classes):
        raise ValueError(
            f"--data {root}: train and val splits differ ({train.layout}, {len(train.classes)} "
            f"classes; {val.layout}, {len(val.classes)} classes)"
        )
    if len(train.classes) < 2:
        raise ValueError(f"--data {root} has one class; training needs at least two")
    bad = check_seg_dataset(val, len(val.classes))
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more; --skip-bad leaves them out)" if len(bad) > 1 else ""
        raise ValueError(bad[0][1] + more)
    return SegSplits(train, without(val, bad) if bad else val)


def pack(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """One float32 vector: the image's values, then the label map's."""
    return np.concatenate([image.ravel(), labels.ravel().astype(np.float32)])


def unpack(batch: dict[str, np.ndarray], image_shape: tuple, label_shape: tuple) -> dict:
    """A batch of ``pack``'ed rows as the step takes it: ``images``, ``labels``, ``mask``."""
    flat, n = batch["images"], int(np.prod(image_shape))
    b = len(flat)
    labels = np.rint(flat[:, n:]).astype(np.int32).reshape(b, *label_shape)
    images = np.ascontiguousarray(flat[:, :n].reshape(b, *image_shape))
    return {"images": images, "labels": labels, "mask": batch["mask"]}


def _labels(dataset: SegDataset) -> Callable[[str], np.ndarray]:
    """``image path -> its train ids``, checked against the class count and the image size
    (each problem a ``ValueError`` naming the file: ``--skip-bad`` then skips the sample)."""
    masks = dict(zip(dataset.images, dataset.masks, strict=True))

    def labels(path: str, size: tuple[int, int]) -> np.ndarray:
        y = read_mask(masks[path], dataset.layout, len(dataset.classes))
        if y.shape != tuple(size):
            raise ValueError(
                f"image {path} is {size[1]}x{size[0]} but its mask {masks[path]} is "
                f"{y.shape[1]}x{y.shape[0]} (width x height)"
            )
        return y

    return labels


def train_loader(dataset: SegDataset, augment: Any, nchw: bool) -> Callable:
    """``(path, rng) -> packed row``: an image and its mask, augmented together."""
    from efficientvit_jax.data.image import load_image

    labels = _labels(dataset)

    def load(path: str, rng: np.random.Generator) -> np.ndarray:
        image = np.asarray(load_image(path))
        x, y = augment(image, labels(path, image.shape[:2]), rng)
        return pack(x.transpose(2, 0, 1) if nchw else x, y)

    return load


def seg_source(
    splits: SegSplits,
    augment: Any,
    eval_transform: Any,
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    workers: int = 2,
    skip_bad: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[Source, Callable[[], list[tuple[str, str]]]]:
    """``(Source, skipped())`` of a segmentation run: ``augment`` a ``data.seg_augment.
    SegAugment`` (its ``crop`` the training size), ``eval_transform`` a
    ``SegEvalTransform`` in the model's layout; sizes and process shares as
    ``folders.folder_source``'s."""
    nchw = eval_transform.data_format == "NCHW"
    crop = augment.crop
    image_shape = (3, crop, crop) if nchw else (crop, crop, 3)
    pipe = TrainPipeline(
        [(p, 0) for p in splits.train.images], train_loader(splits.train, augment, nchw),
        batch_size, seed, workers, None, process_index, process_count, skip_bad,
    )  # fmt: skip

    def epoch_batches(epoch: int, first: int) -> Iterator[dict[str, np.ndarray]]:
        batches = pipe.epoch(epoch, first)
        try:
            for b in batches:
                yield unpack(b, image_shape, (crop, crop))
        finally:
            batches.close()  # the loader's threads stop with the epoch

    held = HeldOut(splits.val, eval_transform, eval_batch_size, workers, skip_bad,
                   process_index, process_count)  # fmt: skip
    sample = np.zeros((batch_size // process_count, *image_shape), np.float32)
    source = Source(
        pipe.steps_per_epoch, epoch_batches, held, sample, len(splits.train.images),
        len(splits.val.images),
    )  # fmt: skip
    return source, lambda: [*splits.val.skipped, *pipe.skipped, *held.skipped]


@dataclasses.dataclass
class HeldOut:
    """The held-out batches (calling it gives them anew): the val images prepared by
    ``transform``, their labels at the image's size, in groups of one image size; each
    process decodes its rows of every global batch of ``batch_size`` and feeds fully masked
    rows where it has none left, so every process runs as many (collective) steps."""

    dataset: SegDataset
    transform: Any
    batch_size: int
    workers: int = 2
    skip_bad: bool = False
    process_index: int = 0
    process_count: int = 1
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        from PIL import Image

        self.groups: dict[tuple[int, int], list[str]] = {}
        for path in self.dataset.images:  # headers only: the size is in them
            with Image.open(path) as im:
                self.groups.setdefault((im.height, im.width), []).append(path)
        self._size_of = {p: s for s, paths in self.groups.items() for p in paths}
        self._labels = _labels(self.dataset)

    def shapes(self, size: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, int]]:
        """``(model input shape, label shape)`` of the group of images of ``size``."""
        h, w = self.transform.input_size(*size)
        nchw = self.transform.data_format == "NCHW"
        return ((3, h, w) if nchw else (h, w, 3)), tuple(size)

    def _load(self, path: str) -> np.ndarray:
        # the labels stay at the image's own size (the file's), not the model input's
        return pack(self.transform(path), self._labels(path, self._size_of[path]))

    def __call__(self) -> Iterator[dict[str, np.ndarray]]:
        per = self.batch_size // self.process_count
        for size, paths in self.groups.items():
            image_shape, label_shape = self.shapes(size)
            rows, n_batches = held_out_rows(
                len(paths), self.batch_size, self.process_index, self.process_count
            )
            mine = [(paths[r], 0) for r in rows]
            loader = ImageLoader(mine, self._load, per, workers=self.workers,
                                 skip_bad=self.skip_bad)  # fmt: skip
            n = 0
            for b in loader:
                n += 1
                yield unpack(b.arrays(), image_shape, label_shape)
            n_flat = int(np.prod(image_shape)) + int(np.prod(label_shape))
            for _ in range(n, n_batches):  # no rows of these global batches here
                empty = {"images": np.zeros((per, n_flat), np.float32), "mask": np.zeros(per, bool)}
                yield unpack(empty, image_shape, label_shape)
            self.skipped.extend(loader.skipped)

    def samples(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pixels uint8 [n, H, W, 3], model inputs, labels [n, H, W])`` of the first ``n``
        images of the first size (for ``seg.predictions_plot``)."""
        from efficientvit_jax.data.image import load_image

        size, paths = next(iter(self.groups.items()))
        paths = paths[:n]
        pixels = np.stack([np.asarray(load_image(p)) for p in paths])
        inputs = np.stack([self.transform(p) for p in paths])
        labels = np.stack([self._labels(p, size) for p in paths]).astype(np.int32)
        return pixels, inputs, labels


def seg_run_info(splits: SegSplits) -> dict[str, Any]:
    """What ``run.json`` records of a segmentation run's data, beside its classes."""
    return {
        "task": "segmentation",
        "layout": splits.layout,
        "ignore_index": splits.train.ignore_index,
    }


__all__ = [
    "HeldOut",
    "SegSplits",
    "find_seg_splits",
    "pack",
    "seg_run_info",
    "seg_source",
    "train_loader",
    "unpack",
]
