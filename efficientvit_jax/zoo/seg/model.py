"""EfficientViT-Seg (mit-han-lab/efficientvit ``efficientvit/models/efficientvit/seg.py``) in Flax.

An MIT EfficientViT backbone and MIT's ``SegHead``: the stage-2, -3 and -4 feature maps
(strides 8, 16, 32) are each projected by a 1x1 conv + BatchNorm to ``head_width`` channels,
the coarser two upsampled bicubically (PyTorch's kernel) to stride 8, and the three summed;
``head_depth`` residual MBConv (or FusedMBConv) blocks follow, then an optional 1x1 conv + BN +
act widening by ``final_expand``, channel dropout and a 1x1 classifier conv with bias. The
model's output is MIT's: logits at stride 8. MIT's evaluation resizes them to the label's size
outside the model, bicubically: ``resize_logits``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax._linen import Conv
from efficientvit_jax.config import REMAT_OPTIONS
from efficientvit_jax.zoo.mit import (
    TORCH_KERNEL_INIT,
    ConvNormAct,
    EfficientViTMIT,
    MITConfig,
    Residual,
)
from efficientvit_jax.zoo.seg.resize import Method, interpolate

DataFormat = Literal["NCHW", "NHWC"]

# LiteMLA's normaliser epsilon in MIT's code (timm, whose port the backbone configs follow, has
# 1e-5): the seg variants use MIT's.
MIT_ATTN_EPS = 1e-15
_MIT_B0 = MITConfig(attn_eps=MIT_ATTN_EPS)  # frozen: one shared default is safe

# The backbone's strides that feed the head, finest first (MIT: "stage2", "stage3", "stage4").
HEAD_STRIDES = (8, 16, 32)
OUTPUT_STRIDE = 8


@dataclasses.dataclass(frozen=True)
class SegConfig:
    """Architecture of one EfficientViT-Seg variant (MIT's ``SegHead`` on an MIT backbone).

    Attributes:
      backbone: the backbone's ``MITConfig`` (its widths, depths, activation, norm and
        attention epsilons; its layout, dtypes, input channels and classifier are ignored:
        the fields below set them).
      num_classes: segmentation classes (MIT: 19 for Cityscapes, 150 for ADE20K).
      head_width: channels of the head (each input projection and the middle blocks).
      head_depth: residual middle blocks.
      expand_ratio: their expansion ratio.
      middle_op: ``"mbconv"`` (MBConv) or ``"fused"`` (FusedMBConv, MIT's ``"fmbconv"``).
      final_expand: the 1x1 conv + BN + act before the classifier widens to
        ``head_width * final_expand`` channels; ``None``: no such conv.
      dropout: channel dropout (``Dropout2d``) before the classifier (needs a ``"dropout"``
        rng in training).
      image_size: the default square input side where none is given (export, summaries);
        the model takes any height and width divisible by 32.
      in_channels: input channels.
      data_format: layout of the input images and of the output logits, ``"NCHW"`` (MIT's:
        logits ``[B, classes, H/8, W/8]``) or ``"NHWC"`` (``[B, H/8, W/8, classes]``).
      dtype: computation dtype; param_dtype: parameter dtype.
      remat: the backbone's rematerialisation (``MITConfig.remat``): a training crop of
        Cityscapes' size fits on one device.
    """

    SHAPED_FIELDS: ClassVar[tuple[str, ...]] = ("num_classes", "in_channels")

    backbone: MITConfig = _MIT_B0  # with the head fields' defaults: MIT's seg B0 (Cityscapes)
    num_classes: int = 19
    head_width: int = 32
    head_depth: int = 1
    expand_ratio: float = 4
    middle_op: Literal["mbconv", "fused"] = "mbconv"
    final_expand: float | None = 4
    dropout: float = 0.0
    image_size: int = 512
    in_channels: int = 3
    data_format: DataFormat = "NCHW"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: str = "none"

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, MITConfig):
            raise ValueError(f"backbone must be an MITConfig, got {type(self.backbone).__name__}")
        if self.middle_op not in ("mbconv", "fused"):
            raise ValueError(f"middle_op must be 'mbconv' or 'fused', got {self.middle_op!r}")
        if self.data_format not in ("NCHW", "NHWC"):
            raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {self.data_format!r}")
        for name in ("num_classes", "head_width", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}")
        if self.remat not in REMAT_OPTIONS:
            raise ValueError(f"remat must be one of {REMAT_OPTIONS}, got {self.remat!r}")
        if self.head_depth < 0:
            raise ValueError(f"head_depth must be >= 0, got {self.head_depth}")

    @property
    def in_chans(self) -> int:
        """``in_channels`` under timm's name, for code written for the classifiers' configs."""
        return self.in_channels

    @property
    def backbone_config(self) -> MITConfig:
        """The backbone's config with this model's layout, dtypes and input channels."""
        return dataclasses.replace(
            self.backbone,
            data_format=self.data_format,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            in_channels=self.in_channels,
            remat=self.remat,  # validated there
        )


def resize_logits(
    logits: jax.Array,
    size: tuple[int, int],
    *,
    data_format: DataFormat = "NCHW",
    method: Method = "bicubic",
) -> jax.Array:
    """Logits resized to ``size`` = ``(height, width)`` as MIT's evaluation resizes them.

    MIT's ``eval_efficientvit_seg_model.py`` calls ``resize(output, size=mask.shape[-2:])``,
    whose mode defaults to bicubic: PyTorch's ``F.interpolate(..., mode="bicubic",
    align_corners=False)``, which this reproduces (``method="bilinear"`` for the bilinear one).
    ``size`` is any size, typically the label's (the original image's); the argmax over the
    class axis of the result is the prediction MIT scores.

    Args:
      logits: the model's output, ``[B, H, W, C]`` (``data_format="NHWC"``) or ``[B, C, H, W]``.
      size: output height and width.
      data_format: the logits' layout: the model config's ``data_format`` (MIT's NCHW by
        default, as the models).
      method: ``"bicubic"`` (MIT's evaluation) or ``"bilinear"``.
    """
    return interpolate(logits, size, method, data_format=data_format)


class SegHead(nn.Module):
    """MIT's ``SegHead`` on the stride-8/16/32 maps (NHWC); returns stride-8 logits (NHWC).

    Submodules: ``inputs_{s}`` for s in 8, 16, 32 (1x1 conv + BN), ``middle_{j}`` (residual
    MBConv/FusedMBConv), ``final_expand`` (optional), ``classifier``.
    """

    config: SegConfig

    @nn.compact
    def __call__(self, feats: list[jax.Array], *, train: bool = False) -> jax.Array:
        cfg = self.config
        bcfg = cfg.backbone_config
        h8, w8 = feats[0].shape[1:3]
        projected = []
        for f, stride in zip(feats, HEAD_STRIDES, strict=True):
            y = ConvNormAct(cfg.head_width, 1, config=bcfg, name=f"inputs_{stride}")(f, train=train)
            projected.append(interpolate(y, (h8, w8), "bicubic"))
        # MIT's list_sum over (stage4, stage3, stage2): s32 + (s16 + s8), summed in its order
        x = projected[2] + (projected[1] + projected[0])
        for j in range(cfg.head_depth):
            # MIT's head blocks: BatchNorm after every conv, no biases (fewer_norm=False)
            x = Residual(cfg.middle_op, cfg.expand_ratio, False, bcfg, name=f"middle_{j}")(
                x, train=train
            )
        if cfg.final_expand is not None:
            width = round(cfg.head_width * cfg.final_expand)
            x = ConvNormAct(width, 1, act=bcfg.act, config=bcfg, name="final_expand")(
                x, train=train
            )
        # Dropout2d: whole channels of a map (the spatial axes share one draw)
        x = nn.Dropout(cfg.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        return Conv(
            cfg.num_classes,
            (1, 1),
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=TORCH_KERNEL_INIT,
            name="classifier",
        )(x)


class EfficientViTSeg(nn.Module):
    """EfficientViT-Seg: MIT backbone (``backbone``) + MIT ``SegHead`` (``head``).

    Returns MIT's stride-8 logits in ``config.data_format``: ``[B, classes, H/8, W/8]``
    (NCHW, as MIT's model) or ``[B, H/8, W/8, classes]`` (NHWC), for images whose height and
    width are divisible by 32. ``resize_logits`` brings them to any size as MIT's evaluation
    does.
    """

    config: SegConfig = SegConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        feats = EfficientViTMIT(cfg.backbone_config, name="backbone")(x, train=train, features=True)
        logits = SegHead(cfg, name="head")(feats[1:], train=train)
        if cfg.data_format == "NCHW":
            logits = jnp.transpose(logits, (0, 3, 1, 2))
        return logits.astype(jnp.dtype(cfg.dtype))
