"""EfficientViT-Seg: the registered variants, output shapes and layouts, the logits' resize, a
training step. (Equality with MIT's code: ``test_seg_parity.py``.)"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficientvit_jax.zoo import (
    create_model,
    get_config,
    get_entry,
    list_models,
    load_mit_weights,
    pretrained_file,
)
from efficientvit_jax.zoo.seg import MIOU, EfficientViTSeg, SegConfig, resize_logits

B0 = get_config("efficientvit_b0")
# a minimal backbone (one block per stage, still with attention stages): the train step's
# XLA compile on B0 costs ~45 s on 2 CPU cores; the head under test is the same
TINY = dataclasses.replace(
    B0, widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8, head_widths=(32, 32)
)
PUBLISHED = [
    *(f"efficientvit_seg_{b}_cityscapes" for b in ("b0", "b1", "b2", "b3", "l1", "l2")),
    *(f"efficientvit_seg_{b}_ade20k" for b in ("b1", "b2", "b3", "l1", "l2")),
]


def test_the_11_variants_are_registered_under_both_spellings() -> None:
    assert list_models("efficientvit_seg_*") == sorted(PUBLISHED)
    assert not set(list_models("efficientvit_[bl]*")) & set(PUBLISHED)  # the classifiers' pattern
    for name in PUBLISHED:
        entry = get_entry(name.replace("_", "-"))  # MIT's spelling
        assert entry.name == name and entry.task == "segmentation"
        assert entry.dataset == name.rsplit("_", 1)[1] and entry.backbone is not None
        assert entry.miou == MIOU[(entry.backbone, entry.dataset)] and entry.miou_source
        assert get_config(name.replace("_", "-")) == entry.config
    assert get_entry("efficientvit_seg_l2_ade20k").miou == 50.702
    assert create_model("efficientvit-seg-b0-cityscapes", num_classes=3).config.num_classes == 3
    with pytest.raises(ValueError, match="no reader for MIT's checkpoints"):
        load_mit_weights({}, "efficientvit_b0")
    for name in PUBLISHED:  # where MIT publishes each (the links of MIT's seg README)
        assert pretrained_file(name) == ("han-cai/efficientvit-seg", f"{name}.pt")


@pytest.mark.parametrize(
    "name", ["efficientvit_seg_b0_cityscapes", "efficientvit_seg_l1_cityscapes"]
)  # fmt: skip
@pytest.mark.parametrize("data_format", ["NCHW", "NHWC"])
def test_logits_at_stride_8_in_the_data_format(name: str, data_format: str) -> None:
    """``jax.eval_shape``: nothing is computed. (L1 Cityscapes: FusedMBConv, no final conv.)"""
    model = create_model(name, data_format=data_format)
    shape = (2, 3, 64, 128) if data_format == "NCHW" else (2, 64, 128, 3)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    want = (2, 19, 8, 16) if data_format == "NCHW" else (2, 8, 16, 19)
    assert out.shape == want


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_resize_logits_equals_torch_interpolate(method: str) -> None:
    """MIT's evaluation resize (``F.interpolate``, ``align_corners=False``) at integer and
    arbitrary factors, larger and smaller, in both layouts."""
    torch = pytest.importorskip("torch", reason="torch is the reference")
    x = np.random.default_rng(0).normal(size=(2, 5, 16, 32)).astype(np.float32)
    resize = jax.jit(resize_logits, static_argnames=("size", "data_format", "method"))
    for size in [(128, 256), (37, 91), (7, 13)]:
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(x), size=size, mode=method, align_corners=False
        ).numpy()
        nchw = resize(jnp.asarray(x), size, method=method)  # the default: MIT's layout
        nhwc = resize(jnp.asarray(x.transpose(0, 2, 3, 1)), size, data_format="NHWC", method=method)
        tol = 1e-5 * np.abs(ref).max()
        np.testing.assert_allclose(np.asarray(nchw), ref, rtol=0, atol=tol, err_msg=str(size))
        np.testing.assert_allclose(
            np.asarray(nhwc).transpose(0, 3, 1, 2), ref, rtol=0, atol=tol, err_msg=str(size)
        )


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
def test_resize_to_a_symbolic_size_equals_torch_interpolate(method: str) -> None:
    """Upsampling by 2 and 4 (the head's factors) with symbolic sizes (``jax.export`` of a
    segmentation model with a symbolic image size): one program, run at two sizes, each equal
    to ``F.interpolate`` with ``align_corners=False``."""
    torch = pytest.importorskip("torch", reason="torch is the reference")
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, c, h, w"), jnp.float32)
    for s in (2, 4):
        up = jax.export.export(
            jax.jit(
                lambda x, s=s: resize_logits(x, (x.shape[2] * s, x.shape[3] * s), method=method)
            )
        )(spec)
        for shape in [(2, 3, 4, 8), (1, 2, 9, 5)]:
            x = np.random.default_rng(s).normal(size=shape).astype(np.float32)
            ref = torch.nn.functional.interpolate(
                torch.from_numpy(x), scale_factor=s, mode=method, align_corners=False
            ).numpy()
            got = np.asarray(up.call(x))
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_non_square_train_step_lowers_loss(random_variables: Any) -> None:
    """64x96 input -> stride-8 logits resized to the labels; one adam step on a fixed batch
    lowers the cross-entropy (the resize is differentiable)."""
    cfg = SegConfig(TINY, num_classes=5, head_width=16, head_depth=1, final_expand=2)
    model = EfficientViTSeg(dataclasses.replace(cfg, data_format="NHWC"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 64, 96, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, size=(2, 64, 96)))
    # random values on eval_shape's tree: a jitted ``init`` costs ~25 s of XLA compile on
    # CPU (the RNG), the step below ~10 s
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    variables = random_variables(shapes, 0)
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == {"backbone", "head"} and "head" not in params["backbone"]
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)

    def loss_fn(p: Any, s: Any) -> tuple[jax.Array, Any]:
        logits, new = model.apply(
            {"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"]
        )
        full = resize_logits(logits, labels.shape[1:], data_format="NHWC")
        loss = optax.softmax_cross_entropy_with_integer_labels(full, labels).mean()
        return loss, (logits, new["batch_stats"])

    @jax.jit
    def step(p: Any, s: Any, o: Any) -> Any:
        (loss, (logits, s)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), s, o, loss, logits

    params, stats, opt_state, loss0, logits = step(params, stats, opt_state)
    assert logits.shape == (2, 8, 12, 5)
    assert np.isfinite(np.asarray(loss0))
    _, _, _, loss1, _ = step(params, stats, opt_state)
    # same batch, one adam step: a real decrease, not noise
    assert float(loss1) < float(loss0) - 1e-3, (float(loss0), float(loss1))


def test_indivisible_input_is_rejected() -> None:
    model = EfficientViTSeg(SegConfig(B0, num_classes=3, head_width=8, head_depth=1))
    with pytest.raises(ValueError, match="divisible by 32"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 64, 80)))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="middle_op"):
        SegConfig(B0, middle_op="fmbconv")
    with pytest.raises(ValueError, match="data_format"):
        SegConfig(B0, data_format="CHW")


def test_convert_without_input_looks_in_the_hub_cache(
    tmp_path: Any, capsys: Any, monkeypatch: Any
) -> None:
    """Without ``--input``, MIT's published checkpoint is read from huggingface_hub's cache;
    offline with an empty cache: one line naming the repository and file, nothing written."""
    import importlib

    import huggingface_hub.constants as constants

    from efficientvit_jax.cli import main

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network, whatever the machine
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    importlib.reload(constants)  # it reads the environment once, at import
    try:
        out = tmp_path / "out"
        argv = ["convert", "--model", "efficientvit-seg-b0-cityscapes", "--output", str(out)]
        assert main(argv) == 2
    finally:
        monkeypatch.undo()
        importlib.reload(constants)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert "weights han-cai/efficientvit-seg efficientvit_seg_b0_cityscapes.pt are not in" in err
    assert err.endswith(
        "without network, give --weights FILE (convert: --input FILE): "
        "the checkpoint, downloaded elsewhere"
    )
    assert not out.exists()


def test_remat_keeps_the_tree_the_gradients_and_the_statistics(random_variables: Any) -> None:
    """``remat`` recomputes the backbone's blocks in the backward pass: same variables, same
    gradients and BatchNorm statistics (float32, 1e-5), and far fewer residuals kept between
    the passes (JAX's own VJP closure, measured abstractly)."""
    cfg = SegConfig(TINY, num_classes=5, head_width=16, head_depth=1, final_expand=2)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 64, 64)), jnp.float32)
    base = EfficientViTSeg(cfg)
    shapes = jax.eval_shape(base.init, jax.random.PRNGKey(0), x)
    variables = random_variables(shapes, 0)

    def run(model: Any) -> tuple[Any, Any]:
        def loss(p: Any) -> tuple[jax.Array, Any]:
            out, new = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
                mutable=["batch_stats"],
            )  # fmt: skip
            return (out**2).mean(), new["batch_stats"]

        return jax.jit(jax.grad(loss, has_aux=True))(variables["params"])

    def residual_bytes(model: Any) -> int:
        def loss(p: Any) -> jax.Array:
            return model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                               train=True, mutable=["batch_stats"])[0].sum()  # fmt: skip

        res = jax.eval_shape(lambda p: jax.vjp(loss, p)[1], variables["params"])
        return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(res))

    ref = run(base)
    remat = EfficientViTSeg(dataclasses.replace(cfg, remat="block"))
    assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.PRNGKey(0), x)) == (
        jax.tree.structure(shapes)
    )
    for a, b in zip(jax.tree.leaves(run(remat)), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert residual_bytes(remat) < 0.5 * residual_bytes(base)
    assert create_model("efficientvit_seg_b0_cityscapes", remat="block").config.remat == "block"
    with pytest.raises(ValueError, match="remat must be one of"):
        SegConfig(TINY, remat="everything")
