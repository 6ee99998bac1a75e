"""The EfficientViT module: Edifice's own cases, both layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import efficientvit_jax as ev

# SPEC.md section 6: Edifice's test cases (images 32x32, patch 8, 3 channels).
EDIFICE_CASES = [
    (dict(embed_dim=32, depths=(1, 2), num_heads=(4, 4)), 64),
    (dict(embed_dim=32, depths=(1, 2), num_heads=(4, 4), num_classes=10), 10),
    (dict(embed_dim=32, depths=(2,), num_heads=(4,)), 32),
    (dict(embed_dim=16, depths=(1, 1, 1), num_heads=(2, 2, 2)), 64),
]


@pytest.mark.parametrize("layout", ["cascaded", "edifice"])
@pytest.mark.parametrize("opts,size", EDIFICE_CASES)
def test_edifice_cases(layout, opts, size, random_variables):
    model = ev.build(image_size=32, patch_size=8, in_channels=3, layout=layout, **opts)
    assert ev.output_size(model.config) == size
    assert ev.output_size(image_size=32, patch_size=8, layout=layout, **opts) == size
    x5 = jax.random.uniform(jax.random.key(1), (5, 3, 32, 32))
    variables = random_variables(model, x5)
    apply = jax.jit(model.apply)
    for batch in (1, 2, 5):
        out = apply(variables, x5[:batch])
        assert out.shape == (batch, size)
        assert bool(jnp.isfinite(out).all())
        # Samples do not interact: each row is what the sample gives alone.
        np.testing.assert_allclose(out[-1], apply(variables, x5[batch - 1 : batch])[0], atol=1e-5)


# A small model per layout, shared by the tests below: compile time dominates on CPU.
TINY = dict(
    image_size=32, patch_size=8, embed_dim=16, depths=(1, 2), num_heads=(2, 4), num_classes=6
)


@pytest.fixture(scope="module", params=["cascaded", "edifice"])
def tiny(request):
    model = ev.build(layout=request.param, **TINY)
    images = jax.random.uniform(jax.random.key(7), (3, 3, 32, 32))
    variables = jax.jit(model.init)(jax.random.key(0), images)
    return model, variables, images


def test_jit_equals_eager(tiny):
    model, variables, images = tiny
    np.testing.assert_allclose(
        jax.jit(model.apply)(variables, images),
        model.apply(variables, images),
        rtol=1e-5,
        atol=1e-6,
    )


def test_vmap_over_parameter_sets_equals_separate_calls(tiny):
    model, _, images = tiny
    keys = jax.random.split(jax.random.key(11), 3)
    stacked = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(keys, images)
    outs = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(stacked, images)
    apply = jax.jit(model.apply)
    for i in range(3):
        one = jax.tree.map(lambda x, i=i: x[i], stacked)
        np.testing.assert_allclose(outs[i], apply(one, images), rtol=1e-5, atol=1e-6)
    assert not np.allclose(outs[0], outs[1])


def test_gradients_are_finite_and_nonzero_for_every_leaf(tiny):
    model, variables, images = tiny
    labels = jnp.arange(3) % 6

    def loss(params):
        logits = model.apply({"params": params}, images)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert bool(jnp.isfinite(g).all()), path
        assert float(jnp.abs(g).max()) > 0, path


def test_same_seed_same_model_different_seed_different_model(tiny):
    model, variables, images = tiny
    init = jax.jit(model.init)
    again = init(jax.random.key(0), images)
    other = init(jax.random.key(1), images)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)
    kernels = [
        (a, b)
        for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(other), strict=True)
        if a.ndim >= 2
    ]
    assert all(not np.array_equal(a, b) for a, b in kernels)
    apply = jax.jit(model.apply)
    np.testing.assert_array_equal(apply(variables, images), apply(again, images))
    assert not np.allclose(apply(variables, images), apply(other, images))


def test_nhwc_equals_nchw(tiny):
    model, variables, images = tiny
    nhwc = ev.build(model.config, data_format="NHWC")
    np.testing.assert_allclose(
        jax.jit(nhwc.apply)(variables, images.transpose(0, 2, 3, 1)),
        jax.jit(model.apply)(variables, images),
        rtol=1e-5,
        atol=1e-6,
    )


def test_non_square_images_and_stage_grids():
    # 5 x 3 patches: the cascaded layout pads odd grids to even before each 2x2 merge.
    model = ev.build(layout="cascaded", **TINY)
    x = jnp.ones((2, 3, 40, 24))
    (out, state) = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), x, mutable=["params", "intermediates"])
    )
    assert out.shape == (2, 6)
    grids = [state["intermediates"][f"stage_{i}"][0].shape for i in range(2)]
    assert grids == [(2, 5, 3, 16), (2, 3, 2, 32)]
    edifice = ev.build(layout="edifice", **TINY)
    (out, state) = jax.eval_shape(
        lambda: edifice.init_with_output(jax.random.key(0), x, mutable=["params", "intermediates"])
    )
    assert out.shape == (2, 6)
    assert state["intermediates"]["stage_1"][0].shape == (
        2,
        5,
        3,
        32,
    )  # Edifice never shrinks the grid


@pytest.mark.parametrize(
    "shape,fragment",
    [
        ((3, 32, 32), "rank 3"),
        ((1, 1, 3, 32, 32), "rank 5"),
        ((2, 4, 32, 32), "with 4 channels"),
        ((2, 32, 32, 3), "with 32 channels"),  # NHWC given to an NCHW model
        ((2, 3, 36, 32), "H=36"),
        ((2, 3, 32, 20), "W=20"),
        ((2, 3, 0, 32), "H=0"),
    ],
)
def test_bad_images_raise_expected_and_given_shape(shape, fragment):
    model = ev.build(**TINY)
    variables = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 32, 32), jnp.float32)
    )
    with pytest.raises(ValueError) as info:
        # Abstract evaluation: the check fires at trace time, before any computation.
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    msg = str(info.value)
    assert f"given shape {shape}" in msg and "('B', '3', 'H', 'W')" in msg and fragment in msg, msg


def test_drop_path_only_in_training_one_mask_per_block(monkeypatch):
    import efficientvit_jax.layers as layers

    model = ev.build(**{**TINY, "drop_path_rate": 0.5})
    x = jax.random.uniform(jax.random.key(3), (8, 3, 32, 32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    apply = jax.jit(model.apply, static_argnames="train")
    eval_out = apply(variables, x)
    np.testing.assert_array_equal(
        eval_out, apply(variables, x, train=False, rngs={"dropout": jax.random.key(1)})
    )
    with pytest.raises(Exception, match="dropout"):
        model.apply(variables, x, train=True)  # needs the 'dropout' stream
    a = apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, eval_out) and not np.allclose(a, b)
    np.testing.assert_array_equal(
        a, apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    )

    seen = []
    real = layers.drop_path

    def spy(y, rate, rng, *, deterministic):
        if not deterministic:
            seen.append((rate, tuple(np.asarray(jax.random.key_data(rng)).ravel())))
        return real(y, rate, rng, deterministic=deterministic)

    monkeypatch.setattr(layers, "drop_path", spy)
    model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    # 3 blocks: rates 0, 0.25, 0.5 rising linearly; the first block's rate is 0 (inactive).
    assert sorted({r for r, _ in seen}) == [0.25, 0.5]
    assert len(seen) == 4 and len({k for _, k in seen}) == 4  # a fresh key at every residual


def test_bfloat16_compute_with_float32_params():
    model = ev.build(**{**TINY, "dtype": "bfloat16"})
    ref = ev.build(**TINY)
    x = jax.random.uniform(jax.random.key(3), (2, 3, 32, 32))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype("float32")}
    out = jax.jit(model.apply)(variables, x)
    assert out.dtype == jnp.bfloat16
    expect = jax.jit(ref.apply)(variables, x)
    np.testing.assert_allclose(
        np.asarray(out, np.float32), expect, atol=0.1 * float(jnp.abs(expect).max())
    )
    grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, x).astype(jnp.float32).sum()))(
        variables["params"]
    )
    assert all(
        g.dtype == jnp.float32 and bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads)
    )


def test_linen_model_traces_under_nnx_bridge():
    from flax import nnx

    model = ev.build(**TINY)
    x = jax.random.uniform(jax.random.key(3), (2, 3, 32, 32))
    wrapped = nnx.bridge.ToNNX(model, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(wrapped, x)
    out = wrapped(x)
    params = nnx.to_pure_dict(nnx.state(wrapped, nnx.Param))
    np.testing.assert_allclose(out, model.apply({"params": params}, x), rtol=1e-5, atol=1e-6)


def test_features_are_every_stage_grid(tiny):
    model, variables, images = tiny
    feats = jax.jit(lambda v, x: model.apply(v, x, features=True))(variables, images)
    _, state = model.apply(variables, images, mutable=["intermediates"])
    sown = [state["intermediates"][f"stage_{i}"][0] for i in range(2)]
    # 32x32 images, patch 8: a 4x4 grid; the cascaded layout halves it, Edifice's keeps it.
    grids = [(4, 4), (2, 2)] if model.config.layout == "cascaded" else [(4, 4), (4, 4)]
    assert [f.shape for f in feats] == [(3, *g, d) for g, d in zip(grids, (16, 32), strict=True)]
    for f, s in zip(feats, sown, strict=True):
        np.testing.assert_allclose(f, s, rtol=1e-5, atol=1e-6)
