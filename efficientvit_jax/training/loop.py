"""The training loop: steps over epochs with a progress bar, held-out evaluation after each
epoch, checkpoints every ``save_every`` steps, and exact resume.

It takes the pieces as arguments (a jitted step, a function giving an epoch's batches from a
position, an evaluation function, a ``Checkpointer``), so the digits job and folder training
share it and neither imports the other.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from efficientvit_jax.training.checkpoint import Checkpointer
from efficientvit_jax.training.state import TrainState

# (epoch, first batch of the epoch to yield) -> that epoch's batches from there on: what
# makes a resume in the middle of an epoch continue with the batch it stopped before.
EpochBatches = Callable[[int, int], Iterable[Mapping[str, Any]]]


@dataclasses.dataclass
class RunLog:
    """The history a run accumulates and saves with every checkpoint (so resume has it)."""

    step_losses: list[float] = dataclasses.field(default_factory=list)
    step_accuracies: list[float] = dataclasses.field(default_factory=list)
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_extra(self) -> dict[str, Any]:
        return {
            "step_losses": self.step_losses,
            "step_accuracies": self.step_accuracies,
            "history": self.history,
        }

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> RunLog:
        return cls(
            list(extra.get("step_losses", [])),
            list(extra.get("step_accuracies", [])),
            list(extra.get("history", [])),
        )

    def end_epoch(self, epoch: int, step: int, spe: int, held_out: Mapping[str, Any]) -> dict:
        """Append epoch ``epoch``'s entry: train means over its steps, held-out metrics."""
        sl = slice((epoch - 1) * spe, epoch * spe)
        entry = {
            "epoch": epoch,
            "step": step,
            "train_loss": float(np.mean(self.step_losses[sl])),
            "train_accuracy": float(np.mean(self.step_accuracies[sl])),
            **{f"test_{k}": v for k, v in held_out.items() if k != "count"},
        }
        self.history.append(entry)
        return entry


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long to train and when to save: ``stop`` may end a run before ``epochs``."""

    steps_per_epoch: int
    epochs: int
    stop: int
    save_every: int
    batch_size: int


def fit(
    state: TrainState,
    train_step: Callable[[TrainState, Any], tuple[TrainState, Any]],
    epoch_batches: EpochBatches,
    evaluate: Callable[[TrainState], Mapping[str, Any]],
    checkpointer: Checkpointer,
    schedule: Schedule,
    log: RunLog,
    *,
    progress: bool = True,
) -> TrainState:
    """Train from ``state.step`` to ``schedule.stop``; returns the final state (saved)."""
    from tqdm import tqdm

    spe = schedule.steps_per_epoch
    step = int(jax.device_get(state.step))
    bar = tqdm(
        total=schedule.stop, initial=step, unit="step", disable=not progress,
        file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
    t_first = s_first = None  # throughput excludes the first step (compilation)
    while step < schedule.stop:
        epoch, first = divmod(step, spe)
        bar.set_description(f"epoch {epoch + 1}/{schedule.epochs}")
        for batch in epoch_batches(epoch, first):
            state, m = train_step(state, batch)
            m = jax.device_get(m)
            step += 1
            log.step_losses.append(float(m["loss"]))
            log.step_accuracies.append(float(m["accuracy"]))
            if t_first is None:
                t_first, s_first = time.perf_counter(), step
            elapsed = time.perf_counter() - t_first
            rate = (step - s_first) * schedule.batch_size / elapsed if elapsed > 0 else 0.0
            bar.set_postfix(loss=f"{log.step_losses[-1]:.4f}", img_s=f"{rate:.0f}")
            bar.update(1)
            if step % spe == 0:  # epoch done: evaluate before a save, so the save has it
                e = log.end_epoch(step // spe, step, spe, evaluate(state))
                bar.write(
                    f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}, held-out "
                    f"loss {e['test_loss']:.4f}, accuracy {e['test_accuracy']:.2%}"
                )
            if step % schedule.save_every == 0 or step == schedule.stop:
                checkpointer.save(state, extra=log.to_extra())
            if step >= schedule.stop:
                break
    bar.close()
    if checkpointer.latest_step() != step:  # e.g. resumed at the very end
        checkpointer.save(state, extra=log.to_extra())
    return state
