"""What every zoo family is built on: the config protocol, PyTorch's init, BatchNorm and conv
padding, the keyword-only conv block, the one image check and the variables' shapes.

A family (``zoo.mit``, ``zoo.msra``) is its modules on these pieces, a key-rule table for
timm's checkpoints (``zoo.convert.KeyRules``) and a registration (``zoo.registry.register``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from efficientvit_jax import layers, ops
from efficientvit_jax._linen import FastParams
from efficientvit_jax.ops import DWConvImpl

C = TypeVar("C", bound=type)


class ZooConfig(Protocol):
    """The names every zoo config has, and what they mean in each family.

    Attributes:
      image_size: the square input side a model is made for: the default input of export and
        summaries. For the MSRA models it also sizes the attention-bias tables; the MIT models
        take any size divisible by 32 whatever it is.
      in_channels: image channels.
      num_classes: classifier outputs; ``0`` means no classifier ("features only": the model
        returns its pooled features, as timm's ``num_classes=0``). ``None`` is taken as ``0``.
      data_format: ``"NCHW"`` (timm's) or ``"NHWC"`` images.
      dtype, param_dtype: computation and parameter dtypes.
      SHAPED_FIELDS: the fields that change the variables' shapes (a converted checkpoint must
        agree on them; a tag sets ``image_size`` only where it is one of them).
    """

    image_size: int
    in_channels: int
    num_classes: int
    data_format: str
    dtype: Any
    param_dtype: Any
    SHAPED_FIELDS: ClassVar[tuple[str, ...]]


# Names older versions of the configs used (timm's), and today's. They still work wherever
# options are given: the configs' constructors, ``create_model`` / ``get_config`` overrides,
# and the stored ``model.json`` of converted folders.
OLD_NAMES: Mapping[str, str] = {"in_chans": "in_channels", "img_size": "image_size"}


def current_names(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with old names (``in_chans``, ``img_size``) renamed, and ``num_classes``
    ``None`` as ``0``.

    Where both names are given the old one wins: ``dataclasses.replace(cfg, img_size=256)``
    passes every current field too, the current value among them.
    """
    out = {k: v for k, v in options.items() if k not in OLD_NAMES}
    out.update({OLD_NAMES[k]: v for k, v in options.items() if k in OLD_NAMES})
    if "num_classes" in out and out["num_classes"] is None:
        out["num_classes"] = 0
    return out


def accepts_old_names(cls: C) -> C:
    """A config dataclass that also takes the old names (``current_names``) and reads them as
    read-only properties, so that code written for the old names keeps working."""
    init = cls.__init__

    @functools.wraps(init)
    def init_with_old_names(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **current_names(kwargs))

    cls.__init__ = init_with_old_names
    for old, new in OLD_NAMES.items():
        prop = property(lambda self, new=new: getattr(self, new), doc=f"Old name of ``{new}``.")
        setattr(cls, old, prop)
    return cls


# PyTorch's default conv/Linear init (kaiming_uniform, a=sqrt(5)): U(+-1/sqrt(fan_in)). timm's
# EfficientViTs have no init of their own, so training from scratch starts as theirs does.
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Each looks jax.nn up when called, not at import: exporters (jax2onnx) patch jax.nn's functions
# while they trace, and a captured reference would bypass them (HardSwish would become five
# elementwise nodes, a third of the exported B0's time in onnxruntime).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "hardswish": lambda x: jax.nn.hard_swish(x),
    # timm's GELUTanh (the MIT L models) is the tanh approximation ...
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    # ... and nn.GELU the exact erf form (Flax's default is tanh, hence explicit).
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": lambda x: jax.nn.relu(x),
    "relu6": lambda x: jax.nn.relu6(x),
}


def torch_padding(kernel_size: int, stride: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """timm's ``get_padding``: ``((stride - 1) + (kernel_size - 1)) // 2`` on every side.

    XLA's ``"SAME"`` would put the odd extra row of a strided conv at the bottom instead.
    """
    p = ((stride - 1) + (kernel_size - 1)) // 2
    return ((p, p), (p, p))


class TorchBatchNorm(FastParams, nn.Module):
    """BatchNorm over the last axis with PyTorch's semantics and Flax's variable names.

    Same variables as ``nn.BatchNorm`` (params ``scale``/``bias``, batch_stats
    ``mean``/``var``) and the same normalisation (biased batch variance), but
    the running variance is updated with the *unbiased* batch variance, as
    ``torch.nn.BatchNorm2d`` does; ``nn.BatchNorm`` uses the biased one, which
    differs by n/(n-1) and is far off on the 2x2 maps of small inputs.
    ``momentum`` is Flax's (0.9 = PyTorch's 0.1). Statistics are computed in
    float32 at least (float64 under x64), whatever ``dtype``.
    """

    use_running_average: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        stat_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), stat_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), stat_dtype))
        xf = x.astype(jnp.promote_types(x.dtype, stat_dtype))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            n = int(np.prod([x.shape[a] for a in axes]))
            mean = jnp.mean(xf, axis=axes)
            if self.axis_name is not None:
                mean = lax.pmean(mean, self.axis_name)
            # two-pass variance: E[x^2] - E[x]^2 loses digits for large means
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            if self.axis_name is not None:
                var = lax.pmean(var, self.axis_name)
                n *= lax.psum(1, self.axis_name)
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        inv = lax.rsqrt(var + self.epsilon) * scale.astype(xf.dtype)
        y = (xf - mean) * inv + bias.astype(xf.dtype)
        return y.astype(self.dtype)


