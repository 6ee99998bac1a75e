"""Segmentation data and metric as MIT's evaluation has them: the three layouts and their label
encodings, the resize (OpenCV's bicubic), the image sizes, and mIoU accumulated as ``SegIOU``.

References written here, not taken from the code under test: Cityscapes' label table from
``cityscapesscripts/helpers/labels.py``, MIT's size rule and ``SegIOU`` from
``applications/efficientvit_seg/eval_efficientvit_seg_model.py``, and the bicubic resize as an
explicit interpolation matrix of Keys' kernel (a = -0.75). OpenCV is not a dependency; where it
is installed, the resize is also compared with ``cv2.resize`` itself.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pytest
from PIL import Image

from efficientvit_jax.data import seg_classes
from efficientvit_jax.data.seg_transform import (
    SegEvalTransform,
    cv_resize_cubic,
    mit_eval_transform,
)
from efficientvit_jax.data.segmentation import (
    check_seg_dataset,
    find_seg_dataset,
    read_mask,
    without,
)
from efficientvit_jax.metrics import confusion_counts, iou_summary

# cityscapesscripts/helpers/labels.py: (name, id, trainId) of ids 0..33; 255 = ignored in eval.
CITYSCAPES_LABELS = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8),
    ("terrain", 22, 9), ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12),
    ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15), ("caravan", 29, 255),
    ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]  # fmt: skip


def _png(path: Any, array: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- layouts -------------------------------------------------------------------------------------


def _cityscapes(root: Any) -> None:
    for split, city, n in (("train", "aachen", 1), ("val", "lindau", 2)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(4, 8))
            mask = np.full((4, 8), 7, np.uint8)
            _png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", mask)
            _png(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", _rgb(4, 8))


def _ade20k(root: Any) -> None:
    for split, n in (("training", 1), ("validation", 2)):
        for i in range(n):
            stem = f"ADE_{split[:3]}_{i:08d}"
            _png(root / "images" / split / f"{stem}.jpg", _rgb(4, 8))
            _png(root / "annotations" / split / f"{stem}.png", np.ones((4, 8), np.uint8))


def test_cityscapes_layout_from_its_root_or_one_split(tmp_path: Any) -> None:
    _cityscapes(tmp_path)
    for path, split in ((tmp_path, None), (tmp_path / "leftImg8bit" / "val", None)):
        ds = find_seg_dataset(path, split)
        assert ds.layout == "cityscapes" and len(ds.classes) == 19
        assert [os.path.basename(p) for p in ds.images] == [
            "lindau_000000_000019_leftImg8bit.png",
            "lindau_000001_000019_leftImg8bit.png",
        ]
        assert all(
            m.endswith("_gtFine_labelIds.png") and "/gtFine/val/lindau/" in m for m in ds.masks
        )
    train = find_seg_dataset(tmp_path, "training")  # ADE20K's spelling names the same split
    assert len(train.images) == 1 and "/leftImg8bit/train/" in train.images[0]


def test_ade20k_layout_default_split_is_validation(tmp_path: Any) -> None:
    _ade20k(tmp_path)
    ds = find_seg_dataset(tmp_path)
    assert ds.layout == "ade20k" and len(ds.classes) == 150 and ds.classes[0] == "wall"
    assert len(ds.images) == 2 and all("/images/validation/" in p for p in ds.images)
    assert [m.replace("/annotations/", "/images/")[:-4] for m in ds.masks] == [
        p[:-4] for p in ds.images
    ]
    assert len(find_seg_dataset(tmp_path, "train").images) == 1
    assert find_seg_dataset(tmp_path / "images" / "training").layout == "ade20k"


def test_generic_layout_classes_txt_or_the_indices_found(tmp_path: Any) -> None:
    for split, top in (("train", 4), ("val", 1)):
        _png(tmp_path / split / "images" / "a.jpg", _rgb(4, 8))
        mask = np.full((4, 8), 255, np.uint8)
        mask[0, :2] = (0, top)
        _png(tmp_path / split / "masks" / "a.png", mask)
    ds = find_seg_dataset(tmp_path)
    assert ds.layout == "generic" and ds.images[0].endswith("val/images/a.jpg")
    assert ds.classes == ("0", "1", "2", "3", "4")  # val holds 0 and 1; train holds up to 4
    (tmp_path / "classes.txt").write_text("sky\nsea\nsand\nrock\nboat\nbird\n")
    assert find_seg_dataset(tmp_path / "val").classes == (
        "sky",
        "sea",
        "sand",
        "rock",
        "boat",
        "bird",
    )


def test_missing_mask_is_one_error_or_skipped(tmp_path: Any) -> None:
    _png(tmp_path / "images" / "a.png", _rgb(4, 8))
    _png(tmp_path / "images" / "b.png", _rgb(4, 8))
    _png(tmp_path / "masks" / "a.png", np.zeros((4, 8), np.uint8))
    with pytest.raises(ValueError, match=r"images/b.png has no mask \(expected .*masks/b.png\)"):
        find_seg_dataset(tmp_path)
    ds = find_seg_dataset(tmp_path, skip_missing=True)
    assert len(ds.images) == 1 and ds.skipped[0][0].endswith("b.png")
    with pytest.raises(ValueError, match="not a segmentation dataset"):
        find_seg_dataset(tmp_path / "images")


# -- label encodings -----------------------------------------------------------------------------


def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path: Any) -> None:
    ids = np.arange(34, dtype=np.uint8).reshape(2, 17)
    got = read_mask(_png(tmp_path / "m.png", ids), "cityscapes")
    want = np.array([t for _, _, t in CITYSCAPES_LABELS], np.uint8).reshape(2, 17)
    np.testing.assert_array_equal(got, want)
    names = [n for n, _, t in sorted(CITYSCAPES_LABELS, key=lambda x: x[2]) if t != 255]
    assert tuple(names) == seg_classes.CITYSCAPES_CLASSES
    with pytest.raises(ValueError, match="label values out of range"):
        read_mask(_png(tmp_path / "bad.png", np.full((2, 2), 34, np.uint8)), "cityscapes")


def test_ade20k_labels_minus_one_and_zero_ignored(tmp_path: Any) -> None:
    values = np.arange(151, dtype=np.uint8).reshape(1, 151)
    got = read_mask(_png(tmp_path / "m.png", values), "ade20k")
    assert got[0, 0] == 255 and list(got[0, 1:]) == list(range(150))
    with pytest.raises(ValueError, match=r"label values out of range \(151"):
        read_mask(_png(tmp_path / "bad.png", np.full((2, 2), 151, np.uint8)), "ade20k")


def test_generic_masks_as_they_are(tmp_path: Any) -> None:
    mask = np.array([[0, 3, 255], [2, 1, 0]], np.uint8)
    np.testing.assert_array_equal(read_mask(_png(tmp_path / "m.png", mask), "generic"), mask)
    palette = Image.fromarray(mask, mode="P")
    palette.putpalette([9] * 768)  # colours are not classes: the indices are
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "p.png"), "generic"), mask)
    wide = np.array([[0, 300]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert read_mask(str(tmp_path / "w.png"), "generic").tolist() == [[0, 300]]
    with pytest.raises(ValueError, match=r"label values out of range \(3;"):
        read_mask(str(tmp_path / "m.png"), "generic", num_classes=3)
    with pytest.raises(ValueError, match="RGB image; a mask is one channel"):
        read_mask(_png(tmp_path / "rgb.png", _rgb(2, 2)), "generic")


def test_check_finds_size_mismatch_and_bad_values(tmp_path: Any) -> None:
    _png(tmp_path / "images" / "a.png", _rgb(4, 8))
    _png(tmp_path / "masks" / "a.png", np.zeros((4, 8), np.uint8))
    _png(tmp_path / "images" / "b.png", _rgb(4, 8))
    _png(tmp_path / "masks" / "b.png", np.zeros((8, 4), np.uint8))
    _png(tmp_path / "images" / "c.png", _rgb(4, 8))
    _png(tmp_path / "masks" / "c.png", np.full((4, 8), 7, np.uint8))
    ds = find_seg_dataset(tmp_path)
    bad = check_seg_dataset(ds, num_classes=5, workers=2)
    assert [os.path.basename(p) for p, _ in bad] == ["b.png", "c.png"]
    assert "is 8x4 but its mask" in bad[0][1] and "is 4x8" in bad[0][1]
    assert "label values out of range (7;" in bad[1][1]
    kept = without(ds, bad)
    assert [os.path.basename(p) for p in kept.images] == ["a.png"] and len(kept.skipped) == 2


# -- preprocessing -------------------------------------------------------------------------------


def _keys_matrix(out_size: int, in_size: int, a: float = -0.75) -> np.ndarray:
    """``[out, in]`` float64 bicubic interpolation matrix: half-pixel centres, Keys' kernel,
    taps beyond the border folded onto the edge pixel."""

    def kernel(s: np.ndarray) -> np.ndarray:
        s = np.abs(s)
        near = (a + 2) * s**3 - (a + 3) * s**2 + 1
        far = a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a
        return np.where(s <= 1, near, np.where(s < 2, far, 0.0))

    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * in_size / out_size - 0.5
        for j in range(math.floor(centre) - 1, math.floor(centre) + 3):
            m[i, min(max(j, 0), in_size - 1)] += kernel(np.float64(centre - j))
    return m


def _explicit_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    my, mx = _keys_matrix(height, image.shape[0]), _keys_matrix(width, image.shape[1])
    out = np.einsum("yh,hwc->ywc", my, image.astype(np.float64))  # two products, not one
    out = np.einsum("ywc,xw->yxc", out, mx)  # four-index sum (that would be 1e11 terms)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


SIZES = [
    ((427, 640), (512, 768)),
    ((427, 640), (200, 300)),
    ((37, 53), (64, 96)),
    ((5, 7), (5, 20)),
]


@pytest.mark.parametrize(("src", "dst"), SIZES)
def test_bicubic_resize_equals_the_explicit_kernel(photos: list, src: tuple, dst: tuple) -> None:
    image = np.asarray(Image.fromarray(photos[0]).resize(src[::-1]))
    got = cv_resize_cubic(image, dst)
    want = _explicit_resize(image, *dst)
    diff = np.abs(got.astype(int) - want)
    # float32 sums against float64: only values within rounding of a half level may differ
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, ((diff > 0).mean(), diff.max())


def test_bicubic_resize_equals_opencv_where_installed(photos: list) -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not a dependency")
    for src, dst in SIZES:
        image = np.asarray(Image.fromarray(photos[1]).resize(src[::-1]))
        want = cv2.resize(image, dst[::-1], interpolation=cv2.INTER_CUBIC)
        diff = np.abs(cv_resize_cubic(image, dst).astype(int) - want)
        assert diff.max() <= 1 and (diff > 0).mean() < 2e-3


def _mit_ade20k_size(h: int, w: int, crop_size: int = 512) -> tuple[int, int]:
    """MIT's ``ADE20KDataset.__getitem__`` size rule."""
    if h < w:
        th = crop_size
        tw = math.ceil(w / h * th / 32) * 32
    else:
        tw = crop_size
        th = math.ceil(h / w * tw / 32) * 32
    return th, tw


