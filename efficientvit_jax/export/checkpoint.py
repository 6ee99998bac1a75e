"""A ``train`` run's checkpoint as an ``Exportable``: the config and the weights both from it.

The ``Checkpointer`` of ``efficientvit_jax.training`` stores each step as an orbax step folder
with two items, ``state`` (the train state) and ``meta`` (JSON, the run's config under
``config.model``). Only ``params`` (and ``batch_stats``) of the state are kept; the optimizer
is not rebuilt, so any run's checkpoint reads, whatever its optimizer.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp

from efficientvit_jax.config import OPTION_NAMES, EfficientViTConfig
from efficientvit_jax.export.source import Exportable, image_shape, to_float

CHECKPOINTS = "checkpoints"


def locate(path: str | os.PathLike, step: int | None = None) -> tuple[str, int | None]:
    """``(checkpoint folder, step)`` for a run folder, its ``checkpoints/`` or one step's folder."""
    p = os.path.abspath(os.fspath(path))
    if not os.path.isdir(p):
        raise ValueError(f"--checkpoint {os.fspath(path)!r}: no such folder")
    if os.path.isdir(os.path.join(p, CHECKPOINTS)):
        return os.path.join(p, CHECKPOINTS), step
    base = os.path.basename(p)
    if base.isdigit() and os.path.isdir(os.path.join(p, "state")):
        if step is not None and step != int(base):
            raise ValueError(f"--checkpoint {os.fspath(path)!r} is step {base}, --step says {step}")
        return os.path.dirname(p), int(base)
    return p, step


def _manager(folder: str) -> Any:
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(create=False)
    return ocp.CheckpointManager(folder, item_names=("state", "meta"), options=options)


def _restore(mgr: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(model config dict, variables)`` of one step; raises on anything unreadable."""
    import orbax.checkpoint as ocp

    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    model = meta["config"]["model"]
    state = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    return model, variables


def read_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[int, dict, dict]:
    """``(step, model config dict, variables)``: ``step``, or the latest step that reads."""
    folder, step = locate(path, step)
    mgr = _manager(folder)
    steps = sorted(mgr.all_steps(), reverse=True)
    if not steps:
        raise ValueError(f"--checkpoint {os.fspath(path)!r}: no checkpoint in {folder}")
    if step is not None and step not in steps:
        raise ValueError(f"--step {step}: no such checkpoint in {folder} (steps: {sorted(steps)})")
    problems = []
    for s in [step] if step is not None else steps:
        try:
            return (s, *_restore(mgr, s))
        except Exception as e:  # a corrupt step: the one before may be intact
            problems.append(f"step {s}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    raise ValueError(f"--checkpoint {folder}: no intact checkpoint ({'; '.join(problems)})")


def config_from_dict(model: dict[str, Any], **overrides: Any) -> EfficientViTConfig:
    """The core config a checkpoint stored (``config_to_dict``), with ``overrides``."""
    if not isinstance(model, dict) or set(model) - set(OPTION_NAMES):
        raise ValueError(
            "the checkpoint's model config is not one of the core builder "
            f"(fields {sorted(model) if isinstance(model, dict) else type(model).__name__})"
        )
    return EfficientViTConfig(**{**model, **overrides})


def from_checkpoint(
    path: str | os.PathLike, step: int | None = None, *, dtype: Any = jnp.float32
) -> Exportable:
    """A ``train`` run's model at ``step`` (default: the latest intact one), computing in
    ``dtype`` (default float32, whatever the run trained in)."""
    step, model, variables = read_checkpoint(path, step)
    cfg = config_from_dict(model, dtype=dtype, remat="none", drop_path_rate=0.0)
    from efficientvit_jax.model import EfficientViT

    variables = to_float(variables, cfg.param_dtype)
    return Exportable(
        EfficientViT(cfg), variables, image_shape(cfg), cfg.dtype, f"checkpoint_step_{step}"
    )
