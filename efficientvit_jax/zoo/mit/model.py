"""The MIT EfficientViT models (Cai et al., ICCV 2023, arXiv 2205.14756), as timm 1.0 defines them.

B0-B3 and L1-L3: a convolutional stem, two convolutional stages (MBConv or
FusedMBConv), two stages of EfficientViT blocks (multi-scale ReLU linear
attention ``LiteMLA`` followed by an MBConv), and a classifier head
(1x1 conv, average pool, Linear, LayerNorm, activation, Linear). The same modules, with a
fifth stage and other block kinds per stage, make the backbones of MIT's EfficientViT-SAM XL
models (``zoo.sam``).

Module and parameter names follow timm's state-dict names (``stem/in_conv/conv``,
``stages_2/blocks_1/context_module/qkv/conv``, ...) so that the conversion
(``zoo.mit.convert``) is a short table of key patterns. Every block is a named
submodule, so it can be wrapped in ``nn.remat`` later. Every module takes the
whole ``MITConfig`` and ``train`` as a keyword.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax import layers
from efficientvit_jax._linen import Dense, FastParams, LayerNorm
from efficientvit_jax.attention import DEFAULT_CHUNK, linear_attention
from efficientvit_jax.config import REMAT_OPTIONS
from efficientvit_jax.ops import DWConvImpl
from efficientvit_jax.zoo import base
from efficientvit_jax.zoo.base import ACTIVATIONS, TORCH_KERNEL_INIT, ConvBNAct

ActName = Literal["hardswish", "gelu_tanh", "gelu", "relu", "relu6"]
StageKind = Literal["mbconv", "fused", "attention"]


@base.accepts_old_names
@dataclasses.dataclass(frozen=True)
class MITConfig:
    """Architecture of one MIT EfficientViT variant (defaults: timm's ``efficientvit_b0``).

    The common names (``image_size``, ``in_channels``, ``num_classes``, ``data_format``,
    dtypes) are ``zoo.base.ZooConfig``'s; ``in_chans`` is the old name of ``in_channels``.

    Attributes:
      widths: channels of the stem and of each stage: four stages in timm's models (strides 4
        to 32), five in MIT's SAM XL backbones (down to stride 64).
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
      attn_scales: kernel sizes of LiteMLA's multi-scale aggregation (MIT's ``att@3`` blocks
        of the SAM XL backbones: ``(3,)``).
      attn_eps: LiteMLA's normaliser epsilon (timm: 1e-5).
      num_classes: classifier outputs; 0 (or ``None``) returns the head's hidden features.
      drop_rate: dropout before the last Linear (needs a ``"dropout"`` rng in training).
      image_size: the default input side (224, timm's), used where no size is given (export,
        summaries, training); the variables do not depend on it and the model takes any
        height and width divisible by ``reduction`` (32 for four stages).
      in_channels: input channels.
      data_format: layout of the input images, ``"NCHW"`` (timm's) or ``"NHWC"``.
      dtype: computation dtype; param_dtype: parameter dtype.
      dwconv_impl: depthwise-conv kernel (``ops.depthwise_conv2d``).
      remat: rematerialisation of each stage block in the backward pass, as the core
        config's (``"none"``, ``"block"`` or a ``jax.checkpoint_policies`` name): the
        activations of a Cityscapes-size input are recomputed instead of kept.
    """

    SHAPED_FIELDS: ClassVar[tuple[str, ...]] = ("num_classes", "in_channels")

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
    image_size: int = 224
    in_channels: int = 3
    data_format: Literal["NCHW", "NHWC"] = "NCHW"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dwconv_impl: DWConvImpl = "auto"
    remat: str = "none"

    def __post_init__(self) -> None:
        for name in ("widths", "depths", "head_widths", "stage_kinds", "fewer_norm"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("down_expand", "block_expand", "attn_scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.widths) - 1
        if n < 1 or len(self.depths) != n + 1:
            raise ValueError(
                "widths and depths need one entry for the stem and one per stage, as many each, "
                f"got {self.widths}, {self.depths}"
            )
        for name in ("stage_kinds", "fewer_norm", "down_expand", "block_expand"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} needs {n} entries, got {getattr(self, name)}")
        if self.remat not in REMAT_OPTIONS:
            raise ValueError(f"remat must be one of {REMAT_OPTIONS}, got {self.remat!r}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
        if self.data_format not in ("NCHW", "NHWC"):
            raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {self.data_format!r}")
        for w, kind in zip(self.widths[1:], self.stage_kinds, strict=True):
            if kind not in ("mbconv", "fused", "attention"):
                raise ValueError(f"stage kind must be mbconv, fused or attention, got {kind!r}")
            if kind == "attention" and w % self.head_dim:
                raise ValueError(f"stage width {w} is not divisible by head_dim {self.head_dim}")
        if self.num_classes < 0 or self.in_channels < 1:
            raise ValueError(
                f"num_classes must be >= 0 and in_channels >= 1, got {self.num_classes}, "
                f"{self.in_channels}"
            )
        r = self.reduction
        if self.image_size < r or self.image_size % r:
            raise ValueError(f"image_size must be a multiple of {r}, got {self.image_size}")

    @property
    def feature_widths(self) -> tuple[int, ...]:
        """Channels of the per-stage feature maps (strides 4, 8, 16, 32[, 64])."""
        return self.widths[1:]

    @property
    def reduction(self) -> int:
        """The last stage's stride: the stem and every stage halve the map (32 for four stages)."""
        return 2 ** len(self.widths)


# timm's depthwise convs: PyTorch's default init, no bias unless asked.
DepthwiseConv = functools.partial(
    layers.DepthwiseConv, use_bias=False, kernel_init=TORCH_KERNEL_INIT
)


def ConvNormAct(  # noqa: N802  (the module's name before it became zoo.base's ConvBNAct)
    features: int,
    kernel_size: int = 1,
    stride: int = 1,
    depthwise: bool = False,
    use_bias: bool = False,
    use_norm: bool = True,
    act: str | None = None,
    config: MITConfig = MITConfig(),
    *,
    name: str | None = None,
) -> ConvBNAct:
    """timm's ConvNormAct (conv ``conv``, BatchNorm ``norm``, activation) with the options an
    ``MITConfig`` sets: ``zoo.base.ConvBNAct`` with the norm's epsilon, dtypes and depthwise
    kernel of ``config``. Kept with its old positional signature for code that calls it so."""
    return ConvBNAct(
        features=features,
        kernel_size=kernel_size,
        stride=stride,
        depthwise=depthwise,
        use_bias=use_bias,
        use_norm=use_norm,
        act=act,
        norm_eps=config.norm_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        dwconv_impl=config.dwconv_impl,
        name=name,
    )


class GroupedPointwise(FastParams, nn.Module):
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
        cfg = self.config
        mid = round(x.shape[-1] * self.expand_ratio)
        bias, norm = _flags(self.fewer_norm, 3)
        x = ConvNormAct(
            mid, use_bias=bias[0], use_norm=norm[0], act=cfg.act, config=cfg, name="inverted_conv"
        )(x, train=train)
        x = ConvNormAct(
            mid, 3, self.stride, depthwise=True, use_bias=bias[1], use_norm=norm[1], act=cfg.act,
            config=cfg, name="depth_conv",
        )(x, train=train)  # fmt: skip
        return ConvNormAct(
            self.features, use_bias=bias[2], use_norm=norm[2], config=cfg, name="point_conv"
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
        cfg = self.config
        mid = round(x.shape[-1] * self.expand_ratio)
        bias, norm = _flags(self.fewer_norm, 2)
        x = ConvNormAct(
            mid, 3, self.stride, use_bias=bias[0], use_norm=norm[0], act=cfg.act, config=cfg,
            name="spatial_conv",
        )(x, train=train)  # fmt: skip
        return ConvNormAct(
            self.features, use_bias=bias[1], use_norm=norm[1], config=cfg, name="point_conv"
        )(x, train=train)


class DSConv(nn.Module):
    """Depthwise-separable conv of the B stems: depthwise 3x3 + act, pointwise (no act)."""

    features: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = ConvNormAct(x.shape[-1], 3, depthwise=True, act=cfg.act, config=cfg, name="depth_conv")(
            x, train=train
        )
        return ConvNormAct(self.features, config=cfg, name="point_conv")(x, train=train)


class ConvBlock(nn.Module):
    """Two full 3x3 convs of the L stems (act after the first only)."""

    features: int
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        x = ConvNormAct(x.shape[-1], 3, act=cfg.act, config=cfg, name="conv1")(x, train=train)
        return ConvNormAct(self.features, 3, config=cfg, name="conv2")(x, train=train)


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
        qkv = ConvNormAct(3 * heads * d, use_norm=False, config=cfg, name="qkv")(x, train=train)
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
        return ConvNormAct(self.features, config=cfg, name="proj")(out, train=train)


class EfficientViTBlock(nn.Module):
    """``x + LiteMLA(x)`` (``context_module``), then ``x + MBConv(x)`` (``local_module``)."""

    expand_ratio: float
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        x = x + LiteMLA(c, self.config, name="context_module")(x, train=train)
        local = MBConv(
            c, self.expand_ratio, fewer_norm=True, config=self.config, name="local_module"
        )
        return x + local(x, train=train)


class Residual(nn.Module):
    """``x + main(x)`` for a stride-1 local block (``main``: MBConv, FusedMBConv, DSConv, ConvBlock)."""

    kind: Literal["mbconv", "fused", "dsconv", "conv"]
    expand_ratio: float = 1.0
    fewer_norm: bool = False
    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        main = _local_block(
            self.kind, x.shape[-1], self.expand_ratio, 1, self.fewer_norm, self.config
        )
        return x + main(x, train=train)


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
        down = Downsample(down_kind, cfg.down_expand[i], fewer, width, cfg, name="blocks_0")
        x = _run(down, x, train, cfg.remat)
        if kind == "attention":
            for j in range(depth):
                block = EfficientViTBlock(cfg.block_expand[i], cfg, name=f"blocks_{j + 1}")
                x = _run(block, x, train, cfg.remat)
        else:
            n = depth - 1 if cfg.downsample_in_depth else depth
            for j in range(n):
                block = Residual(kind, cfg.block_expand[i], fewer, cfg, name=f"blocks_{j + 1}")
                x = _run(block, x, train, cfg.remat)
        return x


def _run(block: nn.Module, x: jax.Array, train: bool, remat: str) -> jax.Array:
    """``block(x, train=train)``, under ``nn.remat`` unless ``remat`` is ``"none"``. The block
    goes in as the lifted function's module argument, so its variables keep their place in
    the tree, and ``train`` stays a Python bool (closed over, not traced)."""
    if remat == "none":
        return block(x, train=train)
    policy = None if remat == "block" else getattr(jax.checkpoint_policies, remat)
    return nn.remat(lambda mdl, y: mdl(y, train=train), policy=policy)(block, x)


class ClassifierHead(nn.Module):
    """1x1 conv + BN + act (``in_conv``), mean pool, Linear (``pre_fc``), LayerNorm, act, dropout, Linear (``fc``)."""

    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        cfg = self.config
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype}
        x = ConvNormAct(cfg.head_widths[0], act=cfg.act, config=cfg, name="in_conv")(x, train=train)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(cfg.dtype)
        x = Dense(
            cfg.head_widths[1], use_bias=False, kernel_init=TORCH_KERNEL_INIT, name="pre_fc", **kw
        )(x)
        x = LayerNorm(epsilon=cfg.norm_eps, use_fast_variance=False, name="norm", **kw)(x)
        x = ACTIVATIONS[cfg.act](x)
        if cfg.num_classes == 0:
            return x
        x = nn.Dropout(cfg.drop_rate, deterministic=not train)(x)
        return Dense(cfg.num_classes, kernel_init=TORCH_KERNEL_INIT, name="fc", **kw)(x)


class EfficientViTMIT(nn.Module):
    """MIT EfficientViT (B0-B3, L1-L3) classifier, numerically equal to timm's.

    Submodules: ``stem``, ``stages_0`` .. ``stages_3`` (``stages_4`` with five stages), ``head``.
    """

    config: MITConfig = MITConfig()

    @nn.compact
    def __call__(
        self, x: jax.Array, *, train: bool = False, features: bool = False
    ) -> jax.Array | list[jax.Array]:
        """Logits ``[B, num_classes]`` or, with ``features=True``, every stage's output.

        Args:
          x: images in ``config.data_format``; height and width divisible by
            ``config.reduction`` (32 for four stages).
          train: batch statistics in BatchNorm (and update ``batch_stats``), dropout on.
          features: return ``[B, H/s, W/s, C_s]`` (NHWC) for strides 4, 8, 16, 32 (and 64
            with five stages), the stages timm's ``forward_intermediates`` /
            ``features_only`` report.
            The same maps are sown as ``intermediates/stage_{i}`` on every call.
        """
        cfg = self.config
        base.check_images(cfg, x.shape, model="EfficientViTMIT", multiple=cfg.reduction)
        x = Stem(cfg, name="stem")(base.to_nhwc(cfg, x), train=train)
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


def variable_shapes(config: MITConfig) -> dict[str, Any]:
    """Shapes of ``EfficientViTMIT(config)``'s variables (``zoo.base.variable_shapes``: cached,
    nothing computed), a tree of ``jax.ShapeDtypeStruct``."""
    return base.variable_shapes(EfficientViTMIT, config)
