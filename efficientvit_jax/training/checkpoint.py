"""Orbax checkpoints of the whole train state, with the run's config stored beside it.

Each checkpoint is one orbax step directory ``<directory>/<step>/`` holding two items:
``state`` (the ``TrainState``) and ``meta`` (JSON: the run's ``config`` and any ``extra``
the caller passes, e.g. the loss history). Orbax writes a step into a temporary directory
and renames it only once complete, so a save that is interrupted (crash, kill, full disk)
never shows up as a step and never touches the previous checkpoints; leftover temporary
directories are removed the next time the folder is opened.

Restoring compares the stored config with the current one and refuses a mismatch with a
``CheckpointError`` that names every differing field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from efficientvit_jax.training.state import TrainState


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or from another config (one-line message)."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a (possibly nested) dataclass or mapping: tuples become lists,
    dtypes and other objects their ``str``."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, np.generic):
            return v.item()
        return str(v)  # dtypes and the like

    return conv(config)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name: saved -> current"`` for every field that differs (nested names dotted)."""
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    diffs = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k, missing), b.get(k, missing)
        if x != y:
            fx = "(absent)" if x is missing else repr(x)
            fy = "(absent)" if y is missing else repr(y)
            diffs.append(f"{k}: checkpoint {fx}, now {fy}")
    return diffs


class Checkpointer:
    """Save and restore ``TrainState`` checkpoints in one folder (orbax, synchronous).

    Args:
      directory: the checkpoint folder (created on the first save).
      config: what identifies the run (a dataclass or mapping); stored with every
        checkpoint and compared on restore.
      max_to_keep: keep the newest this many checkpoints.
    """

    def __init__(self, directory: str | os.PathLike, *, config: Any, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self.config = config_to_dict(config)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=False,
            # Remove what an interrupted save left behind (never a finished step).
            cleanup_tmp_directories=True,
            # Synchronous: a save is complete when ``save`` returns, and the train step
            # may then donate the state's buffers safely.
            enable_async_checkpointing=False,
            # Write into ``<step>.orbax-checkpoint-tmp-*`` and rename when complete: the
            # rename is what makes a step visible, so a half-written one never is.
            temporary_path_class=ocp.path.atomicity.AtomicRenameTemporaryPath,
        )
        self._options = options
        self._manager: ocp.CheckpointManager | None = None

    def _mgr(self, create: bool = False) -> ocp.CheckpointManager:
        if self._manager is None:
            if create:
                os.makedirs(self.directory, exist_ok=True)
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=("state", "meta"), options=self._options
            )
        return self._manager

    def all_steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        mgr = self._mgr()
        mgr.reload()  # another process (or a killed save) may have changed the folder
        return sorted(mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or ``None``."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, state: TrainState, *, extra: Mapping[str, Any] | None = None) -> int:
        """Save ``state`` under its step (atomically); returns the step."""
        step = int(jax.device_get(state.step))
        meta = {"config": self.config, "extra": config_to_dict(dict(extra or {}))}
        mgr = self._mgr(create=True)
        mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mgr.wait_until_finished()
        return step

    def restore(
        self, target: TrainState, step: int | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """The state saved at ``step`` (default: the latest) and its ``extra``.

        ``target`` gives the structure, shapes and dtypes (e.g. a freshly created state).
        Raises ``CheckpointError`` if there is no checkpoint, if it cannot be read, or if it
        was saved with another config (naming the differing fields).
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        elif step not in self.all_steps():
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}")
        mgr = self._mgr()
        where = os.path.join(self.directory, str(step))
        try:
            meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {where} is corrupt or unreadable (metadata): {_one_line(e)}"
            ) from e
        if not isinstance(meta, Mapping) or "config" not in meta:
            raise CheckpointError(f"checkpoint {where} is corrupt: its metadata has no config")
        diffs = config_differences(meta["config"], self.config)
        if diffs:
            raise CheckpointError(
                f"checkpoint {where} was saved with another config; differs in " + "; ".join(diffs)
            )
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            state = mgr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {where} is corrupt or unreadable: {_one_line(e)}"
            ) from e
        return state, dict(meta.get("extra") or {})

    def close(self) -> None:
        """Release orbax's resources."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:300]}"
