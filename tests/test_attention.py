"""linear_attention against the explicit quadratic formula, and the cascade of CGA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import efficientvit_jax as ev
from efficientvit_jax.attention import CascadedGroupAttention


def quadratic_reference(q, k, v, eps=1e-8):
    """The n x n form, in float64: normalised rows of phi(q) phi(k)^T times v."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # noqa: E731
    scores = np.einsum("...nd,...md->...nm", phi(q), phi(k))
    return np.einsum("...nm,...me->...ne", scores, v) / (scores.sum(-1, keepdims=True) + eps)


@pytest.mark.parametrize(
    "q_shape,k_shape,e",
    [
        ((5, 3), (5, 3), 3),
        ((2, 17, 8), (2, 9, 8), 4),
        ((2, 4, 33, 16), (2, 4, 33, 16), 16),
        ((1, 1, 1), (1, 7, 1), 2),
    ],
)
def test_equals_quadratic_formula(q_shape, k_shape, e):
    kq, kk, kv = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(kq, q_shape) * 2
    k = jax.random.normal(kk, k_shape) * 2
    v = jax.random.normal(kv, (*k_shape[:-1], e))
    out = ev.linear_attention(q, k, v)
    assert out.shape == (*q_shape[:-1], e) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, quadratic_reference(q, k, v), rtol=1e-5, atol=1e-6)


def test_phi_is_elu_plus_one():
    # A single key makes the attention weights trivially 1: output = v; with two keys
    # the weights are phi(q).phi(k_m) normalised, checked against jax.nn.elu directly.
    q = jnp.array([[-3.0, 0.5]])
    k = jnp.array([[-1.0, 2.0], [0.3, -0.7]])
    v = jnp.array([[1.0], [-2.0]])
    phi = lambda x: jax.nn.elu(x) + 1  # noqa: E731
    w = phi(q) @ phi(k).T
    expect = (w @ v) / (w.sum(-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(ev.linear_attention(q, k, v), expect, rtol=1e-6)


def test_vmap_equals_batched_call():
    q, k, v = jax.random.normal(jax.random.key(1), (3, 4, 10, 8))
    batched = ev.linear_attention(q, k, v)
    mapped = jax.vmap(ev.linear_attention)(q, k, v)
    np.testing.assert_allclose(mapped, batched, rtol=1e-6)
    np.testing.assert_allclose(mapped[2], quadratic_reference(q[2], k[2], v[2]), rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_finite_values_and_gradients_for_huge_inputs(dtype):
    key = jax.random.key(2)
    base = jax.random.uniform(key, (3, 2, 64, 8), minval=-1e4, maxval=1e4)
    base = base.at[..., 0].set(1e4).at[..., 1].set(-1e4)  # the extremes themselves
    q, k, v = (b.astype(dtype) for b in base)
    out = ev.linear_attention(q, k, v)
    assert out.dtype == dtype
    assert bool(jnp.isfinite(out).all())
    grads = jax.grad(
        lambda q, k, v: ev.linear_attention(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)
    )(q, k, v)
    for g in grads:
        assert g.dtype == dtype and bool(jnp.isfinite(g).all())


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_accumulates_in_float32(dtype):
    # 4096 tokens of phi(k)*v ~ 1e4 each: the sums reach ~1e8, past float16's
    # range (6.5e4) and past bf16's 8-bit mantissa. Accumulating in float32 keeps
    # the result within the rounding of the inputs.
    kq, kk, kv = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(kq, (4096, 4))
    k = jax.random.uniform(kk, (4096, 4), minval=50, maxval=100)
    v = jax.random.uniform(kv, (4096, 4), minval=50, maxval=150)
    q, k, v = (a.astype(dtype).astype(jnp.float32) for a in (q, k, v))  # representable inputs
    expect = quadratic_reference(q, k, v)
    out = ev.linear_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype))
    assert bool(jnp.isfinite(out).all())
    np.testing.assert_allclose(
        np.asarray(out, np.float64), expect, rtol=2 * float(jnp.finfo(dtype).eps)
    )


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="same feature size"):
        ev.linear_attention(jnp.ones((4, 3)), jnp.ones((4, 2)), jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="one rank"):
        ev.linear_attention(jnp.ones((4, 3)), jnp.ones((1, 4, 3)), jnp.ones((4, 3)))


def _heads(x, variables, layer):
    _, state = layer.apply(variables, x, mutable=["intermediates"])
    return state["intermediates"]["heads"][0]


