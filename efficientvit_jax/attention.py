"""Linear attention (O(n) in tokens) and cascaded group attention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from efficientvit_jax._linen import Dense


def elu_plus_one(x: jax.Array) -> jax.Array:
    """``elu(x) + 1`` written as ``x + 1`` / ``exp(x)``: exact, and safe to differentiate.

    ``jnp.where`` differentiates both branches; ``exp`` of a clamped argument
    keeps the unused branch finite for inputs of any size.
    """
    return jnp.where(x > 0, x + 1, jnp.exp(jnp.minimum(x, 0)))


FeatureMap = Callable[[jax.Array], jax.Array]


def _relu(x: jax.Array) -> jax.Array:
    # ``jax.nn.relu`` looked up at call time, not stored: jax2onnx patches that attribute while
    # exporting to emit one Relu node; a stored reference would trace to Max (and the Max/Min-
    # free graph is what tests/test_export.py checks for the zoo models).
    return jax.nn.relu(x)


# By name, so that configs and callers need not import the functions: "elu1" is the core's
# (Katharopoulos et al.), "relu" MIT EfficientViT's LiteMLA (timm's ``kernel_func``).
FEATURE_MAPS: dict[str, FeatureMap] = {"elu1": elu_plus_one, "relu": _relu}

DEFAULT_CHUNK = 4096


def linear_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    feature_map: str | FeatureMap = "elu1",
    eps: float = 1e-8,
    chunk_size: int | None = DEFAULT_CHUNK,
) -> jax.Array:
    """Kernelised attention with a feature map ``phi`` (default ``elu + 1``).

    ``out[n] = phi(q[n]) @ (sum_m phi(k[m]) v[m]^T) / (phi(q[n]) . sum_m phi(k[m]) + eps)``

    The key sums are formed first, so time and memory grow linearly with the
    number of tokens; the n x n matrix is never built. No scaling, no mask.
    With ``feature_map="relu", eps=1e-5`` this is MIT EfficientViT's LiteMLA
    attention (timm pads ``v`` with a ones column so that one product gives both
    the numerator and the normaliser, then adds ``eps`` to the normaliser: the
    same quantity).

    Args:
      q: ``[..., n, d]`` queries.
      k: ``[..., m, d]`` keys.
      v: ``[..., m, e]`` values.
      feature_map: ``"elu1"``, ``"relu"`` (``FEATURE_MAPS``) or a callable,
        applied element-wise to ``q`` and ``k`` after their cast to float32.
      eps: added to the normaliser.
      chunk_size: with more than twice this many tokens, keys and queries are
        processed this many at a time in a loop, so that each chunk's feature
        map, products and quotient stay in cache instead of making one pass
        over memory each (1.5x faster at 65,536 tokens on CPU, see
        benchmarks/). ``None`` computes everything at once. Same result either
        way, up to float rounding.

    Returns:
      ``[..., n, e]`` in the dtype of ``v``. Sums and the division run in
      float32 whatever the input dtype: bf16/fp16 accumulations over many
      tokens overflow or lose the normaliser.
    """
    if q.ndim < 2 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            f"linear_attention expects q [..., n, d], k [..., m, d], v [..., m, e] of one rank, "
            f"got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"linear_attention: q and k need the same feature size and k, v the same token "
            f"count, got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"linear_attention: chunk_size must be >= 1 or None, got {chunk_size}")
    phi = _resolve_feature_map(feature_map)
    kv, k_sum = _key_sums(k, v, phi, chunk_size)
    return _queries(q, kv, k_sum, phi, eps, v.dtype, chunk_size)


def _resolve_feature_map(feature_map: str | FeatureMap) -> FeatureMap:
    if callable(feature_map):
        return feature_map
    if feature_map not in FEATURE_MAPS:
        raise ValueError(
            f"linear_attention: feature_map must be a callable or one of "
            f"{sorted(FEATURE_MAPS)}, got {feature_map!r}"
        )
    return FEATURE_MAPS[feature_map]


def _chunks(n: int, chunk_size: int | None) -> tuple[int, int]:
    """(number of full chunks, chunk size) for looping, or (0, n) to do it in one go.

    A symbolic ``n`` (an export with a symbolic image size) goes in one go: the loop's length
    would be a symbolic count."""
    if chunk_size is None or not isinstance(n, int) or n < 2 * chunk_size:
        return 0, n
    return n // chunk_size, chunk_size


def _key_sums(
    k: jax.Array, v: jax.Array, phi: FeatureMap, chunk_size: int | None
) -> tuple[jax.Array, jax.Array]:
    """``sum_m phi(k[m]) v[m]^T`` ``[..., d, e]`` and ``sum_m phi(k[m])`` ``[..., 1, d]``, float32.

    The key sum keeps its token axis so that the normaliser's product takes it transposed:
    a Transpose in ONNX, where ``[..., None]`` is a Reshape to a shape computed from the
    symbolic batch (Shape, Gather, Concat, Expand nodes per attention).
    """
    f32 = jnp.float32

    def sums(kc: jax.Array, vc: jax.Array) -> tuple[jax.Array, jax.Array]:
        pk = phi(kc.astype(f32))
        # Matmuls, not einsums: the same dot_generals for XLA, and ONNX MatMul nodes when
        # exported (jax2onnx writes jnp.einsum as Einsum, several times slower in onnxruntime).
        return jnp.swapaxes(pk, -1, -2) @ vc.astype(f32), jnp.sum(pk, axis=-2, keepdims=True)

    m = k.shape[-2]
    full, c = _chunks(m, chunk_size)
    if full == 0:
        return sums(k, v)

    def body(i, acc):
        kv, ks = sums(
            lax.dynamic_slice_in_dim(k, i * c, c, axis=-2),
            lax.dynamic_slice_in_dim(v, i * c, c, axis=-2),
        )
        return acc[0] + kv, acc[1] + ks

    lead, d, e = k.shape[:-2], k.shape[-1], v.shape[-1]
    init = (jnp.zeros((*lead, d, e), f32), jnp.zeros((*lead, 1, d), f32))
    kv, ks = lax.fori_loop(0, full, body, init)
    if full * c < m:  # the remainder, a static slice
        kv_r, ks_r = sums(k[..., full * c :, :], v[..., full * c :, :])
        kv, ks = kv + kv_r, ks + ks_r
    return kv, ks


def _queries(
    q: jax.Array,
    kv: jax.Array,
    k_sum: jax.Array,
    phi: FeatureMap,
    eps: float,
    dtype: Any,
    chunk_size: int | None,
) -> jax.Array:
    """Each query's normalised read of the key sums, cast to ``dtype``."""

    def read(qc: jax.Array) -> jax.Array:
        pq = phi(qc.astype(jnp.float32))
        num = pq @ kv
        den = pq @ jnp.swapaxes(k_sum, -1, -2) + eps
        return (num / den).astype(dtype)

    n = q.shape[-2]
    full, c = _chunks(n, chunk_size)
    if full == 0:
        return read(q)
    out = jnp.zeros((*q.shape[:-2], n, kv.shape[-1]), dtype)

    def body(i, out):
        part = read(lax.dynamic_slice_in_dim(q, i * c, c, axis=-2))
        return lax.dynamic_update_slice_in_dim(out, part, i * c, axis=-2)

    out = lax.fori_loop(0, full, body, out)
    if full * c < n:
        out = out.at[..., full * c :, :].set(read(q[..., full * c :, :]))
    return out


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention over tokens ``[batch, n, dim]`` with linear attention per head.

    The channels are split into ``num_heads`` contiguous groups. Head ``j``
    reads ``split_j`` (plus the previous head's output for ``j > 0``), applies
    its own Q, K, V projections (one fused Dense ``head_{j}``) and linear
    attention over all tokens. The head outputs are concatenated, sown as the
    intermediate ``"heads"``, and projected by ``proj``.
    """

    num_heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dim = x.shape[-1]
        dh = dim // self.num_heads
        splits = jnp.split(x, self.num_heads, axis=-1)
        outs = []
        feat = None
        for j, split in enumerate(splits):
            feat = split if feat is None else split + feat
            qkv = Dense(
                3 * dh,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=self.kernel_init,
                name=f"head_{j}",
            )(feat)
            q, k, v = jnp.split(qkv, 3, axis=-1)
            feat = linear_attention(q, k, v)
            outs.append(feat)
        heads = jnp.concatenate(outs, axis=-1)
        self.sow("intermediates", "heads", heads)
        return Dense(
            dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="proj",
        )(heads)
