"""The automatic mask generator's utilities: segment_anything's ``utils/amg.py`` in NumPy.

Point grids and crop boxes, the stability score, boxes around masks, non-maximum suppression
(torchvision's ``nms`` / ``batched_nms``), run-length encodings (uncompressed, and COCO's
compressed strings without pycocotools), the removal of small regions and holes, and the
moves from a crop back to the whole image. ``calculate_stability_score`` and
``batched_mask_to_box`` are written with ``jnp`` so that the generator runs them under
``jit`` on the full-resolution logits; they accept NumPy arrays as well.

Boxes are ``[x0, y0, x1, y1]`` with inclusive pixel edges (a one-pixel mask at (x, y) has
the box ``[x, y, x, y]``), as segment_anything's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import product
from typing import Any

import jax.numpy as jnp
import numpy as np


def build_point_grid(n_per_side: int) -> np.ndarray:
    """``[n * n, 2]`` points (x, y) at the centres of an ``n x n`` grid of cells of the unit
    square, x running fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer, layer ``i`` with ``int(n_per_side / scale_per_layer**i)``
    points per side."""
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: Sequence[int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """``(boxes, layer of each box)``: the whole image, then for layer ``i`` (1-based) a
    ``2**i x 2**i`` grid of overlapping crops, all ``[x0, y0, x1, y1]`` in pixels."""
    im_h, im_w = im_size
    short_side = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops)

    for i_layer in range(n_layers):
        n_crops = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w, crop_h = crop_len(im_w, n_crops, overlap), crop_len(im_h, n_crops, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_crops)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_crops)]
        for x0, y0 in product(x0s, y0s):  # x-major, as the reference lists them
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def calculate_stability_score(masks: Any, mask_threshold: float, threshold_offset: float) -> Any:
    """IoU of the masks binarised at ``threshold +- offset`` over the last two axes: the
    high one lies inside the low one, so it is a ratio of pixel counts. 0/0 (no pixel above
    the low cut) is NaN, as in the reference, and fails every ``>=`` filter."""
    high = jnp.sum(masks > (mask_threshold + threshold_offset), axis=(-2, -1), dtype=jnp.int32)
    low = jnp.sum(masks > (mask_threshold - threshold_offset), axis=(-2, -1), dtype=jnp.int32)
    return high.astype(jnp.float32) / low.astype(jnp.float32)


def batched_mask_to_box(masks: Any) -> Any:
    """Boxes ``[..., 4]`` (int32, inclusive edges) around boolean masks ``[..., H, W]``;
    ``[0, 0, 0, 0]`` for an empty mask."""
    h, w = masks.shape[-2:]
    rows, cols = jnp.any(masks, axis=-1), jnp.any(masks, axis=-2)  # [..., H], [..., W]
    ys, xs = jnp.arange(h, dtype=jnp.int32), jnp.arange(w, dtype=jnp.int32)
    bottom = jnp.max(jnp.where(rows, ys, -1), axis=-1)
    top = jnp.min(jnp.where(rows, ys, h), axis=-1)
    right = jnp.max(jnp.where(cols, xs, -1), axis=-1)
    left = jnp.min(jnp.where(cols, xs, w), axis=-1)
    box = jnp.stack([left, top, right, bottom], axis=-1)
    return jnp.where((bottom >= top)[..., None], box, 0)


def box_xyxy_to_xywh(box: np.ndarray) -> np.ndarray:
    box = np.array(box)
    box[..., 2:] = box[..., 2:] - box[..., :2]
    return box


def box_area(boxes: np.ndarray) -> np.ndarray:
    """``(x1 - x0) * (y1 - y0)`` of boxes ``[N, 4]`` (torchvision's ``box_area``)."""
    boxes = np.asarray(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def is_box_near_crop_edge(
    boxes: np.ndarray, crop_box: Sequence[int], orig_box: Sequence[int], atol: float = 20.0
) -> np.ndarray:
    """Whether each box (in the crop's frame) comes within ``atol`` of an edge of the crop
    that is not also an edge of the image: such a mask was probably cut by the crop."""
    boxes = uncrop_boxes_xyxy(np.asarray(boxes), crop_box).astype(np.float32)
    crop = np.asarray(crop_box, np.float32)
    orig = np.asarray(orig_box, np.float32)
    near_crop = np.abs(boxes - crop) <= atol
    near_image = np.abs(boxes - orig) <= atol
    return np.any(near_crop & ~near_image, axis=-1)


def uncrop_boxes_xyxy(boxes: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    x0, y0 = crop_box[:2]
    return np.asarray(boxes) + np.array([x0, y0, x0, y0])


def uncrop_points(points: np.ndarray, crop_box: Sequence[int]) -> np.ndarray:
    x0, y0 = crop_box[:2]
    return np.asarray(points) + np.array([x0, y0])


def uncrop_masks(masks: np.ndarray, crop_box: Sequence[int], orig_h: int, orig_w: int) -> Any:
    """Masks ``[..., h, w]`` of a crop placed in an ``orig_h x orig_w`` frame of zeros."""
    x0, y0, x1, y1 = crop_box
    if (x0, y0, x1, y1) == (0, 0, orig_w, orig_h):
        return masks
    pad = [(0, 0)] * (masks.ndim - 2) + [(y0, orig_h - y1), (x0, orig_w - x1)]
    return np.pad(masks, pad)


def _pairwise_iou(boxes: np.ndarray) -> np.ndarray:
    """IoU of every pair of boxes ``[N, 4]`` with torchvision's nms kernel's float32
    arithmetic (areas without +1; 0/0 is NaN and suppresses nothing)."""
    x0, y0, x1, y1 = (boxes[:, i] for i in range(4))
    area = (x1 - x0) * (y1 - y0)
    w = np.maximum(np.minimum(x1[:, None], x1) - np.maximum(x0[:, None], x0), np.float32(0))
    h = np.maximum(np.minimum(y1[:, None], y1) - np.maximum(y0[:, None], y0), np.float32(0))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / (area[:, None] + area - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """``torchvision.ops.nms``: indices (int64) of the boxes kept, highest score first (ties in
    input order, as its stable sort); a box goes when its IoU with a kept one is above
    ``iou_threshold``."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    iou = _pairwise_iou(boxes[order])
    threshold = np.float64(iou_threshold)  # the kernel compares its float IoU with a double
    suppressed = np.zeros(len(order), bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[i + 1 :] |= iou[i, i + 1 :] > threshold
    return order[np.asarray(keep, np.int64)]


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """``torchvision.ops.batched_nms``: ``nms`` within each category ``idxs``, the kept
    indices ordered by score. (torchvision reorders ties between categories by an unstable
    sort past 1000 boxes on CPU; here ties always keep input order, as its single ``nms`` of
    offset boxes gives them below that: the same set, at worst in another order.)"""
    idxs = np.asarray(idxs)
    scores = np.asarray(scores, np.float32)
    keep = [
        np.flatnonzero(idxs == c)[
            nms(np.asarray(boxes)[idxs == c], scores[idxs == c], iou_threshold)
        ]
        for c in np.unique(idxs)
    ]
    keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]  # ties in input order


def mask_to_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """Uncompressed RLEs (COCO's ``{"size": [h, w], "counts": [...]}``) of boolean masks
    ``[B, H, W]``: run lengths over the column-major pixels, starting with a run of zeros
    (0 when the first pixel is set)."""
    masks = np.asarray(masks, bool)
    b, h, w = masks.shape
    if b == 0:
        return []
    flat = masks.transpose(0, 2, 1).reshape(b, h * w)  # Fortran order, as COCO's
    which, where = np.nonzero(flat[:, 1:] != flat[:, :-1])
    splits = np.searchsorted(which, np.arange(1, b))
    out = []
    for i, changes in enumerate(np.split(where + 1, splits)):
        edges = np.concatenate([[0], changes, [h * w]])
        counts = np.diff(edges).tolist()
        out.append({"size": [h, w], "counts": ([0] if flat[i, 0] else []) + counts})
    return out


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """The boolean ``[h, w]`` mask of an uncompressed RLE."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], np.int64)
    values = np.arange(len(counts)) % 2 == 1  # runs alternate 0, 1, 0, ...
    return np.repeat(values, counts).reshape(w, h).T


def area_from_rle(rle: dict[str, Any]) -> int:
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """COCO's compressed RLE (``pycocotools.mask.frPyObjects`` then the counts as text) of
    an uncompressed one: each count, less the count two before it from the fourth on, as
    a little-endian string of 5-bit groups with a continuation bit, in characters 48-111
    (``rleToString`` of COCO's ``maskApi.c``)."""
    counts = list(rle["counts"])
    chars = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1, as C's signed long
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": list(rle["size"]), "counts": "".join(chars)}


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """``(mask, changed)`` with the 8-connected holes (``mode="holes"``) or islands
    (``"islands"``) smaller than ``area_thresh`` pixels removed; when every island is small,
    the largest stays. The reference labels with OpenCV; ``scipy.ndimage`` (a dependency of
    JAX) finds the same components."""
    from scipy import ndimage

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    holes = mode == "holes"
    working = np.asarray(mask, bool) ^ holes
    regions, n = ndimage.label(working, structure=np.ones((3, 3), int))
    sizes = np.bincount(regions.ravel(), minlength=n + 1)[1:]  # label 0 is the background
    small = np.flatnonzero(sizes < area_thresh) + 1
    if len(small) == 0:
        return mask, False
    if holes:  # the mask, plus the small holes filled
        return ~working | np.isin(regions, small), True
    kept = np.setdiff1d(np.arange(1, n + 1), small)
    if len(kept) == 0:
        kept = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, kept), True


def batch_iterator(batch_size: int, *args: Sequence[Any]) -> Iterator[list[Any]]:
    """Slices of ``batch_size`` (the last one shorter) of equally long sequences."""
    if not args or any(len(a) != len(args[0]) for a in args):
        raise ValueError("batch_iterator needs sequences of one length")
    for start in range(0, len(args[0]), batch_size):
        yield [a[start : start + batch_size] for a in args]