def test_cascade_head_zero_reaches_every_head_last_head_only_itself():
    heads, dim = 4, 16
    layer = CascadedGroupAttention(heads)
    x = jax.random.normal(jax.random.key(4), (2, 12, dim))
    variables = layer.init(jax.random.key(5), x)
    base = _heads(x, variables, layer)
    dh = dim // heads
    bump = jax.random.normal(jax.random.key(6), (2, 12, dh))

    changed = _heads(x.at[..., :dh].add(bump), variables, layer) - base
    per_head = jnp.abs(changed).reshape(2, 12, heads, dh).max(axis=(0, 1, 3))
    assert bool((per_head > 1e-4).all()), per_head  # head 0 cascades into every head

    changed = _heads(x.at[..., -dh:].add(bump), variables, layer) - base
    per_head = jnp.abs(changed).reshape(2, 12, heads, dh).max(axis=(0, 1, 3))
    assert bool((per_head[:-1] == 0).all()) and per_head[-1] > 1e-4, per_head


def test_cga_heads_have_their_own_projections():
    layer = CascadedGroupAttention(4)
    x = jnp.ones((1, 5, 32))
    params = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    assert sorted(params) == ["head_0", "head_1", "head_2", "head_3", "proj"]
    assert params["head_0"]["kernel"].shape == (8, 24)  # fused Q, K, V: d/h -> 3 * d/h
    assert params["proj"]["kernel"].shape == (32, 32)


@pytest.mark.parametrize("n,m", [(37, 37), (16, 29), (40, 8)])
def test_chunked_loop_equals_one_pass_and_quadratic_formula(n, m):
    # chunk_size 8: full chunks in a loop plus a remainder, for queries and keys apart.
    kq, kk, kv = jax.random.split(jax.random.key(9), 3)
    q = jax.random.normal(kq, (2, 3, n, 4))
    k = jax.random.normal(kk, (2, 3, m, 4))
    v = jax.random.normal(kv, (2, 3, m, 5))
    chunked = jax.jit(lambda q, k, v: ev.linear_attention(q, k, v, chunk_size=8))(q, k, v)
    np.testing.assert_allclose(
        chunked, ev.linear_attention(q, k, v, chunk_size=None), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(chunked, quadratic_reference(q, k, v), rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda q: ev.linear_attention(q, k, v, chunk_size=8).sum())(q)
    ref = jax.grad(lambda q: ev.linear_attention(q, k, v, chunk_size=None).sum())(q)
    np.testing.assert_allclose(grads, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        ev.linear_attention(q, k, v, chunk_size=0)


def lite_mla_reference(q, k, v, eps=1e-5):
    """timm's LiteMLA attention in float64: relu kernels, ``v`` padded with a ones column so
    that the last output column is the normaliser, ``eps`` added to it."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    q, k = np.maximum(q, 0.0), np.maximum(k, 0.0)
    v = np.concatenate([v, np.ones((*v.shape[:-1], 1))], axis=-1)
    out = q @ (np.swapaxes(k, -1, -2) @ v)
    return out[..., :-1] / (out[..., -1:] + eps)


@pytest.mark.parametrize("chunk_size", [None, 8])
@pytest.mark.parametrize("feature_map", ["relu", jax.nn.relu], ids=["name", "callable"])
def test_relu_variant_equals_timm_lite_mla_formula(chunk_size, feature_map):
    # n = m = 37 with chunk_size 8: four full chunks in the loop and a remainder. Query row 0
    # is all negative: relu zeroes it, and eps turns 0/0 into 0 as in timm. Row 1 keeps one
    # tiny feature, so that its normaliser is only ~100x eps: a wrong eps, or eps put
    # anywhere but the normaliser, moves it by far more than the tolerance.
    kq, kk, kv = jax.random.split(jax.random.key(11), 3)
    q = jax.random.normal(kq, (2, 3, 37, 16)).at[0, 0, :2].set(-1.0).at[0, 0, 1, 0].set(1e-4)
    k = jax.random.normal(kk, (2, 3, 37, 16))
    v = jax.random.normal(kv, (2, 3, 37, 16))
    out = ev.linear_attention(q, k, v, feature_map=feature_map, eps=1e-5, chunk_size=chunk_size)
    assert out.dtype == jnp.float32
    # float32 sums against float64: rtol 1e-5 as for the elu+1 reference above
    np.testing.assert_allclose(out, lite_mla_reference(q, k, v), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(out[0, 0, 0]) == 0)


def test_unknown_feature_map_is_rejected():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="feature_map"):
        ev.linear_attention(x, x, x, feature_map="softmax")
