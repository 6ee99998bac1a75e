"""Layout "edifice": Axon names, parameter counts, a NumPy twin of SPEC.md section 5, from_axon_params."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import efficientvit_jax as ev

_erf = np.vectorize(math.erf)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_layer_norm(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # population variance
    return (x - mu) / np.sqrt(var + 1e-5) * gamma + beta


def np_linear_attention(q, k, v, eps=1e-8):
    phi = lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))  # noqa: E731
    q, k = phi(q), phi(k)
    kv = np.einsum("bhmd,bhme->bhde", k, v)
    den = np.einsum("bhnd,bhd->bhn", q, k.sum(2)) + eps
    return np.einsum("bhnd,bhde->bhne", q, kv) / den[..., None]


def np_edifice(images, p, opts):
    """SPEC.md section 5, written from the text, in float64 NumPy, on Axon's parameter map."""
    ps, embed, depths, heads = (
        opts["patch_size"],
        opts["embed_dim"],
        opts["depths"],
        opts["num_heads"],
    )
    b, c, h, w = images.shape
    x = (
        images.reshape(b, c, h // ps, ps, w // ps, ps)
        .transpose(0, 2, 4, 1, 3, 5)
        .reshape(b, -1, c * ps * ps)
    )
    dense = lambda x, name: x @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
    norm = lambda x, name: np_layer_norm(x, p[name]["gamma"], p[name]["beta"])  # noqa: E731
    x = dense(x, "patch_embed_proj")
    for i, depth in enumerate(depths):
        d = embed * 2**i
        if i > 0:
            x = dense(x, f"downsample_{i}")
        for j in range(depth):
            pre = f"stage_{i}_block_{j}"
            y = norm(x, f"{pre}_norm1")
            n = y.shape[1]
            q, k, v = (
                dense(y, f"{pre}_cga_{t}").reshape(b, n, heads[i], -1).transpose(0, 2, 1, 3)
                for t in "qkv"
            )
            y = np_linear_attention(q, k, v).transpose(0, 2, 1, 3).reshape(b, n, d)
            x = x + dense(y, f"{pre}_cga_proj")
            y = np_gelu(dense(norm(x, f"{pre}_norm2"), f"{pre}_ffn_fc1"))
            padded = np.pad(y, ((0, 0), (1, 1), (0, 0)))
            y = np_gelu(0.25 * padded[:, :-2] + 0.5 * padded[:, 1:-1] + 0.25 * padded[:, 2:])
            x = x + dense(y, f"{pre}_ffn_fc2")
    x = norm(x, "final_norm").mean(1)
    if opts.get("num_classes"):
        x = dense(x, "classifier")
    return x


def random_axon_params(opts, seed=0):
    """An Axon-style parameter map built from SPEC.md's layer list, independently of the package."""
    rng = np.random.default_rng(seed)
    c, ps, embed = opts["in_channels"], opts["patch_size"], opts["embed_dim"]
    p = {}

    def dense(name, n_in, n_out):
        p[name] = {
            "kernel": rng.normal(0, 1 / math.sqrt(n_in), (n_in, n_out)),
            "bias": rng.normal(0, 0.1, n_out),
        }

    def norm(name, n):
        p[name] = {"gamma": rng.uniform(0.5, 1.5, n), "beta": rng.normal(0, 0.1, n)}

    dense("patch_embed_proj", c * ps * ps, embed)
    for i, depth in enumerate(opts["depths"]):
        d = embed * 2**i
        if i:
            dense(f"downsample_{i}", d // 2, d)
        hidden = math.floor(d * opts.get("mlp_ratio", 4.0) + 0.5)
        for j in range(depth):
            pre = f"stage_{i}_block_{j}"
            norm(f"{pre}_norm1", d)
            for t in ("q", "k", "v", "proj"):
                dense(f"{pre}_cga_{t}", d, d)
            norm(f"{pre}_norm2", d)
            dense(f"{pre}_ffn_fc1", d, hidden)
            dense(f"{pre}_ffn_fc2", hidden, d)
    norm("final_norm", embed * 2 ** (len(opts["depths"]) - 1))
    if opts.get("num_classes"):
        dense("classifier", embed * 2 ** (len(opts["depths"]) - 1), opts["num_classes"])
    return p


OPTS = dict(
    image_size=32,
    patch_size=8,
    in_channels=3,
    embed_dim=16,
    depths=(1, 2),
    num_heads=(2, 4),
    num_classes=5,
)


def test_default_parameter_counts():
    for opts, count in (({}, 2_906_880), ({"num_classes": 1000}, 3_163_880)):
        model = ev.build(layout="edifice", **opts)
        shapes = jax.eval_shape(
            model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 224, 224), jnp.float32)
        )
        assert sum(x.size for x in jax.tree.leaves(shapes)) == count


