"""MIT EfficientViT (B0-B3, L1-L3) against timm 1.0: logits, features, BatchNorm, parameter counts."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax.zoo import mit
from efficientvit_jax.zoo.mit import MIT_CONFIGS, EfficientViTMIT, mit_from_timm, variable_shapes

VARIANTS = list(MIT_CONFIGS)
FAST = {"efficientvit_b0", "efficientvit_b1"}
ATOL = 1e-4


def _params(name: str) -> list[Any]:
    marks = [] if name in FAST else [pytest.mark.slow]
    return [pytest.param(name, marks=marks, id=name)]


def _randomised_timm(timm: Any, name: str, seed: int = 0) -> Any:
    """A timm model with random weights *and* random BatchNorm/LayerNorm statistics and affines."""
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
            if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.2)
    return model


def _images(seed: int = 0, size: int = 64) -> np.ndarray:
    # 64x64 is the smallest size with a 2x2 (not 1x1) map in the last stage, so that
    # attention, BatchNorm's batch statistics and the pooling see more than one token.
    return np.random.default_rng(seed).normal(size=(2, 3, size, size)).astype(np.float32)


def _forward(cfg: mit.MITConfig, variables: Any, x: np.ndarray, *, train: bool = False):
    """One jitted forward: logits, the four sown stage maps and the mutated batch_stats."""
    model = EfficientViTMIT(cfg)

    def run(v: Any, x: jax.Array) -> Any:
        return model.apply(v, x, train=train, mutable=["intermediates", "batch_stats"])

    logits, state = jax.jit(run)(variables, jnp.asarray(x))
    feats = [state["intermediates"][f"stage_{i}"][0] for i in range(4)]
    return np.asarray(logits), [np.asarray(f) for f in feats], state.get("batch_stats")


@pytest.mark.parametrize("name", [p for n in VARIANTS for p in _params(n)])
def test_matches_timm_eval(timm: Any, name: str) -> None:
    import torch

    model = _randomised_timm(timm, name).eval()
    x = _images()
    with torch.no_grad():
        ref, ref_feats = model.forward_intermediates(torch.from_numpy(x))
        ref_logits = model.forward_head(ref).numpy()
    cfg = MIT_CONFIGS[name]
    logits, feats, _ = _forward(cfg, mit_from_timm(model.state_dict(), cfg), x)

    assert logits.shape == (2, 1000)
    # the logits are O(1) here, so an absolute 1e-4 is also a relative one
    assert 0.1 < np.abs(ref_logits).max() < 100
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=ATOL)
    for stride, f, r in zip((4, 8, 16, 32), feats, ref_feats, strict=True):
        r = r.numpy().transpose(0, 2, 3, 1)
        assert f.shape == (2, 64 // stride, 64 // stride, r.shape[-1])
        np.testing.assert_allclose(f, r, rtol=0, atol=ATOL * max(1.0, np.abs(r).max()))


@pytest.mark.parametrize("name", ["efficientvit_b0", "efficientvit_b1"])
def test_matches_timm_train_batchnorm(timm: Any, name: str) -> None:
    """Batch statistics in the outputs and PyTorch's running-stat update (unbiased variance)."""
    import torch

    model = _randomised_timm(timm, name, seed=1)
    cfg = MIT_CONFIGS[name]
    before = mit_from_timm(model.state_dict(), cfg)
    x = _images(seed=1)
    model.train()
    with torch.no_grad():
        ref_logits = model(torch.from_numpy(x)).numpy()
    after = mit_from_timm(model.state_dict(), cfg)["batch_stats"]

    logits, _, stats = _forward(cfg, before, x, train=True)
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=ATOL)
    # the update must have moved the statistics, or the comparison below proves nothing
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before["batch_stats"], after)
    assert min(jax.tree.leaves(moved)) > 1e-3
    flat_ref = jax.tree_util.tree_leaves_with_path(after)
    flat_got = dict(jax.tree_util.tree_leaves_with_path(stats))
    for path, ref in flat_ref:
        np.testing.assert_allclose(
            np.asarray(flat_got[path]), ref, rtol=1e-4, atol=1e-5, err_msg=str(path)
        )


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_equals_timm(timm: Any, name: str) -> None:
    import torch

    with torch.device("meta"):  # shapes only: no memory, no init cost
        ref = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
    shapes = variable_shapes(MIT_CONFIGS[name])
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"])) == ref


