"""EfficientViT-SAM against MIT's own code: the five published variants, and MIT's checkpoints.

The reference is PyPI's ``efficientsam==1.0.0`` (MIT's EfficientViT-SAM with Meta's
``segment_anything``; ``tests/reference-requirements.txt``). Each variant is built by its
``create_efficientvit_sam_model`` with random weights, BatchNorm statistics and every norm's
affine perturbed, and converted by ``load_mit_weights``; then the parameter counts, the image
embeddings and the decoder's mask logits and IoU predictions are compared.

What keeps the file cheap on 2 cores:

- The encoder checks run at a small input (L: 256 px, XL: 128 px) with the neck's resize target
  (MIT's ``UpSampleLayer(size=(64, 64))``, our ``embed_size``) set to 16 on both sides: the
  neck's blocks run at that side whatever the input, and at 64x64 they are most of the encoder's
  work at small inputs (XL1: 12 FusedMBConvs at 1024 channels). At 256 px the L models' stride-8
  map (32x32) is shrunk, the stride-16 one kept and the stride-32 one enlarged: every path of
  the resize. XL1 is also checked as published (1024 px, a 64x64 embedding), marked ``slow``.
- The decoder is the same program in every variant (asserted): one compiled ``decode`` per
  output mode serves all five, fed each variant's converted weights and random 64x64
  embeddings. The five prompts go in one batch, padded to four tokens with ``ABSENT_LABEL``;
  that padding is shown to change nothing against unpadded prompts (in NHWC: the layout's
  check).
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import pytest

pytest.importorskip("efficientsam", reason="MIT's EfficientViT-SAM reference (efficientsam)")

from efficientvit_jax.zoo import create_model, load_mit_weights
from efficientvit_jax.zoo.convert import ConversionError
from efficientvit_jax.zoo.sam import ABSENT_LABEL, SAM_CONFIGS

# One worker builds the models once (pytest-xdist otherwise spreads the tests over processes).
pytestmark = pytest.mark.xdist_group("sam_parity")

NAMES = list(SAM_CONFIGS)
L0 = "efficientvit_sam_l0"
# The reference's sum(p.numel() for p in model.parameters()) (MIT's README: 34.79M ... 203.35M).
REFERENCE_PARAMS = {
    "efficientvit_sam_l0": 34_792_784,
    "efficientvit_sam_l1": 47_650_128,
    "efficientvit_sam_l2": 61_328_592,
    "efficientvit_sam_xl0": 116_957_904,
    "efficientvit_sam_xl1": 203_346_128,
}
SMALL_EMBED = 16  # the neck's resize target in the small encoder checks


def _load_sam_reference() -> Any:
    import importlib.util

    path = Path(__file__).with_name("_sam_reference.py")
    spec = importlib.util.spec_from_file_location("evit_sam_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SAM_REFERENCE = _load_sam_reference()


def _mit_name(name: str) -> str:
    return name.replace("_", "-")


def _reference(name: str, seed: int = 0) -> Any:
    return _SAM_REFERENCE.reference(name, seed)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Any:
    """torch on one thread here, restored after: its work in this file is small, and two
    threads that wait for each other spin on a loaded 2-core machine (on two threads the five
    reference decodes of a variant took from 1.3 to 5 s of CPU)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Variant(NamedTuple):
    name: str
    reference: Any  # MIT's torch model
    variables: dict[str, Any]  # converted by load_mit_weights


@pytest.fixture(scope="module", params=NAMES)
def variant(request: pytest.FixtureRequest) -> Any:
    """One variant at a time: its reference and converted variables, freed after its tests."""
    ref = _reference(request.param)
    yield Variant(request.param, ref, load_mit_weights(ref.state_dict(), request.param))
    del ref
    gc.collect()


def _scaled_diff(got: Any, ref: np.ndarray) -> tuple[float, float]:
    """``(max |got - ref| / max |ref|, max |ref|)``."""
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = float(np.abs(ref).max())
    return float(np.abs(got - ref).max()) / scale, scale