def test_each_block_has_12d2_plus_13d_parameters():
    model = ev.build(layout="edifice")
    params = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 224, 224), jnp.float32)
    )["params"]
    for i, d in enumerate((64, 128, 256)):
        block = {k: v for k, v in params.items() if k.startswith(f"stage_{i}_block_0_")}
        assert sum(x.size for x in jax.tree.leaves(block)) == 12 * d * d + 13 * d


def test_parameter_tree_has_exactly_axon_layer_names():
    model = ev.build(layout="edifice", num_classes=10)
    params = jax.eval_shape(
        model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 3, 224, 224), jnp.float32)
    )["params"]
    expect = {"patch_embed_proj", "downsample_1", "downsample_2", "final_norm", "classifier"}
    for i, depth in enumerate((1, 2, 3)):
        for j in range(depth):
            expect |= {
                f"stage_{i}_block_{j}_{s}"
                for s in (
                    "norm1",
                    "cga_q",
                    "cga_k",
                    "cga_v",
                    "cga_proj",
                    "norm2",
                    "ffn_fc1",
                    "ffn_fc2",
                )
            }
    assert set(params) == expect
    assert set(params["stage_0_block_0_norm1"]) == {"scale", "bias"}
    assert set(params["stage_0_block_0_cga_q"]) == {"kernel", "bias"}


def test_axon_initialisers():
    model = ev.build(
        layout="edifice", **{**OPTS, "embed_dim": 64, "depths": (1, 1), "num_heads": (4, 4)}
    )
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))["params"]
    gamma = np.asarray(params["stage_1_block_0_norm2"]["scale"])
    # Axon's glorot-uniform on a rank-1 shape: U(-sqrt 3, sqrt 3), not ones.
    assert np.abs(gamma).max() <= math.sqrt(3) and gamma.min() < -1 and gamma.max() > 1
    kernel = np.asarray(params["stage_1_block_0_ffn_fc1"]["kernel"])  # 128 -> 512
    limit = math.sqrt(6 / (128 + 512))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
    assert not np.asarray(params["stage_1_block_0_ffn_fc1"]["bias"]).any()


@pytest.fixture(scope="module")
def axon_case():
    params = random_axon_params(OPTS)
    images = np.random.default_rng(1).uniform(0, 1, (3, 3, 32, 32))
    return params, images, np_edifice(images, params, OPTS)


def test_outputs_equal_numpy_twin_of_spec(axon_case):
    params, images, expect = axon_case
    model = ev.build(layout="edifice", **OPTS)
    variables = ev.from_axon_params(params, model.config)
    out = jax.jit(model.apply)(variables, jnp.asarray(images, jnp.float32))
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)
    # NHWC input gives the same tokens and the same outputs.
    nhwc = ev.build(layout="edifice", data_format="NHWC", **OPTS)
    out = jax.jit(nhwc.apply)(variables, jnp.asarray(images.transpose(0, 2, 3, 1), jnp.float32))
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-5)


def test_from_axon_params_reports_every_problem_at_once(axon_case):
    params, _, _ = axon_case
    cfg = ev.EfficientViTConfig(layout="edifice", **OPTS)
    bad = {k: dict(v) for k, v in params.items()}
    del bad["stage_1_block_1_cga_v"]
    del bad["final_norm"]["beta"]
    bad["stage_0_block_0_ffn_fc1"]["kernel"] = np.zeros((16, 63))
    bad["stage_9_block_0_norm1"] = {"gamma": np.ones(3), "beta": np.ones(3)}
    bad["classifier"]["extra"] = np.ones(2)
    with pytest.raises(ValueError) as info:
        ev.from_axon_params(bad, cfg)
    msg = str(info.value)
    assert "5 problem(s)" in msg
    assert "missing layer 'stage_1_block_1_cga_v'" in msg
    assert "missing parameter final_norm.beta" in msg
    assert "stage_0_block_0_ffn_fc1.kernel: expected shape (16, 64), given (16, 63)" in msg
    assert "unexpected layer 'stage_9_block_0_norm1'" in msg
    assert "unexpected parameter classifier.extra" in msg


def test_from_axon_params_needs_the_edifice_layout(axon_case):
    with pytest.raises(ValueError, match="layout='edifice'"):
        ev.from_axon_params(axon_case[0], ev.EfficientViTConfig(**OPTS))


def test_from_axon_params_casts_to_param_dtype_and_accepts_a_params_wrapper(axon_case):
    cfg = ev.EfficientViTConfig(layout="edifice", param_dtype="bfloat16", **OPTS)
    variables = ev.from_axon_params({"params": axon_case[0]}, cfg)
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype("bfloat16")}
