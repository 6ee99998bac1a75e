"""The training input pipeline: shuffled, augmented batches of image files, deterministic from
``(seed, epoch)``.

The order of an epoch is a permutation drawn from ``(seed, epoch)``; each image's augmentation
draws from ``(seed, epoch, position in the epoch)`` and each batch's mixing from ``(seed,
epoch, batch)``. So a batch depends on nothing but those numbers: not on the number of
workers, not on timing, not on where a run was interrupted. Resuming at step ``s`` is
``epoch(s // steps_per_epoch, start_batch=s % steps_per_epoch)``, bit for bit, and the
position needs no state of its own beyond the step. In a multi-process run each process
decodes only its rows of every global batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from efficientvit_jax.data.augment import batch_rng, image_rng
from efficientvit_jax.data.loader import Batch, ImageLoader, StepBatch, epoch_order

PIPELINE_STREAM = (7,)
"""``loader.epoch_order``'s extra entropy word for the file pipeline's epochs (saved runs'
data order depends on it)."""


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch``: ``loader.epoch_order`` with this pipeline's stream."""
    return epoch_order(n, seed=seed, epoch=epoch, stream=PIPELINE_STREAM)


@dataclasses.dataclass
class TrainPipeline:
    """Epochs of training batches from ``samples`` (``(path, label)``).

    Args:
      samples: the training files and labels.
      augment: ``(path, rng) -> float32 image``: loads and augments one file.
      batch_size: the global batch; the last short batch of an epoch is dropped.
      seed: the run's data seed.
      workers: decoding threads.
      mix: ``(images, labels, rng) -> (images, soft_targets)`` for a whole batch (mixup,
        cutmix), or ``None`` for integer labels.
      process_index, process_count: this process's share of every global batch.
      skip_bad: leave unreadable files out (masked) instead of stopping.
    """

    samples: Sequence[tuple[str, int]]
    augment: Callable[[str, np.random.Generator], np.ndarray]
    batch_size: int
    seed: int = 0
    workers: int = 2
    mix: Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple] | None = None
    process_index: int = 0
    process_count: int = 1
    skip_bad: bool = False
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.batch_size % self.process_count:
            raise ValueError(
                f"batch size {self.batch_size} is not divisible by the {self.process_count} processes"
            )
        if self.batch_size > len(self.samples):
            raise ValueError(
                f"batch size {self.batch_size} is larger than the {len(self.samples)} training images"
            )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.samples) // self.batch_size

    def _rows(self, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This process's rows of each batch: (their positions in the epoch, sample ids)."""
        per = self.batch_size // self.process_count
        pos = np.arange(self.steps_per_epoch * self.batch_size).reshape(-1, self.batch_size)
        mine = pos[:, self.process_index * per : (self.process_index + 1) * per].reshape(-1)
        return mine, order[mine]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[StepBatch]:
        """The batches of ``epoch`` from ``start_batch`` on: ``{"images", "labels", "mask"}``."""
        positions, ids = self._rows(epoch_permutation(len(self.samples), self.seed, epoch))
        per = self.batch_size // self.process_count
        positions, ids = positions[start_batch * per :], ids[start_batch * per :]
        samples = [self.samples[i] for i in ids]

        def load(path: str, i: int) -> np.ndarray:
            return self.augment(path, image_rng(self.seed, epoch, int(positions[i])))

        def mix(batch: Batch, index: int) -> Batch:
            rng = batch_rng(self.seed, epoch, start_batch + index)
            batch.images, batch.labels = self.mix(batch.images, batch.labels, rng)
            return batch

        loader = ImageLoader(
            samples, load, per, workers=self.workers, skip_bad=self.skip_bad, with_index=True,
            batch_transform=None if self.mix is None else mix, drop_last=True,
        )  # fmt: skip
        for batch in loader:
            yield batch.arrays()
        self.skipped += loader.skipped


def take_images(pipeline: TrainPipeline, n: int) -> Any:
    """``n`` augmented images of epoch 0 (a sample batch for shapes and tests)."""
    batch = next(pipeline.epoch(0))
    return batch["images"][:n]
