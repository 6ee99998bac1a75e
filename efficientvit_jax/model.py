"""The EfficientViT module, ``build`` and call-time input checks."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax._linen import Dense
from efficientvit_jax.config import EfficientViTConfig, make_config
from efficientvit_jax.edifice import edifice_forward
from efficientvit_jax.layers import CascadedBlock, LayerNorm, PatchMerging, maybe_remat
from efficientvit_jax.ops import patchify


def check_images(config: EfficientViTConfig, shape: tuple[int, ...]) -> None:
    """Raise ``ValueError`` (expected vs given shape) unless ``shape`` is a valid image batch."""
    p = config.patch_size
    ch = str(config.in_channels)
    expect = ("B", ch, "H", "W") if config.data_format == "NCHW" else ("B", "H", "W", ch)
    rule = f"{config.data_format} images {expect} with H and W divisible by patch_size={p}"
    if len(shape) != 4:
        raise ValueError(
            f"EfficientViT: expected {rule}; given shape {tuple(shape)} (rank {len(shape)})"
        )
    if config.data_format == "NCHW":
        _, c, h, w = shape
    else:
        _, h, w, c = shape
    if c != config.in_channels:
        raise ValueError(
            f"EfficientViT: expected {rule}, i.e. {config.in_channels} channels; given shape "
            f"{tuple(shape)} with {c} channels"
        )
    if h % p or w % p or h == 0 or w == 0:
        raise ValueError(
            f"EfficientViT: expected {rule}; given shape {tuple(shape)} with H={h}, W={w}"
        )


class EfficientViT(nn.Module):
    """EfficientViT with O(n) linear attention, built from an ``EfficientViTConfig``.

    ``__call__(images, *, train=False)`` takes ``[B, C, H, W]`` (NCHW, the
    default) or ``[B, H, W, C]`` images, any H, W divisible by ``patch_size``,
    and returns ``[B, num_classes]`` logits, or ``[B, dims[-1]]`` pooled
    features without ``num_classes``. ``train=True`` enables stochastic depth,
    which draws from the ``'dropout'`` rng stream.

    ``features=True`` returns the list of per-stage grids instead,
    ``[B, h_i, w_i, dims[i]]`` (NHWC; the cascaded layout halves the grid at
    every stage, Edifice's keeps it), for dense prediction.

    With ``mutable=['intermediates']`` the per-stage grids are sown as
    ``stage_{i}`` (``[B, h_i, w_i, dims[i]]``) and, in the cascaded layout,
    each attention layer's concatenated head outputs as ``heads``.
    """

    config: EfficientViTConfig

    @nn.compact
    def __call__(
        self, images: jax.Array, *, train: bool = False, features: bool = False
    ) -> jax.Array | list[jax.Array]:
        cfg = self.config
        check_images(cfg, images.shape)
        images = jnp.asarray(images, cfg.dtype)
        grid = patchify(images, cfg.patch_size, cfg.data_format)
        if cfg.layout == "edifice":
            out, stages = edifice_forward(self, cfg, grid)
        else:
            out, stages = self._cascaded(grid, train)
        # The head runs either way so that init creates every parameter; under
        # jit XLA drops it when only the features are used.
        return stages if features else out

    def _cascaded(self, x: jax.Array, train: bool) -> tuple[jax.Array, list[jax.Array]]:
        cfg = self.config
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        x = Dense(cfg.dims[0], name="patch_embed", **kw)(x)
        rates = cfg.drop_path_rates()
        block = maybe_remat(CascadedBlock, cfg.remat)
        stages = []
        for i, (depth, d, heads) in enumerate(
            zip(cfg.depths, cfg.dims, cfg.num_heads, strict=True)
        ):
            if i > 0:
                x = PatchMerging(d, name=f"downsample_{i}", **kw)(x)
            for j in range(depth):
                x = block(
                    heads,
                    cfg.hidden_dim(d),
                    drop_path_rate=rates[i][j],
                    name=f"stage_{i}_block_{j}",
                    **kw,
                )(x, train)
            stages.append(x)
            self.sow("intermediates", f"stage_{i}", x)
        x = LayerNorm(name="final_norm", **kw)(x).mean(axis=(1, 2))
        if cfg.num_classes is not None:
            x = Dense(cfg.num_classes, name="classifier", **kw)(x)
        return x, stages


def build(config: EfficientViTConfig | None = None, **opts: Any) -> EfficientViT:
    """Build an EfficientViT from a config and/or Edifice's builder options.

    ``build(**opts)`` and ``build(EfficientViTConfig(**opts))`` are the same
    model; with both, ``opts`` override the config. Unknown options raise
    ``ValueError`` (Edifice ignores them).
    """
    return EfficientViT(make_config(config, **opts))
