"""Linear attention (O(n) in tokens) and cascaded group attention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def elu_plus_one(x: jax.Array) -> jax.Array:
    """``elu(x) + 1`` written as ``x + 1`` / ``exp(x)``: exact, and safe to differentiate.

    ``jnp.where`` differentiates both branches; ``exp`` of a clamped argument
    keeps the unused branch finite for inputs of any size.
    """
    return jnp.where(x > 0, x + 1, jnp.exp(jnp.minimum(x, 0)))


def linear_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, eps: float = 1e-8) -> jax.Array:
    """Kernelised attention with the feature map ``phi = elu + 1``.

    ``out[n] = phi(q[n]) @ (sum_m phi(k[m]) v[m]^T) / (phi(q[n]) . sum_m phi(k[m]) + eps)``

    The key sums are formed first, so time and memory grow linearly with the
    number of tokens; the n x n matrix is never built. No scaling, no mask.

    Args:
      q: ``[..., n, d]`` queries.
      k: ``[..., m, d]`` keys.
      v: ``[..., m, e]`` values.
      eps: added to the normaliser.

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
    out_dtype = v.dtype
    f32 = jnp.float32
    phi_q = elu_plus_one(q.astype(f32))
    phi_k = elu_plus_one(k.astype(f32))
    kv = jnp.einsum("...md,...me->...de", phi_k, v.astype(f32))
    k_sum = jnp.sum(phi_k, axis=-2)
    num = jnp.einsum("...nd,...de->...ne", phi_q, kv)
    den = jnp.einsum("...nd,...d->...n", phi_q, k_sum) + eps
    return (num / den[..., None]).astype(out_dtype)


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
            qkv = nn.Dense(
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
        return nn.Dense(
            dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            name="proj",
        )(heads)
