"""Stopping a training run on SIGINT or SIGTERM at a step boundary, with its state saved.

``StopOnSignal`` turns the first signal into a flag that the loop checks after each step (a
signal handler that raised instead would land anywhere: inside a checkpoint write, in the
middle of orbax's asyncio tasks, between a step and its log entry); the loop then saves and
raises ``Interrupted``. A second signal means "stop now": it raises at once.

``Interrupted`` subclasses ``KeyboardInterrupt`` so that code catching ``Exception`` lets it
through, as it would a Ctrl-C, and a caller that only knows ``KeyboardInterrupt`` still
stops. This module imports nothing heavy: the CLI looks for it in ``sys.modules``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import Any

SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))


def shown_path(path: str) -> str:
    """``path`` relative to the working directory when it lies under it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel


class Interrupted(KeyboardInterrupt):
    """A training run stopped by a signal.

    Attributes:
      step: the step the run reached (the saved state's step, unless ``aborted``).
      checkpoint: the folder of the newest checkpoint written (``<workdir>/checkpoints/<step>``),
        or ``None`` if there is none.
      workdir: the run folder (the parent of the checkpoints folder), or ``None``.
      signal: the signal's name, e.g. ``"SIGINT"``.
      aborted: a second signal cut the stop short (a save in flight is discarded: it never
        shows up as a step, so ``checkpoint`` is the one before).
    """

    def __init__(
        self,
        step: int,
        checkpoint: str | None,
        workdir: str | None,
        signal: str = "SIGINT",
        aborted: bool = False,
    ):
        super().__init__(step, checkpoint, workdir, signal, aborted)
        self.step, self.checkpoint, self.workdir = step, checkpoint, workdir
        self.signal, self.aborted = signal, aborted

    def __str__(self) -> str:
        by = f"a second {self.signal}" if self.aborted else self.signal
        where = (
            f"last checkpoint {shown_path(self.checkpoint)}"
            if self.checkpoint is not None
            else "no checkpoint written yet"
        )
        return f"interrupted by {by} at step {self.step}; {where}"


class StopOnSignal:
    """A context manager: while it is open, the first SIGINT or SIGTERM sets ``received``
    (the signal's name) and a second one raises ``abort(name)``.

    Handlers are installed only in the main thread (Python allows no other) and the previous
    ones are put back on exit, whatever ends the block; elsewhere the block runs with the
    process's handlers and ``received`` stays ``None``.
    """

    def __init__(self, abort: Callable[[str], BaseException]):
        self._abort = abort
        self._previous: dict[int, Any] = {}
        self.received: str | None = None

    def __enter__(self) -> StopOnSignal:
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        while self._previous:
            sig, previous = self._previous.popitem()
            # None: a handler installed outside Python, which cannot be put back from here.
            signal.signal(sig, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = name
            return
        raise self._abort(name)
