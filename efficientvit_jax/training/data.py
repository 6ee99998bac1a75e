"""A small input pipeline for in-memory arrays: per-epoch shuffle from the seed, batches.

Plug in your own data: any ``images`` array (``[N, ...]``, already in the layout the model
expects) and integer ``labels`` (``[N]``) work::

    for batch in iterate_batches(images, labels, 64, seed=0, epoch=e, remainder="drop"):
        state, metrics = train_step(state, batch)

The order of epoch ``e`` depends on ``(seed, e)`` only, never on hidden Python state, so a
run resumed at any step sees exactly the batches the uninterrupted run would have seen
(``start_batch`` skips the batches already consumed in that epoch).

The last, short batch is handled explicitly: ``remainder="drop"`` leaves it out (training:
every step then has the same shape, so one compilation), ``remainder="pad"`` fills it up to
``batch_size`` with zeros and marks the filler with ``mask == False`` (evaluation: every example
counts exactly once, still one shape). The step functions weight by ``mask``. The batches have
the dtypes of the image-file pipeline's (``data.loader.Batch``: a bool mask), so a model
trained on arrays and on files runs one compiled step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np

# One definition of each, shared with the image-file pipeline (``data.pipeline``).
from efficientvit_jax.data.loader import StepBatch as Batch
from efficientvit_jax.data.loader import epoch_order

__all__ = ["REMAINDERS", "Batch", "epoch_order", "iterate_batches", "num_batches"]

REMAINDERS = ("drop", "pad")


def _check(images: np.ndarray, labels: np.ndarray, batch_size: int, remainder: str) -> None:
    if len(images) != len(labels):
        raise ValueError(
            f"images and labels must have the same length, got {len(images)} and {len(labels)}"
        )
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if remainder not in REMAINDERS:
        raise ValueError(f"remainder must be one of {REMAINDERS}, got {remainder!r}")


def num_batches(n: int, batch_size: int, *, remainder: Literal["drop", "pad"]) -> int:
    """How many batches one epoch of ``n`` examples gives."""
    return n // batch_size if remainder == "drop" else -(-n // batch_size)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    remainder: Literal["drop", "pad"],
    start_batch: int = 0,
) -> Iterator[Batch]:
    """Yield the batches of one epoch, as numpy arrays of fixed shape ``[batch_size, ...]``.

    Args:
      images: ``[N, ...]`` inputs, in the layout the model expects.
      labels: ``[N]`` integer class labels.
      batch_size: examples per batch.
      seed: shuffling seed; with ``epoch`` it fixes the order.
      epoch: epoch index (a different permutation each epoch).
      shuffle: ``False`` keeps the given order (evaluation).
      remainder: ``"drop"`` the last short batch, or ``"pad"`` it with masked zeros
        (``mask`` is ``[batch_size]`` bool, False on the filler).
      start_batch: skip this many batches first (resuming in the middle of an epoch).
    """
    images, labels = np.asarray(images), np.asarray(labels)
    _check(images, labels, batch_size, remainder)
    n = len(images)
    order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
    for b in range(start_batch, num_batches(n, batch_size, remainder=remainder)):
        idx = order[b * batch_size : (b + 1) * batch_size]
        x, y = images[idx], labels[idx].astype(np.int32)
        mask = np.ones(batch_size, bool)  # the image-file pipeline's dtype: one step program
        short = batch_size - len(idx)
        if short:  # only with remainder="pad"
            x = np.concatenate([x, np.zeros((short, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros(short, np.int32)])
            mask[batch_size - short :] = False
        yield {"images": x, "labels": y, "mask": mask}
