"""Hot primitives shared by every model in the package.

Pure functions on arrays, no modules: a depthwise convolution that is fast on
CPU, the patch extraction of Edifice, and stochastic depth. Everything above
this file (attention, layers, the model zoo) builds on these.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = int | tuple[tuple[int, int], tuple[int, int]]
DWConvImpl = Literal["auto", "shifted", "xla"]


def _pad_pairs(padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (pt, pb), (pl, pr) = padding
    return ((int(pt), int(pb)), (int(pl), int(pr)))


# Set by ``portable_ops``: every conv traces as XLA's own op, whatever ``impl`` asks.
_PORTABLE = contextvars.ContextVar("efficientvit_jax_portable_ops", default=False)


@contextlib.contextmanager
def portable_ops() -> Iterator[None]:
    """Within the block, trace every conv as ``lax.conv_general_dilated`` or a plain einsum.

    For export (ONNX, StableHLO): the CPU kernels below (shifted slices, custom gradients)
    are rewrites for XLA on CPU; traced into a file meant for other runtimes they are slower
    than those runtimes' own conv. Same values; only what is traced changes.
    """
    token = _PORTABLE.set(True)
    try:
        yield
    finally:
        _PORTABLE.reset(token)


def eval_shape(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``jax.eval_shape`` traced on the portable path (``portable_ops``): the same shapes and
    dtypes in fewer equations (one conv instead of a depthwise conv's k*k shifted slices).
    For the traces that only want shapes, a model's variables above all: with the kernel cache
    below, M3's at 64 px in 0.37 s against 0.60 s by ``jax.eval_shape`` with the kernel traced
    inline, B1's 0.14 s against 0.27 s (``benchmarks/trace_bench.py``, again in a process)."""
    # A fresh function: JAX caches traces by function, and the portable switch is not part of
    # the key, so a later ``jax.jit(fn)`` must not be served this trace (nor this call another).
    with portable_ops():
        return jax.eval_shape(lambda *a, **k: fn(*a, **k), *args, **kwargs)


def resolve_dwconv_impl(impl: DWConvImpl) -> Literal["shifted", "xla"]:
    """Pick the depthwise-conv implementation for the current backend.

    XLA's grouped convolution is the right kernel on GPU and TPU, but on CPU
    it is 20x slower than a sum of shifted slices (see PERF-NOTES.md), so
    ``"auto"`` picks by backend at trace time. Inside ``portable_ops`` it is
    always ``"xla"``.
    """
    if impl not in ("auto", "shifted", "xla"):
        raise ValueError(f"dwconv impl must be 'auto', 'shifted' or 'xla', got {impl!r}")
    if _PORTABLE.get():
        return "xla"
    if impl == "auto":
        return "shifted" if jax.default_backend() == "cpu" else "xla"
    return impl


def depthwise_conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: Padding | None = None,
    impl: DWConvImpl = "auto",
) -> jax.Array:
    """Depthwise 2-D convolution of an NHWC tensor (cross-correlation, as PyTorch and XLA).

    Args:
      x: ``[batch, H, W, C]``.
      kernel: ``[kh, kw, 1, C]``, the layout of ``flax.linen.Conv`` with
        ``feature_group_count=C``, so parameters are interchangeable with it.
      stride: the same stride along both spatial axes.
      padding: zero padding, an int for all four sides or
        ``((top, bottom), (left, right))``. Defaults to PyTorch's ``k // 2``
        on every side, which for odd kernels keeps the size at stride 1.
        Explicit pairs are how a strided conv pads like PyTorch (XLA's
        ``"SAME"`` puts the extra row at the bottom, PyTorch on both sides).
      impl: ``"shifted"`` (a sum of kh*kw strided slices, fast on CPU),
        ``"xla"`` (``lax.conv_general_dilated`` with one group per channel)
        or ``"auto"`` (by backend).

    Returns:
      ``[batch, H_out, W_out, C]`` in the promoted dtype of ``x`` and ``kernel``.
    """
    if x.ndim != 4:
        raise ValueError(f"depthwise_conv2d expects x of shape [B, H, W, C], got {x.shape}")
    kh, kw, one, c = kernel.shape
    if one != 1 or c != x.shape[-1]:
        raise ValueError(
            f"depthwise_conv2d expects kernel [kh, kw, 1, {x.shape[-1]}], got {kernel.shape}"
        )
    if padding is None:
        padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    pads = _pad_pairs(padding)
    dtype = jnp.result_type(x, kernel)
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    if resolve_dwconv_impl(impl) == "xla":
        return lax.conv_general_dilated(
            x,
            kernel,
            window_strides=(stride, stride),
            padding=pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=c,
        )
    return _shifted_dwconv(x, kernel, stride, pads)


