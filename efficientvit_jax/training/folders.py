"""Training data from image folders: ``DIR/train`` and ``DIR/val`` class trees, or one tree
with a stratified held-out split, as a ``job.Source``.

Train batches come from ``data.pipeline.TrainPipeline`` (augmented in worker threads,
deterministic from ``(seed, epoch)``); held-out batches from ``data.loader.ImageLoader``
with the evaluation transform, padded and masked so every image counts once.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from efficientvit_jax.data.folders import ImageFolder, scan_folder
from efficientvit_jax.data.loader import ImageLoader
from efficientvit_jax.data.pipeline import TrainPipeline, take_images
from efficientvit_jax.training.job import Source

SPLIT_SEED = 0  # the held-out split of --val-split does not depend on the run's seed


@dataclasses.dataclass(frozen=True)
class Splits:
    """Training and held-out files with their labels, and the class names (label order)."""

    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    classes: tuple[str, ...]


def _remap(folder: ImageFolder) -> list[tuple[str, int]]:
    """Labels 0..k-1 in class-name order (an ImageNet tree's synset indices are for heads of
    1000; a model trained here gets one output per class)."""
    rank = {label: i for i, label in enumerate(folder.class_indices)}
    return [(p, rank[y]) for p, y in folder.samples]


def stratified_split(
    samples: list[tuple[str, int]], fraction: float, seed: int = SPLIT_SEED
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``round(fraction * n_c)`` files of each class held out (at least one, and at least one
    left to train on), drawn from ``seed``; both lists keep the input order."""
    if not 0 < fraction < 1:
        raise ValueError(f"--val-split must be in (0, 1), got {fraction}")
    labels = np.array([y for _, y in samples])
    held = np.zeros(len(samples), bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        held[rng.choice(idx, k, replace=False)] = True
    return [s for s, h in zip(samples, held, strict=True) if not h], [
        s for s, h in zip(samples, held, strict=True) if h
    ]


def find_splits(root: str, val_split: float | None = None) -> Splits:
    """``root/train`` + ``root/val`` (same class names, else a one-line error naming the
    differences), or, with ``val_split``, one class tree at ``root`` split in two. Either way
    at least two classes (one class "trains" to loss 0 and 100%)."""
    if val_split is not None:
        hint = f"drop --val-split to use them, or pass {os.path.join(root, 'train')} to split it"
        folder = scan_folder(root, split_hint=hint)
        _check_classes(f"--data {root}", folder.classes)
        train, val = stratified_split(_remap(folder), val_split)
        return Splits(tuple(train), tuple(val), folder.classes)
    tr, va = os.path.join(root, "train"), os.path.join(root, "val")
    if not (os.path.isdir(tr) and os.path.isdir(va)):
        raise ValueError(
            f"--data {root} needs train/ and val/ class folders (or pass --val-split F to "
            "hold out part of one class tree)"
        )
    # A nested split (root/train/train, root/train/val): the inner one is the dataset.
    train = scan_folder(tr, split_hint=f"pass {tr} as --data")
    val = scan_folder(va, split_hint=f"pass {va} as --data")
    if train.classes != val.classes:
        only_t = sorted(set(train.classes) - set(val.classes))
        only_v = sorted(set(val.classes) - set(train.classes))
        raise ValueError(
            f"--data {root}: train/ and val/ have different classes: only in train/: "
            f"{only_t or 'none'}; only in val/: {only_v or 'none'}"
        )
    _check_classes(f"--data {root}: train/", train.classes)
    return Splits(tuple(_remap(train)), tuple(_remap(val)), train.classes)


def _check_classes(where: str, classes: tuple[str, ...]) -> None:
    if set(classes) == {"images", "masks"}:  # not two classes: image/mask pairs
        raise ValueError(
            f"{where} holds images/ and masks/: a segmentation dataset; train a segmentation "
            "model on it (--model efficientvit_seg_b0_cityscapes, ...)"
        )
    if len(classes) < 2:  # scan_folder refuses zero
        raise ValueError(
            f"{where} has one class folder ({classes[0]}); training needs at least two "
            "(one subfolder of images per class)"
        )


def folder_source(
    splits: Splits,
    augment: Callable[[str, np.random.Generator], np.ndarray],
    eval_transform: Callable[[str], np.ndarray],
    *,
    batch_size: int,
    eval_batch_size: int,
    seed: int,
    workers: int = 2,
    mix: Any = None,
    skip_bad: bool = False,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[Source, TrainPipeline]:
    """The ``Source`` of a folder run, and its pipeline (for the skipped-file report)."""
    pipe = TrainPipeline(
        splits.train, augment, batch_size, seed, workers, mix, process_index, process_count,
        skip_bad,
    )  # fmt: skip

    per = eval_batch_size // process_count
    rows, n_batches = held_out_rows(len(splits.val), eval_batch_size, process_index, process_count)
    sample = np.stack([eval_transform(splits.train[0][0])] * (batch_size // process_count))
    empty = {
        "images": np.zeros((per, *sample.shape[1:]), sample.dtype),
        "labels": np.zeros(per, np.int32),
        "mask": np.zeros(per, bool),
    }

    def held_out() -> Any:
        mine = [splits.val[i] for i in rows]
        loader = ImageLoader(mine, eval_transform, per, workers=workers, skip_bad=skip_bad)
        n = 0
        for b in loader:
            n += 1
            yield b.arrays()
        # Every process must run as many (collective) evaluation steps: where this one has
        # no rows of the last global batch, it feeds a fully masked share.
        for _ in range(n, n_batches):
            yield dict(empty)
        pipe.skipped.extend(loader.skipped)  # one report for training and held-out files

    source = Source(
        pipe.steps_per_epoch, pipe.epoch, held_out, sample, len(splits.train), len(splits.val)
    )
    return source, pipe


def held_out_rows(n: int, batch_size: int, index: int, count: int) -> tuple[list[int], int]:
    """``(rows, n_batches)``: the held-out rows process ``index`` of ``count`` decodes, in
    order, and the number of global batches of ``batch_size``. Its rows are its block of
    each global batch (``job.process_rows``), those past ``n`` left out (padding)."""
    per = batch_size // count
    n_batches = -(-n // batch_size)
    starts = np.arange(n_batches) * batch_size + index * per
    rows = (starts[:, None] + np.arange(per)).reshape(-1)
    return rows[rows < n].tolist(), n_batches


__all__ = [
    "Splits",
    "find_splits",
    "folder_source",
    "held_out_rows",
    "stratified_split",
    "take_images",
]
