"""A trained run back as a model: ``load_run(path)`` -> model, variables, class names, data
config and recipe, for ``predict``, ``eval``, ``export`` and Python alike.

The model is rebuilt from the run's ``config.json`` by the code that built it for training
(``training.recipe``), so every kind of run loads: the digits job, the builder or any zoo
family on folders, from scratch or fine-tuned, frozen, with EMA, in any precision, on any
mesh. The arrays are restored without a template (the optimizer is not rebuilt, so the
weights file a run started from need not exist any more), onto this process's first
device, and checked against the checksums stored at save time; a damaged newest step falls
back to the newest intact one, as ``--resume`` does.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from typing import Any

from efficientvit_jax.training.config import TrainConfig, load_config
from efficientvit_jax.training.run import CHECKPOINTS, identity, read_run_file


@dataclasses.dataclass(frozen=True)
class LoadedRun:
    """A run's model at one step.

    Attributes:
      model: the flax module (computing in float32 unless ``dtype`` was asked for).
      variables: ``{"params", "batch_stats"?}``: the raw weights, or the EMA's (``ema=True``)
        with the run's BatchNorm statistics.
      classes: the class names, in output order.
      data_config: the evaluation ``data.DataConfig`` (``data.create_transform`` takes it).
      config: the run's ``training.TrainConfig``.
      step: the step restored.
      path: the run folder.
      ema: whether ``variables`` are the EMA weights.
    """

    model: Any
    variables: dict[str, Any]
    classes: tuple[str, ...]
    data_config: Any
    config: TrainConfig
    step: int
    path: str
    ema: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def locate_run(path: str | os.PathLike, step: int | None = None) -> tuple[str, int | None]:
    """``(run folder, step)`` for a run folder, its ``checkpoints/`` folder or one step's
    folder (whose name is the step)."""
    p = os.path.abspath(os.fspath(path))
    if not os.path.isdir(p):
        raise ValueError(f"--checkpoint {os.fspath(path)!r}: no such folder")
    if os.path.isdir(os.path.join(p, CHECKPOINTS)):
        return p, step
    if os.path.basename(p) == CHECKPOINTS:
        return os.path.dirname(p), step
    base, parent = os.path.basename(p), os.path.dirname(p)
    if base.isdigit() and os.path.basename(parent) == CHECKPOINTS:
        if step is not None and step != int(base):
            raise ValueError(f"--checkpoint {os.fspath(path)!r} is step {base}, --step says {step}")
        return os.path.dirname(parent), int(base)
    raise ValueError(
        f"--checkpoint {os.fspath(path)!r}: not a run folder (no {CHECKPOINTS}/ in it), its "
        f"{CHECKPOINTS}/ folder or one step of it"
    )


def load_run(
    path: str | os.PathLike, *, step: int | None = None, ema: bool = False, dtype: Any = None
) -> LoadedRun:
    """The model of a ``train`` run (see the module) at ``step`` (default: the newest intact
    checkpoint), with the EMA weights if ``ema``; computing in ``dtype`` (default: float32,
    whatever precision the run trained in). One-line ``ValueError`` for anything missing,
    damaged or inconsistent."""
    from efficientvit_jax.data import DataConfig
    from efficientvit_jax.training import recipe
    from efficientvit_jax.training.checkpoint import Checkpointer

    workdir, step = locate_run(path, step)
    config = load_config(workdir)
    info = read_run_file(workdir)
    classes = tuple(str(c) for c in info["classes"])
    options = {"dtype": dtype} if dtype is not None else {}
    model = recipe.build_model(config, len(classes), options)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINTS), config=identity(config))
    try:
        restored = ckpt.restore(None, step, report=_warn)
    finally:
        ckpt.close()
    state = restored.state
    variables: dict[str, Any] = {"params": state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    if ema:
        variables["params"] = _ema_params(state.get("opt_state"), state["params"], workdir)
    data_config = DataConfig(**info["data_config"])
    return LoadedRun(model, variables, classes, data_config, config, restored.step, workdir, ema)


def _ema_params(opt_state: Any, params: Any, workdir: str) -> Any:
    """The EMA tracker's average (``training.ema``) in a restored optimizer state: the one
    mapping with ``count`` and an ``ema`` of the parameters' structure."""
    import jax

    want = jax.tree.structure(params)
    stack = [opt_state]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            e = node.get("ema")
            if "count" in node and e is not None and jax.tree.structure(e) == want:
                return e
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    raise ValueError(f"--ema: run {workdir} kept no EMA of its weights (train with --ema-decay)")


def _warn(message: str) -> None:
    print(f"efficientvit-jax: warning: {message}", file=sys.stderr, flush=True)


__all__ = ["LoadedRun", "load_run", "locate_run"]
