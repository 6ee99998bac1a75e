"""``efficientvit_jax.sam.transforms`` against MIT's ``EfficientViTSam`` transforms and Meta's
``ResizeLongestSide``, on scikit-learn's sample photographs cropped to odd sizes.

Tolerances: the resized uint8 images are identical (both call PIL's bilinear resize); the
normalised, padded inputs agree to 1e-6 (measured: bit for bit); the postprocessed logits to
3e-5 of their scale, so at most 1e-5 of the pixels change sides of 0 (measured: none), and to
5e-5 of the same resizes computed by MIT's code in float64; transformed coordinates are
identical (the same float64 arithmetic). The logits' tolerance is float32's: the float32
resizes, PyTorch's and ours (the three fused into one product per axis), are 1-3e-5 of the
scale from the float64 ones, and PyTorch's own float32 weights changed between releases
(measured against ours: 1.5e-7 with torch 2.14.1, 1e-5 with 2.15.0 on two of the crops).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from efficientvit_jax.sam import transforms as tr

torch = pytest.importorskip("torch", reason="the reference is PyTorch code")
mit = pytest.importorskip(
    "efficientsam.models.efficientvit.sam",
    reason="pip install --no-deps -r tests/reference-requirements.txt",
)
from efficientsam.segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

# (top, left, height, width) crops of the 427 x 640 photographs: landscape, portrait, a side
# already at 512 (left as it is), one smaller than the encoder (enlarged), near-square
CROPS = [
    (3, 5, 411, 627),
    (0, 101, 423, 287),
    (10, 20, 300, 512),
    (200, 300, 23, 37),
    (0, 0, 427, 425),
]


def _reference_sam(encoder_size: int) -> Any:
    """MIT's ``EfficientViTSam`` shell: its transform and postprocessing need no modules."""
    return mit.EfficientViTSam(None, None, None, image_size=(1024, encoder_size))


def _crop(photos: list[np.ndarray], i: int) -> np.ndarray:
    top, left, h, w = CROPS[i]
    return photos[i % 2][top : top + h, left : left + w].copy()  # writable, for torch


@pytest.mark.parametrize("encoder_size", [512, 1024])
@pytest.mark.parametrize("i", range(len(CROPS)))
def test_preprocess_equals_mit(photos: list[np.ndarray], i: int, encoder_size: int) -> None:
    image = _crop(photos, i)
    ref = _reference_sam(encoder_size).transform(image).numpy()
    got = tr.preprocess(image, encoder_size)
    assert got.shape == ref.shape == (3, encoder_size, encoder_size) and got.dtype == np.float32
    assert np.abs(got - ref).max() <= 1e-6
    np.testing.assert_array_equal(
        tr.resize_longest_side(image, encoder_size), mit.SamResize(encoder_size)(image)
    )
    nhwc = tr.preprocess(image, encoder_size, "NHWC")
    np.testing.assert_array_equal(nhwc, got.transpose(1, 2, 0))
    h, w = tr.preprocess_shape(*image.shape[:2], encoder_size)
    assert (got[:, h:] == 0).all() and (got[:, :, w:] == 0).all()  # padded after normalising


@pytest.mark.parametrize("i", range(len(CROPS)))
def test_coordinates_equal_mit(photos: list[np.ndarray], i: int) -> None:
    """Points and boxes to the 1024 prompt frame: as MIT's predictor (which uses the size
    ``set_image`` stored) and as Meta's ``ResizeLongestSide(1024)``."""
    size = _crop(photos, i).shape[:2]
    predictor = mit.EfficientViTSamPredictor(_reference_sam(512))
    predictor.original_size = size
    predictor.input_size = ResizeLongestSide.get_preprocess_shape(*size, 1024)
    assert tr.preprocess_shape(*size, 1024) == predictor.input_size
    rng = np.random.default_rng(i)
    points = rng.uniform(0, 1, (5, 3, 2)) * np.array(size[::-1])
    boxes = np.sort(rng.uniform(0, 1, (4, 2, 2)), axis=1).reshape(4, 4) * np.tile(size[::-1], 2)
    before = points.copy()
    meta = ResizeLongestSide(1024)
    for got, want in [
        (tr.apply_coords(points, size), predictor.apply_coords(points)),
        (tr.apply_coords(points, size), meta.apply_coords(points, size)),
        (tr.apply_boxes(boxes, size), predictor.apply_boxes(boxes)),
        (tr.apply_boxes(boxes[1], size), meta.apply_boxes(boxes[1], size)),
    ]:
        assert got.dtype == want.dtype == np.float64
        np.testing.assert_array_equal(got, want)
    assert tr.apply_coords(points, size).shape == points.shape
    np.testing.assert_array_equal(points, before)  # the input is not modified


@pytest.mark.parametrize("i", range(len(CROPS)))
def test_postprocess_masks_equals_mit(photos: list[np.ndarray], i: int) -> None:
    size = _crop(photos, i).shape[:2]
    input_size = tr.preprocess_shape(*size, 1024)
    logits = np.random.default_rng(i).normal(0, 4, (2, 3, 256, 256)).astype(np.float32)
    ref = _reference_sam(512)
    want = ref.postprocess_masks(torch.from_numpy(logits), input_size, size).numpy()
    exact = ref.postprocess_masks(torch.from_numpy(logits).double(), input_size, size).numpy()
    got = np.asarray(jax.jit(tr.postprocess_masks, static_argnums=(1, 2))(logits, input_size, size))
    assert got.shape == want.shape == (2, 3, *size)
    scale = np.abs(want).max()
    diff = np.abs(got - want).max() / scale
    diff64 = np.abs(got - exact).max() / scale
    flips = int(((got > 0) != (want > 0)).sum())
    print(f"{size}: max |diff| {diff:.2g} of scale ({diff64:.2g} from float64), {flips} flipped")
    assert diff <= 3e-5 and diff64 <= 5e-5 and flips <= 1e-5 * got.size


def test_bgr_and_bad_images(photos: list[np.ndarray]) -> None:
    image = _crop(photos, 0)
    np.testing.assert_array_equal(tr.check_image(image[..., ::-1], "BGR"), image)
    bad = [
        (image.astype(np.float32), r"uint8 array \[H, W, 3\].*got float32"),
        (image[..., 0], r"got uint8 \(411, 627\)"),
        (np.zeros((4, 4, 4), np.uint8), r"\(4, 4, 4\)"),
        (np.zeros((0, 4, 3), np.uint8), r"H, W >= 1"),
    ]
    for arr, match in bad:
        with pytest.raises(ValueError, match=match):
            tr.check_image(arr)
    with pytest.raises(ValueError, match="image_format must be 'RGB' or 'BGR', got 'rgb'"):
        tr.check_image(image, "rgb")
