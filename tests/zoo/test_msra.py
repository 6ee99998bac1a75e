"""The MSRA EfficientViT family against timm 1.0's ``efficientvit_msra`` (CPU, float32).

timm models are randomly initialised and their BatchNorm affine parameters,
running statistics and attention biases are randomised too: at timm's init
several residual branches end in a BatchNorm of scale 0 and the biases are 0,
so an untouched model would hide most of the network from the comparison.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need PyTorch (CPU) to run timm")
timm = pytest.importorskip("timm", reason="parity tests need timm's efficientvit_msra reference")

from efficientvit_jax.zoo import msra  # noqa: E402
from efficientvit_jax.zoo.registry import get_config, get_entry, list_models  # noqa: E402

torch.set_num_threads(2)

VARIANTS = [f"efficientvit_m{i}" for i in range(6)]
# 128x160 -> stage grids 8x10, 4x5, 2x3 against windows 7, 7, 4: every stage pads its
# windows, stage 0 has 2x2 windows, and H != W. timm accepts it (no size check in forward).
IMAGE_SHAPE = (2, 3, 128, 160)
ATOL = 1e-4


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.2)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.2)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape, generator=g))
    return model


def _timm_model(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return _randomise(timm.create_model(name, pretrained=False), seed + 1).eval()


def _images(seed: int = 2) -> torch.Tensor:
    return torch.randn(*IMAGE_SHAPE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def m0_state_dict() -> dict:
    return _timm_model("efficientvit_m0").state_dict()


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# --- parity in eval mode ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n, marks=() if n in ("efficientvit_m0", "efficientvit_m4") else pytest.mark.slow
        )
        for n in VARIANTS
    ],
)
def test_eval_logits_and_features_match_timm(name: str) -> None:
    tm = _timm_model(name)
    x = _images()
    with torch.no_grad():
        last, want_feats = tm.forward_intermediates(x)
        want_logits = tm.forward_head(last).numpy()

    cfg = get_config(name)
    variables = msra.msra_from_timm(tm.state_dict(), cfg)
    model = msra.EfficientViTMSRA(cfg)

    @jax.jit
    def run(v, images):
        feats = model.apply(v, images, features=True)
        return feats, model.apply(v, feats[-1], method=model.forward_head)

    feats, logits = run(variables, jnp.asarray(x.numpy()))
    assert logits.shape == (2, 1000)
    # Non-trivial outputs: the comparison below would pass on all-zero logits otherwise.
    assert np.abs(want_logits).max() > 0.5
    assert _max_diff(logits, want_logits) < ATOL
    assert len(feats) == 3
    for i, (got, want) in enumerate(zip(feats, want_feats, strict=True)):
        want = want.permute(0, 2, 3, 1).numpy()  # NCHW -> NHWC
        assert got.shape == want.shape, i
        assert _max_diff(got, want) < ATOL, i
    # timm's feature_info: strides 16, 32, 64 with the stage widths.
    strides = [IMAGE_SHAPE[2] / f.shape[1] for f in feats]
    assert [f["reduction"] for f in tm.feature_info] == [16, 32, 64]
    assert strides[0] == 16 and feats[1].shape[1] == 4 and feats[2].shape[1] == 2
    assert [f.shape[-1] for f in feats] == [f["num_chs"] for f in tm.feature_info]


# --- parity in train mode (BatchNorm batch statistics) -----------------------------------------


@pytest.mark.parametrize("name", ["efficientvit_m0", "efficientvit_m4"])
def test_train_mode_matches_timm(name: str) -> None:
    # In float64 on both sides. Train-mode BatchNorm over few values per channel
    # (stage 2 windows hold 2 x 16 tokens) amplifies float32 rounding to ~2e-4 on
    # the logits; float64 shows the computations agree to ~1e-12.
    with jax.enable_x64(True):
        tm = _timm_model(name, seed=3).double()
        cfg = get_config(name, dtype=jnp.float64, param_dtype=jnp.float64)
        variables = msra.msra_from_timm(tm.state_dict(), cfg)
        old_stats = {k: v.clone() for k, v in tm.state_dict().items() if "running_" in k}
        x = _images(seed=4).double()
        tm.train()
        with torch.no_grad():
            want = tm(x).numpy()
        new_stats = tm.state_dict()

        model = msra.EfficientViTMSRA(cfg)
        logits, updated = jax.jit(
            lambda v, images: model.apply(v, images, train=True, mutable=["batch_stats"])
        )(variables, jnp.asarray(x.numpy()))
        assert logits.dtype == jnp.float64
        assert np.abs(want).max() > 0.5
        np.testing.assert_allclose(np.asarray(logits), want, rtol=0, atol=1e-9)

        checked = 0
        for path, got in jax.tree_util.tree_flatten_with_path(updated["batch_stats"])[0]:
            names = tuple(p.key for p in path)
            key = msra.timm_key("batch_stats", names)
            old, new = old_stats[key].numpy(), new_stats[key].numpy()
            # Running variance as PyTorch updates it (unbiased batch variance): a biased
            # update would be off by n / (n - 1), 5e-2 relative on the head (n = 2).
            np.testing.assert_allclose(np.asarray(got), new, rtol=1e-9, atol=1e-9, err_msg=key)
            assert not np.allclose(np.asarray(got), old), key  # the statistics did move
            checked += 1
        assert checked == 2 * sum(1 for k in old_stats if k.endswith("running_mean"))


# --- parameters and conversion -----------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_matches_timm(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        tm = timm.create_model(name, pretrained=False)
    want = sum(p.numel() for p in tm.parameters())
    shapes = msra.variable_shapes(get_config(name))
    got = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["params"]))
    assert got == want
    n_stats = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes["batch_stats"]))
    assert n_stats == sum(b.numel() for k, b in tm.named_buffers() if "running_" in k)


def test_attention_bias_index_matches_timm() -> None:
    tm = timm.create_model("efficientvit_m0", pretrained=False)
    for stage, res in ((0, 7), (2, 4)):
        attn = tm.stages[stage].blocks[0].mixer.m.attn
        assert attn.resolution == res
        np.testing.assert_array_equal(
            msra.attention_bias_index(res), attn.attention_bias_idxs.numpy()
        )
    assert get_config("efficientvit_m0").window_resolutions() == (7, 7, 4)


def test_wrong_variant_checkpoint_is_refused(m0_state_dict: dict) -> None:
    with pytest.raises(ValueError) as err:
        msra.msra_from_timm(m0_state_dict, get_config("efficientvit_m1"))
    msg = str(err.value)
    # m1 is wider in stage 0 (128 vs 64) and has 2 heads there, not 4.
    assert "'patch_embed.conv1.conv.weight': shape (8, 3, 3, 3)" in msg
    assert "unexpected tensor 'stages.0.blocks.0.mixer.m.attn.qkvs.3.conv.weight'" in msg
    assert msg.count("\n") > 10  # everything at once, not the first problem only


def test_unknown_and_missing_tensors_are_named(m0_state_dict: dict) -> None:
    sd = dict(m0_state_dict)
    del sd["head.linear.bias"]
    sd["stages.0.blocks.0.extra.weight"] = sd["head.bn.weight"]
    sd["stages.0.blocks.0.mixer.m.attn.attention_bias_idxs"] = np.zeros((49, 49), np.int64)
    with pytest.raises(ValueError) as err:
        msra.msra_from_timm(sd, get_config("efficientvit_m0"))
    msg = str(err.value)
    assert "2 tensor(s) do not match" in msg
    assert "missing tensor 'head.linear.bias'" in msg
    assert "unexpected tensor 'stages.0.blocks.0.extra.weight'" in msg
    assert "attention_bias_idxs" not in msg  # a derived buffer: ignored, not reported


def test_other_num_classes_is_refused(m0_state_dict: dict) -> None:
    with pytest.raises(ValueError, match=r"head\.linear\.weight"):
        msra.msra_from_timm(m0_state_dict, get_config("efficientvit_m0", num_classes=10))


def test_a_checkpoint_of_another_class_count_keeps_all_but_timms_classifier(
    m0_state_dict: dict, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As timm's ``pretrained=True, num_classes=n``: only the layer its pretrained config names
    as the classifier (``head.linear``) is left out; the head's BatchNorm loads."""
    from efficientvit_jax.zoo import load_timm_backbone

    classifier = timm.models.get_pretrained_cfg("efficientvit_m0").classifier
    sd = {k: v.numpy() for k, v in m0_state_dict.items()}
    caplog.clear()
    configs = []
    convert = msra.msra_from_timm

    def spy(state_dict, config):  # each conversion traces the model for its variables' shapes
        configs.append(config.num_classes)
        return convert(state_dict, config)

    import dataclasses

    from efficientvit_jax.zoo import registry

    entry = dataclasses.replace(get_entry("efficientvit_m0"), convert=spy)
    monkeypatch.setattr(registry, "get_entry", lambda name: entry)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING):
        variables, dropped = load_timm_backbone(sd, "efficientvit_m0", num_classes=5)
    monkeypatch.undo()
    assert configs == [5, 1000]  # as asked, then at the checkpoint's own count; not headless
    # host arrays to the device without a program for each leaf's shape (zoo.convert)
    assert not [r for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert dropped == sorted(k for k in sd if k.startswith(classifier + "."))
    bn = variables["params"]["head"]["bn"]
    np.testing.assert_array_equal(bn["scale"], sd["head.bn.weight"])
    np.testing.assert_array_equal(
        variables["batch_stats"]["head"]["bn"]["var"], sd["head.bn.running_var"]
    )
    assert "linear" not in variables["params"]["head"]
    full = msra.msra_from_timm(sd, get_config("efficientvit_m0"))  # everything else as loaded
    flat = dict(jax.tree_util.tree_leaves_with_path(full))
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        np.testing.assert_array_equal(leaf, flat[path])


# --- dtypes, layouts, registry -----------------------------------------------------------------


def test_bfloat16_nhwc_close_to_timm_float32(m0_state_dict: dict) -> None:
    # One compile covers two options: bf16 compute (float32 params) and NHWC images.
    tm = _timm_model("efficientvit_m0")
    x = _images()
    with torch.no_grad():
        want = tm(x).numpy()
    cfg = get_config("efficientvit_m0", dtype=jnp.bfloat16, data_format="NHWC")
    v = msra.msra_from_timm(m0_state_dict, cfg)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(v))
    got = jax.jit(msra.EfficientViTMSRA(cfg).apply)(v, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    assert got.dtype == jnp.bfloat16
    got = np.asarray(got, np.float32)
    assert np.isfinite(got).all()
    # bf16 keeps ~3 significant digits; errors grow through ~20 BatchNorms and residuals.
    # A layout mistake (NHWC read as NCHW) would decorrelate the logits entirely.
    assert _max_diff(got, want) < 0.1 * float(np.abs(want).max())
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_no_classifier_returns_pooled_features() -> None:
    cfg = get_config("efficientvit_m0", num_classes=0)
    shapes = msra.variable_shapes(cfg)
    assert "head" not in shapes["params"]
    model = msra.EfficientViTMSRA(cfg)
    feat = jax.random.normal(jax.random.key(0), (2, 2, 3, 192))
    pooled = model.apply({}, feat, method=model.forward_head)
    np.testing.assert_allclose(pooled, feat.mean(axis=(1, 2)), rtol=1e-6)


def test_bad_images_are_refused() -> None:
    model = msra.EfficientViTMSRA(get_config("efficientvit_m0"))
    v = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), msra.variable_shapes(model.config))
    with pytest.raises(ValueError, match=r"NCHW images .*C=3.*\(2, 32, 32, 3\)"):
        model.apply(v, jnp.zeros((2, 32, 32, 3)))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="num_heads"):
        msra.MSRAConfig(embed_dim=(64, 128, 190))
    with pytest.raises(ValueError, match="data_format"):
        msra.MSRAConfig(data_format="CHW")
    with pytest.raises(ValueError, match="kernels"):
        msra.MSRAConfig(num_heads=(4, 4, 8), embed_dim=(64, 128, 192))


def test_registry_entries() -> None:
    assert list_models("efficientvit_m*") == VARIANTS
    for name in VARIANTS:
        entry = get_entry(name)
        assert entry.family == "msra"
        assert entry.module is msra.EfficientViTMSRA
        assert entry.convert is msra.msra_from_timm
        assert entry.top1 is not None and 60 < entry.top1 < 80 and entry.top1_source
    assert get_entry("efficientvit_m5").config.depth == (1, 3, 4)
