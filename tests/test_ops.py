"""ops: the depthwise conv against XLA's grouped conv, patch extraction, drop path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from efficientvit_jax import ops
from efficientvit_jax.ops import depthwise_conv2d, drop_path, patchify, pointwise_conv


def xla_depthwise(x, w, stride, pads):
    return lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
    )


@pytest.mark.parametrize(
    "hw,k,stride,pads",
    [
        ((7, 7), 3, 1, ((1, 1), (1, 1))),
        ((8, 6), 3, 2, ((1, 1), (1, 1))),  # PyTorch's padding=1 at stride 2 on even sizes
        ((9, 9), 5, 2, ((2, 2), (2, 2))),
        ((6, 5), 5, 1, ((2, 2), (2, 2))),
        ((10, 10), 1, 2, ((0, 0), (0, 0))),
        ((6, 8), 4, 2, ((1, 2), (1, 2))),  # even kernel, asymmetric pads
        ((7, 7), 3, 1, ((0, 0), (0, 0))),  # valid
    ],
)
def test_shifted_equals_xla_values_and_gradients(hw, k, stride, pads):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, *hw, 5))
    w = jax.random.normal(kw, (k, k, 1, 5))
    ref = xla_depthwise(x, w, stride, pads)
    out = depthwise_conv2d(x, w, stride=stride, padding=pads, impl="shifted")
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        depthwise_conv2d(x, w, stride=stride, padding=pads, impl="xla"), ref, rtol=1e-6
    )

    cot = jax.random.normal(kg, ref.shape)
    g_ref = jax.jit(
        jax.grad(lambda x, w: jnp.sum(xla_depthwise(x, w, stride, pads) * cot), (0, 1))
    )(x, w)
    g_out = jax.jit(
        jax.grad(
            lambda x, w: jnp.sum(
                depthwise_conv2d(x, w, stride=stride, padding=pads, impl="shifted") * cot
            ),
            (0, 1),
        )
    )(x, w)
    for a, b in zip(g_out, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_default_padding_keeps_size_and_auto_picks_shifted_on_cpu():
    x = jax.random.normal(jax.random.key(1), (1, 5, 7, 3))
    w = jax.random.normal(jax.random.key(2), (3, 3, 1, 3))
    out = depthwise_conv2d(x, w)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, xla_depthwise(x, w, 1, ((1, 1), (1, 1))), rtol=1e-5, atol=1e-5)


def test_depthwise_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"kernel \[kh, kw, 1, 3\]"):
        depthwise_conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 1, 4)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        depthwise_conv2d(jnp.ones((4, 4, 3)), jnp.ones((3, 3, 1, 3)))


def test_patchify_matches_edifice_reshape_for_both_formats():
    b, c, h, w, p = 2, 3, 8, 12, 4
    x = np.arange(b * c * h * w, dtype=np.float32).reshape(b, c, h, w)
    # Edifice's expression (SPEC.md section 5), in NumPy.
    expect = (
        x.reshape(b, c, h // p, p, w // p, p)
        .transpose(0, 2, 4, 1, 3, 5)
        .reshape(b, h // p, w // p, c * p * p)
    )
    np.testing.assert_array_equal(patchify(jnp.asarray(x), p, "NCHW"), expect)
    np.testing.assert_array_equal(patchify(jnp.asarray(x.transpose(0, 2, 3, 1)), p, "NHWC"), expect)


def test_drop_path_drops_whole_samples_and_rescales():
    x = jnp.ones((4000, 3, 2))
    y = drop_path(x, 0.25, jax.random.key(3), deterministic=False)
    per_sample = y.reshape(4000, -1)
    kept = per_sample[:, 0] != 0
    # Whole samples are kept or dropped, kept ones scaled by 1/(1 - rate).
    assert bool((per_sample == per_sample[:, :1]).all())
    np.testing.assert_allclose(per_sample[kept], 1 / 0.75, rtol=1e-6)
    assert abs(float(kept.mean()) - 0.75) < 0.03
    assert drop_path(x, 0.25, None, deterministic=True) is x
    with pytest.raises(ValueError, match="rng"):
        drop_path(x, 0.25, None, deterministic=False)


def test_shifted_gradients_keep_input_dtypes_in_bfloat16():
    x = jax.random.normal(jax.random.key(4), (3, 6, 6, 4))
    w = jax.random.normal(jax.random.key(5), (3, 3, 1, 4))
    loss = lambda x, w: jnp.sum(depthwise_conv2d(x, w, impl="shifted").astype(jnp.float32) ** 2)  # noqa: E731
    g32 = jax.jit(jax.grad(loss, (0, 1)))(x, w)
    g16 = jax.jit(jax.grad(loss, (0, 1)))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    for a, b in zip(g16, g32, strict=True):
        assert a.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(a, np.float32), b, atol=0.05 * float(jnp.abs(b).max())
        )


@pytest.mark.parametrize(
    "shape, chunk",
    [
        ((4, 6, 5, 8), 30),  # 30 tokens per image: one image a chunk, 4 chunks
        ((6, 3, 4, 8), 30),  # 12 per image: 2 images a chunk, 3 chunks
        ((5, 7, 8), 16),  # [batch, tokens, C]; 5 images, 7 tokens: 2 fit but 5 is odd -> 1
        ((4, 6, 5, 8), 10**6),  # the whole batch in one product
    ],
)
def test_pointwise_conv_equals_einsum_values_and_gradients(shape, chunk, monkeypatch):
    monkeypatch.setattr(ops, "_POINTWISE_CHUNK_TOKENS", chunk)
    kx, kk, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, shape)
    kernel = jax.random.normal(kk, (8, 12))
    g = jax.random.normal(kg, (*shape[:-1], 12))

    def ref(x, kernel):
        return jnp.einsum("...c,cd->...d", x, kernel, precision=lax.Precision.HIGHEST)

    y, vjp = jax.vjp(lambda x, k: pointwise_conv(x, k, impl="shifted"), x, kernel)
    y_ref, vjp_ref = jax.vjp(ref, x, kernel)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_pointwise_conv_keeps_dtype_and_rejects_bad_kernel():
    x = jnp.ones((2, 3, 3, 4), jnp.bfloat16)
    kernel = jnp.ones((4, 5), jnp.bfloat16)
    grads = jax.grad(lambda x, k: pointwise_conv(x, k).astype(jnp.float32).sum(), (0, 1))(x, kernel)
    assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16]
    # 18 tokens of ones: every kernel gradient entry is exactly 18
    np.testing.assert_array_equal(grads[1].astype(jnp.float32), np.full((4, 5), 18.0))
    with pytest.raises(ValueError, match=r"kernel \[4, D\].*got \(5, 4\)"):
        pointwise_conv(x, jnp.ones((5, 4)))


@pytest.mark.parametrize(
    "hw, k, cin, stride, pads",
    [
        ((9, 9), 3, 3, 2, ((1, 1), (1, 1))),  # an RGB stem: odd size, stride 2
        ((8, 10), 3, 3, 2, ((1, 1), (1, 1))),  # even and non-square
        ((7, 6), 5, 1, 1, ((2, 2), (2, 2))),
        ((6, 6), 2, 4, 2, ((0, 1), (1, 0))),  # even kernel, asymmetric pads
        ((5, 5), 1, 2, 1, ((0, 0), (0, 0))),  # 1x1: the pointwise path
        ((6, 5), 3, 6, 1, ((1, 1), (1, 1))),  # more channels: XLA's conv
    ],
)
def test_conv2d_equals_xla_values_and_gradients(hw, k, cin, stride, pads, monkeypatch):
    monkeypatch.setattr(ops, "_POINTWISE_CHUNK_TOKENS", 40)  # several chunks in the kernel grad
    kx, kk = jax.random.split(jax.random.key(7))
    x = jax.random.normal(kx, (4, *hw, cin))
    kernel = jax.random.normal(kk, (k, k, cin, 5))

    def ref(x, kernel):
        return lax.conv_general_dilated(
            x,
            kernel,
            (stride, stride),
            pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        )

    y, vjp = jax.vjp(lambda x, w: ops.conv2d(x, w, stride=stride, padding=pads), x, kernel)
    y_ref, vjp_ref = jax.vjp(ref, x, kernel)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    g = jax.random.normal(jax.random.key(8), y.shape)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_conv2d_rejects_mismatched_channels():
    with pytest.raises(ValueError, match=r"x \[B, H, W, 3\].*got \(1, 4, 4, 2\)"):
        ops.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 3, 8)))


# --- host arrays --------------------------------------------------------------------------------


def _compiled_during(caplog: pytest.LogCaptureFixture, fn):
    """``fn()`` and the names of the programs JAX compiled while it ran."""
    import logging

    caplog.clear()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        out = fn()
    return out, [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]


def test_device_array_compiles_nothing_and_equals_jnp_asarray(caplog):
    from efficientvit_jax._arrays import device_array

    rng = np.random.default_rng(0)
    host = [rng.normal(size=(i + 2, 7, 3)) for i in range(4)]  # float64, four new shapes
    got, compiled = _compiled_during(
        caplog, lambda: [(device_array(a), device_array(a, jnp.bfloat16)) for a in host]
    )
    assert compiled == []
    for a, (f32, bf16) in zip(host, got, strict=True):
        assert f32.dtype == jnp.float32 and bf16.dtype == jnp.bfloat16  # x64 off, as JAX casts
        assert not f32.committed and not bf16.committed  # placed as jnp.asarray places
        np.testing.assert_array_equal(f32, np.asarray(jnp.asarray(a)))
        # NumPy's bfloat16 rounding is XLA's (to nearest even)
        np.testing.assert_array_equal(bf16, np.asarray(jnp.asarray(a).astype(jnp.bfloat16)))
    on_device = jnp.ones(3)
    assert (
        device_array(on_device) is on_device and device_array(on_device, jnp.float32) is on_device
    )
    assert device_array(on_device, jnp.bfloat16).dtype == jnp.bfloat16


def test_init_runs_once_less_optimised_and_draws_the_same_bits(monkeypatch):
    """``create_train_state`` compiles the model's ``init`` with ``_once.ONCE_OPTIONS`` (less
    optimisation for a program run once), and its variables equal to the bit those of XLA's
    default compile of ``jax.jit(model.init)`` (this test run turns most optimisations off; both
    compiles here run as a user's do, with the flag off)."""
    import optax

    from efficientvit_jax import _once
    from efficientvit_jax.model import EfficientViT, EfficientViTConfig
    from efficientvit_jax.training import create_train_state

    model = EfficientViT(
        EfficientViTConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 2),
            num_classes=10,
        )
    )  # fmt: skip
    x = jnp.zeros((1, 3, 32, 32))
    options = []
    compile_ = jax.stages.Lowered.compile

    def spy(self, compiler_options=None, **kw):
        options.append(compiler_options)
        return compile_(self, compiler_options, **kw)

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        monkeypatch.setattr(jax.stages.Lowered, "compile", spy)
        state = create_train_state(model, optax.sgd(0.1), 0, x)
        monkeypatch.setattr(jax.stages.Lowered, "compile", compile_)
        want = jax.jit(model.init)(jax.random.split(jax.random.PRNGKey(0))[0], x)
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
    assert options == [_once.ONCE_OPTIONS]
    # inside a trace: the jitted init, traced (a compiled program takes no tracers)
    shapes = jax.eval_shape(lambda: create_train_state(model, optax.sgd(0.1), 0, x))
    assert jax.tree.map(lambda a: a.shape, shapes.params) == jax.tree.map(jnp.shape, state.params)
    got = {"params": state.params, "batch_stats": state.batch_stats}
    leaves = jax.tree.leaves(want)
    assert len(leaves) == len(jax.tree.leaves(got)) > 10
    # (at XLA's level 0 the truncated normals of this model came out up to 4 ulp apart)
    for a, b in zip(jax.tree.leaves(got), leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", ["efficientvit_b1", "efficientvit_m0"])
def test_eval_shape_on_the_portable_path_gives_the_same_variables(name, monkeypatch):
    """``ops.eval_shape`` (a model's variables, traced with XLA's conv: a shorter trace) equals
    ``jax.eval_shape`` on the CPU path (the depthwise convs as shifted slices), leaf for leaf;
    the CPU rewrite is not traced at all."""
    from efficientvit_jax.zoo import create_model

    shifted, original = [], ops._shifted_dwconv
    monkeypatch.setattr(ops, "_shifted_dwconv", lambda *a: shifted.append(1) or original(*a))
    model = create_model(name)
    x = jax.ShapeDtypeStruct((1, 3, 64, 64), jnp.float32)
    init = lambda x: model.init(jax.random.key(0), x)  # noqa: E731
    ours = ops.eval_shape(init, x)
    assert shifted == []
    ref = jax.eval_shape(init, x)  # the same function: not served the portable trace
    assert shifted  # the CPU path, on this CPU
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: a == b, ours, ref)))


