"""Writing outputs safely: prove a folder writable before any work, replace files atomically.

At the bottom of the package (no package imports): the CLI commands, training and export all
write through these, so that a bad path fails before any compute and a reader never sees a
half-written file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable


def check_output_writable(path: str) -> None:
    """Create folder ``path`` if needed and prove it writable with a probe file.

    On failure remove what was created and raise ``ValueError``. Permission bits alone are
    not trusted: root ignores them.
    """
    created = []
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise OSError(f"{path} exists and is not a folder")
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        for d in created:  # innermost first
            shutil.rmtree(d, ignore_errors=True)
        reason = e.strerror or str(e)
        raise ValueError(f"output folder {path!r} cannot be written: {reason}") from e


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file,
    and a failed write leaves nothing behind."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
