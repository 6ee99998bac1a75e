"""Images to segmentation-model inputs, as MIT's evaluation prepares them.

MIT's ``applications/efficientvit_seg/eval_efficientvit_seg_model.py`` resizes the uint8 image
with OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_CUBIC)`` (Cityscapes: to 1024x2048;
ADE20K: the shorter side to 512, the other side ``ceil(long / short * 512 / 32) * 32``), then
``/ 255`` and ImageNet's mean and std. Its labels are never resized: the logits are resized to
the label's size instead.

``cv_resize_cubic`` is that resize in NumPy, written from OpenCV's algorithm: Keys' kernel
with a = -0.75, pixel centres at ``(x + 0.5) * scale - 0.5`` (float32), edge pixels repeated,
no antialiasing when shrinking, rows then columns, rounded to uint8. The sums are kept in
float rather than OpenCV's own 11-bit fixed point, because OpenCV's pip wheels on x86 (what
MIT's runs used) hand this resize to Intel IPP, which computes it in floating point: measured
against opencv-python-headless 4.10 and 5.0 on noise images, 99.95% of the values are equal
and the others one level apart (against OpenCV's fixed-point path, ``cv2.ipp.setUseIPP(False)``: about 96%
equal, the others one level apart). PIL's bicubic is another filter (a = -0.5, antialiased)
and is not used.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from efficientvit_jax.data.image import load_image, normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_A = np.float32(-0.75)  # OpenCV's (and PyTorch's) cubic-convolution parameter


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """``[n, 4]`` float32 weights of the taps at -1, 0, 1, 2 for fractions ``t`` (float32), in
    OpenCV's ``interpolateCubic`` order of operations; the last weight is 1 minus the others."""
    a = _A
    one = np.float32(1)
    w0 = ((a * (t + one) - 5 * a) * (t + one) + 8 * a) * (t + one) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + one
    w2 = ((a + 2) * (one - t) - (a + 3)) * (one - t) * (one - t) + one
    w3 = one - w0 - w1 - w2
    return np.stack([w0, w1, w2, w3], -1).astype(np.float32)


def _axis_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index [out, 4], weight [out, 4] float32)`` of one axis, source positions clipped to
    the image (the edge pixel repeated, OpenCV's border for resizing)."""
    scale = 1.0 / (out_size / in_size)  # OpenCV: 1 / inv_scale, both in double
    pos = ((np.arange(out_size) + 0.5) * scale - 0.5).astype(np.float32)
    start = np.floor(pos)
    weights = _cubic_weights((pos - start).astype(np.float32))
    index = np.clip(start.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    return index, weights


def cv_resize_cubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)`` of a uint8
    ``[H, W]`` or ``[H, W, C]`` array (see the module); ``size`` = ``(height, width)``.
    The same array back when the size is already right, as MIT skips the call then."""
    height, width = size
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    xi, xw = _axis_taps(width, w)
    yi, yw = _axis_taps(height, h)
    src = image.astype(np.float32)
    # Rows first, then columns, as OpenCV's passes run; one tap at a time so that memory
    # stays at a few copies of the output.
    shape = (1, -1) + (1,) * (image.ndim - 2)
    rows = sum(src[:, xi[:, k]] * xw[:, k].reshape(shape) for k in range(4))
    shape = (-1,) + (1,) * (image.ndim - 1)
    total = sum(rows[yi[:, k]] * yw[:, k].reshape(shape) for k in range(4))
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


RESIZE_MODES = ("fixed", "shorter", "round")


@dataclasses.dataclass(frozen=True)
class SegEvalTransform:
    """An image (path, PIL image or uint8 array) -> the float32 input of a segmentation model.

    Attributes:
      mode: ``"fixed"``: resize to ``size`` = ``(height, width)`` (MIT's Cityscapes:
        ``(1024, 2048)``, whatever the image's size); ``"shorter"``: the shorter side to
        ``size[0]``, the other ``ceil(long / short * size / multiple) * multiple`` (MIT's
        ADE20K: 512 and 32); ``"round"``: each side rounded up to a multiple of ``multiple``
        (the model needs sides divisible by 32; an image of such sides stays as it is).
      size: see ``mode``.
      multiple: see ``mode``.
      mean, std: normalisation after ``/ 255``.
      data_format: ``"NHWC"`` (``[H, W, 3]``) or ``"NCHW"`` (``[3, H, W]``), the model's.
    """

    mode: str = "round"
    size: tuple[int, int] = (512, 512)
    multiple: int = 32
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    data_format: str = "NHWC"

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {self.mode!r}; known: {', '.join(RESIZE_MODES)}")
        if self.data_format not in ("NHWC", "NCHW"):
            raise ValueError(f"data_format must be NHWC or NCHW, got {self.data_format!r}")

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The model input's ``(height, width)`` for an image of this size."""
        if self.mode == "fixed":
            return self.size
        m = self.multiple
        if self.mode == "round":
            return math.ceil(height / m) * m, math.ceil(width / m) * m
        short = self.size[0]
        if height < width:  # MIT's test is h < w: a square image goes the other way
            return short, math.ceil(width / height * short / m) * m
        return math.ceil(height / width * short / m) * m, short

    def pixels(self, source: Any) -> np.ndarray:
        """The resized uint8 ``[H, W, 3]`` image, before normalisation."""
        image = np.asarray(load_image(source))
        return cv_resize_cubic(image, self.input_size(*image.shape[:2]))

    def __call__(self, source: Any) -> np.ndarray:
        x = normalize(self.pixels(source), self.mean, self.std)
        return x.transpose(2, 0, 1) if self.data_format == "NCHW" else x


def mit_eval_transform(
    dataset: str, data_format: str = "NHWC", crop_size: int | None = None
) -> SegEvalTransform:
    """MIT's evaluation transform for a model trained on ``dataset``, with its ``--crop_size``
    (``crop_size``): Cityscapes resized to ``crop_size x 2 crop_size`` (default 1024: 1024x2048),
    ADE20K's shorter side to ``crop_size`` (default 512); any other dataset: the image's sides
    rounded up to multiples of 32 (``crop_size``, if given, as the shorter side instead)."""
    if dataset == "cityscapes":
        crop = crop_size or 1024
        return SegEvalTransform("fixed", (crop, 2 * crop), data_format=data_format)
    if dataset == "ade20k" or crop_size is not None:
        crop = crop_size or 512
        return SegEvalTransform("shorter", (crop, crop), data_format=data_format)
    return SegEvalTransform("round", data_format=data_format)