def test_registry_entries() -> None:
    from efficientvit_jax.zoo.registry import create_model, get_entry, list_models

    assert set(list_models("efficientvit_[bl]*")) >= set(VARIANTS)
    for name in VARIANTS:
        entry = get_entry(name)
        assert entry.family == "mit" and entry.config == MIT_CONFIGS[name]
        assert (entry.top1 is None) == (entry.top1_source is None)
    assert create_model("efficientvit_b2", num_classes=10).config.num_classes == 10


def test_bfloat16_close_to_float32(random_variables: Any) -> None:
    cfg = MIT_CONFIGS["efficientvit_b0"]
    v = random_variables(variable_shapes(cfg), 3)
    x = _images(seed=3)
    ref, _, _ = _forward(cfg, v, x)
    cfg16 = dataclasses.replace(cfg, dtype=jnp.bfloat16)
    got, feats, _ = _forward(cfg16, v, x)
    assert got.dtype == jnp.bfloat16 and feats[-1].dtype == jnp.bfloat16
    got = got.astype(np.float32)
    assert np.isfinite(got).all() and all(np.isfinite(f.astype(np.float32)).all() for f in feats)
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() < 0.1 * scale
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99


def test_linear_attention_float32_inside_bf16() -> None:
    """Sums over many tokens overflow bf16's precision, not float32's: the result stays finite."""
    rng = np.random.default_rng(0)
    n, d = 4096, 16
    q, k, v = (jnp.asarray(rng.uniform(0, 60, (1, 2, n, d)), jnp.bfloat16) for _ in range(3))
    out = mit.relu_linear_attention(q, k, v)
    ref = mit.relu_linear_attention(*(a.astype(jnp.float32) for a in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out, np.float32)).all()
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), rtol=2e-2)
    # with ReLU all-zero queries, the eps keeps the output 0 instead of 0/0
    zero = mit.relu_linear_attention(-jnp.ones((1, 4, d)), k[0, 0, :4], v[0, 0, :4])
    assert np.all(np.asarray(zero, np.float32) == 0)


def test_nhwc_equals_nchw_and_non_square_features(random_variables: Any) -> None:
    cfg = MIT_CONFIGS["efficientvit_b0"]
    v = random_variables(variable_shapes(cfg), 4)
    x = np.random.default_rng(4).normal(size=(1, 3, 64, 96)).astype(np.float32)
    ref, feats, _ = _forward(cfg, v, x)
    assert [f.shape for f in feats] == [
        (1, 16, 24, 16),
        (1, 8, 12, 32),
        (1, 4, 6, 64),
        (1, 2, 3, 128),
    ]
    cfg_nhwc = dataclasses.replace(cfg, data_format="NHWC")
    got, _, _ = _forward(cfg_nhwc, v, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_bad_images_rejected() -> None:
    model = EfficientViTMIT(MIT_CONFIGS["efficientvit_b0"])
    shapes = variable_shapes(MIT_CONFIGS["efficientvit_b0"])
    v = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    with pytest.raises(ValueError, match="3 channels"):
        model.apply(v, jnp.zeros((1, 4, 64, 64)))
    with pytest.raises(ValueError, match="divisible by 32"):
        model.apply(v, jnp.zeros((1, 3, 64, 48)))
    with pytest.raises(ValueError, match="rank-4"):
        model.apply(v, jnp.zeros((3, 64, 64)))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        mit.MITConfig(head_dim=24)
    with pytest.raises(ValueError, match="act"):
        mit.MITConfig(act="swish")
    with pytest.raises(ValueError, match="stage_kinds"):
        mit.MITConfig(stage_kinds=("mbconv",))
