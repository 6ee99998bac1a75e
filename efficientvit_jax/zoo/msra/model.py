"""The MSRA EfficientViT models (Liu et al., CVPR 2023, arXiv 2305.07027), as timm 1.0 defines them.

``efficientvit_m0`` ... ``efficientvit_m5``: a conv-BN-ReLU patch embedding of
stride 16, then three stages of "sandwich" blocks (depthwise-conv residual,
FFN residual, windowed cascaded group attention, depthwise-conv residual, FFN
residual), with a subsample block (residual DW/FFN, an inverted-residual
patch merging with squeeze-excite, residual DW/FFN) in front of stages 1 and 2,
and a BatchNorm-Linear classifier on the average-pooled last stage.

Everything is NHWC inside; BatchNorm follows every conv (timm's ``ConvNorm``:
``zoo.base.ConvBNAct`` with its norm named ``bn``). The parameter tree mirrors timm's
module tree, so the conversion (``zoo.msra.convert``) is a short table of key patterns.
Every module takes ``train`` as a keyword.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax._linen import Conv, Dense, FastParams
from efficientvit_jax.zoo import base
from efficientvit_jax.zoo.base import TORCH_KERNEL_INIT, ConvBNAct

# The patch embedding is four stride-2 convs.
PATCH_SIZE = 16


@base.accepts_old_names
@dataclasses.dataclass(frozen=True)
class MSRAConfig:
    """An EfficientViT (MSRA) variant; the defaults are timm's ``efficientvit_m0``.

    The common names (``image_size``, ``in_channels``, ``num_classes``, ``data_format``,
    dtypes) are ``zoo.base.ZooConfig``'s; ``img_size`` and ``in_chans`` are the old names of
    ``image_size`` and ``in_channels``.

    Attributes:
      embed_dim: channel width of each stage.
      depth: number of sandwich blocks per stage.
      num_heads: attention heads per stage (cascaded groups of ``embed_dim / heads`` channels).
      key_dim: query/key width per head, per stage; the value width is ``embed_dim / heads``.
      window_size: local attention window per stage (clipped to the stage's resolution
        at ``image_size``, as timm does).
      kernels: depthwise kernel size on the queries of head ``j`` (one per head, at least
        ``max(num_heads)`` entries).
      image_size: the image size the attention biases are built for: it fixes each stage's
        window (``min(window_size, resolution)``), hence the bias tables' size. Inputs of
        other sizes run (windows are padded), with the windows of ``image_size``.
      in_channels: image channels.
      num_classes: classifier outputs; 0 (or ``None``) returns the pooled features (timm's
        Identity head).
      data_format: ``"NCHW"`` (timm's, default) or ``"NHWC"`` images.
      dtype: computation dtype (softmax runs in float32 whatever it is).
      param_dtype: parameter dtype.
    """

    SHAPED_FIELDS: ClassVar[tuple[str, ...]] = ("num_classes", "in_channels", "image_size")

    embed_dim: tuple[int, ...] = (64, 128, 192)
    depth: tuple[int, ...] = (1, 2, 3)
    num_heads: tuple[int, ...] = (4, 4, 4)
    key_dim: tuple[int, ...] = (16, 16, 16)
    window_size: tuple[int, ...] = (7, 7, 7)
    kernels: tuple[int, ...] = (5, 5, 5, 5)
    image_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    data_format: str = "NCHW"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        for f in ("embed_dim", "depth", "num_heads", "key_dim", "window_size", "kernels"):
            v = getattr(self, f)
            if isinstance(v, int) or not all(isinstance(i, int) and i > 0 for i in v):
                raise ValueError(f"MSRAConfig.{f} must be a sequence of positive ints, got {v!r}")
            object.__setattr__(self, f, tuple(v))
        n = len(self.embed_dim)
        for f in ("depth", "num_heads", "key_dim", "window_size"):
            if len(getattr(self, f)) != n:
                raise ValueError(
                    f"MSRAConfig.{f} needs one entry per stage ({n}), got {getattr(self, f)!r}"
                )
        for i, (ed, nh) in enumerate(zip(self.embed_dim, self.num_heads, strict=True)):
            if ed % nh:
                raise ValueError(
                    f"MSRAConfig: num_heads[{i}]={nh} does not divide embed_dim[{i}]={ed}"
                )
        self._check_scalars()

    def _check_scalars(self) -> None:
        if self.embed_dim[0] % 8:
            raise ValueError(
                f"MSRAConfig.embed_dim[0] must be divisible by 8 (the patch embedding widths "
                f"are dim/8, dim/4, dim/2), got {self.embed_dim[0]}"
            )
        if len(self.kernels) < max(self.num_heads):
            raise ValueError(
                f"MSRAConfig.kernels needs one kernel per head (max(num_heads)="
                f"{max(self.num_heads)}), got {self.kernels!r}"
            )
        if self.image_size < PATCH_SIZE:
            raise ValueError(
                f"MSRAConfig.image_size must be >= {PATCH_SIZE}, got {self.image_size}"
            )
        if self.in_channels < 1 or self.num_classes < 0:
            raise ValueError(
                f"MSRAConfig: in_channels must be >= 1 and num_classes >= 0, got "
                f"{self.in_channels}, {self.num_classes}"
            )
        if self.data_format not in ("NCHW", "NHWC"):
            raise ValueError(
                f"MSRAConfig.data_format must be 'NCHW' or 'NHWC', got {self.data_format!r}"
            )

    def window_resolutions(self) -> tuple[int, ...]:
        """Each stage's attention window at ``image_size``, as timm computes it at construction.

        Stage 0 runs at ``image_size // 16``; each later stage subsamples by a 3x3
        stride-2 conv with padding 1 (``(r - 1) // 2 + 1``); the window is the
        configured one, clipped to the stage's resolution.
        """
        res = self.image_size // PATCH_SIZE
        out = []
        for i, ws in enumerate(self.window_size):
            if i > 0:
                res = (res - 1) // 2 + 1
            out.append(min(ws, res))
        return tuple(out)


def attention_bias_index(resolution: int) -> np.ndarray:
    """The ``[N, N]`` (``N = resolution**2``) index of query/key pairs into the bias table.

    timm numbers the offsets ``(|dy|, |dx|)`` in order of first appearance
    while scanning query points row-major. The first query point ``(0, 0)``
    already meets every offset, in row-major order, so the number of offset
    ``(|dy|, |dx|)`` is ``|dy| * resolution + |dx|``; the table has ``N`` rows.
    """
    ys, xs = np.divmod(np.arange(resolution * resolution), resolution)
    dy = np.abs(ys[:, None] - ys[None, :])
    dx = np.abs(xs[:, None] - xs[None, :])
    return (dy * resolution + dx).astype(np.int32)


def _make_divisible(v: float, divisor: int = 8) -> int:
    """timm's ``make_divisible(v, divisor, round_limit=0.)``: nearest multiple, at least ``divisor``."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def ConvNorm(  # noqa: N802  (the module's name before it became zoo.base's ConvBNAct)
    out_chs: int,
    kernel_size: int = 1,
    stride: int = 1,
    depthwise: bool = False,
    bn_weight_init: float = 1.0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    *,
    name: str | None = None,
) -> ConvBNAct:
    """timm's ``ConvNorm``: a bias-free conv (``conv``) then BatchNorm (``bn``, scale starting
    at ``bn_weight_init``); ``zoo.base.ConvBNAct`` with MSRA's names. ``depthwise=True`` makes
    it a per-channel conv (``out_chs`` must equal the input width)."""
    return ConvBNAct(
        features=out_chs,
        kernel_size=kernel_size,
        stride=stride,
        depthwise=depthwise,
        norm_name="bn",
        norm_scale=bn_weight_init,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


class ConvMlp(nn.Module):
    """1x1 ConvNorm up (``pw1``), ReLU, 1x1 ConvNorm down (``pw2``, BN scale starts at 0)."""

    hidden: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = nn.relu(ConvNorm(self.hidden, name="pw1", **kw)(x, train=train))
        return ConvNorm(x.shape[-1], bn_weight_init=0.0, name="pw2", **kw)(h, train=train)


class SqueezeExcite(nn.Module):
    """timm's ``SEModule``: mean-pool, 1x1 conv ``fc1`` + ReLU, 1x1 conv ``fc2``, sigmoid gate."""

    rd_channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {
            "kernel_size": (1, 1),
            "dtype": self.dtype,
            "param_dtype": self.param_dtype,
            "kernel_init": TORCH_KERNEL_INIT,
        }
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = nn.relu(Conv(self.rd_channels, name="fc1", **kw)(s))
        s = Conv(x.shape[-1], name="fc2", **kw)(s)
        return x * nn.sigmoid(s)


class SEPatchMerging(nn.Module):
    """Inverted residual that halves the grid: 1x1 up x4, 3x3 depthwise stride 2, SE, 1x1 down
    (timm's MSRA ``PatchMerging``; the core's ``layers.PatchMerging`` is another layer)."""

    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        hid = 4 * x.shape[-1]
        x = nn.relu(ConvNorm(hid, name="conv1", **kw)(x, train=train))
        # Stride 2 with padding 1 on each side (PyTorch's), not XLA's SAME.
        x = nn.relu(ConvNorm(hid, 3, 2, depthwise=True, name="conv2", **kw)(x, train=train))
        x = SqueezeExcite(_make_divisible(hid * 0.25), name="se", **kw)(x)
        return ConvNorm(self.out_dim, name="conv3", **kw)(x, train=train)


def channels_first(x: jax.Array) -> jax.Array:
    """``[b, h, w, c]`` -> ``[b, c, h*w]``."""
    b, h, w, c = x.shape
    return x.transpose(0, 3, 1, 2).reshape(b, c, h * w)


class WindowedCascadedAttention(FastParams, nn.Module):
    """Softmax cascaded group attention on windows ``[B, ws, ws, C]`` with relative-position biases
    (timm's MSRA ``CascadedGroupAttention``; the core's ``CascadedGroupAttention`` is linear).

    Head ``j`` reads channel group ``j`` (plus head ``j-1``'s output for
    ``j > 0``), projects it to ``q, k, v`` by a 1x1 ConvNorm (``qkvs_{j}``),
    runs a depthwise ConvNorm over ``q`` (``dws_{j}``, kernel ``kernels[j]``),
    and attends with ``softmax(q k^T / sqrt(key_dim) + bias_j)``. The heads are
    concatenated, passed through ReLU and a 1x1 ConvNorm (``proj``).
    ``attention_biases`` is ``[heads, resolution**2]``, one entry per
    ``(|dy|, |dx|)`` offset.
    """

    key_dim: int
    num_heads: int
    val_dim: int
    resolution: int
    kernels: tuple[int, ...]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        _, h, w, c = x.shape
        if h != self.resolution or w != self.resolution:
            raise ValueError(
                f"WindowedCascadedAttention expects {self.resolution}x{self.resolution} "
                f"windows, got {h}x{w}"
            )
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        bias = self._biases()
        splits = jnp.split(x, self.num_heads, axis=-1)
        outs = []
        feat = splits[0]
        for j in range(self.num_heads):
            if j > 0:
                feat = feat + splits[j]
            qkv = ConvNorm(2 * self.key_dim + self.val_dim, name=f"qkvs_{j}", **kw)(
                feat, train=train
            )
            q, k, v = jnp.split(qkv, [self.key_dim, 2 * self.key_dim], axis=-1)
            q = ConvNorm(self.key_dim, self.kernels[j], depthwise=True, name=f"dws_{j}", **kw)(
                q, train=train
            )
            feat = self._attend(q, k, v, bias[j])
            outs.append(feat)
        y = nn.relu(jnp.concatenate(outs, axis=-1))
        return ConvNorm(c, bn_weight_init=0.0, name="proj", **kw)(y, train=train)

    def _biases(self) -> jax.Array:
        """The ``[heads, N, N]`` bias of every query/key pair, in the logits' dtype."""
        biases = self.param(
            "attention_biases",
            nn.initializers.zeros,
            (self.num_heads, self.resolution**2),
            self.param_dtype,
        )
        # Gathered with a NumPy index built at trace time: a constant, not a parameter.
        return jnp.asarray(biases, self._logits_dtype)[:, attention_bias_index(self.resolution)]

    @property
    def _logits_dtype(self) -> Any:
        # Logits and softmax in at least float32 whatever the compute dtype: bf16 loses
        # the biases' resolution and the softmax's normaliser.
        return jnp.promote_types(self.dtype, jnp.float32)

    def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
        """One head: ``softmax(q k^T / sqrt(key_dim) + bias) v`` on NHWC windows."""
        b, h, w, _ = q.shape
        q = q.reshape(b, h * w, self.key_dim) * jnp.asarray(self.key_dim**-0.5, q.dtype)
        # k and v channels-first, [b, d, tokens], and the output computed transposed: in an
        # exported (NCHW) graph these are plain Reshapes of the conv's output, where the
        # tokens-major form costs two Transposes per head (48 of M0's 60 at run time).
        k_t = channels_first(k)
        v_t = channels_first(v)
        # matmuls, not einsums: ONNX MatMul nodes when exported
        logits = (q @ k_t).astype(self._logits_dtype) + bias
        attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        feat_t = v_t @ jnp.swapaxes(attn, -1, -2)  # [b, val_dim, tokens]
        return feat_t.reshape(b, self.val_dim, h, w).transpose(0, 2, 3, 1)


class LocalWindowAttention(nn.Module):
    """Cascaded group attention (``attn``) within non-overlapping ``window`` x ``window`` tiles.

    The grid is zero-padded at the bottom and right to a multiple of the
    window, cut into tiles (row-major), attended tile by tile and cropped
    back. The padding takes part in the attention (as keys) and in the
    BatchNorm statistics in training, exactly as in timm.
    """

    key_dim: int
    num_heads: int
    val_dim: int
    window: int
    kernels: tuple[int, ...]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        ws = self.window
        pad_b, pad_r = (-h) % ws, (-w) % ws
        x = jnp.pad(x, ((0, 0), (0, pad_b), (0, pad_r), (0, 0)))
        nh, nw = (h + pad_b) // ws, (w + pad_r) // ws
        x = x.reshape(b, nh, ws, nw, ws, c).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b * nh * nw, ws, ws, c)
        x = WindowedCascadedAttention(
            key_dim=self.key_dim,
            num_heads=self.num_heads,
            val_dim=self.val_dim,
            resolution=ws,
            kernels=self.kernels,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="attn",
        )(x, train=train)
        x = x.reshape(b, nh, nw, ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, nh * ws, nw * ws, c)[:, :h, :w]


class SandwichBlock(nn.Module):
    """The sandwich: DW-conv, FFN, windowed attention, DW-conv, FFN, each as a residual
    (timm's MSRA ``EfficientVitBlock``)."""

    key_dim: int
    num_heads: int
    window: int
    kernels: tuple[int, ...]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        dim = x.shape[-1]
        dw0 = ConvNorm(dim, 3, depthwise=True, bn_weight_init=0.0, name="dw0", **kw)
        x = x + dw0(x, train=train)
        x = x + ConvMlp(2 * dim, name="ffn0", **kw)(x, train=train)
        mixer = LocalWindowAttention(
            key_dim=self.key_dim,
            num_heads=self.num_heads,
            val_dim=dim // self.num_heads,
            window=self.window,
            kernels=self.kernels,
            name="mixer",
            **kw,
        )
        x = x + mixer(x, train=train)
        dw1 = ConvNorm(dim, 3, depthwise=True, bn_weight_init=0.0, name="dw1", **kw)
        x = x + dw1(x, train=train)
        return x + ConvMlp(2 * dim, name="ffn1", **kw)(x, train=train)


class Subsample(nn.Module):
    """Between stages: residual DW + FFN (``res1_*``), ``SEPatchMerging`` (``patchmerge``),
    residual DW + FFN (``res2_*``)."""

    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        d = x.shape[-1]
        x = x + ConvNorm(d, 3, depthwise=True, name="res1_dw", **kw)(x, train=train)
        x = x + ConvMlp(2 * d, name="res1_ffn", **kw)(x, train=train)
        x = SEPatchMerging(self.out_dim, name="patchmerge", **kw)(x, train=train)
        d = self.out_dim
        x = x + ConvNorm(d, 3, depthwise=True, name="res2_dw", **kw)(x, train=train)
        return x + ConvMlp(2 * d, name="res2_ffn", **kw)(x, train=train)


class EfficientViTStage(nn.Module):
    """An optional ``downsample`` (a ``Subsample``) and ``depth`` blocks ``blocks_{j}``."""

    dim: int
    depth: int
    key_dim: int
    num_heads: int
    window: int
    kernels: tuple[int, ...]
    downsample: bool
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        if self.downsample:
            x = Subsample(self.dim, name="downsample", **kw)(x, train=train)
        for j in range(self.depth):
            block = SandwichBlock(
                key_dim=self.key_dim,
                num_heads=self.num_heads,
                window=self.window,
                kernels=self.kernels,
                name=f"blocks_{j}",
                **kw,
            )
            x = block(x, train=train)
        return x


class PatchEmbedding(nn.Module):
    """Four 3x3 stride-2 ConvNorms (``conv1``..``conv4``) to dim/8, /4, /2, dim; ReLU between."""

    dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        widths = (self.dim // 8, self.dim // 4, self.dim // 2, self.dim)
        for i, width in enumerate(widths):
            x = ConvNorm(width, 3, 2, name=f"conv{i + 1}", **kw)(x, train=train)
            if i < 3:
                x = nn.relu(x)
        return x


class NormLinear(nn.Module):
    """timm's classifier head: BatchNorm over the pooled features (``bn``), then ``linear``."""

    num_classes: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        x = base.torch_batch_norm(train=train, name="bn", **kw)(x)
        return Dense(
            self.num_classes,
            kernel_init=nn.initializers.truncated_normal(0.02),
            name="linear",
            **kw,
        )(x)


class EfficientViTMSRA(nn.Module):
    """EfficientViT (MSRA) image classifier, numerically timm's ``EfficientVitMsra``.

    Submodules: ``patch_embed``, ``stages_{i}`` and ``head`` (absent when
    ``num_classes == 0``). Variables: ``params`` and ``batch_stats``.

    Built in ``setup`` (not ``@nn.compact``): besides ``__call__`` it has timm's two other
    entry points, ``forward_features`` and ``forward_head``, which share the submodules.
    """

    config: MSRAConfig

    def setup(self) -> None:
        cfg = self.config
        kw = {"dtype": cfg.dtype, "param_dtype": cfg.param_dtype}
        self.patch_embed = PatchEmbedding(cfg.embed_dim[0], **kw)
        windows = cfg.window_resolutions()
        # Assigned as a list, so Flax names them stages_0, stages_1, ...
        self.stages = [
            EfficientViTStage(
                dim=cfg.embed_dim[i],
                depth=cfg.depth[i],
                key_dim=cfg.key_dim[i],
                num_heads=cfg.num_heads[i],
                window=windows[i],
                kernels=cfg.kernels,
                downsample=i > 0,
                **kw,
            )
            for i in range(len(cfg.embed_dim))
        ]
        if cfg.num_classes > 0:
            self.head = NormLinear(cfg.num_classes, **kw)

    def forward_features(self, x: jax.Array, *, train: bool = False) -> list[jax.Array]:
        """Per-stage feature maps, NHWC, at strides 16, 32, 64 (timm's ``feature_info``)."""
        cfg = self.config
        base.check_images(cfg, x.shape, model="EfficientViTMSRA")
        x = self.patch_embed(base.to_nhwc(cfg, x), train=train)
        feats = []
        for stage in self.stages:
            x = stage(x, train=train)
            feats.append(x)
        return feats

    def forward_head(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Average-pool the last stage's NHWC map and classify (pooled features if no head)."""
        x = jnp.mean(x, axis=(1, 2))
        if self.config.num_classes == 0:
            return x
        return self.head(x, train=train)

    def __call__(
        self, x: jax.Array, *, train: bool = False, features: bool = False
    ) -> jax.Array | list[jax.Array]:
        """Logits ``[B, num_classes]``, or with ``features=True`` the per-stage NHWC maps.

        Args:
          x: images in ``config.data_format``; any size >= 16 (windows are padded).
          train: BatchNorm uses (and, with ``mutable=["batch_stats"]``, updates)
            batch statistics.
          features: return the list of stage outputs instead of logits.
        """
        feats = self.forward_features(x, train=train)
        if features:
            return feats
        return self.forward_head(feats[-1], train=train)


def variable_shapes(config: MSRAConfig) -> dict[str, Any]:
    """Shapes and dtypes of ``EfficientViTMSRA(config)``'s variables (``zoo.base.variable_shapes``:
    cached, nothing computed); treat the result as read-only."""
    return base.variable_shapes(EfficientViTMSRA, config)


# The names these modules had before they were renamed apart from the core's and MIT's.
CascadedGroupAttention = WindowedCascadedAttention
PatchMerging = SEPatchMerging
EfficientViTBlock = SandwichBlock
