"""Layout ``"edifice"``: what Edifice v0.2.0's code computes, with its Axon layer names.

Edifice's documentation describes cascaded attention, downsampling and a
depthwise conv; its code (SPEC.md section 5) does something simpler, and a
model trained with Edifice can only be reused by reproducing that code
exactly. The layers are created flat, in the calling module's scope, so the
Flax parameter tree has exactly Axon's layer names (``patch_embed_proj``,
``stage_0_block_0_cga_q``, ...).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax._arrays import device_array
from efficientvit_jax._linen import Dense, LayerNorm
from efficientvit_jax.attention import linear_attention
from efficientvit_jax.config import EfficientViTConfig
from efficientvit_jax.layers import maybe_remat

_SQRT3 = math.sqrt(3.0)


def axon_gamma_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Axon's LayerNorm gamma init: glorot-uniform on a rank-1 shape, i.e. U(-sqrt 3, sqrt 3)."""
    return jax.random.uniform(key, shape, dtype, -_SQRT3, _SQRT3)


def token_filter(x: jax.Array) -> jax.Array:
    """Edifice's fixed "depthwise conv": ``0.25 x[t-1] + 0.5 x[t] + 0.25 x[t+1]`` along tokens.

    Zero padded at both ends of the flattened token axis (axis 1); rows of the
    image are not respected, exactly as Edifice does it.
    """
    zero = jnp.zeros_like(x[:, :1])
    prev = jnp.concatenate([zero, x[:, :-1]], axis=1)
    nxt = jnp.concatenate([x[:, 1:], zero], axis=1)
    return 0.25 * prev + 0.5 * x + 0.25 * nxt


def axon_layers(config: EfficientViTConfig) -> dict[str, dict[str, tuple[int, ...]]]:
    """Every Axon layer of the model: ``{name: {param: shape}}`` in Axon's naming.

    Dense layers have ``kernel`` ``[in, out]`` and ``bias``; LayerNorms have
    ``gamma`` and ``beta``.
    """
    c, p = config.in_channels, config.patch_size
    dims = config.dims
    layers: dict[str, dict[str, tuple[int, ...]]] = {}

    def dense(name: str, n_in: int, n_out: int) -> None:
        layers[name] = {"kernel": (n_in, n_out), "bias": (n_out,)}

    def norm(name: str, n: int) -> None:
        layers[name] = {"gamma": (n,), "beta": (n,)}

    dense("patch_embed_proj", c * p * p, dims[0])
    for i, (depth, d) in enumerate(zip(config.depths, dims, strict=True)):
        if i > 0:
            dense(f"downsample_{i}", dims[i - 1], d)
        hidden = config.hidden_dim(d)
        for j in range(depth):
            pre = f"stage_{i}_block_{j}"
            norm(f"{pre}_norm1", d)
            for part in ("q", "k", "v", "proj"):
                dense(f"{pre}_cga_{part}", d, d)
            norm(f"{pre}_norm2", d)
            dense(f"{pre}_ffn_fc1", d, hidden)
            dense(f"{pre}_ffn_fc2", hidden, d)
    norm("final_norm", dims[-1])
    if config.num_classes is not None:
        dense("classifier", dims[-1], config.num_classes)
    return layers


def _layers(config: EfficientViTConfig) -> tuple[Any, Any]:
    kw = dict(dtype=config.dtype, param_dtype=config.param_dtype)
    dense = functools.partial(Dense, kernel_init=nn.initializers.xavier_uniform(), **kw)
    norm = functools.partial(
        LayerNorm, epsilon=1e-5, use_fast_variance=False, scale_init=axon_gamma_init, **kw
    )
    return dense, norm


