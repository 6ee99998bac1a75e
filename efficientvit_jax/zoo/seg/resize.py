"""PyTorch's ``F.interpolate`` (``bilinear``, ``bicubic``, ``align_corners=False``) in JAX.

MIT's segmentation head upsamples its stride-16 and -32 maps bicubically, and MIT's evaluation
resizes the logits to the label's size the same way (``efficientvit.models.utils.resize``, whose
default mode is bicubic). ``jax.image.resize`` differs from PyTorch in both places that matter:
its cubic kernel has a = -0.5 (PyTorch's a = -0.75), and at the borders it renormalises the
weights where PyTorch repeats the edge pixel. Neither antialiases when it shrinks.

Each output row (column) is a fixed combination of at most 4 input rows (columns), computed in
NumPy when the function is traced (shapes are static there): per axis, one product with the
``[out, in]`` matrix of those weights, the columns first and then the rows, as PyTorch's
kernels do.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

Method = Literal["bilinear", "bicubic"]

_A = -0.75  # PyTorch's bicubic kernel parameter (Keys' cubic convolution)


def _cubic(t: np.ndarray) -> np.ndarray:
    """Weights ``[n, 4]`` of the taps at offsets -1, 0, 1, 2 for fractional positions ``t``,
    with PyTorch's expressions in ``t``'s dtype (its ``get_cubic_upsample_coefficients``)."""

    def near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
        return ((_A + 2) * x - (_A + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
        return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

    u = 1 - t
    return np.stack([far(t + 1), near(t), near(u), far(u + 1)], axis=-1)


def taps(in_size: int, out_size: int, method: Method) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (int32) and weights (float32), both ``[out_size, k]``, along one axis.

    ``k`` is 2 (bilinear) or 4 (bicubic). Sources are PyTorch's half-pixel ones,
    ``(i + 0.5) * in / out - 0.5``; indices past an edge repeat the edge pixel.
    """
    # float32 as PyTorch's CPU kernels compute them for float32 maps, scale * (i + 0.5) - 0.5
    # being one fused multiply-add (one rounding: the float64 product of two float32 is exact);
    # the weights then agree to the bit (float64 positions differ by 1e-6)
    f32 = np.float32
    scale = np.float64(f32(in_size) / f32(out_size))
    src = (scale * (np.arange(out_size, dtype=f32) + f32(0.5)) - 0.5).astype(f32)
    if method == "bilinear":
        src = np.maximum(src, f32(0))  # PyTorch clamps the linear sources at 0, not the cubic ones
        base = np.floor(src)
        offsets, weights = np.arange(2), np.stack([1 - (src - base), src - base], axis=-1)
    elif method == "bicubic":
        base = np.floor(src)
        offsets, weights = np.arange(-1, 3), _cubic(src - base)
    else:
        raise ValueError(f"method must be 'bilinear' or 'bicubic', got {method!r}")
    index = np.clip(base[:, None].astype(np.int64) + offsets, 0, in_size - 1)
    return index.astype(np.int32), weights


def matrix(in_size: int, out_size: int, method: Method) -> np.ndarray:
    """The resize along one axis as an ``[out_size, in_size]`` float32 matrix: each row holds
    its taps' weights (summed where an edge repeats one input index)."""
    index, weights = taps(in_size, out_size, method)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.repeat(np.arange(out_size), index.shape[1])
    np.add.at(m, (rows, index.ravel()), weights.ravel())
    return m


def _resize_axis(x: jax.Array, axis: int, size: int, method: Method) -> jax.Array:
    if x.shape[axis] == size:  # PyTorch's weights are then (0, 1, 0, 0): the identity
        return x
    if not (isinstance(size, int) and isinstance(x.shape[axis], int)):
        return _upsample_symbolic(x, axis, size, method)
    # One matrix product per axis rather than a gather and a weighted sum per tap: the same
    # weights (the products with the row's zeros add nothing), and on CPU the gathers'
    # gradient, a scatter-add, took 2.4x as long as the products' in a B0 training loss
    # (8 x 19 x 64 x 64 logits to 512 x 512, forward and backward).
    m = jnp.asarray(matrix(x.shape[axis], size, method), x.dtype)
    out = jnp.tensordot(x, m, axes=((axis,), (1,)), precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(out, -1, axis)


def _upsample_symbolic(x: jax.Array, axis: int, size: Any, method: Method) -> jax.Array:
    """The resize to a symbolic ``size`` (``jax.export`` with a symbolic image size), an
    integer multiple ``s`` of the input's: output ``s * i + r`` is the same combination of
    inputs ``i - 1 .. i + 2`` for every ``i`` (phase ``r``), so the resize is ``s`` weighted sums
    of shifted slices of the edge-padded input, interleaved. For a power-of-two ``s`` (MIT's
    head: 2 and 4) each phase's weights are exactly ``taps``' (its source positions are exact
    in float32); only the order of the additions differs from the matrix product."""
    n = x.shape[axis]
    s = size // n
    if s * n != size or s < 1:
        raise ValueError(
            f"interpolate: a symbolic size must be a multiple of the input's, got {n} -> {size}"
        )
    width = 2 if method == "bilinear" else 4
    index, weights = taps(4 * s, 4 * s * s, method)  # row s*i+r: phase r of an inner input i
    padded = jnp.pad(x, [(2, 2) if a == axis else (0, 0) for a in range(x.ndim)], mode="edge")
    phases = []
    for r in range(s):
        row = 2 * s * s + r  # output s*i+r for input i = 2s: far from both edges
        acc = 0
        for k in range(width):
            shift = int(index[row, k]) - 2 * s  # the tap's input, relative to i
            part = jax.lax.slice_in_dim(padded, 2 + shift, 2 + shift + n, axis=axis)
            acc = acc + part * jnp.asarray(weights[row, k], x.dtype)
        phases.append(acc)
    out = jnp.stack(phases, axis=axis + 1)
    return out.reshape((*x.shape[:axis], size, *x.shape[axis + 1 :]))


def interpolate(
    x: jax.Array,
    size: tuple[int, int],
    method: Method = "bicubic",
    *,
    data_format: Literal["NCHW", "NHWC"] = "NHWC",
) -> jax.Array:
    """``torch.nn.functional.interpolate(x, size, mode=method, align_corners=False)``.

    ``x`` is a batch of maps ``[B, H, W, C]`` (or ``[B, C, H, W]`` with ``data_format="NCHW"``),
    ``size`` the output ``(height, width)``, any size, larger or smaller.
    """
    h_axis, w_axis = (2, 3) if data_format == "NCHW" else (1, 2)
    # NumPy's integers become ints; a symbolic size (``jax.export``) stays as it is
    height, width = (int(d) if isinstance(d, int | np.integer) else d for d in size)
    x = _resize_axis(x, w_axis, width, method)
    return _resize_axis(x, h_axis, height, method)