def test_parameter_count(variant: Variant) -> None:
    """The parameters (``params``) number the reference's, MIT's published count; the
    positional-encoding matrix, a buffer, is the one ``constants`` entry."""
    got = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variant.variables["params"]))
    ref = sum(p.numel() for p in variant.reference.parameters())
    assert got == ref == REFERENCE_PARAMS[variant.name]
    gaussian = variant.reference.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    constants = variant.variables["constants"]["prompt_encoder"]["pe_layer"]
    np.testing.assert_array_equal(
        np.asarray(constants["positional_encoding_gaussian_matrix"]), gaussian.numpy()
    )


def _set_neck_size(reference: Any, side: int) -> None:
    from efficientsam.models.nn.ops import UpSampleLayer

    for mod in reference.image_encoder.neck.modules():
        if isinstance(mod, UpSampleLayer):
            mod.size = [side, side]


def _embeddings(variant: Variant, side: int, embed: int, **overrides: Any) -> tuple[float, float]:
    """Scaled max diff of the image embeddings of a ``side`` px image, the neck resizing to
    ``embed`` on both sides, and the reference's scale."""
    import torch

    x = np.random.default_rng(0).normal(size=(1, 3, side, side)).astype(np.float32)
    _set_neck_size(variant.reference, embed)
    try:
        with torch.no_grad():
            ref = variant.reference.image_encoder(torch.from_numpy(x)).numpy()
    finally:
        _set_neck_size(variant.reference, 64)
    assert ref.shape == (1, 256, embed, embed)
    model = create_model(variant.name, embed_size=embed, **overrides)
    if model.config.data_format == "NHWC":
        x, ref = x.transpose(0, 2, 3, 1), ref.transpose(0, 2, 3, 1)
    embed_images = jax.jit(functools.partial(model.apply, method="embed_images"))
    return _scaled_diff(embed_images(variant.variables, x), ref)


def test_image_embeddings(variant: Variant) -> None:
    """Embeddings within 1e-4 of their scale (the small check; L0's in NHWC, the others' in
    NCHW)."""
    side = 256 if "_l" in variant.name else 128
    layout = "NHWC" if variant.name == L0 else "NCHW"
    diff, scale = _embeddings(variant, side, SMALL_EMBED, data_format=layout)
    print(f"{variant.name} {side} px {layout}: scale {scale:.3g}, max |diff| / scale {diff:.3g}")
    assert 0.1 < scale < 1e3 and diff <= 1e-4, (scale, diff)


# --------------------------------------------------------------------------- the decoder

PROMPT = 1024  # the prompt frame: coordinates in the 1024-side resized image


class Case(NamedTuple):
    """One prompt as SAM's prompt encoder takes it (``points``, ``box``, ``mask``) and as
    ``decode`` takes it (``coords``, ``labels``: SAM's pad point where there is no box)."""

    points: np.ndarray | None  # [n, 2]
    point_labels: np.ndarray | None  # [n]
    box: np.ndarray | None  # [4]
    mask: np.ndarray | None  # [1, 256, 256]

    def tokens(self) -> tuple[np.ndarray, np.ndarray]:
        coords, labels = [], []
        if self.points is not None:
            coords += list(self.points)
            labels += list(self.point_labels)
            if self.box is None:  # SAM's _embed_points(pad=True)
                coords.append([0.0, 0.0])
                labels.append(-1)
        if self.box is not None:
            coords += list(self.box.reshape(2, 2))
            labels += [2, 3]
        return np.asarray(coords, np.float32), np.asarray(labels, np.int32)


def _cases() -> dict[str, Case]:
    rng = np.random.default_rng(3)
    pos, neg = np.array([[512.3, 301.7]]), np.array([[120.0, 880.5]])
    box = np.array([200.2, 150.0, 700.9, 810.4])
    one = np.array([1])
    both = np.concatenate([pos, neg]), np.array([1, 0])
    previous = (rng.normal(size=(1, 256, 256)) * 4).astype(np.float32)
    return {
        "point": Case(pos, one, None, None),
        "points": Case(*both, None, None),
        "box": Case(None, None, box, None),
        "box+points": Case(*both, box, None),
        "mask": Case(pos, one, None, previous),
    }


