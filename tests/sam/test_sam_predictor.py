"""``SamPredictor`` against MIT's ``EfficientViTSamPredictor``: L0 at its 512-px encoder input,
MIT's random weights converted, a photograph of odd size (411 x 627), point, box and mask
prompts.

Agreement asked: masks equal on >= 99.9% of pixels; IoU scores and low-resolution logits
within 1e-3 of their scale (max |reference|). Measured (L0, this photo): embeddings to 1.1e-6
of scale, low-res logits to 2.1e-6, scores to 3e-6, masks on all but <= 4e-6 of the pixels
(random weights give logits of scale ~0.3: a pixel flips where the two differ in the 6th
digit around 0: rare, not never).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference is PyTorch code")
pytest.importorskip(
    "efficientsam", reason="pip install --no-deps -r tests/reference-requirements.txt"
)

pytestmark = pytest.mark.xdist_group("sam")

POINTS = np.array([[300.0, 200.0], [101.5, 47.0], [600.0, 400.0]])
BOX = np.array([80.0, 60.5, 420.0, 390.0])


def _agree(got: tuple, want: tuple, what: str) -> dict[str, float]:
    """Assert the brief's tolerances on ``(masks, scores, low_res)``; return the numbers."""
    masks, scores, low_res = got
    ref_masks, ref_scores, ref_low = (np.asarray(x) for x in want)
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype, what
    assert scores.shape == ref_scores.shape and low_res.shape == ref_low.shape, what
    if masks.dtype == bool:
        agree = float((masks == ref_masks).mean())
    else:  # logits
        agree = float(((masks > 0) == (ref_masks > 0)).mean())
        assert np.abs(masks - ref_masks).max() <= 1e-3 * np.abs(ref_masks).max(), what
    score_diff = float(np.abs(scores - ref_scores).max() / np.abs(ref_scores).max())
    low_diff = float(np.abs(low_res - ref_low).max() / np.abs(ref_low).max())
    print(f"{what}: pixels agree {agree:.6f}, scores {score_diff:.2g}, low-res {low_diff:.2g}")
    assert agree >= 0.999 and score_diff <= 1e-3 and low_diff <= 1e-3, what
    return {"agree": agree, "scores": score_diff, "low_res": low_diff}


def test_embedding_equals_mit(predictor: Any, mit_predictor: Any, photo: np.ndarray) -> None:
    ref = mit_predictor.features.numpy()
    got = predictor.get_image_embedding()
    assert got.shape == ref.shape == (1, 256, 64, 64)
    diff = np.abs(got - ref).max() / np.abs(ref).max()
    print(f"embedding: max |diff| {diff:.2g} of scale")
    assert diff <= 1e-4
    assert predictor.original_size == mit_predictor.original_size == photo.shape[:2]
    assert predictor.input_size == tuple(mit_predictor.input_size) == (671, 1024)


