"""``efficientvit_jax.sam.amg`` against segment_anything's ``utils/amg.py`` and torchvision.

The reference is Meta's code as PyPI's ``efficientsam`` ships it (tests/reference-requirements.txt);
without it (or torch) these tests skip. Masks are real shapes: thresholded channels of
scikit-learn's sample photographs, cropped to odd sizes, and smoothed noise as logits. Every
comparison but the stability score (float32 division on both sides) is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from efficientvit_jax.sam import amg

torch = pytest.importorskip("torch", reason="the reference is PyTorch code")
ref = pytest.importorskip(
    "efficientsam.segment_anything.utils.amg",
    reason="pip install --no-deps -r tests/reference-requirements.txt",
)


@pytest.fixture(scope="module")
def masks(photos: list[np.ndarray]) -> np.ndarray:
    """12 boolean masks 201 x 317 with many regions, holes and edges, and one empty."""
    out = []
    for photo in photos:
        crop = photo[17:218, 31:348].astype(int)
        for channel in range(3):
            for cut in (90, 160):
                out.append(crop[..., channel] > cut)
    out[-1] = np.zeros_like(out[-1])
    return np.stack(out)


@pytest.fixture(scope="module")
def logits() -> np.ndarray:
    """Smoothed noise ``[2, 3, 75, 91]``: blobs of both signs around the thresholds."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 15, 13)).astype(np.float32)
    x = np.repeat(np.repeat(x, 5, axis=2), 7, axis=3) * 3
    return x + rng.normal(0, 0.5, x.shape).astype(np.float32)


@pytest.mark.parametrize("n,layers,scale", [(1, 0, 1), (7, 2, 2), (32, 1, 1), (16, 3, 2)])
def test_point_grids(n: int, layers: int, scale: int) -> None:
    got = amg.build_all_layer_point_grids(n, layers, scale)
    want = ref.build_all_layer_point_grids(n, layers, scale)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("size", [(427, 640), (640, 427), (1, 1), (333, 333), (1000, 17)])
@pytest.mark.parametrize("layers,ratio", [(0, 512 / 1500), (1, 512 / 1500), (3, 0.25)])
def test_crop_boxes(size: tuple[int, int], layers: int, ratio: float) -> None:
    assert amg.generate_crop_boxes(size, layers, ratio) == ref.generate_crop_boxes(
        size, layers, ratio
    )


@pytest.mark.parametrize("offset", [1.0, 0.3])
def test_stability_score(logits: np.ndarray, offset: float) -> None:
    got = np.asarray(amg.calculate_stability_score(logits, 0.0, offset))
    want = ref.calculate_stability_score(torch.from_numpy(logits), 0.0, offset).numpy()
    assert got.dtype == np.float32 and got.shape == (2, 3)
    np.testing.assert_array_equal(got, want)


def test_stability_score_of_an_empty_mask_is_nan() -> None:
    x = np.full((1, 4, 4), -5.0, np.float32)
    assert np.isnan(np.asarray(amg.calculate_stability_score(x, 0.0, 1.0))).all()


def test_mask_to_box(masks: np.ndarray) -> None:
    want = ref.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(np.asarray(amg.batched_mask_to_box(masks)), want)
    assert (want[-1] == 0).all()  # the empty mask
    one = np.zeros((5, 9), bool)
    one[3, 7] = True  # a single pixel: inclusive edges, and a 2-D input
    np.testing.assert_array_equal(np.asarray(amg.batched_mask_to_box(one)), [7, 3, 7, 3])
    grid = masks[:6].reshape(2, 3, *masks.shape[1:])  # leading axes kept
    want = ref.batched_mask_to_box(torch.from_numpy(grid)).numpy()
    np.testing.assert_array_equal(np.asarray(amg.batched_mask_to_box(grid)), want)


def test_rle_round_trip_and_area(masks: np.ndarray) -> None:
    got = amg.mask_to_rle(masks)
    want = ref.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert got == want
    for rle, mask in zip(got, masks, strict=True):
        np.testing.assert_array_equal(amg.rle_to_mask(rle), mask)
        np.testing.assert_array_equal(ref.rle_to_mask(rle), mask)
        assert amg.area_from_rle(rle) == ref.area_from_rle(rle) == int(mask.sum())
    full = np.ones((1, 3, 4), bool)  # starts with a set pixel: a leading run of 0 zeros
    assert amg.mask_to_rle(full) == [{"size": [3, 4], "counts": [0, 12]}]