CASES = _cases()
EMBEDDINGS = np.random.default_rng(4).normal(size=(1, 256, 64, 64)).astype(np.float32)


def _batch(cases: list[Case], n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """``decode``'s inputs for ``cases``, each padded to ``n`` tokens with ABSENT ones at
    random places (NaN coordinates: they must not matter); mask inputs that ``has_mask_input``
    switches off hold noise."""
    coords = np.full((len(cases), n, 2), np.nan, np.float32)
    labels = np.full((len(cases), n), ABSENT_LABEL, np.int32)
    masks = rng.normal(size=(len(cases), 1, 256, 256)).astype(np.float32) * 10
    has = np.zeros(len(cases), np.float32)
    for i, case in enumerate(cases):
        c, lab = case.tokens()
        where = np.sort(rng.choice(n, size=len(lab), replace=False))
        coords[i, where], labels[i, where] = c, lab
        if case.mask is not None:
            masks[i], has[i] = case.mask, 1.0
    return coords, labels, masks, has


def _decoder_fields(config: Any) -> dict[str, Any]:
    """The config's fields but those only the encoder reads: equal ones, one decode program."""
    encoder = {"backbone", "neck_strides", "neck_width", "neck_depth", "neck_expand", "neck_block"}
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in encoder | {"image_size"}
    }


@functools.cache
def _decode(multimask: bool, data_format: str = "NCHW") -> Any:
    """L0's jitted ``decode``: every variant's decoder is this program (``_decoder_fields``)."""
    model = create_model(L0, data_format=data_format)
    return jax.jit(functools.partial(model.apply, method="decode", multimask_output=multimask))


def _decoder_variables(variables: dict[str, Any]) -> dict[str, Any]:
    params = {k: variables["params"][k] for k in ("prompt_encoder", "mask_decoder")}
    return {"params": params, "constants": variables["constants"]}


def _reference_decode(reference: Any, case: Case) -> dict[bool, tuple[np.ndarray, ...]]:
    """MIT's ``prompt_encoder`` then ``mask_decoder`` on ``EMBEDDINGS``, as its predictor calls
    them: ``{multimask_output: (masks, iou)}``. The decoder's ``predict_masks`` runs once and
    both outputs are sliced from it as its ``forward`` slices them ([1:] and [0:1])."""
    import torch

    def t(a: np.ndarray | None, dtype: Any = torch.float32) -> Any:
        return None if a is None else torch.as_tensor(a[None], dtype=dtype)

    points = None
    if case.points is not None:
        points = (t(case.points), t(case.point_labels, torch.int32))
    with torch.no_grad():
        sparse, dense = reference.prompt_encoder(
            points=points, boxes=t(case.box), masks=t(case.mask)
        )
        masks, iou = reference.mask_decoder.predict_masks(
            image_embeddings=torch.from_numpy(EMBEDDINGS),
            image_pe=reference.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )
    masks, iou = masks.numpy()[0], iou.numpy()[0]
    return {True: (masks[1:], iou[1:]), False: (masks[0:1], iou[0:1])}


def test_decoder(variant: Variant) -> None:
    """Mask logits and IoU predictions within 1e-3 of their scale for every kind of prompt,
    three masks and one."""
    assert _decoder_fields(SAM_CONFIGS[variant.name]) == _decoder_fields(SAM_CONFIGS[L0])
    v = _decoder_variables(variant.variables)
    inputs = _batch(list(CASES.values()), 4, np.random.default_rng(5))
    got = {
        multi: [np.asarray(a) for a in _decode(multi)(v, EMBEDDINGS, *inputs)]
        for multi in (True, False)
    }
    for i, (kind, case) in enumerate(CASES.items()):
        for multi, (ref_masks, ref_iou) in _reference_decode(variant.reference, case).items():
            masks, iou = got[multi][0][i], got[multi][1][i]
            dm, sm = _scaled_diff(masks, ref_masks)
            di, si = _scaled_diff(iou, ref_iou)
            m = len(ref_iou)
            print(
                f"{variant.name} {kind} M={m}: masks {dm:.3g} of {sm:.3g}, iou {di:.3g} of {si:.3g}"
            )
            assert 0.1 < sm < 1e4 and si > 1e-3, (kind, m, sm, si)
            assert dm <= 1e-3 and di <= 1e-3, (kind, m, dm, di)


