"""The training loop: steps over epochs with a progress bar, held-out evaluation after each
epoch, checkpoints every ``save_every`` steps, exact resume, and a clean stop on SIGINT or
SIGTERM (the state saved at a step boundary, then ``Interrupted``).

It takes the pieces as arguments (a jitted step, a function giving an epoch's batches from a
position, an evaluation function, a ``Checkpointer``), so the digits job and folder training
share it and neither imports the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from efficientvit_jax.training.checkpoint import Checkpointer
from efficientvit_jax.training.interrupt import Interrupted, StopOnSignal
from efficientvit_jax.training.state import TrainState

__all__ = ["EpochBatches", "Interrupted", "RunLog", "Schedule", "fit"]

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
            # scalars only: per-class lists (segmentation) stay in the final metrics
            **{f"test_{k}": v for k, v in held_out.items() if k != "count" and _scalar(v)},
        }
        self.history.append(entry)
        return entry


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer))


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
    """Train from ``state.step`` to ``schedule.stop``; returns the final state (saved).

    SIGINT or SIGTERM (caught while this runs, in the main thread only) stops the run after
    the current step: the state at that step is saved and ``Interrupted`` is raised, so a
    resume loses nothing. A second signal while stopping raises ``Interrupted`` with
    ``aborted`` at once; a save it cuts short never shows up as a step.
    """
    from tqdm import tqdm

    run = _Run(checkpointer, int(jax.device_get(state.step)))
    bar = tqdm(
        total=schedule.stop, initial=run.step, unit="step", disable=not (progress and run.main),
        file=sys.stderr, dynamic_ncols=True,
    )  # fmt: skip
    with StopOnSignal(run.aborted) as run.signals, contextlib.closing(bar):
        while run.step < schedule.stop:
            state = _epoch(state, train_step, epoch_batches, evaluate, schedule, log, run, bar)
            if run.stop_signal:
                bar.close()  # before the caller reports, so that its line comes last
                raise run.interrupted(state, log, run.stop_signal)
        if run.saved != run.step:  # e.g. resumed at the very end
            run.save(state, log)
    return state


@dataclasses.dataclass
class _Run:
    """Where ``fit`` is: the step reached, the newest checkpoint, the throughput clock."""

    checkpointer: Checkpointer
    step: int
    saved: int | None = None
    t_first: float | None = None  # throughput excludes the first step (compilation)
    s_first: int = 0
    signals: StopOnSignal | None = None
    stop_signal: str | None = None  # the signal all processes agreed to stop on
    main: bool = dataclasses.field(default_factory=lambda: jax.process_index() == 0)

    def __post_init__(self) -> None:
        self.saved = self.checkpointer.latest_step()

    def agree_on_stop(self) -> str | None:
        """Set and return ``stop_signal``: the signal any process received so far.

        With several processes every step and save is collective, so they must stop at
        the same step even when a signal reaches one of them only, or a step later: each
        step ends with this all-gather of the received signals (a few bytes).
        """
        name = self.signals.received if self.signals else None
        if jax.process_count() > 1:
            code = signal.Signals[name].value if name else 0
            codes = multihost_utils.process_allgather(np.int32(code))
            name = signal.Signals(int(np.max(codes))).name if np.max(codes) else None
        self.stop_signal = name
        return name

    def save(self, state: TrainState, log: RunLog) -> None:
        self.checkpointer.save(state, extra=log.to_extra())
        self.saved = self.step

    def rate(self, batch_size: int) -> float:
        """Images per second since the first step ended."""
        if self.t_first is None:
            self.t_first, self.s_first = time.perf_counter(), self.step
        elapsed = time.perf_counter() - self.t_first
        return (self.step - self.s_first) * batch_size / elapsed if elapsed > 0 else 0.0

    def _report(self, name: str, aborted: bool) -> Interrupted:
        d = self.checkpointer.directory
        where = None if self.saved is None else os.path.join(d, str(self.saved))
        return Interrupted(self.step, where, os.path.dirname(d), name, aborted)

    def interrupted(self, state: TrainState, log: RunLog, name: str) -> Interrupted:
        """Save this step (unless saved already) and say where the run stopped."""
        if self.saved != self.step:
            self.save(state, log)
        # Orbax's threads end here rather than at interpreter exit, after the report.
        self.checkpointer.close()
        return self._report(name, aborted=False)

    def aborted(self, name: str) -> Interrupted:
        """What a second signal raises: no save, the newest checkpoint already written."""
        return self._report(name, aborted=True)


def _epoch(
    state: TrainState,
    train_step: Callable[[TrainState, Any], tuple[TrainState, Any]],
    epoch_batches: EpochBatches,
    evaluate: Callable[[TrainState], Mapping[str, Any]],
    schedule: Schedule,
    log: RunLog,
    run: _Run,
    bar: Any,
) -> TrainState:
    """Steps from ``run.step`` to the end of its epoch, ``schedule.stop`` or a signal."""
    spe = schedule.steps_per_epoch
    epoch, first = divmod(run.step, spe)
    bar.set_description(f"epoch {epoch + 1}/{schedule.epochs}")
    with _closing_iter(epoch_batches(epoch, first)) as batches:
        for batch in batches:
            state, m = train_step(state, batch)
            m = jax.device_get(m)
            run.step += 1
            log.step_losses.append(float(m["loss"]))
            log.step_accuracies.append(float(m["accuracy"]))
            rate = run.rate(schedule.batch_size)
            bar.set_postfix(loss=f"{log.step_losses[-1]:.4f}", img_s=f"{rate:.0f}")
            bar.update(1)
            if run.step % spe == 0:  # epoch done: evaluate before a save, so the save has it
                e = log.end_epoch(run.step // spe, run.step, spe, evaluate(state))
                if run.main:
                    bar.write(_epoch_line(e))
            if run.step % schedule.save_every == 0 or run.step == schedule.stop:
                run.save(state, log)
            if run.agree_on_stop() or run.step >= schedule.stop:
                break
    return state


def _epoch_line(e: Mapping[str, Any]) -> str:
    line = (f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}, held-out loss "
            f"{e['test_loss']:.4f}, accuracy {e['test_accuracy']:.2%}")  # fmt: skip
    if "test_miou" in e:  # segmentation: pixel accuracy, and the mIoU that matters
        line += f", mIoU {e['test_miou']:.2%}"
    return line


@contextlib.contextmanager
def _closing_iter(batches: Iterable[Any]) -> Iterator[Iterator[Any]]:
    """Iterate ``batches`` and close the iterator when leaving early: a loader's worker
    threads stop now, not whenever the abandoned generator is collected."""
    it = iter(batches)
    try:
        yield it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()