def _taps(xp: jax.Array, kh: int, kw: int, stride: int, ho: int, wo: int):
    """The kh*kw strided windows of the padded input, one per kernel tap."""
    b, _, _, c = xp.shape
    for i in range(kh):
        for j in range(kw):
            yield (
                i,
                j,
                lax.slice(
                    xp,
                    (0, i, j, 0),
                    (b, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                    (1, stride, stride, 1),
                ),
            )


def _padded_taps(x: jax.Array, kh: int, kw: int, stride: int, pads, op: str):
    """The kernel taps (``_taps``) of ``x`` zero-padded by ``pads``; ``op`` names the caller in errors."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    hp, wp = xp.shape[1:3]
    ho = (hp - kh) // stride + 1
    wo = (wp - kw) // stride + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"{op}: kernel {kh}x{kw} does not fit the padded input {hp}x{wp}")
    return _taps(xp, kh, kw, stride, ho, wo)


# The CPU rewrites are many small ops (a depthwise conv is k*k slices, products and sums), and
# a process traces the same shapes again and again: every block of a stage, the forward inside
# ``init``, ``jit``, ``grad``, every test of a model. As ``jax.jit(..., inline=True)`` each is
# traced once per shape (JAX keeps a jitted function's trace) and its equations are copied into
# the caller's, so the program is the one traced inline: the same values bit for bit and the
# same step time (B1's train step at batch 16). ``benchmarks/trace_bench.py``, M3 at 64 px traced
# again in a process: forward 0.30 s against 0.37 s, with its gradient and lowered 1.97 s
# against 2.28 s.
_traced_once = functools.partial(jax.jit, inline=True)


@functools.partial(_traced_once, static_argnums=(2, 3))
def _shifted_forward(x: jax.Array, kernel: jax.Array, stride: int, pads) -> jax.Array:
    kh, kw = kernel.shape[:2]
    out = None
    for i, j, tap in _padded_taps(x, kh, kw, stride, pads, "depthwise_conv2d"):
        term = tap * kernel[i, j, 0]
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shifted_dwconv_vjp(x: jax.Array, kernel: jax.Array, stride: int, pads) -> jax.Array:
    return _shifted_forward(x, kernel, stride, pads)


def _shifted_dwconv_fwd(x, kernel, stride, pads):
    return _shifted_forward(x, kernel, stride, pads), (x, kernel)


@functools.partial(_traced_once, static_argnums=(0, 1))
def _shifted_dwconv_bwd(stride, pads, res, g):
    """Both cotangents as shifted sums; why not autodiff, see PERF-NOTES.md.

    Input: the transposed conv is a stride-1 conv of the cotangent, dilated by
    the stride and padded (negative pads crop), with the flipped kernel.
    Kernel: one reduction per tap. Done image by image (``lax.map``), so the
    nine products of one image stay in cache: over the whole batch at once
    XLA's CPU reductions ran 6x slower (45 ms against 7 ms on [16, 28, 28, 256]).
    """
    x, kernel = res
    kh, kw = kernel.shape[:2]
    _, h, w, c = x.shape
    ho, wo = g.shape[1:3]
    (pt, pb), (pl, pr) = pads
    lo_h, lo_w = kh - 1 - pt, kw - 1 - pl
    hi_h = h + kh - 1 - lo_h - (stride * (ho - 1) + 1)
    hi_w = w + kw - 1 - lo_w - (stride * (wo - 1) + 1)
    gp = lax.pad(
        g,
        jnp.zeros((), g.dtype),
        ((0, 0, 0), (lo_h, hi_h, stride - 1), (lo_w, hi_w, stride - 1), (0, 0, 0)),
    )
    dx = _shifted_forward(gp, kernel[::-1, ::-1], 1, ((0, 0), (0, 0)))

    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))

    def one_image(args):
        xp1, g1 = args
        g1 = g1[None].astype(jnp.float32)
        taps = _taps(xp1[None], kh, kw, stride, ho, wo)
        return jnp.stack([jnp.sum(t.astype(jnp.float32) * g1, axis=(0, 1, 2)) for _, _, t in taps])

    dk = jnp.sum(lax.map(one_image, (xp, g)), axis=0).reshape(kh, kw, 1, c)
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_shifted_dwconv_vjp.defvjp(_shifted_dwconv_fwd, _shifted_dwconv_bwd)
_shifted_dwconv = _traced_once(_shifted_dwconv_vjp, static_argnums=(2, 3))


def pointwise_conv(x: jax.Array, kernel: jax.Array, *, impl: DWConvImpl = "auto") -> jax.Array:
    """A 1x1 convolution (a Dense over the last axis) of ``x`` ``[batch, ..., C]`` by ``[C, D]``.

    The forward pass is one matmul. On CPU (``impl`` ``"auto"`` or
    ``"shifted"``) the kernel gradient ``x^T g`` is summed over chunks of about
    16k tokens, whole images at a time: as one product over all tokens XLA
    first transposes the cotangent, a strided copy of the largest tensor of the
    step that cost more than the matmul (B1's first 1x1 conv at batch 32:
    [401408, 16] x [401408, 64], 45 ms as one product, 11 ms by images). The
    values are those of ``jnp.einsum("...c,cd->...d")``; ``"xla"`` is exactly it.
    """
    if kernel.ndim != 2 or kernel.shape[0] != x.shape[-1]:
        raise ValueError(
            f"pointwise_conv expects kernel [{x.shape[-1]}, D] for x {x.shape}, got {kernel.shape}"
        )
    dtype = jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if resolve_dwconv_impl(impl) == "xla" or x.ndim < 3:
        return jnp.einsum("...c,cd->...d", x, kernel)
    return _chunked_pointwise(x, kernel)


# Tokens per chunk of the kernel gradient: large enough that a chunk is one efficient matmul,
# small enough that its operands stay in cache (measured: 12k-25k rows best on 2-core EPYC).
_POINTWISE_CHUNK_TOKENS = 16384


def _images_per_chunk(batch: int, per_image: int) -> int:
    """Whole images per chunk: about ``_POINTWISE_CHUNK_TOKENS`` tokens, a divisor of ``batch``."""
    images = max(1, min(batch, _POINTWISE_CHUNK_TOKENS // max(per_image, 1)))
    while batch % images:
        images -= 1
    return images


def _sum_over_image_chunks(fn, x: jax.Array, g: jax.Array) -> jax.Array:
    """``fn(x, g)`` summed over chunks of whole images (``_images_per_chunk`` of ``g``'s tokens).

    The kernel gradients of ``pointwise_conv`` and ``conv2d``: one product over all the tokens
    of a big batch leaves cache; chunk by chunk (``lax.map``) it stays there.
    """
    b = x.shape[0]
    images = _images_per_chunk(b, int(np.prod(g.shape[1:-1])))
    if images == b:
        return fn(x, g)
    xs = x.reshape(b // images, images, *x.shape[1:])
    gs = g.reshape(b // images, images, *g.shape[1:])
    return jnp.sum(lax.map(lambda a: fn(*a), (xs, gs)), axis=0)


@jax.custom_vjp
def _chunked_pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jnp.einsum("...c,cd->...d", x, kernel)


def _chunked_pointwise_fwd(x, kernel):
    return _chunked_pointwise(x, kernel), (x, kernel)


def _chunked_pointwise_bwd(res, g):
    x, kernel = res
    dx = jnp.einsum("...d,cd->...c", g, kernel)
    c, d = kernel.shape
    acc = jnp.promote_types(kernel.dtype, jnp.float32)  # sums over many tokens: f32 at least

    def product(xc: jax.Array, gc: jax.Array) -> jax.Array:
        # 2-D operands: XLA's CPU transpose of a [b, h, w, c] tensor to channels-first is an
        # order of magnitude slower than that of the same data as [b*h*w, c].
        return jnp.einsum(
            "nc,nd->cd", xc.reshape(-1, c), gc.reshape(-1, d), preferred_element_type=acc
        )

    dk = _sum_over_image_chunks(product, x, g)
    return dx, dk.astype(kernel.dtype)


_chunked_pointwise.defvjp(_chunked_pointwise_fwd, _chunked_pointwise_bwd)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: Padding | None = None,
    impl: DWConvImpl = "auto",
) -> jax.Array:
    """A full 2-D convolution of NHWC ``x`` by an HWIO ``kernel`` (cross-correlation, as PyTorch).

    ``padding`` as for ``depthwise_conv2d`` (default ``k // 2`` on every side). On CPU two cases
    get their own kernel, because XLA's convolution is slow at them:

    - 1x1, stride 1, unpadded: ``pointwise_conv`` (one matmul).
    - at most 4 input channels (an RGB stem): the sum over taps and input channels of a
      strided slice times a kernel row, one fused elementwise pass. The stride-2 3x3 stems at
      224x224, batch 32: 3.3 ms for 8 outputs, 6.1 ms for 16, against 16.6 and 13.0 ms for
      XLA's conv and 4.3 and 3.7 ms for PyTorch (on the project's 2-core CPU). Its kernel
      gradient is a matmul of image patches by the cotangent, built a chunk of images at a time.

    Everything else, and ``impl="xla"``, is ``lax.conv_general_dilated``. ``impl`` takes the
    values of ``depthwise_conv2d``: ``"auto"`` picks by backend, ``"shifted"`` forces the CPU kernels.
    """
    kh, kw, cin, _ = kernel.shape
    if x.ndim != 4 or x.shape[-1] != cin:
        raise ValueError(
            f"conv2d expects x [B, H, W, {cin}] for kernel {kernel.shape}, got {x.shape}"
        )
    if padding is None:
        padding = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    pads = _pad_pairs(padding)
    dtype = jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    cpu = resolve_dwconv_impl(impl) == "shifted"
    if cpu and kh == kw == 1 and stride == 1 and pads == ((0, 0), (0, 0)):
        return pointwise_conv(x, kernel[0, 0])
    if cpu and cin <= 4:
        return _direct_conv(x, kernel, stride, pads)
    return _xla_conv(x, kernel, stride, pads)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, pads) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _direct_conv(x: jax.Array, kernel: jax.Array, stride: int, pads) -> jax.Array:
    kh, kw = kernel.shape[:2]
    out = None
    for i, j, tap in _padded_taps(x, kh, kw, stride, pads, "conv2d"):
        for c in range(x.shape[-1]):
            term = tap[..., c : c + 1] * kernel[i, j, c]
            out = term if out is None else out + term
    return out


def _direct_conv_fwd(x, kernel, stride, pads):
    return _direct_conv(x, kernel, stride, pads), (x, kernel)


def _direct_conv_bwd(stride, pads, res, g):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    # The input gradient is XLA's (an RGB stem's input is the image: XLA drops it unless asked).
    _, vjp_x = jax.vjp(lambda x: _xla_conv(x, kernel, stride, pads), x)
    (dx,) = vjp_x(g)
    acc = jnp.promote_types(kernel.dtype, jnp.float32)

    def product(xc: jax.Array, gc: jax.Array) -> jax.Array:
        # im2col of a few images, channel order (i, j, c) = the kernel's HWI flattening
        taps = _padded_taps(xc, kh, kw, stride, pads, "conv2d")
        patches = jnp.concatenate([t for _, _, t in taps], -1)
        return jnp.einsum(
            "np,no->po",
            patches.reshape(-1, kh * kw * cin),
            gc.reshape(-1, cout),
            preferred_element_type=acc,
        )

    dk = _sum_over_image_chunks(product, x, g).reshape(kernel.shape)
    return dx, dk.astype(kernel.dtype)


_direct_conv.defvjp(_direct_conv_fwd, _direct_conv_bwd)


def patchify(x: jax.Array, patch_size: int, data_format: str) -> jax.Array:
    """Cut non-overlapping patches, Edifice's way, into a token grid.

    Returns ``[batch, H/P, W/P, C*P*P]`` with each patch flattened
    channel-major ``(c, py, px)``, exactly the order of Edifice's
    ``reshape(B, C, H/P, P, W/P, P).transpose(0, 2, 4, 1, 3, 5)``. NHWC input
    gives the same tokens as its NCHW transpose. This order is also the
    flattening of a PyTorch ``[out, C, P, P]`` conv kernel, so a stride-P conv
    converts to the Dense that follows by a plain reshape.
    """
    p = patch_size
    if data_format == "NCHW":
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    else:
        b, h, w, c = x.shape
        x = x.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, h // p, w // p, c * p * p)


def drop_path(
    x: jax.Array, rate: float, rng: jax.Array | None, *, deterministic: bool
) -> jax.Array:
    """Stochastic depth: drop the whole residual branch per sample, rescale the rest.

    Identity when ``deterministic`` or ``rate == 0``. Each sample of the batch
    (leading axis) keeps its branch with probability ``1 - rate``; kept
    branches are divided by ``1 - rate`` so the expectation is unchanged.
    """
    if deterministic or rate == 0.0:
        return x
    if rng is None:
        raise ValueError("drop_path needs an rng when active (train=True, rate > 0)")
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))
