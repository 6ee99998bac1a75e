"""Timing shared by the benchmarks that run each case in a process of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def best(
    run: Callable[[], Any], repeats: int, warmup: Callable[[], Any] | None = None
) -> tuple[float, float]:
    """(first call, best of the ``repeats`` after it), in seconds. ``warmup`` (default: ``run``)
    is the first call: compilation and first-touch allocations, kept out of the best."""
    t = time.perf_counter()
    (warmup or run)()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return first, min(times)
