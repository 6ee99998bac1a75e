"""Parameter counts by stage and XLA's FLOP count for a config, without running the model."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax import ops
from efficientvit_jax.config import EfficientViTConfig, make_config
from efficientvit_jax.model import EfficientViT


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """What ``summary`` measured: parameters per group, total, FLOPs per image, output size."""

    config: EfficientViTConfig
    params_by_group: dict[str, int]
    total_params: int
    flops: float | None
    output_size: int
    input_shape: tuple[int, ...]

    def table(self) -> str:
        """A plain-text table, one row per group."""
        width = max(len(k) for k in self.params_by_group) + 2
        lines = [f"{'group':<{width}}{'params':>14}", "-" * (width + 14)]
        lines += [f"{k:<{width}}{v:>14,}" for k, v in self.params_by_group.items()]
        lines.append("-" * (width + 14))
        lines.append(f"{'total':<{width}}{self.total_params:>14,}")
        flops = "n/a" if self.flops is None else f"{self.flops / 1e9:.3f} GFLOPs"
        lines.append(f"FLOPs per image (XLA cost analysis, input {self.input_shape}): {flops}")
        lines.append(f"output_size: {self.output_size}")
        return "\n".join(lines)


def group_of(name: str) -> str:
    """Which row of the summary a top-level parameter belongs to."""
    if m := re.match(r"(?:stage_(\d+)_|downsample_(\d+))", name):
        return f"stage_{m.group(1) or m.group(2)}"
    if name.startswith("patch_embed"):
        return "patch_embed"
    return "head"


def abstract_variables(model: nn.Module, input_shape: tuple[int, ...], dtype: Any) -> Any:
    """The variables' shapes and dtypes, by ``jax.eval_shape`` (no memory, no compute)."""
    x = jax.ShapeDtypeStruct(input_shape, dtype)
    return ops.eval_shape(model.init, jax.random.key(0), x)


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of a compiled program from XLA's cost analysis (``None`` where the backend has none)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_flops(
    model: nn.Module, variables: Any, input_shape: tuple[int, ...], dtype: Any
) -> float | None:
    """FLOPs of one jitted ``apply`` from XLA's cost analysis of the compiled program."""
    x = jax.ShapeDtypeStruct(input_shape, dtype)
    return compiled_flops(jax.jit(model.apply).lower(variables, x).compile())


def summary(
    config: EfficientViTConfig | None = None, *, flops: bool = True, **opts: Any
) -> ModelSummary:
    """Summarise a config: parameters per stage, total, FLOPs for one image, ``output_size``.

    The input is one image of ``image_size`` x ``image_size``. Parameters are
    counted by ``jax.eval_shape``; FLOPs come from compiling ``apply`` (a few
    seconds), skipped with ``flops=False``.
    """
    cfg = make_config(config, **opts)
    model = EfficientViT(cfg)
    s = cfg.image_size
    shape = (1, cfg.in_channels, s, s) if cfg.data_format == "NCHW" else (1, s, s, cfg.in_channels)
    variables = abstract_variables(model, shape, jnp.float32)
    groups: dict[str, int] = {}
    for name, sub in variables["params"].items():
        g = group_of(name)
        groups[g] = groups.get(g, 0) + sum(a.size for a in jax.tree.leaves(sub))
    order = ["patch_embed"] + [f"stage_{i}" for i in range(len(cfg.depths))] + ["head"]
    groups = {k: groups[k] for k in order if k in groups}
    return ModelSummary(
        config=cfg,
        params_by_group=groups,
        total_params=sum(groups.values()),
        flops=xla_flops(model, variables, shape, jnp.float32) if flops else None,
        output_size=cfg.output_size,
        input_shape=shape,
    )