def torch_batch_norm(
    *,
    train: bool,
    epsilon: float = 1e-5,
    scale: float = 1.0,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    name: str | None = None,
) -> TorchBatchNorm:
    """``TorchBatchNorm`` as timm's ``BatchNorm2d`` is made: momentum 0.1 (Flax's 0.9), the
    scale starting at ``scale`` (timm's ``bn_weight_init``; 0 where a residual branch should
    start as the identity)."""
    return TorchBatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        scale_init=nn.initializers.constant(scale),
        name=name,
    )


class ConvBNAct(nn.Module, kw_only=True):
    """A bias-free (by default) conv ``conv``, a BatchNorm, an activation: timm's ``ConvNormAct``
    (MIT; the norm named ``norm``) and ``ConvNorm`` (MSRA; ``norm_name="bn"``, no activation).

    The conv is full (``layers.Conv2d``, timm's padding) or, with ``depthwise``, per channel
    (``layers.DepthwiseConv``; ``features`` must then be the input's width). Every option is
    a keyword: a row of positional booleans is where two families' blocks went wrong.

    Attributes:
      features, kernel_size, stride, depthwise, use_bias: the conv.
      use_norm: BatchNorm after the conv; norm_name: its name in the variables (timm's).
      norm_eps: its epsilon; norm_scale: its scale's initial value (timm's ``bn_weight_init``).
      act: a name of ``ACTIVATIONS``, or ``None``.
      dtype, param_dtype, dwconv_impl: as everywhere (``ops.depthwise_conv2d``'s kernel).
    """

    features: int
    kernel_size: int = 1
    stride: int = 1
    depthwise: bool = False
    use_bias: bool = False
    use_norm: bool = True
    norm_name: str = "norm"
    norm_eps: float = 1e-5
    norm_scale: float = 1.0
    act: str | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    dwconv_impl: DWConvImpl = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        k, s = self.kernel_size, self.stride
        if self.depthwise:
            if x.shape[-1] != self.features:
                raise ValueError(f"depthwise conv: {x.shape[-1]} channels in, {self.features} out")
            conv = layers.DepthwiseConv(
                k, s, use_bias=self.use_bias, kernel_init=TORCH_KERNEL_INIT,
                impl=self.dwconv_impl, name="conv", **kw,
            )  # fmt: skip
        else:
            conv = layers.Conv2d(
                self.features, k, s, padding=torch_padding(k, s), use_bias=self.use_bias,
                kernel_init=TORCH_KERNEL_INIT, name="conv", **kw,
            )  # fmt: skip
        x = conv(x)
        if self.use_norm:
            bn = torch_batch_norm(
                train=train, epsilon=self.norm_eps, scale=self.norm_scale, name=self.norm_name, **kw
            )
            x = bn(x)
        return x if self.act is None else ACTIVATIONS[self.act](x)


def check_images(
    config: ZooConfig, shape: tuple[int, ...], *, model: str, multiple: int = 1
) -> None:
    """Raise one ``ValueError`` stating the rule and what broke it, unless ``shape`` is a batch
    of images ``config`` takes (rank 4, ``in_channels`` channels in ``data_format``'s place,
    height and width divisible by ``multiple``)."""
    fmt, c = config.data_format, config.in_channels
    want = "[B, C, H, W]" if fmt == "NCHW" else "[B, H, W, C]"
    div = f", H and W divisible by {multiple}" if multiple > 1 else ""
    rule = f"{model} expects rank-4 {fmt} images {want} with C={c} channels{div}"
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(f"{rule}; got shape {shape}: rank {len(shape)}")
    got_c, h, w = (shape[1], shape[2], shape[3]) if fmt == "NCHW" else (shape[3], *shape[1:3])
    if got_c != c:
        raise ValueError(f"{rule}; got shape {shape}: {got_c} channels")
    if h % multiple or w % multiple or h == 0 or w == 0:
        raise ValueError(f"{rule}; got shape {shape}: H={h}, W={w}")


def to_nhwc(config: ZooConfig, x: jax.Array) -> jax.Array:
    """Images in ``config.data_format`` as NHWC in ``config.dtype``: what every block takes."""
    if config.data_format == "NCHW":
        x = jnp.transpose(x, (0, 2, 3, 1))
    return x.astype(config.dtype)


@functools.lru_cache(maxsize=64)
def variable_shapes(module: Callable[[Any], nn.Module], config: ZooConfig) -> dict[str, Any]:
    """Shapes and dtypes of ``module(config)``'s variables (``jax.eval_shape``: nothing is
    computed), a tree of ``jax.ShapeDtypeStruct``.

    Cached per module and config: tracing a large variant's init takes seconds and every
    conversion needs it; treat the result as read-only. The sample image is 64 px: no zoo
    model's variables depend on the input's size (MSRA's bias tables follow ``image_size``).
    """
    c = config.in_channels
    shape = (1, c, 64, 64) if config.data_format == "NCHW" else (1, 64, 64, c)
    model = module(config)
    sample = jax.ShapeDtypeStruct(shape, config.dtype)
    return ops.eval_shape(lambda x: model.init(jax.random.key(0), x), sample)


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """``{("a", "b"): v}`` -> ``{"a": {"b": v}}``: a variables tree from its paths."""
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree
