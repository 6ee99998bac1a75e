"""Writing outputs safely: prove a folder writable before any work, replace files atomically.

At the bottom of the package (no package imports): the CLI commands, training and export all
write through these, so that a bad path fails before any compute and a reader never sees a
half-written file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

# The one folder a command may create above its output: train's default is runs/digits.
RUNS_FOLDER = "runs"


def require_parent(path: str, flag: str = "--output") -> None:
    """``ValueError`` naming ``flag``, ``path`` and the folder unless the folder that would
    hold ``path`` exists: a mistyped path must fail, not grow a tree of folders."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{flag} {path} cannot be written: folder {parent} does not exist")


def check_output_folder(path: str, flag: str = "--output") -> None:
    """The checks of ``check_output_writable`` that write nothing (its parent rule, not a
    file, not read-only), for a command to run before any work; the folder is created later
    by ``check_output_writable``."""
    parent = os.path.dirname(os.path.abspath(path))
    if parent != os.path.join(os.getcwd(), RUNS_FOLDER):
        require_parent(path, flag)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} cannot be written: it exists and is not a folder")
    where = path if os.path.isdir(path) else parent if os.path.isdir(parent) else os.getcwd()
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path} cannot be written: {where} is not writable")


def check_output_writable(path: str, flag: str = "--output") -> None:
    """Create folder ``path`` if needed and prove it writable with a probe file.

    Only ``path`` itself is created: its parent must exist (``require_parent``), with one
    exception so that train's default ``--output runs/digits`` works on a fresh machine: a
    missing ``runs/`` directly under the current directory is created too. On failure remove
    what was created and raise ``ValueError`` naming ``flag``. Permission bits alone are not
    trusted: root ignores them.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if parent != os.path.join(os.getcwd(), RUNS_FOLDER):
        require_parent(path, flag)
    created = [d for d in (os.path.abspath(path), parent) if not os.path.exists(d)]
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
        raise ValueError(f"{flag} {path} cannot be written: {reason}") from e


def write_json(path: str, obj: Any) -> None:
    """``obj`` as indented JSON, written atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    atomic_write(path, dump)


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