def _coco_decode(s: str) -> list[int]:
    """COCO's ``rleFrString``, the inverse of ``coco_encode_rle``'s strings."""
    counts, p = [], 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def test_coco_rle_strings(masks: np.ndarray) -> None:
    """pycocotools' strings (not installed here): small cases worked by hand, and every mask's
    string decodes back to its counts with COCO's decoder."""
    cases = {
        (1, 2, 3): "123",  # counts below 16: one character each, 48 + count
        (40, 1, 0, 2): "X1101",  # 40 = 8 + 32: 'X' (8 | continuation) then '1'; 2 - 1 = 1
        (5, 3, 2, 1): "532N",  # 1 - 3 = -2: 30 (sign bit set, no continuation) -> 'N'
    }
    for counts, text in cases.items():
        rle = {"size": [3, 4], "counts": list(counts)}
        assert amg.coco_encode_rle(rle) == {"size": [3, 4], "counts": text}
    for rle in amg.mask_to_rle(masks):
        assert _coco_decode(amg.coco_encode_rle(rle)["counts"]) == rle["counts"]


def _boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer boxes (as the generator's) with many overlaps, some degenerate; scores with
    ties."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, 200, (n, 2))
    wh = rng.integers(0, 60, (n, 2))
    wh[:5] = 0  # zero-area boxes: IoU 0/0
    scores = rng.integers(0, 8, n).astype(np.float32) / 7
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32), scores


@pytest.mark.parametrize("n", [0, 1, 300, 1500])
@pytest.mark.parametrize("threshold", [0.7, 0.3])
def test_nms(n: int, threshold: float) -> None:
    from torchvision.ops import batched_nms, nms

    boxes, scores = _boxes(n, seed=n)
    tb, ts = torch.from_numpy(boxes), torch.from_numpy(scores)
    np.testing.assert_array_equal(amg.nms(boxes, scores, threshold), nms(tb, ts, threshold))
    cats = np.random.default_rng(1).integers(0, 3, n)
    got = amg.batched_nms(boxes, scores, cats, threshold)
    want = batched_nms(tb, ts, torch.from_numpy(cats), threshold).numpy()
    # the same boxes; past 1000 torchvision orders tied scores by an unstable sort
    assert sorted(got.tolist()) == sorted(want.tolist())
    np.testing.assert_array_equal(scores[got], scores[want])
    if n <= 1000:
        np.testing.assert_array_equal(got, want)


def test_box_helpers(masks: np.ndarray) -> None:
    boxes = np.asarray(amg.batched_mask_to_box(masks)).astype(np.int64)
    crop, orig = [30, 40, 347, 241], [0, 0, 640, 427]
    for atol in (20.0, 3.0):
        want = ref.is_box_near_crop_edge(torch.from_numpy(boxes), crop, orig, atol).numpy()
        np.testing.assert_array_equal(amg.is_box_near_crop_edge(boxes, crop, orig, atol), want)
    t = torch.from_numpy(boxes)
    np.testing.assert_array_equal(
        amg.uncrop_boxes_xyxy(boxes, crop), ref.uncrop_boxes_xyxy(t, crop)
    )
    points = boxes[:, :2].astype(np.float64) + 0.5
    np.testing.assert_array_equal(
        amg.uncrop_points(points, crop), ref.uncrop_points(torch.from_numpy(points), crop)
    )
    np.testing.assert_array_equal(amg.box_xyxy_to_xywh(boxes[3]), ref.box_xyxy_to_xywh(t[3]))
    from torchvision.ops import box_area

    np.testing.assert_array_equal(amg.box_area(boxes), box_area(t))


@pytest.mark.parametrize("crop", [[30, 40, 347, 241], [0, 7, 317, 208], [83, 0, 400, 201]])
def test_uncrop_masks(masks: np.ndarray, crop: list[int]) -> None:
    got = amg.uncrop_masks(masks, crop, 260, 400)
    want = ref.uncrop_masks(torch.from_numpy(masks), crop, 260, 400).numpy()
    np.testing.assert_array_equal(got, want)
    assert amg.uncrop_masks(masks, [0, 0, 317, 201], 201, 317) is masks  # the whole image


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("area", [1, 30, 500, 10**6])
def test_remove_small_regions(masks: np.ndarray, mode: str, area: int) -> None:
    pytest.importorskip("cv2", reason="the reference labels regions with OpenCV")
    for mask in masks:
        got, changed = amg.remove_small_regions(mask, area, mode)
        want, want_changed = ref.remove_small_regions(mask, area, mode)
        assert changed == want_changed
        np.testing.assert_array_equal(got, want)


def test_batch_iterator() -> None:
    a, b = list(range(7)), np.arange(7) * 2
    got = list(amg.batch_iterator(3, a, b))
    want = list(ref.batch_iterator(3, a, b))
    assert len(got) == len(want) == 3
    for (ga, gb), (wa, wb) in zip(got, want, strict=True):
        assert ga == wa
        np.testing.assert_array_equal(gb, wb)
    with pytest.raises(ValueError, match="one length"):
        list(amg.batch_iterator(3, a, b[:3]))
