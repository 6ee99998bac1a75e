"""The builder's options: one frozen dataclass, validated when it is made.

Mirrors the options and defaults of Edifice v0.2.0's ``EfficientViT.build``
(SPEC.md section 2), plus a few fields of our own whose defaults keep Edifice's
behaviour. Nothing here imports JAX models: ``output_size`` answers from the
config alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

LAYOUTS = ("cascaded", "edifice")
DATA_FORMATS = ("NCHW", "NHWC")
# "none", "block" (recompute each block in the backward pass), or a policy of
# jax.checkpoint_policies that needs no arguments (what it may save).
REMAT_POLICIES = (
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "everything_saveable",
    "nothing_saveable",
)
REMAT_OPTIONS = ("none", "block", *REMAT_POLICIES)


def round_half_away(x: float) -> int:
    """Round halves away from zero, like Elixir's ``round`` (Python rounds them to even)."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _fail(option: str, value: Any, rule: str) -> ValueError:
    return ValueError(f"EfficientViTConfig: option {option!r} = {value!r} is invalid: {rule}")


@dataclasses.dataclass(frozen=True)
class EfficientViTConfig:
    """Options of the EfficientViT builder (Edifice's names and defaults).

    Attributes:
      image_size: default square input size, for init and summaries; the model
        accepts any H, W divisible by ``patch_size``.
      patch_size: side of the non-overlapping patches.
      in_channels: image channels.
      embed_dim: width of the first stage; stage ``i`` has ``embed_dim * 2**i``.
      depths: blocks per stage.
      num_heads: attention heads per stage; each must divide its stage width.
      mlp_ratio: FFN hidden width = ``round(dim * mlp_ratio)`` (halves away from 0).
      num_classes: ``None`` returns pooled features ``[B, dims[-1]]``, an int
        returns logits ``[B, num_classes]``.
      layout: ``"cascaded"`` (the documented architecture) or ``"edifice"``
        (what Edifice v0.2.0's code computes, with its parameter names).
      data_format: ``"NCHW"`` (Edifice's) or ``"NHWC"``.
      dtype: computation dtype (parameters are cast to it); the linear
        attention always accumulates in float32.
      param_dtype: dtype the parameters are stored in.
      drop_path_rate: stochastic depth rate of the last block, rising linearly
        from 0 at the first; active only with ``train=True``.
      remat: rematerialisation of each block in the backward pass: ``"none"``,
        ``"block"`` (keep only block inputs, recompute the rest) or the name of
        a ``jax.checkpoint_policies`` policy such as ``"dots_saveable"``. The
        parameter tree is the same whatever the choice.
    """

    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    embed_dim: int = 64
    depths: tuple[int, ...] = (1, 2, 3)
    num_heads: tuple[int, ...] = (4, 4, 4)
    mlp_ratio: float = 4.0
    num_classes: int | None = None
    layout: str = "cascaded"
    data_format: str = "NCHW"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    remat: str = "none"

    def __post_init__(self) -> None:
        # In this order: the stage widths need embed_dim, the FFN width needs the stages.
        self._check_sizes()
        self._check_stages()
        self._check_mlp_ratio()
        self._check_choices()
        self._check_dtypes()
        self._check_training()

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # the dataclass is frozen: normalise in place

    def _check_sizes(self) -> None:
        """The image, patch and first-stage sizes: ints > 0, the patches tiling the image."""
        for name in ("image_size", "patch_size", "in_channels", "embed_dim"):
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise _fail(name, v, "must be an int > 0")
            self._set(name, int(v))
        if self.image_size % self.patch_size:
            raise _fail(
                "image_size",
                self.image_size,
                f"must be divisible by patch_size={self.patch_size}",
            )

    def _check_stages(self) -> None:
        """``depths`` and ``num_heads``: one int entry per stage, the heads dividing widths."""
        for name in ("depths", "num_heads"):
            v = getattr(self, name)
            if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, Sequence):
                raise _fail(name, v, "must be a non-empty list or tuple of ints >= 1")
            if len(v) == 0:
                raise _fail(name, v, "must be non-empty")
            if not all(_is_int(d) and d >= 1 for d in v):
                raise _fail(name, v, "every entry must be an int >= 1")
            self._set(name, tuple(int(d) for d in v))
        if len(self.num_heads) != len(self.depths):
            raise _fail(
                "num_heads",
                self.num_heads,
                f"must have one entry per stage, as depths={self.depths} "
                f"({len(self.depths)} stages), got {len(self.num_heads)}",
            )
        for i, (d, h) in enumerate(zip(self.dims, self.num_heads, strict=True)):
            if d % h:
                raise _fail(
                    "num_heads",
                    self.num_heads,
                    f"stage {i} has width {d} (embed_dim * 2**{i}), not divisible by {h} heads",
                )

    def _check_mlp_ratio(self) -> None:
        """A finite float > 0 that gives the first stage an FFN of at least one unit."""
        r = self.mlp_ratio
        if not (_is_int(r) or isinstance(r, (float, np.floating))) or isinstance(r, bool):
            raise _fail("mlp_ratio", r, "must be a float > 0")
        if not math.isfinite(r) or r <= 0:
            raise _fail("mlp_ratio", r, "must be a finite float > 0")
        self._set("mlp_ratio", float(r))
        if round_half_away(self.dims[0] * self.mlp_ratio) < 1:
            raise _fail(
                "mlp_ratio",
                r,
                f"gives an FFN hidden width round({self.dims[0]} * {r}) < 1",
            )

    def _check_choices(self) -> None:
        """The head's size and the named choices of layout and data format."""
        if self.num_classes is not None:
            if not _is_int(self.num_classes) or self.num_classes < 1:
                raise _fail("num_classes", self.num_classes, "must be None or an int >= 1")
            self._set("num_classes", int(self.num_classes))
        if self.layout not in LAYOUTS:
            raise _fail("layout", self.layout, f"must be one of {LAYOUTS}")
        if self.data_format not in DATA_FORMATS:
            raise _fail("data_format", self.data_format, f"must be one of {DATA_FORMATS}")

    def _check_dtypes(self) -> None:
        """Floating compute and parameter dtypes, normalised to ``jnp.dtype``."""
        for name in ("dtype", "param_dtype"):
            v = getattr(self, name)
            try:
                dt = jnp.dtype(v)
            except TypeError as e:
                raise _fail(name, v, "must be a floating dtype such as 'float32'") from e
            if not jnp.issubdtype(dt, jnp.floating):
                raise _fail(name, v, "must be a floating dtype such as 'float32'")
            self._set(name, dt)

    def _check_training(self) -> None:
        """The options of the backward pass: drop-path rate and rematerialisation."""
        p = self.drop_path_rate
        if not isinstance(p, (int, float, np.floating)) or isinstance(p, bool) or not 0 <= p < 1:
            raise _fail("drop_path_rate", p, "must be a float in [0, 1)")
        self._set("drop_path_rate", float(p))
        if self.remat not in REMAT_OPTIONS:
            raise _fail("remat", self.remat, f"must be one of {REMAT_OPTIONS}")

    @property
    def dims(self) -> tuple[int, ...]:
        """Stage widths ``embed_dim * 2**i``."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))

    def hidden_dim(self, dim: int) -> int:
        """FFN hidden width for a stage of width ``dim`` (Elixir rounding)."""
        return round_half_away(dim * self.mlp_ratio)

    @property
    def output_size(self) -> int:
        """Last dimension of the model's output."""
        return self.num_classes if self.num_classes is not None else self.dims[-1]

    def drop_path_rates(self) -> tuple[tuple[float, ...], ...]:
        """Per-block stochastic depth rates, rising linearly from 0 to ``drop_path_rate``."""
        total = sum(self.depths)
        flat = [self.drop_path_rate * k / max(total - 1, 1) for k in range(total)]
        out, start = [], 0
        for d in self.depths:
            out.append(tuple(flat[start : start + d]))
            start += d
        return tuple(out)

    def replace(self, **opts: Any) -> EfficientViTConfig:
        """A copy with some options changed (validated, unknown names rejected)."""
        check_option_names(opts)
        return dataclasses.replace(self, **opts)


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(EfficientViTConfig))


def check_option_names(opts: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for option names the builder does not know (Edifice ignores them)."""
    unknown = [k for k in opts if k not in OPTION_NAMES]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, OPTION_NAMES, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"unknown EfficientViT option(s): {', '.join(hints)}; known options: {', '.join(OPTION_NAMES)}"
        )


def make_config(config: EfficientViTConfig | None = None, **opts: Any) -> EfficientViTConfig:
    """``config`` with ``opts`` applied, or a new config from ``opts``."""
    if config is not None and not isinstance(config, EfficientViTConfig):
        raise ValueError(
            f"config must be an EfficientViTConfig or None, got {type(config).__name__}"
        )
    check_option_names(opts)
    if config is None:
        return EfficientViTConfig(**opts)
    return dataclasses.replace(config, **opts) if opts else config


def output_size(config: EfficientViTConfig | None = None, **opts: Any) -> int:
    """Size of the model's last output dimension, computed from the options alone.

    ``num_classes`` when set, otherwise the width of the last stage
    (``embed_dim * 2**(len(depths) - 1)``; 256 for the defaults).
    """
    return make_config(config, **opts).output_size
