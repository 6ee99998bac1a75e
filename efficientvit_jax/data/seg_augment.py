"""Training augmentation for segmentation: one random geometry for an image and its mask.

The usual recipe of segmentation training (mmsegmentation's Cityscapes and ADE20K pipelines,
which MIT's released models follow in spirit; MIT published no training code), in this order:

1. resize to the dataset's evaluation size (``base``: Cityscapes 1024x2048, ADE20K's shorter
   side 512, other data its own size) times a ratio drawn from ``scale_range`` (0.5-2.0):
   the image bilinearly, the mask by nearest neighbour (a class index is never blended);
2. a random ``crop`` x ``crop`` window (the whole side where the image is smaller);
3. a horizontal flip with probability 0.5, of both;
4. (``strong``) photometric jitter of the image alone, mmsegmentation's
   ``PhotoMetricDistortion``: brightness +-32, contrast and saturation x0.5-1.5, hue +-18 of
   180 degrees, each with probability 0.5, contrast before or after the colour steps;
5. normalisation, then padding to ``crop`` at the bottom and right: the image with 0 (the
   mean colour), the mask with ``ignore_index``, so padding never counts in the loss.

Levels: ``none`` is deterministic (the evaluation size, the centre crop, no flip, no jitter);
``light`` is steps 1-3 and 5; ``strong`` all five. Every draw comes from the generator passed
in, in a fixed order, so an image's augmentation is a function of ``(seed, epoch, position)``
when the pipeline passes ``augment.image_rng(seed, epoch, position)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from efficientvit_jax.data.image import normalize

LEVELS = ("none", "light", "strong")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# mmsegmentation's PhotoMetricDistortion defaults.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 32.0, (0.5, 1.5), (0.5, 1.5), 18.0

SizeRule = Callable[[int, int], tuple[int, int]]


def resize_pair(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (uint8 ``[H, W, 3]``) bilinearly and ``mask`` (``[H, W]``) by nearest
    neighbour to ``size`` = ``(height, width)``."""
    if image.shape[:2] == tuple(size):
        return image, mask
    wh = (int(size[1]), int(size[0]))
    img = np.asarray(Image.fromarray(image).resize(wh, Image.Resampling.BILINEAR))
    # Mode "I" keeps 16-bit class indices; nearest picks one source pixel, never a blend.
    m = Image.fromarray(mask.astype(np.int32), mode="I").resize(wh, Image.Resampling.NEAREST)
    return img, np.asarray(m).astype(mask.dtype)


def crop_box(height: int, width: int, crop: int, rng: np.random.Generator | None) -> tuple:
    """``(top, left)`` of a ``crop`` window (shorter where the image is): random, or the
    centre without a generator."""
    spare_h, spare_w = max(height - crop, 0), max(width - crop, 0)
    if rng is None:
        return spare_h // 2, spare_w // 2
    return int(rng.integers(spare_h + 1)), int(rng.integers(spare_w + 1))


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmsegmentation's ``PhotoMetricDistortion`` of a uint8 ``[H, W, 3]`` image (see the
    module); uint8 back."""
    x = image.astype(np.float32)
    if rng.integers(2):
        x = np.clip(x + rng.uniform(-BRIGHTNESS, BRIGHTNESS), 0, 255)
    contrast_first = bool(rng.integers(2))
    contrast = rng.uniform(*CONTRAST) if rng.integers(2) else None
    if contrast_first and contrast is not None:
        x = np.clip(x * contrast, 0, 255)
    saturation = rng.uniform(*SATURATION) if rng.integers(2) else None
    hue = rng.uniform(-HUE, HUE) if rng.integers(2) else None
    if saturation is not None or hue is not None:
        hsv = np.asarray(Image.fromarray(x.astype(np.uint8)).convert("HSV")).astype(np.float32)
        if saturation is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
        if hue is not None:  # PIL's hue spans 0-255 for OpenCV's 0-180
            hsv[..., 0] = (hsv[..., 0] + hue * 255 / 180) % 256
        rgb = Image.fromarray(hsv.astype(np.uint8), mode="HSV").convert("RGB")
        x = np.asarray(rgb).astype(np.float32)
    if not contrast_first and contrast is not None:
        x = np.clip(x * contrast, 0, 255)
    return x.astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SegAugment:
    """``(image, mask, rng) -> (float32 [crop, crop, 3], mask [crop, crop])``; see the module.

    Attributes:
      level: ``none``, ``light`` or ``strong``.
      crop: the side of the training crop.
      scale_range: the ratio to the evaluation size is drawn uniformly from it.
      base: ``(height, width) -> (height, width)``, the evaluation size of an image of that
        size (``data.seg_transform.SegEvalTransform.input_size``); ``None``: its own size.
      mean, std: normalisation after ``/ 255``.
      ignore_index: the mask value of padding.
    """

    level: str = "strong"
    crop: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    base: SizeRule | None = None
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"--augment must be one of {', '.join(LEVELS)}, got {self.level!r}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale range must be 0 < low <= high, got {self.scale_range}")

    def geometry(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Steps 1-3: the scaled, cropped and flipped pair (uint8 image, mask), unpadded."""
        h, w = image.shape[:2]
        bh, bw = self.base(h, w) if self.base is not None else (h, w)
        random = self.level != "none"
        ratio = rng.uniform(*self.scale_range) if random else 1.0
        size = (max(1, round(bh * ratio)), max(1, round(bw * ratio)))
        image, mask = resize_pair(image, mask, size)
        top, left = crop_box(*size, self.crop, rng if random else None)
        window = (slice(top, top + self.crop), slice(left, left + self.crop))
        image, mask = image[window], mask[window]
        if random and rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return image, mask

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """One uint8 ``[H, W, 3]`` image and its ``[H, W]`` mask (same size), augmented."""
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
        image, mask = self.geometry(image, mask, rng)
        if self.level == "strong":
            image = photometric(np.ascontiguousarray(image), rng)
        x = normalize(image, self.mean, self.std)
        pad = ((0, self.crop - x.shape[0]), (0, self.crop - x.shape[1]))
        x = np.pad(x, (*pad, (0, 0)))  # 0 after normalisation: the mean colour
        y = np.pad(mask, pad, constant_values=self.ignore_index)
        return x, y


__all__ = ["LEVELS", "SegAugment", "crop_box", "photometric", "resize_pair"]
