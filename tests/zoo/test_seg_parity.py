"""EfficientViT-Seg against MIT's own code: the 11 published variants, and MIT's checkpoint files.

The reference is MIT's ``efficientvit`` package from PyPI's ``efficientvit-gml`` (see
``_mit_reference.py``; the README's test command installs it). It is required: without it these
tests fail, saying how to install it. Each variant is built by MIT's ``create_seg_model`` with
random weights and perturbed BatchNorm statistics and affines, its state dict converted by
``load_mit_weights``, and its stride-8 logits compared at a non-square input, NCHW and NHWC.

The input is 128x256, not the issue's 256x512: the same programs on a quarter of the pixels
(every stage still has a non-square map, 4x8 at stride 32), so that the 22 compilations and
11 forwards stay a small part of the suite on 2 cores.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from efficientvit_jax.cli import main
from efficientvit_jax.zoo import (
    create_model,
    load_converted,
    load_mit_weights,
    seg_from_timm_backbone,
)
from efficientvit_jax.zoo.convert import ConversionError
from efficientvit_jax.zoo.seg import SEG_HEADS, seg_name, variable_shapes

HERE = Path(__file__).resolve().parent
SIZE = (128, 256)  # height, width: non-square, a multiple of 32
BATCH = 1  # (the backbone's batch handling is tested at 2 against timm, test_mit.py)
NAMES = [seg_name(b, d) for b, d in SEG_HEADS]
# One of each backbone family and head form run without -m slow: B0 (MBConv head with
# final_expand) and L1 on ADE20K (FusedMBConv head with final_expand, the L backbone).
FAST = {"efficientvit_seg_b0_cityscapes", "efficientvit_seg_l1_ade20k"}


def _reference_module() -> Any:
    spec = importlib.util.spec_from_file_location("evit_mit_reference", HERE / "_mit_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def mit_create_seg_model() -> Any:
    """MIT's ``create_seg_model``; a missing reference fails the test (never skips it)."""
    try:
        create = _reference_module().load_create_seg_model()
    except RuntimeError as e:
        pytest.fail(str(e))
    import torch

    torch.set_num_threads(2)
    return create


def _randomised(create: Any, name: str, seed: int = 0) -> Any:
    """MIT's model ``name`` in eval mode: random weights, BatchNorm statistics and affines."""
    import torch

    _, _, variant, dataset = name.split("_")
    torch.manual_seed(seed)
    model = create(variant, dataset, pretrained=False).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def mit_b0(mit_create_seg_model: Any) -> Any:
    return _randomised(mit_create_seg_model, "efficientvit_seg_b0_cityscapes")


