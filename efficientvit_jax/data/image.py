"""Image primitives with torchvision's PIL semantics: read, resize the shorter side, centre
crop, normalise. At the bottom of ``data``: the evaluation transforms (``data.transforms``)
and the training augmentations (``data.augment``) both build on these, and neither imports
the other for them.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def load_image(source: Any) -> Any:
    """A PIL RGB image from a path, a PIL image or a uint8 array (``HW``, ``HWC`` with 1, 3 or
    4 channels). Like timm's loader: ``Image.open(path).convert("RGB")``, so grey, palette,
    RGBA (alpha dropped) and CMYK files all work. An unreadable file raises ``ValueError``
    naming it."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")  # convert() loads every pixel: truncation shows here
        except (OSError, SyntaxError, ValueError) as e:  # PIL's ways of saying "not an image"
            raise ValueError(f"cannot read image {path}: {' '.join(str(e).split())}") from e
    arr = np.asarray(source)
    if (
        arr.dtype != np.uint8
        or arr.ndim not in (2, 3)
        or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4))
    ):
        raise ValueError(
            f"an image array must be uint8 [H, W] or [H, W, 1|3|4], got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(arr).convert("RGB")


INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
"""The interpolation names, each PIL's ``Image.Resampling`` filter of that name (upper
case): the one table for the data configs (``transforms``) and the augmentations
(``augment``)."""


def resampling(name: str) -> Any:
    """PIL's resampling filter called ``name`` (one of ``INTERPOLATIONS``)."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {name!r}; known: {sorted(INTERPOLATIONS)}")
    from PIL import Image  # here, so that importing data.image does not load PIL

    return getattr(Image.Resampling, name.upper())


def resize_shorter(img: Any, size: int, interpolation: str) -> Any:
    """Shorter side to ``size``, the longer in proportion (truncated), as torchvision's
    ``Resize(int)``; an image already that size is returned as it is."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), resampling(interpolation))


def center_crop(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centre ``height x width`` of an ``[H, W, C]`` array, zero-padded first where the
    image is smaller (torchvision's ``CenterCrop`` rounding and padding)."""
    h, w = arr.shape[:2]
    if height > h or width > w:
        top, left = max(height - h, 0) // 2, max(width - w, 0) // 2
        bottom, right = max(height - h, 0) - top, max(width - w, 0) - left
        arr = np.pad(arr, ((top, bottom), (left, right), (0, 0)))
        h, w = arr.shape[:2]
    top, left = round((h - height) / 2.0), round((w - width) / 2.0)
    return arr[top : top + height, left : left + width]


def normalize(pixels: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> float32 ``(x / 255 - mean) / std`` (torch's ToTensor+Normalize)."""
    x = pixels.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
