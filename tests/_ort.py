"""onnxruntime sessions as the tests make them: on the CPU, two threads, waiting threads asleep."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def cpu_session(path: str | Path) -> ort.InferenceSession:
    """A CPU session of the ONNX file ``path`` on two threads that sleep while they wait:
    onnxruntime's default is to spin, and two test processes share two cores, so a spinning
    thread takes the core the other process needs (see ``tests/conftest.py``; the export
    files without the four large variants: 71.6 and 75.3 s against 82.9 and 84.5 s)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
