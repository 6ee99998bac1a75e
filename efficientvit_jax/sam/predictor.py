"""``SamPredictor``: EfficientViT-SAM's interactive interface, as MIT's ``EfficientViTSamPredictor``.

``set_image`` embeds an image once (the encoder jitted once per batch size); ``predict``
then decodes point, box and mask prompts against that embedding as often as wanted, with the
reference's arguments and NumPy results. ``predict_batch`` decodes many prompts in one call.

Every decoder call is padded to fixed shapes so that it compiles once per *bucket*, not
once per prompt: the token count (points, SAM's pad point or a box's two corners) is padded
to a power of two with ``ABSENT_LABEL`` tokens, which the model masks out of every
attention, and the prompt count to a power of two by repeating the last prompt (its
results are dropped). Setting the image already embedded (the same pixels, the same
variables) reuses its embedding. Results are those of the unpadded call up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import numpy as np

from efficientvit_jax.sam import transforms
from efficientvit_jax.zoo.sam.model import ABSENT_LABEL

MASK_THRESHOLD = 0.0  # logits above it are the mask (SAM's ``mask_threshold``)
POINT_LABELS = (-1, 0, 1)  # SAM's pad ("not a point"), negative, positive


def bucket(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for 0)."""
    return 1 << max(n - 1, 0).bit_length()


def _shape_error(name: str, expected: str, value: np.ndarray) -> ValueError:
    return ValueError(f"{name} must be {expected}, got shape {tuple(value.shape)}")


