"""Training augmentations: shapes, ranges, determinism, and agreement with timm's ops."""

import math

import numpy as np
import pytest
from PIL import Image

from efficientvit_jax.data import augment as A

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LO = (0 - np.array(MEAN)) / np.array(STD)  # the normalised value of black, per channel
HI = (1 - np.array(MEAN)) / np.array(STD)


@pytest.fixture(scope="module")
def photo():
    """A 90x120 RGB image with structure (gradients + noise), so ops visibly change it."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:90, 0:120]
    base = np.stack([x * 2, y * 2, (x + y)], -1) + rng.integers(0, 40, (90, 120, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def _aug(level, recipe="msra"):
    return A.build_augment(
        level, input_size=(3, 40, 32), mean=MEAN, std=STD, num_classes=5, recipe=recipe
    )


@pytest.mark.parametrize("level", ["none", "light"])
def test_levels_shape_dtype_range(photo, level):
    x = _aug(level)(photo, A.image_rng(0, 0, 0))
    assert x.shape == (40, 32, 3) and x.dtype == np.float32
    assert (x >= LO - 1e-5).all() and (x <= HI + 1e-5).all()


@pytest.mark.parametrize("recipe", sorted(A.RECIPES))
def test_strong_shape_dtype_and_determinism(photo, recipe):
    aug = _aug("strong", recipe)
    outs = [aug(photo, A.image_rng(3, 1, i)) for i in range(6)]
    for x in outs:
        assert x.shape == (40, 32, 3) and x.dtype == np.float32 and np.isfinite(x).all()
    again = [aug(photo, A.image_rng(3, 1, i)) for i in range(6)]
    assert all(np.array_equal(a, b) for a, b in zip(outs, again, strict=True))
    other_epoch = [aug(photo, A.image_rng(3, 2, i)) for i in range(6)]
    assert not all(np.array_equal(a, b) for a, b in zip(outs, other_epoch, strict=True))
    assert aug.mix is not None and aug.mix.num_classes == 5


def test_grey_and_rgba_images_come_out_rgb(photo):
    for mode in ("L", "RGBA"):
        x = _aug("light")(photo.convert(mode), A.image_rng(0, 0, 0))
        assert x.shape == (40, 32, 3)


GREY_MEAN, GREY_STD = (0.46,), (0.23,)


def test_a_grey_config_reads_luminance_and_augments_as_rgb(photo):
    """One channel in, one out: ``none`` is the evaluation transform of a grey config; ``light``
    and ``strong`` are the RGB pipeline's (same draws) on the luminance image, one channel kept."""
    from efficientvit_jax.data import DataConfig, create_transform

    square = dict(input_size=(1, 32, 32), mean=GREY_MEAN, std=GREY_STD)
    got = A.build_augment("none", **square)(photo, None)
    config = DataConfig((1, 32, 32), "bicubic", GREY_MEAN, GREY_STD, 0.875, data_format="NHWC")
    np.testing.assert_allclose(got, create_transform(config)(photo), atol=1e-5)
    grey = dict(input_size=(1, 40, 32), mean=GREY_MEAN, std=GREY_STD, num_classes=5)
    for level in ("light", "strong"):
        rgb = A.build_augment(level, input_size=(3, 40, 32), mean=MEAN, std=STD, num_classes=5)
        for i in range(4):
            x = A.build_augment(level, **grey)(photo, A.image_rng(0, 0, i))
            want = rgb(photo.convert("L"), A.image_rng(0, 0, i))
            assert x.shape == (40, 32, 1) and x.dtype == np.float32
            if level == "light":  # (strong's erasing draws noise per channel)
                pixels = want[..., 0] * STD[0] + MEAN[0]
                np.testing.assert_allclose(
                    x[..., 0] * GREY_STD[0] + GREY_MEAN[0], pixels, atol=1e-5
                )


