"""Batches of decoded, transformed images from files, made by worker threads ahead of the
model.

PIL releases the GIL while it decodes and resamples, so threads decode in parallel and the
arrays need no pickling between processes (what a process pool would pay per batch). At most
``workers + prefetch`` batches exist at once, so any size of folder runs in bounded memory.
Every batch has the full ``batch_size``: the last one is zero-padded and ``mask`` marks the
real images, so a jitted step compiles once and each image counts once.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

StepBatch = dict[str, np.ndarray]
"""What the train and eval steps take: ``{"images": [B, ...], "labels": [B] int32 (or
[B, K] soft targets), "mask": [B]}``, the mask 0 (False) on padding. ``Batch.arrays()``
gives one; ``training.Batch`` is this type."""


def epoch_order(
    n: int, *, seed: int, epoch: int, shuffle: bool = True, stream: tuple[int, ...] = ()
) -> np.ndarray:
    """The example order of one epoch: a permutation of ``range(n)`` that depends on
    ``(seed, epoch, *stream)`` only (``shuffle=False``: ``range(n)`` as it is).

    One function for both input pipelines, so that a run resumed at any step sees the
    batches the uninterrupted run would have seen. ``stream`` adds entropy words: the
    in-memory arrays (``training.iterate_batches``) use none and the image-file pipeline
    (``pipeline.TrainPipeline``) uses ``PIPELINE_STREAM``; changing either changes every
    saved run's data order.
    """
    if not shuffle:
        return np.arange(n)
    # A fresh generator per (seed, epoch): reproducible from the step alone on resume.
    return np.random.default_rng([seed, epoch, *stream]).permutation(n)


@dataclasses.dataclass
class Batch:
    """``images [B, ...] float32``, ``labels [B] int32``, ``mask [B] bool`` (False on padding
    and on skipped files) and the ``paths`` of the real images, in order."""

    images: np.ndarray
    labels: np.ndarray  # [B] int32, or [B, K] float32 soft targets after mixup/cutmix
    mask: np.ndarray
    paths: list[str]

    def arrays(self) -> StepBatch:
        """The dict a train/eval step takes."""
        return {"images": self.images, "labels": self.labels, "mask": self.mask}


class ImageLoader:
    """Iterate over ``samples`` (``(path, label)`` pairs) in order, in padded batches.

    Args:
      samples: the files and their labels.
      transform: ``path -> float32 array`` (e.g. ``data.create_transform(config)``); it
        raises ``ValueError`` for a file that is not an image.
      batch_size: images per batch.
      workers: decoding threads (0: decode in the calling thread).
      prefetch: batches decoded ahead beyond those in the workers.
      skip_bad: leave unreadable files out (masked, listed in ``skipped``) instead of
        raising their ``ValueError``.
      with_index: call ``transform(path, i)`` with the sample's position ``i`` in
        ``samples`` (training draws each image's randomness from it).
      batch_transform: ``(batch, batch_index) -> batch``, run in the worker after a batch
        is assembled (mixup and cutmix, which mix images across a batch).
      drop_last: leave out the last short batch instead of padding it (training).
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        transform: Callable[[Any], np.ndarray],
        batch_size: int,
        *,
        workers: int = 2,
        prefetch: int = 2,
        skip_bad: bool = False,
        with_index: bool = False,
        batch_transform: Callable[[Batch, int], Batch] | None = None,
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 0 or prefetch < 0:
            raise ValueError(f"workers and prefetch must be >= 0, got {workers}, {prefetch}")
        self.samples = list(samples)
        self.transform = transform
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = prefetch
        self.skip_bad = skip_bad
        self.with_index = with_index
        self.batch_transform = batch_transform
        self.drop_last = drop_last
        self.skipped: list[tuple[str, str]] = []  # (path, reason), filled as batches are made

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.samples) // self.batch_size
        return -(-len(self.samples) // self.batch_size)

    def _load(self, index: int) -> tuple[Batch, list[tuple[str, str]]]:
        first = index * self.batch_size
        chunk = self.samples[first : first + self.batch_size]
        arrays: list[np.ndarray | None] = []
        bad: list[tuple[str, str]] = []
        for i, (path, _) in enumerate(chunk):
            try:
                arrays.append(
                    self.transform(path, first + i) if self.with_index else self.transform(path)
                )
            except ValueError as e:
                if not self.skip_bad:
                    raise
                arrays.append(None)
                bad.append((path, str(e)))
        good = [a for a in arrays if a is not None]
        shape = good[0].shape if good else None
        images = None if shape is None else np.zeros((self.batch_size, *shape), np.float32)
        labels = np.zeros(self.batch_size, np.int32)
        mask = np.zeros(self.batch_size, bool)
        paths = []
        for i, ((path, label), a) in enumerate(zip(chunk, arrays, strict=True)):
            if a is not None:
                images[i], labels[i], mask[i] = a, label, True
                paths.append(path)
        batch = Batch(images, labels, mask, paths)
        if self.batch_transform is not None and images is not None:
            batch = self.batch_transform(batch, index)
        return batch, bad

    def __iter__(self) -> Iterator[Batch]:
        self.skipped = []
        shape = None
        if self.workers == 0:
            results: Iterator = (self._load(i) for i in range(len(self)))
            yield from self._emit(results, shape)
            return
        with cf.ThreadPoolExecutor(self.workers, thread_name_prefix="evit-loader") as pool:
            pending: collections.deque = collections.deque()
            ahead = self.workers + self.prefetch
            submitted = 0

            def results() -> Iterator:
                nonlocal submitted
                while submitted < len(self) or pending:
                    while submitted < len(self) and len(pending) < ahead:
                        pending.append(pool.submit(self._load, submitted))
                        submitted += 1
                    yield pending.popleft().result()

            try:
                yield from self._emit(results(), shape)
            finally:
                for f in pending:  # stopped early (error, break): drop what is queued
                    f.cancel()

    def _emit(self, results: Iterator, shape: Any) -> Iterator[Batch]:
        for batch, bad in results:
            self.skipped += bad
            if batch.images is None:  # every file of this batch was skipped
                if shape is None:
                    continue  # nothing seen yet to size zeros by; nothing to count either
                batch.images = np.zeros((self.batch_size, *shape), np.float32)
            shape = batch.images.shape[1:]
            yield batch
