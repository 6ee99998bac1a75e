"""EfficientViT-SAM's pre- and postprocessing, as MIT's ``EfficientViTSamPredictor`` does it.

Two frames matter. The *encoder* frame: the image resized so that its longer side is the
encoder's input size (512 for the L models, 1024 for XL), normalised, zero-padded at the
bottom and right to a square. The *prompt* frame: the same resize to a longer side of 1024
(``prompt_size``), in which SAM's prompt encoder reads point coordinates and in which its
256x256 low-resolution masks cover a 1024x1024 square. For XL both frames coincide; for L
the encoder sees a 512 image while the prompts and masks still live at 1024, as in MIT's
code (``EfficientViTSam.image_size = (1024, 512)``).

The image resize is torchvision's ``resize`` of a PIL image, which is PIL's own antialiased
bilinear ``Image.resize``: calling PIL here gives the reference's pixels exactly. The masks
go back as PyTorch's bilinear ``F.interpolate`` takes them (``zoo.seg.resize``'s weights): up
to 1024 square, cropped to the resized image, then to the original size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax.zoo.seg.resize import taps

# SAM's pixel statistics (0-255 scale); MIT's transform divides them by 255 for torchvision's
# Normalize, which works on [0, 1] images.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PROMPT_SIZE = 1024
LOW_RES = 256  # side of the decoder's masks (a quarter of the prompt frame)


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """``(new_height, new_width)`` with the longer side ``long_side``, rounded half up as
    ``ResizeLongestSide.get_preprocess_shape`` rounds (``int(x + 0.5)``)."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def check_image(image: object, image_format: str = "RGB") -> np.ndarray:
    """``image`` as a uint8 ``[H, W, 3]`` RGB array; one-line ``ValueError`` otherwise."""
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise ValueError(
            f"image must be a uint8 array [H, W, 3] (H, W >= 1), got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr[..., ::-1] if image_format == "BGR" else arr)


def resize_longest_side(image: np.ndarray, size: int) -> np.ndarray:
    """``SamResize(size)``: uint8 ``[H, W, 3]`` with its longer side ``size`` (unchanged when
    it already is), by PIL's bilinear filter, which is what torchvision's ``resize`` of a PIL
    image calls."""
    from PIL import Image

    height, width = image.shape[:2]
    if max(height, width) == size:
        return image
    new_h, new_w = preprocess_shape(height, width, size)
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def normalize(image: np.ndarray) -> np.ndarray:
    """float32 ``(image / 255 - mean / 255) / (std / 255)``: torchvision's ``ToTensor`` and
    ``Normalize`` step by step in float32, so the values agree to the last bit or so."""
    f32 = np.float32
    mean = np.array([m / 255 for m in PIXEL_MEAN], f32)
    std = np.array([s / 255 for s in PIXEL_STD], f32)
    return (image.astype(f32) / f32(255) - mean) / std


def preprocess(
    image: np.ndarray, size: int, data_format: Literal["NCHW", "NHWC"] = "NCHW"
) -> np.ndarray:
    """The encoder's input for one RGB uint8 image: resized (``resize_longest_side``),
    normalised, zero-padded at the bottom and right to ``size x size`` (``SamPad``; the pad
    comes after the normalisation, so it is 0, not the mean colour). ``[3, S, S]`` for NCHW,
    ``[S, S, 3]`` for NHWC."""
    x = normalize(resize_longest_side(image, size))
    h, w = x.shape[:2]
    x = np.pad(x, ((0, size - h), (0, size - w), (0, 0)))
    return np.ascontiguousarray(x.transpose(2, 0, 1)) if data_format == "NCHW" else x


def apply_coords(
    coords: np.ndarray, original_size: Sequence[int], prompt_size: int = PROMPT_SIZE
) -> np.ndarray:
    """Points ``[..., 2]`` (x, y) in the original image's pixels -> the prompt frame, in
    float64 as ``ResizeLongestSide.apply_coords`` (each axis by its own rounded ratio)."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, prompt_size)
    out = np.array(coords, dtype=np.float64)
    out[..., 0] *= new_w / old_w
    out[..., 1] *= new_h / old_h
    return out


def apply_boxes(
    boxes: np.ndarray, original_size: Sequence[int], prompt_size: int = PROMPT_SIZE
) -> np.ndarray:
    """Boxes ``[..., 4]`` (x0, y0, x1, y1) -> the prompt frame, flattened to ``[B, 4]`` as
    ``apply_boxes`` does."""
    boxes = np.asarray(boxes)
    return apply_coords(boxes.reshape(-1, 2, 2), original_size, prompt_size).reshape(-1, 4)


def postprocess_matrices(
    low_res: int, input_size: Sequence[int], original_size: Sequence[int], prompt_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [H, low_res], cols [W, low_res])``: ``postprocess_masks``' three steps along
    each axis (upsample, crop, resize) as one float32 matrix, the product taken in float64."""

    def resize(n_in: int, n_out: int) -> np.ndarray:  # [n_out, n_in], PyTorch's weights
        if n_in == n_out:  # PyTorch copies: its weights are then (1, 0)
            return np.eye(n_out)
        index, weights = taps(n_in, n_out, "bilinear")
        m = np.zeros((n_out, n_in))
        np.add.at(m, (np.repeat(np.arange(n_out), index.shape[1]), index.ravel()), weights.ravel())
        return m

    def axis(keep: int, out: int) -> np.ndarray:
        return (resize(keep, out) @ resize(low_res, prompt_size)[:keep]).astype(np.float32)

    return axis(int(input_size[0]), int(original_size[0])), axis(
        int(input_size[1]), int(original_size[1])
    )


def postprocess_masks(
    masks: jax.Array,
    input_size: Sequence[int],
    original_size: Sequence[int],
    prompt_size: int = PROMPT_SIZE,
) -> jax.Array:
    """Low-resolution logits ``[..., 256, 256]`` -> logits ``[..., H, W]`` at the original
    image size: ``EfficientViTSam.postprocess_masks`` (bilinear to ``prompt_size`` square,
    crop to ``input_size``, bilinear to ``original_size``, PyTorch's weights), each axis's
    three steps fused into one matrix (``postprocess_matrices``). The same weights in one
    product instead of three: ~5x faster at a photo's size, where the automatic mask
    generator sends hundreds of masks, and equal to the reference up to float32 rounding
    (1.5e-7 of the logits' scale with torch 2.14, 1e-5 with 2.15, whose float32 weights
    round differently). Traceable; the sizes are static."""
    rows, cols = postprocess_matrices(masks.shape[-1], input_size, original_size, prompt_size)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("...hw,Ww->...hW", masks, jnp.asarray(cols, masks.dtype), precision=hi)
    return jnp.einsum("...hW,Hh->...HW", x, jnp.asarray(rows, masks.dtype), precision=hi)