def test_none_is_timms_eval_transform(photo):
    timm_data = pytest.importorskip("timm.data")
    t = timm_data.create_transform(
        input_size=(3, 32, 32), crop_pct=0.875, interpolation="bicubic", mean=MEAN, std=STD
    )
    want = t(photo).numpy().transpose(1, 2, 0)
    aug = A.build_augment("none", input_size=(3, 32, 32), mean=MEAN, std=STD)
    got = aug(photo, None)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_random_resized_crop_box_ranges():
    rng = np.random.default_rng(1)
    for _ in range(500):
        width, height = (int(v) for v in rng.integers(20, 400, 2))
        top, left, h, w = A.random_resized_crop_box(width, height, rng)
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        # the ranges hold up to the rounding of w and h to whole pixels
        area = (w * h) / (width * height)
        assert 0.08 * (1 - 2 / min(w, h)) ** 2 <= area <= 1.0
        assert 3 / 4 * (1 - 1 / h) / (1 + 1 / w) <= w / h <= 4 / 3 * (1 + 1 / h) / (1 - 1 / w)


def test_random_resized_crop_falls_back_to_the_clamped_centre():
    # 1000x10: no crop of area >= 8% fits with an aspect ratio <= 4/3, ten tries fail
    top, left, h, w = A.random_resized_crop_box(1000, 10, np.random.default_rng(0))
    assert (h, w) == (10, round(10 * 4 / 3)) and top == 0 and left == (1000 - w) // 2


def test_random_resized_crop_is_crop_then_resize(photo):
    out = A.random_resized_crop(photo, (24, 16), np.random.default_rng(5), "bilinear")
    top, left, h, w = A.random_resized_crop_box(120, 90, np.random.default_rng(5))
    want = photo.crop((left, top, left + w, top + h)).resize((16, 24), Image.Resampling.BILINEAR)
    assert out.size == (16, 24) and np.array_equal(np.asarray(out), np.asarray(want))


def test_horizontal_flip(photo):
    flips = [A.horizontal_flip(photo, np.random.default_rng(i)) for i in range(40)]
    mirrored = [np.array_equal(np.asarray(f), np.asarray(photo)[:, ::-1]) for f in flips]
    unchanged = [f is photo for f in flips]
    assert all(m != u for m, u in zip(mirrored, unchanged, strict=True))
    assert 8 < sum(mirrored) < 32


OPS = sorted(set(A.RAND_TRANSFORMS) | set(A.RAND_INCREASING_TRANSFORMS))


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("negate", [False, True])
def test_rand_augment_ops_equal_timms(photo, name, negate, monkeypatch):
    """Each op, at two magnitudes, with timm's coin for the direction fixed, gives the
    image timm's AugmentOp gives."""
    aa = pytest.importorskip("timm.data.auto_augment")
    monkeypatch.setattr(aa, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
    fill = (124, 116, 104)
    hparams = {"translate_const": 100, "img_mean": fill, "interpolation": Image.BICUBIC}
    for magnitude in (3, 9):
        want = aa.AugmentOp(name, prob=1.0, magnitude=magnitude, hparams=hparams)(photo)
        got = A.apply_op(photo, name, magnitude, negate=negate, fill=fill)
        assert np.array_equal(np.asarray(got), np.asarray(want)), (name, magnitude)


def test_every_increasing_op_changes_the_image_at_full_magnitude(photo):
    for name in A.RAND_INCREASING_TRANSFORMS:  # (plain Solarize/Posterize weaken with M)
        out = A.apply_op(photo, name, 10.0, negate=False)
        assert out.size == photo.size and out.mode == "RGB"
        assert not np.array_equal(np.asarray(out), np.asarray(photo)), name
    black = A.apply_op(photo, "PosterizeIncreasing", 10.0)  # keeps 0 bits
    assert not np.asarray(black).any()


def test_parse_rand_augment():
    c = A.parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert (c.magnitude, c.num_layers, c.prob, c.magnitude_std, c.increasing) == (
        9, 2, 0.5, 0.5, True,
    )  # fmt: skip
    assert c.ops[4] == "PosterizeIncreasing" and len(c.ops) == 15
    c = A.parse_rand_augment("rand-n1-m3-mstd101")
    assert c.num_layers == 1 and math.isinf(c.magnitude_std) and not c.increasing
    with pytest.raises(ValueError, match="unknown RandAugment option 'x3'"):
        A.parse_rand_augment("rand-m9-x3")


def test_rand_augment_is_deterministic_and_varies(photo):
    cfg = A.parse_rand_augment("rand-m9-mstd0.5-inc1")
    runs = [A.rand_augment(photo, A.image_rng(0, 0, i), cfg) for i in range(8)]
    again = [A.rand_augment(photo, A.image_rng(0, 0, i), cfg) for i in range(8)]
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(runs, again, strict=True)
    )
    assert len({np.asarray(r).tobytes() for r in runs}) > 3