def test_input_sizes_follow_mits_rules() -> None:
    ade, city = mit_eval_transform("ade20k"), mit_eval_transform("cityscapes")
    for h, w in [(512, 683), (683, 512), (375, 500), (500, 500), (256, 1024), (1024, 2048), (7, 9)]:
        assert ade.input_size(h, w) == _mit_ade20k_size(h, w)
        assert city.input_size(h, w) == (1024, 2048)  # MIT's Resize((crop, 2 crop)) whatever
    assert mit_eval_transform("cityscapes", crop_size=64).input_size(10, 10) == (64, 128)
    assert mit_eval_transform("ade20k", crop_size=64).input_size(100, 50) == (128, 64)
    assert SegEvalTransform("round").input_size(33, 64) == (64, 64)


def test_transform_is_resize_then_imagenet_normalisation(photos: list) -> None:
    image = photos[0][:100, :150]
    nhwc = mit_eval_transform("ade20k", "NHWC", crop_size=64)(image)
    nchw = mit_eval_transform("ade20k", "NCHW", crop_size=64)(image)
    assert nhwc.shape == (64, 96, 3) and nhwc.dtype == np.float32
    np.testing.assert_array_equal(nchw, nhwc.transpose(2, 0, 1))
    pixels = _explicit_resize(image, 64, 96).astype(np.float32)
    want = (pixels / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    level = 1 / 255 / 0.224  # one grey level after normalisation
    assert np.abs(nhwc - want).max() <= level * 1.01
    assert (np.abs(nhwc - want) > 1e-5).mean() < 1e-3


# -- metric --------------------------------------------------------------------------------------


def _explicit_confusion(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    counts = np.zeros((k, k), np.int64)
    for p, t in zip(pred.ravel(), target.ravel(), strict=True):
        if 0 <= t < k and 0 <= p < k:
            counts[t, p] += 1
    return counts


def _mit_seg_iou(outputs: Any, targets: Any, num_classes: int, ignore_index: int = -1) -> tuple:
    """MIT's ``SegIOU.__call__`` (its labels have ignore = -1), ``histc`` on float tensors
    because CPU ``histc`` has no int64 kernel (MIT's runs on CUDA)."""
    import torch

    outputs = (outputs + 1) * (targets != ignore_index)
    targets = (targets + 1) * (targets != ignore_index)
    intersections = outputs * (outputs == targets)

    def hist(x: Any) -> Any:
        return torch.histc(x.float(), bins=num_classes, min=1, max=num_classes)

    outputs, targets, intersections = hist(outputs), hist(targets), hist(intersections)
    return intersections, outputs + targets - intersections


def test_confusion_counts_against_an_explicit_count() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 6, (3, 17, 9))
    target = rng.integers(0, 6, (3, 17, 9))
    target[0, :4] = 255  # ignored
    target[1, :2] = 9  # out of range: not counted either
    got = np.asarray(confusion_counts(pred, target, 6))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, _explicit_confusion(pred, target, 6))
    assert got.sum() == pred.size - 4 * 9 - 2 * 9


