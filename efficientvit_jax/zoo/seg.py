"""Semantic segmentation with an MIT EfficientViT backbone (the MIT repository's ``SegHead``).

The head of mit-han-lab/efficientvit (``efficientvit/models/efficientvit/seg.py``):
the stage-2, -3 and -4 feature maps (strides 8, 16, 32) are each projected by a
1x1 conv + BatchNorm to ``head_width`` channels, upsampled to stride 8 and
summed; ``head_depth`` residual MBConv (or FusedMBConv) blocks follow, then an
optional 1x1 conv + BN + act widening by ``final_expand``, and a 1x1 classifier
conv with bias. The stride-8 logits are resized (bilinear) to the input size,
which the MIT repository does outside the model, at evaluation time.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax.zoo.mit import (
    TORCH_KERNEL_INIT,
    ConvNormAct,
    EfficientViTMIT,
    MITConfig,
    Residual,
)

# The MIT repository's heads (efficientvit_seg_{b0..l2}); ``EfficientViTSeg(cfg, **SEG_HEADS[k])``.
SEG_HEADS: dict[tuple[str, str], dict[str, Any]] = {
    ("efficientvit_b0", "cityscapes"): dict(
        num_classes=19, head_width=32, head_depth=1, final_expand=4
    ),
    ("efficientvit_b1", "cityscapes"): dict(
        num_classes=19, head_width=64, head_depth=3, final_expand=4
    ),
    ("efficientvit_b1", "ade20k"): dict(num_classes=150, head_width=64, head_depth=3),
    ("efficientvit_b2", "cityscapes"): dict(
        num_classes=19, head_width=96, head_depth=3, final_expand=4
    ),
    ("efficientvit_b2", "ade20k"): dict(num_classes=150, head_width=96, head_depth=3),
    ("efficientvit_b3", "cityscapes"): dict(
        num_classes=19, head_width=128, head_depth=3, final_expand=4
    ),
    ("efficientvit_b3", "ade20k"): dict(num_classes=150, head_width=128, head_depth=3),
    ("efficientvit_l1", "cityscapes"): dict(
        num_classes=19, head_width=256, head_depth=3, expand_ratio=1, middle_op="fused"
    ),
    ("efficientvit_l1", "ade20k"): dict(
        num_classes=150, head_width=128, head_depth=3, middle_op="fused", final_expand=8
    ),
    ("efficientvit_l2", "cityscapes"): dict(
        num_classes=19, head_width=256, head_depth=5, expand_ratio=1, middle_op="fused"
    ),
    ("efficientvit_l2", "ade20k"): dict(
        num_classes=150, head_width=128, head_depth=3, middle_op="fused", final_expand=8
    ),
}


def _resize(x: jax.Array, height: int, width: int, method: str) -> jax.Array:
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method=method)


class SegHead(nn.Module):
    """The MIT ``SegHead`` on the stride-8/16/32 maps; returns stride-8 logits (NHWC).

    Submodules: ``inputs_{s}`` for s in 8, 16, 32 (1x1 conv + BN), ``middle_{j}``
    (residual MBConv/FusedMBConv), ``final_expand`` (optional), ``classifier``.
    """

    num_classes: int
    head_width: int
    head_depth: int
    expand_ratio: float
    middle_op: Literal["mbconv", "fused"]
    final_expand: float | None
    dropout: float
    upsample_method: str
    config: MITConfig

    @nn.compact
    def __call__(self, feats: list[jax.Array], *, train: bool = False) -> jax.Array:
        cfg = self.config
        h8, w8 = feats[0].shape[1:3]
        x = None
        for f, stride in zip(feats, (8, 16, 32), strict=True):
            y = ConvNormAct(self.head_width, 1, config=cfg, name=f"inputs_{stride}")(f, train=train)
            y = _resize(y, h8, w8, self.upsample_method)
            x = y if x is None else x + y  # the DAGBlock's "add" merge
        for j in range(self.head_depth):
            # MIT's seg MBConv: BatchNorm after all convs, no biases (fewer_norm=False)
            x = Residual(self.middle_op, self.expand_ratio, False, cfg, name=f"middle_{j}")(
                x, train=train
            )
        if self.final_expand is not None:
            x = ConvNormAct(
                round(self.head_width * self.final_expand),
                1,
                act=cfg.act,
                config=cfg,
                name="final_expand",
            )(x, train=train)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=TORCH_KERNEL_INIT,
            name="classifier",
        )(x)


class EfficientViTSeg(nn.Module):
    """EfficientViT (MIT) backbone + MIT ``SegHead``; logits ``[B, H, W, num_classes]``.

    Attributes:
      backbone_config: the backbone's ``MITConfig`` (its ``data_format``, dtype,
        activation and norm epsilon are used by the head too).
      num_classes: segmentation classes.
      head_width, head_depth, expand_ratio, middle_op, final_expand, dropout:
        the MIT ``SegHead`` options (see ``SEG_HEADS`` for the published ones).
      upsample_method: ``jax.image.resize`` method inside the head. The MIT
        ``UpSampleLayer`` default is bicubic (PyTorch's cubic uses a=-0.75,
        JAX's a=-0.5, so a converted head would differ slightly there).
      output_method: resize of the stride-8 logits to the input size
        (``"linear"`` = PyTorch bilinear with ``align_corners=False``).
    """

    backbone_config: MITConfig
    num_classes: int
    head_width: int = 64
    head_depth: int = 3
    expand_ratio: float = 4
    middle_op: Literal["mbconv", "fused"] = "mbconv"
    final_expand: float | None = None
    dropout: float = 0.0
    upsample_method: str = "cubic"
    output_method: str = "linear"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Per-pixel logits for images in ``backbone_config.data_format`` (H, W divisible by 32)."""
        cfg = self.backbone_config
        h, w = x.shape[2:4] if cfg.data_format == "NCHW" else x.shape[1:3]
        feats = EfficientViTMIT(cfg, name="backbone")(x, train=train, features=True)
        logits = SegHead(
            self.num_classes,
            self.head_width,
            self.head_depth,
            self.expand_ratio,
            self.middle_op,
            self.final_expand,
            self.dropout,
            self.upsample_method,
            cfg,
            name="head",
        )(feats[1:], train=train)
        return _resize(logits, h, w, self.output_method).astype(jnp.dtype(cfg.dtype))
