"""Run a worker script in fresh Python processes, with a time limit, never leaving them behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(**extra: str) -> dict[str, str]:
    """The parent's environment, minus device-count flags (each worker sets its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        # Each worker leads its own process group (start_new_session), so this ends it and
        # anything it started, and nothing else.
        with contextlib.suppress(ProcessLookupError):  # it just exited
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_workers(
    script: str,
    args_per_process: Sequence[Sequence[str]],
    *,
    timeout: float,
    env: dict[str, str] | Sequence[dict[str, str]],
) -> list[tuple[int, str, dict[str, Any] | None]]:
    """Start one process per argument list, wait for all (``timeout`` seconds in total).

    ``env`` is one environment for all processes or one per process.

    Returns ``(returncode, output, result)`` per process, ``result`` parsed from the
    ``RESULT {json}`` line (``None`` if missing). On timeout every process is killed and
    ``TimeoutError`` is raised with their output.
    """
    procs = []
    try:
        envs = [env] * len(args_per_process) if isinstance(env, dict) else list(env)
        for args, penv in zip(args_per_process, envs, strict=True):
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(HERE / script), *args],
                    cwd=HERE,
                    env=penv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
            )
        outputs = []
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for q in procs:
                    _kill(q)
                tails = [(q.communicate()[0] or "")[-3000:] for q in procs]
                raise TimeoutError(f"{script} did not finish in {timeout}s: {tails}") from None
            outputs.append(out)
    finally:
        for p in procs:
            _kill(p)
    results = []
    for p, out in zip(procs, outputs, strict=True):
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        results.append((p.returncode, out, json.loads(lines[-1][7:]) if lines else None))
    return results