def test_iou_summary_equals_mits_seg_iou_accumulated() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    k, total, inter, union = 7, np.zeros((7, 7), np.int64), 0, 0
    for _ in range(4):  # MIT sums i and u over batches, then divides
        target = rng.integers(0, k, (2, 13, 21))
        pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, k, target.shape))
        target[:, :3] = 255
        total += np.asarray(confusion_counts(pred, target, k))
        mit_target = torch.as_tensor(np.where(target == 255, -1, target))
        i, u = _mit_seg_iou(torch.as_tensor(pred), mit_target, k)
        inter, union = inter + i.numpy(), union + u.numpy()
    got = iou_summary(total)
    # MIT's histc counts are float32: its ratios are float32 (exact counts here, float64)
    np.testing.assert_allclose(got["per_class_iou"], inter / union, rtol=1e-6)
    assert got["miou"] == pytest.approx(float((inter / union).mean()), rel=1e-6)
    valid = total.sum()
    assert got["pixel_accuracy"] == pytest.approx(np.trace(total) / valid)


def test_a_class_absent_everywhere_is_nan_and_left_out_of_the_mean() -> None:
    counts = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]])  # class 2: never a target nor predicted
    got = iou_summary(counts)
    assert np.isnan(got["per_class_iou"][2])
    assert got["per_class_iou"][:2].tolist() == [3 / 4, 4 / 5]
    assert got["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert got["pixel_accuracy"] == pytest.approx(7 / 8)
