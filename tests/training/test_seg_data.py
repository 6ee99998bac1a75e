"""Segmentation training data: the augmentation moves image and mask together, the batches are
a pure function of (seed, epoch, position), and the digits-seg generator labels what it draws."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from PIL import Image

from efficientvit_jax.data import digits_seg
from efficientvit_jax.data.seg_augment import IMAGENET_MEAN, IMAGENET_STD, SegAugment
from efficientvit_jax.data.seg_transform import mit_eval_transform
from efficientvit_jax.data.segmentation import find_seg_dataset
from efficientvit_jax.training.seg_data import find_seg_splits, seg_source

# Six classes in colours far apart, so that a pixel's class can be read back from its colour.
PALETTE = np.array(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 255, 255]], np.uint8
)


def _blocks(seed: int, size: int = 64, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A mask of random classes in ``block``-pixel squares, and the image painting it."""
    cells = np.random.default_rng(seed).integers(0, len(PALETTE), (size // block,) * 2)
    mask = np.kron(cells, np.ones((block, block), np.int64)).astype(np.uint8)
    return PALETTE[mask], mask


def _classes_of(x: np.ndarray) -> np.ndarray:
    """The class whose colour is nearest each pixel of a normalised image."""
    pixels = (x * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN)) * 255
    d = ((pixels[..., None, :] - PALETTE.astype(np.float64)) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.mark.parametrize("seed", range(6))
def test_scale_crop_flip_keep_the_mask_derived_from_the_image(seed: int) -> None:
    image, mask = _blocks(seed)
    aug = SegAugment("light", crop=48, scale_range=(0.5, 2.0))
    x, y = aug(image, mask, np.random.default_rng(seed))
    assert x.shape == (48, 48, 3) and x.dtype == np.float32 and y.shape == (48, 48)
    labelled = y != 255
    # bilinear blends colours only along block edges; the nearest-neighbour mask never blends
    agreement = (_classes_of(x) == y)[labelled].mean()
    assert agreement > 0.9, agreement
    assert np.all(x[~labelled] == 0)  # padding: the mean colour, where the mask says ignore


def test_at_scale_one_the_pair_is_cropped_and_flipped_exactly() -> None:
    image, mask = _blocks(7)
    aug = SegAugment("light", crop=40, scale_range=(1.0, 1.0))
    flips = set()
    for seed in range(12):
        x, y = aug(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(_classes_of(x), y)
        # the window is somewhere in the original (flipped or not)
        found = [
            (t, left, f)
            for f in (False, True)
            for t in range(25)
            for left in range(25)
            if np.array_equal((mask[:, ::-1] if f else mask)[t : t + 40, left : left + 40], y)
        ]
        assert found
        flips |= {f for _, _, f in found}
    assert flips == {False, True}  # both happen


def test_photometric_jitter_changes_the_image_and_not_the_geometry() -> None:
    image, mask = _blocks(3)
    light = SegAugment("light", crop=48)
    strong = SegAugment("strong", crop=48)
    changed = 0
    for seed in range(6):
        xl, yl = light(image, mask, np.random.default_rng(seed))
        xs, ys = strong(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(yl, ys)  # the geometry draws come first, the same
        changed += not np.allclose(xl, xs)
    assert changed >= 4


def test_none_is_the_centre_of_the_evaluation_size() -> None:
    image, mask = _blocks(4, size=32)
    aug = SegAugment("none", crop=48, base=lambda h, w: (2 * h, 2 * w))
    x1, y1 = aug(image, mask, np.random.default_rng(0))
    x2, y2 = aug(image, mask, np.random.default_rng(1))
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    up = np.kron(mask, np.ones((2, 2), np.uint8))  # nearest at 2x: each class pixel doubled
    np.testing.assert_array_equal(y1, up[8:56, 8:56])


def test_a_mask_of_another_size_is_refused() -> None:
    image, mask = _blocks(0)
    with pytest.raises(ValueError, match="differ in size"):
        SegAugment("light", crop=32)(image, mask[:-1], np.random.default_rng(0))


# The digits-seg generator ----------------------------------------------------------------


def test_digits_seg_labels_are_the_pasted_digits() -> None:
    (ink, digits), _ = digits_seg.digit_splits()
    spec = digits_seg.Spec(canvas=96, max_digits=3)
    seen = 0
    for seed in range(10):
        image, mask, pasted = digits_seg.render_canvas(
            ink, digits, spec, np.random.default_rng(seed)
        )
        assert image.shape == (96, 96, 3) and mask.shape == (96, 96) and pasted
        inside = np.zeros(mask.shape, bool)
        bg = np.median(image[mask == 0], axis=0)
        for p in pasted:
            assert spec.scales[0] * 8 - 1 <= p.size <= spec.scales[1] * 8 + 1
            box = (slice(p.top, p.top + p.size), slice(p.left, p.left + p.size))
            inside[box] = True
            labels = mask[box]
            assert set(np.unique(labels)) <= {0, p.digit + 1, 255}  # its own class only
            # the ink of the 8x8 digit, nearest-neighbour upscaled here, against the label
            idx = np.arange(p.size) * 8 // p.size
            ink_here = ink[p.source][np.ix_(idx, idx)] >= 0.5
            ours = labels == p.digit + 1
            iou = (ours & ink_here).sum() / (ours | ink_here).sum()
            assert iou > 0.6, iou
            # labelled pixels have the digit's colour, far from the background's
            fg = np.median(image[box][ours], axis=0)
            assert np.abs(fg - bg).mean() > 30
            seen += 1
        assert np.all(mask[~inside] == 0)  # no label outside the pasted digits
    assert seen >= 12


@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory: Any) -> str:
    out = str(tmp_path_factory.mktemp("dseg") / "data")
    spec = digits_seg.Spec(canvas=32, train=12, val=5, scales=(2.0, 4.0))
    return digits_seg.generate(out, spec)


def test_digits_seg_writes_the_generic_layout(tiny_digits: str) -> None:
    train = find_seg_dataset(tiny_digits, "train")
    val = find_seg_dataset(tiny_digits, "val")
    assert (len(train.images), len(val.images)) == (12, 5) and train.layout == "generic"
    assert train.classes == ("background", *"0123456789") == val.classes
    for m in train.masks:
        values = set(np.unique(np.asarray(Image.open(m))))
        assert values <= {*range(11), 255} and 0 in values and values - {0, 255}
    with pytest.raises(ValueError, match="exists"):
        digits_seg.generate(tiny_digits)
    assert not [f for f in os.listdir(os.path.dirname(tiny_digits)) if f.startswith(".")]


# Batches: pure functions of (seed, epoch, position) --------------------------------------


def _source(root: str, **kw: Any) -> Any:
    splits = find_seg_splits(root)
    aug = SegAugment("strong", crop=32, base=mit_eval_transform("generic").input_size)
    args = dict(batch_size=4, eval_batch_size=4, seed=3, workers=0) | kw
    return seg_source(splits, aug, mit_eval_transform("generic", "NCHW"), **args)[0]


def _epoch(source: Any, epoch: int, first: int = 0) -> list[dict]:
    return list(source.epoch_batches(epoch, first))


def test_seg_batches_depend_on_seed_epoch_and_position_only(tiny_digits: str) -> None:
    a = _epoch(_source(tiny_digits), 1)
    b = _epoch(_source(tiny_digits, workers=2), 1)
    assert len(a) == 3 and a[0]["images"].shape == (4, 3, 32, 32)
    assert a[0]["labels"].shape == (4, 32, 32) and a[0]["labels"].dtype == np.int32
    for x, y in zip(a, b, strict=True):
        for k in ("images", "labels", "mask"):
            np.testing.assert_array_equal(x[k], y[k])
    resumed = _epoch(_source(tiny_digits), 1, first=2)  # a resume before the third batch
    np.testing.assert_array_equal(resumed[0]["images"], a[2]["images"])
    np.testing.assert_array_equal(resumed[0]["labels"], a[2]["labels"])
    other = _epoch(_source(tiny_digits), 2)
    assert not np.array_equal(other[0]["labels"], a[0]["labels"])
    shares = [_epoch(_source(tiny_digits, process_index=i, process_count=2), 1) for i in (0, 1)]
    joined = np.concatenate([shares[0][0]["labels"], shares[1][0]["labels"]])
    np.testing.assert_array_equal(joined, a[0]["labels"])


def test_held_out_batches_are_the_whole_images_padded(tiny_digits: str) -> None:
    source = _source(tiny_digits)
    batches = list(source.held_out())
    assert [int(b["mask"].sum()) for b in batches] == [4, 1]  # 5 images, batches of 4
    val = find_seg_dataset(tiny_digits, "val")
    first = np.asarray(Image.open(val.masks[0]))
    np.testing.assert_array_equal(batches[0]["labels"][0], first)
    pixels = np.asarray(Image.open(val.images[0]), np.float32) / 255
    expect = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(batches[0]["images"][0], expect, atol=1e-6)
