"""The MIT EfficientViT family (Cai et al., ICCV 2023, arXiv 2205.14756), as timm 1.0 defines it.

B0-B3 and L1-L3: a convolutional stem, two convolutional stages (MBConv or
FusedMBConv), two stages of EfficientViT blocks (multi-scale ReLU linear
attention ``LiteMLA`` followed by an MBConv), and a classifier head
(1x1 conv, average pool, Linear, LayerNorm, activation, Linear).

Module and parameter names follow timm's state-dict names (``stem/in_conv/conv``,
``stages_2/blocks_1/context_module/qkv/conv``, ...) so that ``mit_from_timm`` is a
short table of key patterns. Every block is a named submodule, so it can be
wrapped in ``nn.remat`` later.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax import layers
from efficientvit_jax.attention import DEFAULT_CHUNK, linear_attention
from efficientvit_jax.ops import DWConvImpl
from efficientvit_jax.zoo.common import TorchBatchNorm
from efficientvit_jax.zoo.convert import ConversionReport, conv_kernel, linear_kernel
from efficientvit_jax.zoo.registry import ModelEntry, register

ActName = Literal["hardswish", "gelu_tanh", "gelu", "relu", "relu6"]
StageKind = Literal["mbconv", "fused", "attention"]

# Each looks jax.nn up when called, not at import: exporters (jax2onnx) patch jax.nn's functions
# while they trace, and a captured reference would bypass them (HardSwish would become five
# elementwise nodes, a third of the exported B0's time in onnxruntime).
_ACTS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "hardswish": lambda x: jax.nn.hard_swish(x),
    # timm's GELUTanh (the L models) is the tanh approximation ...
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    # ... and nn.GELU the exact erf form (Flax's default is tanh, hence explicit).
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": lambda x: jax.nn.relu(x),
    "relu6": lambda x: jax.nn.relu6(x),
}


# PyTorch's default conv/Linear init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)), what
# timm's EfficientViT uses (it has no init of its own), so training from scratch starts alike.
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class MITConfig:
    """Architecture of one MIT EfficientViT variant (defaults: timm's ``efficientvit_b0``).

    Attributes:
      widths: channels of the stem and of the four stages.
      depths: timm's depths: stem residual blocks, then one count per stage.
        For a convolutional stage of a B model the count includes the
        downsampling block (``downsample_in_depth=True``); for L models and for
        attention stages it does not.
      head_dim: channels per head of LiteMLA.
      head_widths: the classifier head's 1x1-conv width and hidden Linear width.
      stem_block: ``"dsconv"`` (B: depthwise 3x3 + pointwise) or ``"conv"``
        (L: two full 3x3 convs) for the stem's residual blocks.
      stage_kinds: per stage, ``"mbconv"``, ``"fused"`` (FusedMBConv) or
        ``"attention"`` (EfficientViT blocks). The downsampling block of a
        stage is a FusedMBConv for ``"fused"`` stages, an MBConv otherwise.
      fewer_norm: per stage, timm's ``fewer_norm``: the blocks' expansion
        convs carry a bias instead of BatchNorm.
      down_expand: per stage, expand ratio of the downsampling block.
      block_expand: per stage, expand ratio of the other blocks (the MBConv
        inside an EfficientViT block for attention stages).
      downsample_in_depth: whether ``depths`` of convolutional stages count the
        downsampling block (timm's B models) or not (L models).
      act: activation everywhere (B: hardswish, L: tanh-GELU, as timm).
      norm_eps: epsilon of every BatchNorm and of the head's LayerNorm.
      attn_scales: kernel sizes of LiteMLA's multi-scale aggregation.
      attn_eps: LiteMLA's normaliser epsilon (timm: 1e-5).
      num_classes: classifier outputs; 0 returns the head's hidden features.
      drop_rate: dropout before the last Linear (needs a ``"dropout"`` rng in training).
      in_chans: input channels.
      data_format: layout of the input images, ``"NCHW"`` (timm's) or ``"NHWC"``.
      dtype: computation dtype; param_dtype: parameter dtype.
      dwconv_impl: depthwise-conv kernel (``ops.depthwise_conv2d``).
    """

    widths: tuple[int, ...] = (8, 16, 32, 64, 128)
    depths: tuple[int, ...] = (1, 2, 2, 2, 2)
    head_dim: int = 16
    head_widths: tuple[int, int] = (1024, 1280)
    stem_block: Literal["dsconv", "conv"] = "dsconv"
    stage_kinds: tuple[StageKind, ...] = ("mbconv", "mbconv", "attention", "attention")
    fewer_norm: tuple[bool, ...] = (False, False, True, True)
    down_expand: tuple[float, ...] = (4, 4, 4, 4)
    block_expand: tuple[float, ...] = (4, 4, 4, 4)
    downsample_in_depth: bool = True
    act: ActName = "hardswish"
    norm_eps: float = 1e-5
    attn_scales: tuple[int, ...] = (5,)
    attn_eps: float = 1e-5
    num_classes: int = 1000
    drop_rate: float = 0.0
    in_chans: int = 3
    data_format: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dwconv_impl: DWConvImpl = "auto"

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "head_widths", "stage_kinds", "fewer_norm"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("down_expand", "block_expand", "attn_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.widths) - 1
        if len(self.widths) != 5 or len(self.depths) != 5:
            raise ValueError(
                f"widths and depths need 5 entries (stem + 4 stages), got {self.widths}, {self.depths}"
            )
        for name in ("stage_kinds", "fewer_norm", "down_expand", "block_expand"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs {n} entries, got {getattr(self, name)}")
        if self.act not in _ACTS:
            raise ValueError(f"act must be one of {sorted(_ACTS)}, got {self.act!r}")
        if self.data_format not in ("NCHW", "NHWC"):
            raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {self.data_format!r}")
        for w, kind in zip(self.widths[1:], self.stage_kinds, strict=True):
            if kind not in ("mbconv", "fused", "attention"):
                raise ValueError(f"stage kind must be mbconv, fused or attention, got {kind!r}")
            if kind == "attention" and w % self.head_dim:
                raise ValueError(f"stage width {w} is not divisible by head_dim {self.head_dim}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")

    @property
    def feature_widths(self) -> tuple[int, ...]:
        """Channels of the four per-stage feature maps (strides 4, 8, 16, 32)."""
        return self.widths[1:]


def _torch_padding(kernel_size: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    # timm's get_padding: symmetric ((s - 1) + (k - 1)) // 2 on both sides; XLA's
    # "SAME" would put the odd extra row of a strided conv at the bottom instead.
    p = ((stride - 1) + (kernel_size - 1)) // 2
    return ((p, p), (p, p))


# timm's depthwise convs: PyTorch's default init, no bias unless asked.
DepthwiseConv = functools.partial(
    layers.DepthwiseConv, use_bias=False, kernel_init=TORCH_KERNEL_INIT
)


class GroupedPointwise(nn.Module):
    """1x1 conv with ``groups`` groups and no bias; ``kernel`` ``[1, 1, C/groups, C]``.

    The kernel has ``nn.Conv(feature_group_count=groups)``'s layout; the conv is
    one batched matmul over the groups (a grouped XLA conv is slow on CPU). The
    result is group-major, ``[groups, tokens, C/groups]`` for an input
    ``[..., C]`` (tokens = the product of the leading axes): the layout a batched
    matmul produces and the one attention over the groups wants, so LiteMLA
    transposes once on the way in and never back (half its forward time on CPU
    at B1's shapes, against a channels-last result).
    """

    groups: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        g = self.groups
        kernel = self.param("kernel", TORCH_KERNEL_INIT, (1, 1, c // g, c), self.param_dtype)
        # output channel o belongs to group o // (c/g), as in PyTorch
        w = kernel.astype(self.dtype).reshape(c // g, g, c // g).transpose(1, 0, 2)
        return group_major(x.astype(self.dtype), g) @ w  # a batched MatMul in ONNX (not Einsum)


def group_major(x: jax.Array, groups: int) -> jax.Array:
    """``[..., C]`` -> ``[groups, tokens, C/groups]``: channel ``j*(C/groups) + i`` is ``[j, :, i]``."""
    c = x.shape[-1]
    return x.reshape(-1, groups, c // groups).transpose(1, 0, 2)


class ConvNormAct(nn.Module):
    """timm's ConvNormAct: conv (``conv``), optional BatchNorm (``norm``), optional activation."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    depthwise: bool = False
    use_bias: bool = False
    use_norm: bool = True
    act: str | None = None
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        k = self.kernel_size
        if self.depthwise:
            x = DepthwiseConv(
                k,
                self.stride,
                use_bias=self.use_bias,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                impl=cfg.dwconv_impl,
                name="conv",
            )(x)
        else:
            x = layers.Conv2d(
                self.features,
                k,
                self.stride,
                padding=_torch_padding(k, self.stride),
                use_bias=self.use_bias,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=TORCH_KERNEL_INIT,
                name="conv",
            )(x)
        if self.use_norm:
            x = TorchBatchNorm(
                use_running_average=not train,
                momentum=0.9,
                epsilon=cfg.norm_eps,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                name="norm",
            )(x)
        if self.act is not None:
            x = _ACTS[self.act](x)
        return x


def _flags(fewer_norm: bool, n: int) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """timm's ``use_bias`` / norm tuples: with ``fewer_norm`` only the last conv is normed."""
    if fewer_norm:
        return (True,) * (n - 1) + (False,), (False,) * (n - 1) + (True,)
    return (False,) * n, (True,) * n


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3 (stride), 1x1 project (no act)."""

    features: int
    expand_ratio: float
    stride: int = 1
    fewer_norm: bool = False
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        mid = round(x.shape[-1] * self.expand_ratio)
        bias, norm = _flags(self.fewer_norm, 3)
        act = self.config.act
        x = ConvNormAct(mid, 1, 1, False, bias[0], norm[0], act, self.config, name="inverted_conv")(
            x, train=train
        )
        x = ConvNormAct(
            mid, 3, self.stride, True, bias[1], norm[1], act, self.config, name="depth_conv"
        )(x, train=train)
        return ConvNormAct(
            self.features, 1, 1, False, bias[2], norm[2], None, self.config, name="point_conv"
        )(x, train=train)


class FusedMBConv(nn.Module):
    """Full 3x3 expand conv (stride) then 1x1 project (no act)."""

    features: int
    expand_ratio: float
    stride: int = 1
    fewer_norm: bool = False
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        mid = round(x.shape[-1] * self.expand_ratio)
        bias, norm = _flags(self.fewer_norm, 2)
        x = ConvNormAct(
            mid,
            3,
            self.stride,
            False,
            bias[0],
            norm[0],
            self.config.act,
            self.config,
            name="spatial_conv",
        )(x, train=train)
        return ConvNormAct(
            self.features, 1, 1, False, bias[1], norm[1], None, self.config, name="point_conv"
        )(x, train=train)


class DSConv(nn.Module):
    """Depthwise-separable conv of the B stems: depthwise 3x3 + act, pointwise (no act)."""

    features: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = ConvNormAct(
            x.shape[-1], 3, 1, True, False, True, self.config.act, self.config, name="depth_conv"
        )(x, train=train)
        return ConvNormAct(
            self.features, 1, 1, False, False, True, None, self.config, name="point_conv"
        )(x, train=train)


class ConvBlock(nn.Module):
    """Two full 3x3 convs of the L stems (act after the first only)."""

    features: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = ConvNormAct(
            x.shape[-1], 3, 1, False, False, True, self.config.act, self.config, name="conv1"
        )(x, train=train)
        return ConvNormAct(
            self.features, 3, 1, False, False, True, None, self.config, name="conv2"
        )(x, train=train)


def relu_linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    eps: float = 1e-5,
    chunk_size: int | None = DEFAULT_CHUNK,
) -> jax.Array:
    """LiteMLA's attention: ``linear_attention(..., feature_map="relu", eps=eps)``.

    ``relu(q) (sum_m relu(k_m) v_m^T) / (relu(q) . sum_m relu(k_m) + eps)``, tokens
    on axis -2, sums and division in float32, result in ``v``'s dtype. Kept for
    callers of the name; the leading axes broadcast against each other, as they
    did before the core's function (which wants one rank) took this over.
    """
    lead = jnp.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q, k, v = (jnp.broadcast_to(a, (*lead, *a.shape[-2:])) for a in (q, k, v))
    return linear_attention(q, k, v, feature_map="relu", eps=eps, chunk_size=chunk_size)


class Aggregation(nn.Module):
    """One scale of LiteMLA's aggregation: depthwise ``k x k`` (``dw``), grouped 1x1 (``pw``).

    Takes an NHWC map, returns it group-major (``GroupedPointwise``).
    """

    kernel_size: int
    groups: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = DepthwiseConv(
            self.kernel_size,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            impl=cfg.dwconv_impl,
            name="dw",
        )(x)
        return GroupedPointwise(self.groups, cfg.dtype, cfg.param_dtype, name="pw")(x)


class LiteMLA(nn.Module):
    """Multi-scale ReLU linear attention on an NHWC map (timm's ``LiteMLA``).

    ``qkv`` (1x1, no norm) makes 3 * heads * head_dim channels; each scale's
    ``aggreg_i`` adds a spatially aggregated copy; every group of 3 * head_dim
    channels (heads times scales groups) is one head's q, k, v; the outputs are
    concatenated and projected by ``proj`` (1x1 + BatchNorm).
    """

    features: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        b, h, w, c = x.shape
        d = cfg.head_dim
        heads = c // d
        qkv = ConvNormAct(3 * heads * d, 1, use_norm=False, config=cfg, name="qkv")(x, train=train)
        # Every scale group-major, [3 * heads, b*h*w, d]; stacked, group 3j + t of a scale is
        # t = q, k, v of one head, heads of the first scale first (timm's channel order).
        multi = [group_major(qkv, 3 * heads)] + [
            Aggregation(s, 3 * heads, cfg, name=f"aggreg_{i}")(qkv)
            for i, s in enumerate(cfg.attn_scales)
        ]
        t = jnp.concatenate(multi, axis=0).reshape(-1, 3, b, h * w, d)
        # tokens of one image on axis -2, as linear_attention wants: no transpose in, and
        # its chunking applies per image at large (segmentation) resolutions
        q, k, v = t[:, 0], t[:, 1], t[:, 2]
        out = linear_attention(q, k, v, feature_map="relu", eps=cfg.attn_eps)  # [G, b, n, d]
        out = out.transpose(1, 2, 0, 3).reshape(b, h, w, -1)  # channel = group * d + i
        return ConvNormAct(self.features, 1, config=cfg, name="proj")(out, train=train)


class EfficientViTBlock(nn.Module):
    """``x + LiteMLA(x)`` (``context_module``), then ``x + MBConv(x)`` (``local_module``)."""

    expand_ratio: float
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        x = x + LiteMLA(c, self.config, name="context_module")(x, train=train)
        local = MBConv(c, self.expand_ratio, 1, True, self.config, name="local_module")
        return x + local(x, train=train)


class Residual(nn.Module):
    """``x + main(x)`` for a stride-1 local block (``main``: MBConv, FusedMBConv, DSConv, ConvBlock)."""

    kind: Literal["mbconv", "fused", "dsconv", "conv"]
    expand_ratio: float = 1.0
    fewer_norm: bool = False
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        return x + _local_block(self.kind, c, self.expand_ratio, 1, self.fewer_norm, self.config)(
            x, train=train
        )


def _local_block(
    kind: str, features: int, expand: float, stride: int, fewer_norm: bool, cfg: MITConfig
) -> nn.Module:
    if kind == "mbconv":
        return MBConv(features, expand, stride, fewer_norm, cfg, name="main")
    if kind == "fused":
        return FusedMBConv(features, expand, stride, fewer_norm, cfg, name="main")
    if kind == "dsconv":
        return DSConv(features, cfg, name="main")
    return ConvBlock(features, cfg, name="main")


class Downsample(nn.Module):
    """A stage's first block: stride 2, a new width, no shortcut (timm's ``ResidualBlock(..., None)``)."""

    kind: Literal["mbconv", "fused"]
    expand_ratio: float
    fewer_norm: bool
    features: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        block = _local_block(
            self.kind, self.features, self.expand_ratio, 2, self.fewer_norm, self.config
        )
        return block(x, train=train)


class Stem(nn.Module):
    """3x3 stride-2 conv (``in_conv``) then ``depths[0]`` residual DSConv/ConvBlocks (``res{j}``)."""

    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = ConvNormAct(cfg.widths[0], 3, 2, act=cfg.act, config=cfg, name="in_conv")(
            x, train=train
        )
        for j in range(cfg.depths[0]):
            x = Residual(cfg.stem_block, config=cfg, name=f"res{j}")(x, train=train)
        return x


class Stage(nn.Module):
    """A stride-2 downsampling block (no shortcut) then the stage's residual blocks (``blocks_{j}``)."""

    index: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg, i = self.config, self.index
        width, depth, kind = cfg.widths[i + 1], cfg.depths[i + 1], cfg.stage_kinds[i]
        fewer = cfg.fewer_norm[i]

        down_kind = "fused" if kind == "fused" else "mbconv"
        x = Downsample(down_kind, cfg.down_expand[i], fewer, width, cfg, name="blocks_0")(
            x, train=train
        )
        if kind == "attention":
            for j in range(depth):
                x = EfficientViTBlock(cfg.block_expand[i], cfg, name=f"blocks_{j + 1}")(
                    x, train=train
                )
        else:
            n = depth - 1 if cfg.downsample_in_depth else depth
            for j in range(n):
                x = Residual(kind, cfg.block_expand[i], fewer, cfg, name=f"blocks_{j + 1}")(
                    x, train=train
                )
        return x


class ClassifierHead(nn.Module):
    """1x1 conv + BN + act (``in_conv``), mean pool, Linear (``pre_fc``), LayerNorm, act, dropout, Linear (``fc``)."""

    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        act = _ACTS[cfg.act]
        x = ConvNormAct(cfg.head_widths[0], 1, act=cfg.act, config=cfg, name="in_conv")(
            x, train=train
        )
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(cfg.dtype)
        x = nn.Dense(
            cfg.head_widths[1],
            use_bias=False,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=TORCH_KERNEL_INIT,
            name="pre_fc",
        )(x)
        x = nn.LayerNorm(
            epsilon=cfg.norm_eps,
            use_fast_variance=False,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            name="norm",
        )(x)
        x = act(x)
        if cfg.num_classes == 0:
            return x
        x = nn.Dropout(cfg.drop_rate, deterministic=not train)(x)
        return nn.Dense(
            cfg.num_classes,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=TORCH_KERNEL_INIT,
            name="fc",
        )(x)


def _check_images(cfg: MITConfig, shape: tuple[int, ...]) -> None:
    if len(shape) != 4:
        raise ValueError(f"EfficientViTMIT expects rank-4 images ({cfg.data_format}), got {shape}")
    c, h, w = (
        (shape[1], shape[2], shape[3]) if cfg.data_format == "NCHW" else shape[3:] + shape[1:3]
    )
    if c != cfg.in_chans:
        raise ValueError(
            f"EfficientViTMIT expects {cfg.in_chans} channels ({cfg.data_format}), got shape {shape}"
        )
    if h % 32 or w % 32:
        raise ValueError(f"image height and width must be divisible by 32, got shape {shape}")


class EfficientViTMIT(nn.Module):
    """MIT EfficientViT (B0-B3, L1-L3) classifier, numerically equal to timm's.

    Submodules: ``stem``, ``stages_0`` .. ``stages_3``, ``head``.
    """

    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features: bool = False
    ) -> jax.Array | list[jax.Array]:
        """Logits ``[B, num_classes]`` or, with ``features=True``, the four stage outputs.

        Args:
          x: images in ``config.data_format``; height and width divisible by 32.
          train: batch statistics in BatchNorm (and update ``batch_stats``), dropout on.
          features: return ``[B, H/s, W/s, C_s]`` (NHWC) for strides 4, 8, 16, 32,
            the stages timm's ``forward_intermediates`` / ``features_only`` report.
            The same maps are sown as ``intermediates/stage_{i}`` on every call.
        """
        cfg = self.config
        _check_images(cfg, x.shape)
        if cfg.data_format == "NCHW":
            x = jnp.transpose(x, (0, 2, 3, 1))
        x = x.astype(cfg.dtype)
        x = Stem(cfg, name="stem")(x, train=train)
        feats = []
        for i in range(len(cfg.stage_kinds)):
            x = Stage(i, cfg, name=f"stages_{i}")(x, train=train)
            # sown so that one forward can give both logits and features
            # (``mutable=["intermediates"]``); a no-op otherwise
            self.sow("intermediates", f"stage_{i}", x)
            feats.append(x)
        if features:
            return feats
        return ClassifierHead(cfg, name="head")(x, train=train)


# --------------------------------------------------------------------------- conversion

# Flax path (``/``-joined) -> timm key prefix; applied in order, first match per rule.
_KEY_RULES: tuple[tuple[str, str], ...] = (
    (r"^stem/res(\d+)/main/", r"stem.res\1.main."),
    (
        r"^stages_(\d+)/blocks_(\d+)/(context_module|local_module)/",
        r"stages.\1.blocks.\2.\3.main.",
    ),
    (r"^stages_(\d+)/blocks_(\d+)/main/", r"stages.\1.blocks.\2.main."),
    (r"aggreg_(\d+)/dw/", r"aggreg.\1.0."),
    (r"aggreg_(\d+)/pw/", r"aggreg.\1.1."),
    (r"^head/pre_fc/", "head.classifier.0."),
    (r"^head/norm/", "head.classifier.1."),
    (r"^head/fc/", "head.classifier.4."),
)
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def timm_key(flax_path: str) -> str:
    """The timm state-dict key of a Flax variable path such as ``stem/in_conv/norm/scale``."""
    *mods, leaf = flax_path.split("/")
    s = "/".join(mods) + "/"
    for pat, rep in _KEY_RULES:
        s = re.sub(pat, rep, s, count=1)
    return s.replace("/", ".") + _LEAF_NAMES.get(leaf, leaf)


def _torch_to_flax(leaf: str, ndim: int) -> Callable[[np.ndarray], np.ndarray] | None:
    if leaf == "kernel":
        return conv_kernel if ndim == 4 else linear_kernel
    return None


@functools.lru_cache(maxsize=16)
def variable_shapes(config: MITConfig) -> dict[str, Any]:
    """Shapes of the model's variables (``jax.eval_shape``: nothing is computed).

    Cached per config: tracing a large variant takes seconds and every
    conversion needs it. The result is a tree of ``jax.ShapeDtypeStruct``.
    """
    size = (
        (1, config.in_chans, 32, 32)
        if config.data_format == "NCHW"
        else (1, 32, 32, config.in_chans)
    )
    model = EfficientViTMIT(config)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(size, config.dtype)))


def mit_from_timm(state_dict: Mapping[str, Any], config: MITConfig) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats"}`` from a timm EfficientViT (MIT) state dict.

    Every Flax variable is looked up by ``timm_key`` and transformed
    (conv kernels ``[O, I, kh, kw] -> [kh, kw, I, O]``, Linear transposed).
    Missing, unexpected and mis-shaped tensors are all collected and raised in
    one ``ValueError`` (a checkpoint of another variant names its tensors).
    """
    from efficientvit_jax.zoo.convert import to_numpy

    sd = {k: to_numpy(v) for k, v in state_dict.items()}
    report = ConversionReport(sd, "timm EfficientViT (MIT) checkpoint")
    shapes = variable_shapes(config)
    out: dict[str, Any] = {}
    for col, dtype in (("params", config.param_dtype), ("batch_stats", np.float32)):
        tree: dict[str, Any] = {}
        for path, sds in jax.tree_util.tree_flatten_with_path(shapes.get(col, {}))[0]:
            names = [p.key for p in path]
            leaf = names[-1]
            key = timm_key("/".join(names))
            arr = report.take(key, tuple(sds.shape), _torch_to_flax(leaf, len(sds.shape)), dtype)
            node = tree
            for n in names[:-1]:
                node = node.setdefault(n, {})
            node[leaf] = jnp.asarray(arr)
        out[col] = tree
    report.finish()
    return out


# --------------------------------------------------------------------------- variants


def _b(
    widths: tuple[int, ...], depths: tuple[int, ...], head_dim: int, head_widths: tuple[int, int]
) -> MITConfig:
    return MITConfig(widths=widths, depths=depths, head_dim=head_dim, head_widths=head_widths)


def _l(widths: tuple[int, ...], depths: tuple[int, ...], head_widths: tuple[int, int]) -> MITConfig:
    # timm's EfficientVitLarge: ConvBlock stem, FusedMBConv stages 0-1 (expand 16 down, 4 in
    # blocks), fewer-norm MBConv stage 2 (16 / 4), attention stage 3 (24 down, 6 in blocks),
    # tanh-GELU and eps 1e-7 for every norm.
    return MITConfig(
        widths=widths,
        depths=depths,
        head_dim=32,
        head_widths=head_widths,
        stem_block="conv",
        stage_kinds=("fused", "fused", "mbconv", "attention"),
        fewer_norm=(False, False, True, True),
        down_expand=(16, 16, 16, 24),
        block_expand=(4, 4, 4, 6),
        downsample_in_depth=False,
        act="gelu_tanh",
        norm_eps=1e-7,
    )


MIT_CONFIGS: dict[str, MITConfig] = {
    "efficientvit_b0": _b((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16, (1024, 1280)),
    "efficientvit_b1": _b((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16, (1536, 1600)),
    "efficientvit_b2": _b((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32, (2304, 2560)),
    "efficientvit_b3": _b((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32, (2304, 2560)),
    "efficientvit_l1": _l((32, 64, 128, 256, 512), (1, 1, 1, 6, 6), (3072, 3200)),
    "efficientvit_l2": _l((32, 64, 128, 256, 512), (1, 2, 2, 8, 8), (3072, 3200)),
    "efficientvit_l3": _l((64, 128, 256, 512, 1024), (1, 2, 2, 8, 8), (6144, 6400)),
}

# ImageNet-1k top-1 of the MIT checkpoints that timm's default (r224) weights are ported from,
# as printed in mit-han-lab/efficientvit assets/eval_efficientvit_cls_model.sh (B1 at crop 0.95,
# B2/B3/L* at crop 1.0; timm's b2/b3 r224 configs default to crop_pct 0.95). No sourced
# number was found for B0.
_MIT_EVAL = "mit-han-lab/efficientvit assets/eval_efficientvit_cls_model.sh ({}-r224, 224px)"
_TOP1: dict[str, float | None] = {
    "efficientvit_b0": None,
    "efficientvit_b1": 79.390,
    "efficientvit_b2": 82.100,
    "efficientvit_b3": 83.468,
    "efficientvit_l1": 84.484,
    "efficientvit_l2": 85.050,
    "efficientvit_l3": 85.814,
}

for _name, _cfg in MIT_CONFIGS.items():
    register(
        ModelEntry(
            name=_name,
            family="mit",
            config=_cfg,
            module=EfficientViTMIT,
            convert=mit_from_timm,
            top1=_TOP1[_name],
            top1_source=None if _TOP1[_name] is None else _MIT_EVAL.format(_name.replace("_", "-")),
        )
    )
