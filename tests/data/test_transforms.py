"""``create_transform`` equals timm's evaluation transform on real and odd images."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from efficientvit_jax.data import create_transform, load_image, resolve_data_config
from efficientvit_jax.data.tags import TAGS

ATOL = 1e-5  # both use PIL's resize; the rest is float32 arithmetic in another order
# Three tags against timm on every odd image: sizes 224/288 and crop fractions 0.875/0.95/1.0.
THREE = ("efficientvit_b0.r224_in1k", "efficientvit_b1.r288_in1k", "efficientvit_m0.r224_in1k")


def _timm_transform(timm: Any, tag: str) -> Any:
    import timm.data
    import timm.models

    cfg = timm.models.get_pretrained_cfg(tag).to_dict()
    return timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=cfg))


def _timm_array(transform: Any, path: str) -> np.ndarray:
    from PIL import Image

    return transform(Image.open(path).convert("RGB")).numpy()


@pytest.mark.parametrize("tag", THREE)
def test_equals_timm_on_real_and_odd_images(timm: Any, tag: str, image_files: dict) -> None:
    theirs, ours = _timm_transform(timm, tag), create_transform(resolve_data_config(tag))
    size = TAGS[tag].image_size
    for kind, path in image_files.items():
        want, got = _timm_array(theirs, path), ours(path)
        assert got.shape == want.shape == (3, size, size), kind
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=kind)


def test_every_tag_equals_timm_on_the_photos(timm: Any, image_files: dict) -> None:
    paths = [image_files["photo_jpeg"], image_files["tall"]]
    for tag in TAGS:
        theirs, ours = _timm_transform(timm, tag), create_transform(resolve_data_config(tag))
        for p in paths:
            np.testing.assert_allclose(ours(p), _timm_array(theirs, p), rtol=0, atol=ATOL)


def test_sources_and_layouts_agree(photos: list, image_files: dict) -> None:
    """A path, a PIL image and a uint8 array give one result; NHWC is NCHW transposed."""
    from PIL import Image

    cfg = resolve_data_config("efficientvit_b0")
    nchw = create_transform(cfg)
    nhwc = create_transform(resolve_data_config("efficientvit_b0", data_format="NHWC"))
    png = image_files["photo_png"]  # lossless: the file holds the array's pixels
    a = nchw(png)
    np.testing.assert_array_equal(nchw(photos[1]), a)
    np.testing.assert_array_equal(nchw(Image.open(png)), a)
    np.testing.assert_array_equal(nhwc(png), a.transpose(1, 2, 0))
    grey = np.asarray(Image.open(image_files["grey"]))
    np.testing.assert_array_equal(nchw(grey), nchw(grey[:, :, None]))
    np.testing.assert_array_equal(nchw(grey), nchw(image_files["grey"]))


def test_normalisation_is_the_explicit_formula(photos: list) -> None:
    cfg = resolve_data_config("efficientvit_b1.r256_in1k")  # crop_pct 1.0
    t = create_transform(cfg)
    crop = t.resize_and_crop(load_image(photos[0])).astype(np.float64)
    want = (crop / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(t(photos[0]), want.transpose(2, 0, 1), rtol=0, atol=1e-6)
    # crop_pct 1.0 at 256 px: the shorter side (427) becomes 256, the crop is its full height
    assert crop.shape == (256, 256, 3)


def test_unreadable_files_and_bad_arrays_are_named(bad_files: dict) -> None:
    t = create_transform(resolve_data_config("efficientvit_b0"))
    for path in bad_files.values():
        with pytest.raises(ValueError, match=f"cannot read image {path}"):
            t(path)
    with pytest.raises(
        ValueError, match=r"must be uint8 \[H, W\] or \[H, W, 1\|3\|4\], got float32"
    ):
        t(np.zeros((8, 8, 3), np.float32))


def test_train_transform_is_seeded_and_in_the_models_layout(photos: list) -> None:
    nchw = create_transform(resolve_data_config("efficientvit_b0", input_size=96), train=True)
    nhwc_cfg = resolve_data_config("efficientvit_b0", input_size=96, data_format="NHWC")
    nhwc = create_transform(nhwc_cfg, train=True)
    a = nchw(photos[0], np.random.default_rng(3))
    assert a.shape == (3, 96, 96) and a.dtype == np.float32
    np.testing.assert_array_equal(a, nchw(photos[0], np.random.default_rng(3)))
    np.testing.assert_array_equal(a.transpose(1, 2, 0), nhwc(photos[0], np.random.default_rng(3)))
    assert not np.array_equal(a, nchw(photos[0], np.random.default_rng(4)))
    with pytest.raises(ValueError, match="apply to train=True only"):
        create_transform(nhwc_cfg, level="light")