class EdificeBlock(nn.Module):
    """One Edifice block; its layers carry the Axon names ``{prefix}_norm1``, ``{prefix}_cga_q``, ...

    The model shares its own scope with each block (``nn.share_scope``), so the
    layers land flat in the model's parameter tree, as in Axon, while the block
    is still a module that ``nn.remat`` can wrap.
    """

    config: EfficientViTConfig
    prefix: str
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense, norm = _layers(self.config)
        gelu = functools.partial(nn.gelu, approximate=False)
        pre = self.prefix
        b, n, d = x.shape
        y = norm(name=f"{pre}_norm1")(x)
        q, k, v = (
            dense(d, name=f"{pre}_cga_{part}")(y)
            .reshape(b, n, self.heads, d // self.heads)
            .swapaxes(1, 2)
            for part in ("q", "k", "v")
        )
        y = linear_attention(q, k, v).swapaxes(1, 2).reshape(b, n, d)
        x = x + dense(d, name=f"{pre}_cga_proj")(y)
        y = norm(name=f"{pre}_norm2")(x)
        y = gelu(dense(self.config.hidden_dim(d), name=f"{pre}_ffn_fc1")(y))
        y = gelu(token_filter(y))
        return x + dense(d, name=f"{pre}_ffn_fc2")(y)


def edifice_forward(
    module: nn.Module, config: EfficientViTConfig, grid: jax.Array
) -> tuple[jax.Array, list[jax.Array]]:
    """Edifice's forward pass on a patch grid ``[batch, h, w, C*P*P]``.

    Must be called from ``module``'s compact method: the layers are created,
    with their Axon names, in that module's scope. Returns the output and the
    stage grids ``[batch, h, w, dims[i]]`` (the grid never shrinks), which are
    also sown as ``stage_{i}``.
    """
    b, gh, gw, f = grid.shape
    dense, norm = _layers(config)
    block_cls = maybe_remat(EdificeBlock, config.remat, static_train=False)
    stages = []
    x = dense(config.dims[0], name="patch_embed_proj")(grid.reshape(b, gh * gw, f))
    for i, (depth, d, heads) in enumerate(
        zip(config.depths, config.dims, config.num_heads, strict=True)
    ):
        if i > 0:
            x = dense(d, name=f"downsample_{i}")(x)
        for j in range(depth):
            block = block_cls(config, f"stage_{i}_block_{j}", heads, name=f"_block_{i}_{j}")
            nn.share_scope(module, block)
            x = block(x)
        stages.append(x.reshape(b, gh, gw, d))
        module.sow("intermediates", f"stage_{i}", stages[-1])
    x = norm(name="final_norm")(x).mean(axis=1)
    if config.num_classes is not None:
        x = dense(config.num_classes, name="classifier")(x)
    return x, stages


_AXON_TO_FLAX = {"kernel": "kernel", "bias": "bias", "gamma": "scale", "beta": "bias"}


def _convert_layer(
    name: str, given: Any, shapes: Mapping[str, tuple[int, ...]], dtype: Any, problems: list[str]
) -> dict[str, jax.Array] | None:
    """One Axon layer's arrays under their Flax names, in ``dtype``; what is wrong with it
    goes to ``problems`` (all of it, so one error lists every problem), and ``None`` when
    it is not a map at all."""
    if not isinstance(given, Mapping):
        problems.append(
            f"layer {name!r}: expected a map of {sorted(shapes)}, got {type(given).__name__}"
        )
        return None
    for key in sorted(set(given) - set(shapes)):
        problems.append(f"unexpected parameter {name}.{key}")
    layer = {}
    for key, shape in shapes.items():
        if key not in given:
            problems.append(f"missing parameter {name}.{key} (shape {shape})")
            continue
        arr = np.asarray(given[key])
        if arr.shape != shape:
            problems.append(f"{name}.{key}: expected shape {shape}, given {arr.shape}")
            continue
        layer[_AXON_TO_FLAX[key]] = device_array(arr, dtype)
    return layer


def from_axon_params(params: Mapping[str, Any], config: EfficientViTConfig) -> dict[str, Any]:
    """Convert an Edifice/Axon parameter map into Flax variables for ``config``.

    Args:
      params: ``{layer_name: {"kernel", "bias"}}`` for Dense layers and
        ``{layer_name: {"gamma", "beta"}}`` for LayerNorms, arrays of any kind
        (NumPy, JAX, anything ``np.asarray`` reads). A top-level ``"params"``
        wrapper is accepted too.
      config: an ``EfficientViTConfig`` with ``layout="edifice"`` and the
        options the Axon model was built with.

    Returns:
      ``{"params": ...}`` ready for ``EfficientViT(config).apply``, arrays in
      ``config.param_dtype``.

    Raises:
      ValueError: listing every missing, unexpected or mis-shaped parameter at
        once, or if the layout is not ``"edifice"``.
    """
    if not isinstance(config, EfficientViTConfig):
        raise ValueError(f"config must be an EfficientViTConfig, got {type(config).__name__}")
    if config.layout != "edifice":
        raise ValueError(
            f"from_axon_params needs layout='edifice' (Edifice's own computation), "
            f"got layout={config.layout!r}"
        )
    if set(params) == {"params"}:
        params = params["params"]
    expected = axon_layers(config)
    problems: list[str] = []
    out: dict[str, dict[str, jax.Array]] = {}
    for name in sorted(set(params) - set(expected)):
        problems.append(f"unexpected layer {name!r}")
    for name, shapes in expected.items():
        if name not in params:
            problems.append(f"missing layer {name!r} (expects {sorted(shapes)})")
            continue
        layer = _convert_layer(name, params[name], shapes, config.param_dtype, problems)
        if layer is not None:
            out[name] = layer
    if problems:
        raise ValueError(
            f"from_axon_params: {len(problems)} problem(s) with the Axon parameters:\n  "
            + "\n  ".join(problems)
        )
    return {"params": out}