# (single-mask outputs: test_mask_prompt_and_logits_equal_mit). Two token buckets, 2 and 4,
# each compiled once: a point + SAM's pad and a box's corners; 3 points + pad, a box + a point.
PROMPTS = {
    "one point": ({"point_coords": POINTS[:1], "point_labels": np.array([1])}, True),
    "3 points": ({"point_coords": POINTS, "point_labels": np.array([1, 0, 1])}, True),
    "box": ({"box": BOX}, True),
    "box and point": ({"box": BOX, "point_coords": POINTS[:1], "point_labels": [0]}, True),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_prompts_equal_mit(predictor: Any, mit_predictor: Any, name: str) -> None:
    kwargs, multimask = PROMPTS[name]
    got = predictor.predict(**kwargs, multimask_output=multimask)
    want = mit_predictor.predict(**kwargs, multimask_output=multimask)
    assert got[0].shape == (3 if multimask else 1, 411, 627)
    _agree(got, want, name)


def test_mask_prompt_and_logits_equal_mit(predictor: Any, mit_predictor: Any) -> None:
    """A previous call's low-res logits as the mask input, with a point (one mask) and alone
    (no prompt token at all: one ABSENT token); the logits themselves (``return_logits``)."""
    point = {"point_coords": POINTS[:1], "point_labels": np.array([1])}
    _, scores, low_res = mit_predictor.predict(**point)
    mask = low_res[np.argmax(scores)][None] * 20  # random weights: scale it to matter
    for kwargs, multimask in (({**point, "mask_input": mask}, False), ({"mask_input": mask}, True)):
        got = predictor.predict(**kwargs, multimask_output=multimask, return_logits=True)
        want = mit_predictor.predict(**kwargs, multimask_output=multimask, return_logits=True)
        assert got[0].dtype == np.float32
        _agree(got, want, f"mask input {sorted(kwargs)}")


def test_batched_boxes_equal_mit(predictor: Any, mit_predictor: Any) -> None:
    """Three box prompts in one call, against ``predict_torch`` (which takes them in the
    prompt frame); the batch is padded to four prompts, the fourth dropped."""
    boxes = np.stack([BOX, BOX * 0.5, BOX + np.array([200, 10, 200, 10])])
    got = predictor.predict_batch(boxes=boxes, multimask_output=True)
    frame = torch.as_tensor(mit_predictor.apply_boxes(boxes), dtype=torch.float)
    with torch.no_grad():
        want = mit_predictor.predict_torch(None, None, frame, multimask_output=True)
    assert got[0].shape == (3, 3, 411, 627) and got[1].shape == (3, 3)
    _agree(got, want, "3 boxes")


def test_bucket_padding_changes_nothing(predictor: Any) -> None:
    """Token padding (2 points + SAM's pad = 3 tokens -> 4) and prompt padding (3 -> 4):
    the same results as exact shapes."""
    from efficientvit_jax.sam import SamPredictor

    exact = SamPredictor(predictor.model, predictor.variables, pad_to_bucket=False)
    exact.features, exact.original_sizes = predictor.features, predictor.original_sizes
    exact.input_sizes = predictor.input_sizes
    coords = np.stack([POINTS[:2], POINTS[1:], POINTS[[0, 2]]])
    labels = np.array([[1, 0], [1, 1], [0, 1]])
    got = predictor.predict_batch(coords, labels, return_logits=True)
    want = exact.predict_batch(coords, labels, return_logits=True)
    for name, a, b in zip(("logits", "scores", "low-res"), got, want, strict=True):
        assert a.shape == b.shape
        diff = np.abs(a - b).max() / np.abs(b).max()
        print(f"bucketed vs exact shapes, {name}: {diff:.2g} of scale")
        assert diff <= 1e-5
    # one prompt of the batch alone gives its row
    one = predictor.predict(coords[1], labels[1], return_logits=True)
    for a, b in zip(one, got, strict=True):
        assert np.abs(a - b[1]).max() <= 1e-5 * np.abs(b[1]).max()


def test_set_images(predictor: Any, photo: np.ndarray) -> None:
    """Two images of different sizes embedded in one call: each as set alone; prompts pick
    their image with ``image_index``."""
    single = predictor.get_image_embedding()
    small = photo[:200, 100:437]
    predictor.set_images([photo, small])
    both = predictor.get_image_embedding()
    assert both.shape == (2, 256, 64, 64)
    assert predictor.original_sizes == [(411, 627), (200, 337)]
    assert np.abs(both[0] - single[0]).max() <= 1e-5 * np.abs(single).max()
    masks, _, _ = predictor.predict(POINTS[:1] / 3, np.array([1]), image_index=1)
    assert masks.shape == (3, 200, 337)
    with pytest.raises(ValueError, match="image_index is needed: 2 images are set"):
        predictor.predict(POINTS[:1], np.array([1]))
    with pytest.raises(ValueError, match=r"image_index must be in \[0, 2\), got 2"):
        predictor.predict(POINTS[:1], np.array([1]), image_index=2)


BAD = [
    ({"point_coords": POINTS}, "point_coords and point_labels go together"),
    ({"point_coords": POINTS[0], "point_labels": [1]}, r"point_coords must be \[N, 2\].*\(2,\)"),
    ({"point_coords": POINTS, "point_labels": [1, 0]}, r"point_labels must be \[P, N\] = \[1, 3\]"),
    (
        {"point_coords": POINTS[:1], "point_labels": [5]},
        r"point_labels must be 1, 0 or -1, got \[5\]",
    ),
    ({"box": BOX[:3]}, r"box must be \[4\].*got shape \(3,\)"),
    ({"mask_input": np.zeros((256, 256))}, r"mask_input must be \[1, 256, 256\]"),
    ({"box": BOX * np.nan}, "boxes must be finite numbers"),
]


@pytest.mark.parametrize("kwargs,match", BAD)
def test_bad_prompts_are_one_line_errors(predictor: Any, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        predictor.predict(**kwargs)
    assert "\n" not in str(info.value)


def test_batch_counts_must_agree_and_image_must_be_set(predictor: Any) -> None:
    with pytest.raises(ValueError, match="as many in every argument, got point_coords 2, boxes 3"):
        predictor.predict_batch(np.zeros((2, 1, 2)), np.ones((2, 1)), np.zeros((3, 4)))
    from efficientvit_jax.sam import SamPredictor

    fresh = SamPredictor(predictor.model, predictor.variables)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(POINTS[:1], np.array([1]))
    with pytest.raises(ValueError, match=r"uint8 array \[H, W, 3\]"):
        fresh.set_image(np.zeros((10, 10), np.uint8))


def test_nhwc_model_decodes_as_nchw(predictor: Any) -> None:
    """The NHWC variant of the model (its mask inputs and logits channel-last) behind the same
    NCHW predictor arrays: the same results. Its embedding is the NCHW one transposed (the
    encoder's layouts are tested in tests/zoo/test_sam_parity.py)."""
    from efficientvit_jax.sam import SamPredictor
    from efficientvit_jax.zoo import create_model

    nhwc = SamPredictor(
        create_model("efficientvit_sam_l0", data_format="NHWC"), predictor.variables
    )
    nhwc.features = predictor.features.transpose(0, 2, 3, 1)
    nhwc.original_sizes, nhwc.input_sizes = predictor.original_sizes, predictor.input_sizes
    mask = np.random.default_rng(0).normal(0, 5, (1, 256, 256)).astype(np.float32)
    kwargs = {"point_coords": POINTS[:1], "point_labels": np.array([1]), "mask_input": mask}
    got = nhwc.predict(**kwargs, multimask_output=False, return_logits=True)
    want = predictor.predict(**kwargs, multimask_output=False, return_logits=True)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