def test_the_shifted_depthwise_conv_is_traced_once_per_shape_and_inlined(monkeypatch):
    """A model's depthwise convs repeat their shapes (every block of a stage): the CPU kernel's
    slices are traced once per shape and copied into the caller's trace (``jit(inline=True)``):
    no call left in the program, the same values and gradients as the kernel traced inline."""
    taps, original = [], ops._taps
    monkeypatch.setattr(ops, "_taps", lambda *a: taps.append(1) or original(*a))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 5, 3)), jnp.float32)  # a shape no other test uses
    ks = [jnp.asarray(rng.normal(size=(3, 3, 1, 3)), jnp.float32) for _ in range(3)]

    def three(conv, x, ks):
        for k in ks:
            x = jnp.tanh(conv(x, k))
        return x.sum()

    cached = lambda x, k: depthwise_conv2d(x, k, impl="shifted")  # noqa: E731
    inline = lambda x, k: ops._shifted_dwconv_vjp(x, k, 1, ((1, 1), (1, 1)))  # noqa: E731
    jaxpr = jax.make_jaxpr(three, static_argnums=0)(cached, x, ks)
    assert len(taps) == 1  # three convs of one shape: traced once
    # Inlined: no call of the kernel is left in the caller's program.
    calls = [e.params.get("name") for e in jaxpr.jaxpr.eqns if e.primitive.name in ("jit", "pjit")]
    assert not {"_shifted_dwconv_vjp", "_shifted_forward"} & set(calls), calls
    grads = jax.grad(three, argnums=(1, 2))
    want = jax.tree.leaves(grads(inline, x, ks))
    for a, b in zip(jax.tree.leaves(grads(cached, x, ks)), want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