@pytest.mark.parametrize("variant", [L0], indirect=True)
def test_absent_padding_changes_nothing(variant: Variant) -> None:
    """Two-token prompts unpadded, and padded to four tokens (the ABSENT ones anywhere, with
    NaN coordinates) in another batch: the same masks and IoU predictions, to float32 rounding.
    The unpadded ones go through NHWC (embeddings, mask inputs and logits): the layout's check."""
    v = _decoder_variables(variant.variables)
    short = ["point", "box", "mask"]  # two tokens each; then the other two fill the batch
    coords, labels, masks, has = _batch([CASES[k] for k in short], 2, np.random.default_rng(6))
    nhwc = EMBEDDINGS.transpose(0, 2, 3, 1), coords, labels, masks.transpose(0, 2, 3, 1), has
    exact_masks, exact_iou = _decode(True, "NHWC")(v, *nhwc)
    order = short + [k for k in CASES if k not in short]
    padded = _batch([CASES[k] for k in order], 4, np.random.default_rng(7))
    got_masks, got_iou = _decode(True)(v, EMBEDDINGS, *padded)
    n = len(short)
    want_masks = np.asarray(exact_masks).transpose(0, 3, 1, 2)
    for got, want in ((got_masks, want_masks), (got_iou, np.asarray(exact_iou))):
        diff, _ = _scaled_diff(np.asarray(got)[:n], want)
        assert diff <= 1e-5, diff


# --------------------------------------------------------------------------- as published


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["efficientvit_sam_xl1"], indirect=True)
def test_xl1_embeddings_as_published(variant: Variant) -> None:
    """XL1 at its own input, 1024 px, to the 64x64 embedding."""
    diff, scale = _embeddings(variant, 1024, 64)
    print(f"{variant.name} 1024 px: scale {scale:.3g}, max |diff| / scale {diff:.3g}")
    assert 0.1 < scale < 1e3 and diff <= 1e-4, (scale, diff)


# --------------------------------------------------------------------------- checkpoints


def _shapes(state_dict: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {
        k: tuple(v.shape) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
    }


@pytest.mark.parametrize("variant", [L0], indirect=True)
def test_another_variants_checkpoint_names_every_tensor(variant: Variant) -> None:
    """XL0's state dict read as L0's: one ``ConversionError`` naming every tensor that differs
    (XL0 has no stem block, a fifth stage and other widths: missing, unexpected and mis-shaped
    tensors, all at once)."""
    xl0 = _reference("efficientvit_sam_xl0").state_dict()
    ours, theirs = _shapes(variant.reference.state_dict()), _shapes(xl0)
    want = (
        {("missing", k) for k in ours.keys() - theirs.keys()}
        | {("unexpected", k) for k in theirs.keys() - ours.keys()}
        | {("shape", k) for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]}
    )
    assert {kind for kind, _ in want} == {"missing", "unexpected", "shape"}
    with pytest.raises(ConversionError) as info:
        load_mit_weights(xl0, L0)
    assert sorted(info.value.problems) == sorted(want)
    assert all(repr(k) in str(info.value) for _, k in want)


@pytest.mark.parametrize("variant", [L0], indirect=True)
def test_pt_file_loads_as_in_memory(variant: Variant, tmp_path: Path) -> None:
    """``torch.save`` of the reference's state dict, read by MIT's name: the same variables."""
    import torch

    path = tmp_path / "efficientvit_sam_l0.pt"
    torch.save(variant.reference.state_dict(), path)
    got = load_mit_weights(path, "efficientvit-sam-l0")
    assert jax.tree.structure(got) == jax.tree.structure(variant.variables)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(variant.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