def _max_diff(model: Any, variables: Any, x: np.ndarray, ref: np.ndarray) -> float:
    got = np.asarray(jax.jit(model.apply)(variables, x))
    assert got.shape == ref.shape
    return float(np.abs(got - ref).max())


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in NAMES]
)
def test_logits_equal_mit(mit_create_seg_model: Any, name: str) -> None:
    """Stride-8 logits within 1e-4 of their scale, NCHW (MIT's layout) and NHWC."""
    import torch

    model = _randomised(mit_create_seg_model, name)
    x = np.random.default_rng(0).normal(size=(BATCH, 3, *SIZE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    classes = SEG_HEADS[tuple(name.replace("seg_", "").rsplit("_", 1))]["num_classes"]
    assert ref.shape == (BATCH, classes, SIZE[0] // 8, SIZE[1] // 8)
    scale = float(np.abs(ref).max())
    assert 0.1 < scale < 1e4, scale  # a meaningful output, neither vanished nor exploded
    variables = load_mit_weights(model.state_dict(), name)

    nchw = _max_diff(create_model(name), variables, x, ref)
    nhwc = _max_diff(
        create_model(name, data_format="NHWC"),
        variables,
        x.transpose(0, 2, 3, 1),
        ref.transpose(0, 2, 3, 1),
    )
    print(f"{name}: scale {scale:.3g}, max |diff| NCHW {nchw:.3g}, NHWC {nhwc:.3g}")
    assert nchw <= 1e-4 * scale and nhwc <= 1e-4 * scale, (scale, nchw, nhwc)


def _same(a: Any, b: Any) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_files_load_and_convert(mit_b0: Any, tmp_path: Path) -> None:
    """MIT's ``.pt`` layout (``{"state_dict": ...}``), a bare state dict, safetensors, and
    ``efficientvit-jax convert`` of the ``.pt`` file to an orbax folder: the same variables."""
    import torch
    from safetensors.torch import save_file

    sd = mit_b0.state_dict()
    want = load_mit_weights(sd, "efficientvit_seg_b0_cityscapes")
    torch.save({"state_dict": sd, "epoch": 7}, tmp_path / "b0.pt")
    torch.save(sd, tmp_path / "bare.pt")
    tensors = {k: v.contiguous() for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    save_file(tensors, str(tmp_path / "b0.safetensors"))
    for file in ("b0.pt", "bare.pt", "b0.safetensors"):
        _same(load_mit_weights(tmp_path / file, "efficientvit-seg-b0-cityscapes"), want)

    out = tmp_path / "converted"
    argv = ["convert", "--model", "efficientvit-seg-b0-cityscapes"]
    assert main([*argv, "--input", str(tmp_path / "b0.pt"), "--output", str(out)]) == 0
    module, variables = load_converted(out)
    assert module.config == create_model("efficientvit_seg_b0_cityscapes").config
    _same(variables, want)


def _shapes(create: Any, name: str) -> dict[str, tuple[int, ...]]:
    sd = _randomised(create, name).state_dict()
    return {k: tuple(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def test_another_variants_checkpoint_names_every_tensor(mit_create_seg_model: Any) -> None:
    """B1's ADE20K checkpoint read as B0's Cityscapes: one error naming every tensor that
    differs (B1 is deeper and wider, and its head has no final conv before the classifier:
    tensors missing, unexpected and mis-shaped, all at once)."""
    b0 = _shapes(mit_create_seg_model, "efficientvit_seg_b0_cityscapes")
    b1_sd = _randomised(mit_create_seg_model, "efficientvit_seg_b1_ade20k").state_dict()
    b1 = _shapes(mit_create_seg_model, "efficientvit_seg_b1_ade20k")
    want = (
        {("missing", k) for k in b0.keys() - b1.keys()}
        | {("unexpected", k) for k in b1.keys() - b0.keys()}
        | {("shape", k) for k in b0.keys() & b1.keys() if b0[k] != b1[k]}
    )
    assert {kind for kind, _ in want} == {"missing", "unexpected", "shape"}
    with pytest.raises(ConversionError) as info:
        load_mit_weights(b1_sd, "efficientvit_seg_b0_cityscapes")
    assert sorted(info.value.problems) == sorted(want)
    assert all(repr(k) in str(info.value) for _, k in want)


def test_start_from_a_timm_backbone(timm: Any, make_timm_file: Any, tmp_path: Path) -> None:
    """A timm B0 classifier (10 classes) gives the seg B0 its backbone; the head is new."""
    path = make_timm_file(timm, "efficientvit_b0", tmp_path / "b0.safetensors", num_classes=10)
    start = seg_from_timm_backbone(path, "efficientvit_seg_b0_cityscapes", num_classes=7)
    shapes = variable_shapes(create_model("efficientvit_seg_b0_cityscapes", num_classes=7).config)
    got = jax.tree.map(lambda a: (a.shape, a.dtype), start.variables)
    assert got == jax.tree.map(lambda s: (s.shape, s.dtype), shapes)
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    paths = ["/".join(p.key for p in path) for path, _ in leaves]
    assert sorted(start.loaded) == sorted(p for p in paths if p.split("/")[1] == "backbone")
    assert sorted(start.new) == sorted(p for p in paths if p.split("/")[1] == "head")
    assert start.dropped and all(k.startswith("head.") for k in start.dropped)
    # one tensor traced back to the checkpoint: the stem's conv, [O, I, kh, kw] -> [kh, kw, I, O]
    from safetensors.numpy import load_file

    stem = load_file(path)["stem.in_conv.conv.weight"].transpose(2, 3, 1, 0)
    got_stem = start.variables["params"]["backbone"]["stem"]["in_conv"]["conv"]["kernel"]
    np.testing.assert_array_equal(np.asarray(got_stem), stem)