def _erased_box(before, after):
    ys, xs = np.nonzero((before != after).any(-1))
    return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1


@pytest.mark.parametrize("mode", ["pixel", "rand", "const"])
def test_random_erasing(mode):
    x = np.full((60, 50, 3), 5.0, np.float32)  # 5: out of reach of N(0, 1) and of 0
    assert A.random_erasing(x, np.random.default_rng(0), p=0.0, mode=mode) is x
    for seed in range(30):
        y = A.random_erasing(x, np.random.default_rng(seed), p=1.0, mode=mode)
        assert y.shape == x.shape and y.dtype == np.float32 and (x == 5).all()
        top, bottom, left, right = _erased_box(x, y)
        region = y[top:bottom, left:right]
        assert (region != 5).all()  # one full rectangle, nothing outside it
        h, w = bottom - top, right - left
        assert 0.02 * 0.8 <= h * w / (60 * 50) <= 1 / 3 * 1.2 and 0.25 <= h / w <= 1 / 0.25
        if mode == "const":
            assert (region == 0).all()
        elif mode == "rand":
            assert (region == region[:1, :1]).all()  # one colour
        else:
            assert abs(region.mean()) < 1.0 and 0.5 < region.std() < 1.5  # noise per pixel


def test_mixup_targets_sum_to_one_and_alphas_zero_is_one_hot():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0])
    off = A.Mixup(5, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0)
    x, y = off(images, labels, rng)
    assert np.array_equal(x, images) and np.array_equal(y, np.eye(5, dtype=np.float32)[labels])
    for mixup, cutmix in [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)]:
        m = A.Mixup(5, mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1)
        for seed in range(10):
            x, y = m(images, labels, np.random.default_rng(seed))
            assert x.shape == images.shape and x.dtype == y.dtype == np.float32
            assert y.shape == (6, 5) and np.allclose(y.sum(1), 1.0, atol=1e-6)
            assert (y >= 0.1 / 5 - 1e-7).all()


def test_mixup_and_cutmix_mix_the_images_as_their_targets_say():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3])
    flipped = images[::-1]
    for seed in range(5):
        x, y = A.Mixup(4, 0.8, 0.0, label_smoothing=0.0)(
            images, labels, np.random.default_rng(seed)
        )
        lam = y[0, 0]  # image 0 keeps lam of its own label
        assert np.allclose(x, lam * images + (1 - lam) * flipped, atol=1e-5)
        x, y = A.Mixup(4, 0.0, 1.0, label_smoothing=0.0)(
            images, labels, np.random.default_rng(seed)
        )
        pasted = (x != images).any(-1)
        assert np.array_equal(x[pasted], flipped[pasted])
        assert np.allclose(1 - pasted[0].mean(), y[0, 0], atol=1e-6)


def test_mixup_is_deterministic_per_batch_rng():
    images = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype(np.float32)
    m = A.Mixup(3)
    a = m(images, np.array([0, 1, 2, 0]), A.batch_rng(1, 2, 3))
    b = m(images, np.array([0, 1, 2, 0]), A.batch_rng(1, 2, 3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_recipe_for_model_and_build_errors():
    assert A.recipe_for_model("efficientvit_m5.r224_in1k") == "msra"
    assert A.recipe_for_model("efficientvit_b0") == "mit_default"
    assert A.recipe_for_model("efficientvit_b3.r256_in1k") == "mit_b3"
    assert A.recipe_for_model("efficientvit_l2") == "mit_l2"
    assert A.recipe_for_model("core") == "msra"
    with pytest.raises(ValueError, match="none, light, strong"):
        A.build_augment("heavy", input_size=(3, 8, 8))
    with pytest.raises(ValueError, match="number of classes"):
        A.build_augment("strong", input_size=(3, 8, 8))
    cfg = {"input_size": (3, 24, 20), "interpolation": "bilinear", "mean": MEAN, "std": STD}
    aug = A.build_augment_from_config("light", {**cfg, "crop_pct": 0.9})
    assert aug.size == (24, 20) and aug.interpolation == "bilinear" and aug.mix is None