class SamPredictor:
    """EfficientViT-SAM on one image (or a few): embed once, prompt many times.

    Args:
      model: an ``EfficientViTSam`` module (``zoo.create_model("efficientvit_sam_l0")``).
      variables: its variables (``model.init``, ``zoo.load_mit_weights`` or a convert folder).
      pad_to_bucket: pad every decoder call to power-of-two token and prompt counts so that
        it compiles once per bucket (False: once per exact shape).

    Coordinates are (x, y) pixels of the image as given to ``set_image``; masks come back
    at that size, ``[C, H, W]`` (C = 3 with ``multimask_output``, else 1), whatever the
    model's ``data_format``.
    """

    mask_threshold = MASK_THRESHOLD

    def __init__(self, model: Any, variables: Any, *, pad_to_bucket: bool = True) -> None:
        cfg = model.config
        self.model, self.variables = model, variables
        self.image_size, self.prompt_size = cfg.image_size, cfg.prompt_size
        self.mask_size, self.nhwc = cfg.mask_size, cfg.data_format == "NHWC"
        self.pad_to_bucket = pad_to_bucket
        # the last images embedded and their embeddings, kept across reset_image
        self._last: tuple[list[np.ndarray], jax.Array, Any] | None = None
        self.reset_image()

    # ------------------------------------------------------------------ images

    def reset_image(self) -> None:
        """Forget the image(s) set."""
        self.features: jax.Array | None = None
        self.original_sizes: list[tuple[int, int]] = []
        self.input_sizes: list[tuple[int, int]] = []

    @property
    def is_image_set(self) -> bool:
        return self.features is not None

    @property
    def original_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of the image set (the first, after ``set_images``)."""
        return self.original_sizes[0] if self.original_sizes else None

    @property
    def input_size(self) -> tuple[int, int] | None:
        """``(h, w)`` of that image resized into the 1024 prompt frame."""
        return self.input_sizes[0] if self.input_sizes else None

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """Embed ``image`` (uint8 ``[H, W, 3]``, RGB or ``"BGR"``) for the prompts to come."""
        self.set_images([image], image_format)

    def set_images(self, images: Sequence[np.ndarray], image_format: str = "RGB") -> None:
        """Embed several images (any sizes) in one encoder call; prompt image ``i`` with
        ``image_index=i``."""
        if len(images) == 0:
            raise ValueError("set_images needs at least one image")
        arrays = [transforms.check_image(im, image_format) for im in images]
        self.reset_image()
        self.features = self._embeddings(arrays)
        self.original_sizes = [tuple(a.shape[:2]) for a in arrays]
        self.input_sizes = [
            transforms.preprocess_shape(*size, self.prompt_size) for size in self.original_sizes
        ]

    def _embeddings(self, arrays: list[np.ndarray]) -> jax.Array:
        """The encoder's output for RGB arrays; the same pixels as the last call's (an
        interactive loop, the mask generator after ``predict``) reuse its result."""
        last = self._last
        if (
            last is not None
            and last[2] is self.variables
            and len(last[0]) == len(arrays)
            and all(
                a.shape == b.shape and np.array_equal(a, b)
                for a, b in zip(arrays, last[0], strict=True)
            )
        ):
            return last[1]
        fmt = "NHWC" if self.nhwc else "NCHW"
        batch = np.stack([transforms.preprocess(a, self.image_size, fmt) for a in arrays])
        features = _embed(self.model, self.variables, batch)
        # copies of the arrays: a caller may edit its own in place afterwards
        self._last = ([a.copy() for a in arrays], features, self.variables)
        return features

    def get_image_embedding(self) -> np.ndarray:
        """The image embeddings ``[B, 256, 64, 64]`` (``[B, 64, 64, 256]`` for NHWC models)."""
        self._require_image()
        return np.asarray(self.features)

    def _require_image(self) -> None:
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")

    def _image(self, image_index: int | None) -> int:
        self._require_image()
        n = len(self.original_sizes)
        if image_index is None:
            if n > 1:
                raise ValueError(f"image_index is needed: {n} images are set")
            return 0
        if not 0 <= image_index < n:
            raise ValueError(f"image_index must be in [0, {n}), got {image_index}")
        return image_index

    # ------------------------------------------------------------------ prompts

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        image_index: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks of one prompt, as ``EfficientViTSamPredictor.predict``.

        Args:
          point_coords: ``[N, 2]`` (x, y) pixels; point_labels: ``[N]``, 1 foreground, 0
            background (-1: SAM's pad point).
          box: ``[4]`` (or ``[1, 4]``) x0, y0, x1, y1 pixels.
          mask_input: ``[1, 256, 256]`` logits, e.g. a previous call's low-res output.
          multimask_output: three masks (for an ambiguous prompt such as one click) or one.
          return_logits: the logits at the image's size instead of boolean masks.
          image_index: which image of ``set_images`` (default: the only one).

        Returns:
          ``(masks [C, H, W], scores [C], low_res_logits [C, 256, 256])``.
        """
        m = self.mask_size
        coords = labels = boxes = masks = None
        if point_coords is not None:
            coords = np.asarray(point_coords)
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise _shape_error("point_coords", "[N, 2] (x, y pixels)", coords)
            coords = coords[None]
        if point_labels is not None:
            labels = np.asarray(point_labels)
            if labels.ndim != 1:
                raise _shape_error("point_labels", "[N]", labels)
            labels = labels[None]
        if box is not None:
            boxes = np.asarray(box)
            if boxes.shape not in ((4,), (1, 4)):
                raise _shape_error("box", "[4] (x0, y0, x1, y1 pixels)", boxes)
            boxes = boxes.reshape(1, 4)
        if mask_input is not None:
            masks = np.asarray(mask_input)
            if masks.shape != (1, m, m):
                raise _shape_error("mask_input", f"[1, {m}, {m}]", masks)
            masks = masks[None]
        out = self.predict_batch(
            coords, labels, boxes, masks, multimask_output, return_logits, image_index
        )
        return out[0][0], out[1][0], out[2][0]

    def predict_batch(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        image_index: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks of P prompts in one decoder call (``predict_torch``'s batching, but in the
        image's pixels: the prompt-frame transform is applied here).

        Args: ``point_coords [P, N, 2]`` with ``point_labels [P, N]``, ``boxes [P, 4]``,
        ``mask_input [P, 1, 256, 256]``, any of them (at least one fixes P; none: P = 1, no
        prompt at all); the rest as ``predict``.

        Returns:
          ``(masks [P, C, H, W], scores [P, C], low_res_logits [P, C, 256, 256])``.
        """
        i = self._image(image_index)
        low_res, iou, p = self._decode_padded(
            point_coords, point_labels, boxes, mask_input, multimask_output, i
        )
        sizes = (self.input_sizes[i], self.original_sizes[i])
        masks = _postprocess(low_res, *sizes, not return_logits, self.prompt_size)
        return np.asarray(masks)[:p], np.asarray(iou)[:p], np.asarray(low_res)[:p]

    def decode(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        image_index: int | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """The decoder alone, on the device: ``(low_res_logits [P, C, 256, 256], scores
        [P, C])`` of ``predict_batch``'s prompts, without the resize to the image."""
        i = self._image(image_index)
        low_res, iou, p = self._decode_padded(
            point_coords, point_labels, boxes, mask_input, multimask_output, i
        )
        return low_res[:p], iou[:p]

    def _decode_padded(
        self,
        point_coords: Any,
        point_labels: Any,
        boxes: Any,
        mask_input: Any,
        multimask_output: bool,
        image_index: int,
    ) -> tuple[jax.Array, jax.Array, int]:
        """``(low_res, iou, P)``: the decoder's NCHW outputs for P prompts padded to the
        prompt bucket (rows past P repeat the last prompt)."""
        coords, labels, boxes, mask_input, p = check_prompts(
            point_coords, point_labels, boxes, mask_input, self.mask_size
        )
        tokens, token_labels = prompt_tokens(
            coords, labels, boxes, p, self.original_sizes[image_index], self.prompt_size
        )
        has_mask = np.full(p, 0.0 if mask_input is None else 1.0, np.float32)
        if mask_input is None:
            mask_input = np.zeros((p, 1, self.mask_size, self.mask_size), np.float32)
        n = tokens.shape[1]
        n_pad = (bucket(n) if self.pad_to_bucket else max(n, 1)) - n
        p_pad = (bucket(p) if self.pad_to_bucket else p) - p
        tokens = np.pad(tokens, ((0, 0), (0, n_pad), (0, 0)))
        token_labels = np.pad(token_labels, ((0, 0), (0, n_pad)), constant_values=ABSENT_LABEL)
        arrays = [tokens, token_labels, mask_input.astype(np.float32), has_mask]
        arrays = [np.pad(a, [(0, p_pad)] + [(0, 0)] * (a.ndim - 1), mode="edge") for a in arrays]
        features = self.features
        if features.shape[0] > 1:
            features = features[image_index : image_index + 1]
        low_res, iou = _decode(
            self.model, self.variables, features, *arrays, bool(multimask_output)
        )
        return low_res, iou, p


# Compiled functions of the model (a static argument: equal modules share them), so that
# every predictor of one model, and a generator's, compiles each program once per process.
@partial(jax.jit, static_argnums=0)
def _embed(model: Any, variables: Any, images: jax.Array) -> jax.Array:
    return model.apply(variables, images, method="embed_images")


@partial(jax.jit, static_argnums=(0, 7))
def _decode(
    model: Any,
    variables: Any,
    embeddings: jax.Array,
    coords: jax.Array,
    labels: jax.Array,
    mask_input: jax.Array,
    has_mask: jax.Array,
    multimask_output: bool,
) -> tuple[jax.Array, jax.Array]:
    """The model's ``decode`` with NCHW mask inputs and logits whatever its layout (the
    predictor's arrays are the reference's)."""
    nhwc = model.config.data_format == "NHWC"
    if nhwc:
        mask_input = mask_input.transpose(0, 2, 3, 1)
    low_res, iou = model.apply(
        variables,
        embeddings,
        coords,
        labels,
        mask_input,
        has_mask,
        multimask_output,
        method="decode",
    )
    return (low_res.transpose(0, 3, 1, 2) if nhwc else low_res), iou


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _postprocess(
    low_res: jax.Array,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: bool,
    prompt_size: int = transforms.PROMPT_SIZE,
) -> jax.Array:
    """Logits (or masks, ``threshold``) at the image's size; one program per (prompt
    bucket, input size, original size). ``input_size`` is in the model's prompt frame
    (``prompt_size``: 1024 for MIT's models, smaller for a small fine-tuned one)."""
    masks = transforms.postprocess_masks(low_res, input_size, original_size, prompt_size)
    return masks > MASK_THRESHOLD if threshold else masks


def check_prompts(
    point_coords: Any, point_labels: Any, boxes: Any, mask_input: Any, mask_size: int = 256
) -> tuple[Any, Any, Any, Any, int]:
    """The batched prompts as arrays and their count P; one-line ``ValueError`` naming the
    expected and given shapes when they do not fit together."""
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels go together: give both or neither")
    counts = {}
    if point_coords is not None:
        point_coords = np.asarray(point_coords, np.float64)
        point_labels = np.asarray(point_labels)
        if point_coords.ndim != 3 or point_coords.shape[2] != 2:
            raise _shape_error("point_coords", "[P, N, 2] (x, y pixels)", point_coords)
        if point_labels.shape != point_coords.shape[:2]:
            raise ValueError(
                f"point_labels must be [P, N] = {list(point_coords.shape[:2])} as point_coords, "
                f"got shape {tuple(point_labels.shape)}"
            )
        bad = np.setdiff1d(point_labels, POINT_LABELS)
        if bad.size:
            raise ValueError(f"point_labels must be 1, 0 or -1, got {bad.tolist()}")
        counts["point_coords"] = len(point_coords)
    if boxes is not None:
        boxes = np.asarray(boxes, np.float64)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise _shape_error("boxes", "[P, 4] (x0, y0, x1, y1 pixels)", boxes)
        counts["boxes"] = len(boxes)
    if mask_input is not None:
        mask_input = np.asarray(mask_input, np.float32)
        if mask_input.shape[1:] != (1, mask_size, mask_size) or mask_input.ndim != 4:
            raise _shape_error("mask_input", f"[P, 1, {mask_size}, {mask_size}]", mask_input)
        counts["mask_input"] = len(mask_input)
    for name, value in (("point_coords", point_coords), ("boxes", boxes)):
        if value is not None and not np.isfinite(value).all():
            raise ValueError(f"{name} must be finite numbers")
    if len(set(counts.values())) > 1:
        given = ", ".join(f"{k} {v}" for k, v in counts.items())
        raise ValueError(f"the prompts must be as many in every argument, got {given}")
    p = next(iter(counts.values()), 1)
    if p < 1:
        raise ValueError("no prompt: the arguments have 0 rows")
    return point_coords, point_labels, boxes, mask_input, p


def prompt_tokens(
    coords: np.ndarray | None,
    labels: np.ndarray | None,
    boxes: np.ndarray | None,
    p: int,
    original_size: tuple[int, int],
    prompt_size: int = transforms.PROMPT_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """``(coords [P, T, 2] float32, labels [P, T] int32)`` in the prompt frame, as SAM's
    prompt encoder lines them up: the points, then the box's corners (labels 2, 3) or, with
    points and no box, SAM's pad point (0, 0) with label -1. No points and no box: T = 0."""
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if coords is not None:
        parts.append((transforms.apply_coords(coords, original_size, prompt_size), labels))
    if boxes is not None:
        corners = transforms.apply_boxes(boxes, original_size, prompt_size).reshape(p, 2, 2)
        parts.append((corners, np.tile(np.array([2, 3]), (p, 1))))
    elif coords is not None:
        parts.append((np.zeros((p, 1, 2)), np.full((p, 1), -1)))
    if not parts:
        return np.zeros((p, 0, 2), np.float32), np.zeros((p, 0), np.int32)
    tokens = np.concatenate([c for c, _ in parts], axis=1).astype(np.float32)
    return tokens, np.concatenate([lab for _, lab in parts], axis=1).astype(np.int32)
