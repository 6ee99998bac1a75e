"""``SamAutomaticMaskGenerator``: every mask of an image from a grid of point prompts, as
segment_anything's ``SamAutomaticMaskGenerator`` (MIT's ``EfficientViTSamAutomaticMaskGenerator``
is that class with MIT's predictor, and the same parameters and defaults).

Per crop (the whole image, then optional layers of overlapping crops): the grid's points go
through the decoder ``points_per_batch`` at a time, each point giving three masks; masks
with a low predicted IoU or an unstable threshold are dropped, and so are those touching an
inner crop edge; box NMS removes duplicates, within each crop and then across crops
(smaller crops preferred). Optionally, small holes and islands are removed afterwards.

The decoder, the upsampling to the crop's size, the stability score and the boxes run on
the device in one jitted call per batch; the filters, NMS and run-length encodings on the
host in NumPy (``sam.amg``).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import numpy as np

from efficientvit_jax.sam import amg, transforms
from efficientvit_jax.sam.predictor import MASK_THRESHOLD, SamPredictor

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")


class SamAutomaticMaskGenerator:
    """Masks for a whole image, with segment_anything's parameters and defaults.

    Args:
      model: an ``EfficientViTSam`` module, or a ``SamPredictor`` to use (``variables`` is
        then ignored; ``generate`` replaces its image and leaves none set, as the
        reference's generator does with its own).
      variables: the model's variables.
      points_per_side: the grid is ``points_per_side ** 2`` points (exclusive with
        ``point_grids``).
      points_per_batch: points decoded per call.
      pred_iou_thresh: drop masks whose predicted IoU is not above this (0: keep all).
      stability_score_thresh: drop masks whose stability score is below this (0: keep all).
      stability_score_offset: the logit shift of the stability score's two thresholds.
      box_nms_thresh: box-IoU above which a mask of a crop is a duplicate.
      crop_n_layers: crop layers beyond the whole image; layer i has ``(2**i)**2`` crops.
      crop_nms_thresh: box-IoU above which masks of different crops are duplicates.
      crop_overlap_ratio: the crops' overlap, as a fraction of the image's shorter side
        (first layer; later layers scale it down).
      crop_n_points_downscale_factor: points per side of layer i divided by this ** i.
      point_grids: explicit grids in [0, 1]^2, one per layer (exclusive with
        ``points_per_side``).
      min_mask_region_area: remove holes and islands below this area (pixels), then rerun
        NMS; 0: skip.
      output_mode: ``"binary_mask"`` (``[H, W]`` bool), ``"uncompressed_rle"`` or
        ``"coco_rle"`` (COCO's compressed strings; no pycocotools needed).
    """

    def __init__(
        self,
        model: Any,
        variables: Any = None,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        if point_grids is None:
            point_grids = amg.build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        elif len(point_grids) < crop_n_layers + 1:
            raise ValueError(
                f"point_grids needs one grid per layer ({crop_n_layers + 1}), got {len(point_grids)}"
            )
        self.point_grids = [np.asarray(g, np.float64) for g in point_grids]
        is_predictor = isinstance(model, SamPredictor)
        self.predictor = model if is_predictor else SamPredictor(model, variables)
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The masks of ``image`` (uint8 ``[H, W, 3]`` RGB), one record each, as the
        reference's: ``segmentation`` (per ``output_mode``), ``area`` (pixels), ``bbox``
        (x, y, w, h), ``predicted_iou``, ``point_coords`` ([[x, y]], the prompt),
        ``stability_score``, ``crop_box`` (x, y, w, h). Highest predicted IoU first (crop
        layers and small-region removal reorder them as the reference does)."""
        image = transforms.check_image(image)
        data = self._generate_masks(image)
        if self.min_mask_region_area > 0:
            nms_thresh = max(self.box_nms_thresh, self.crop_nms_thresh)
            data = self.postprocess_small_regions(data, self.min_mask_region_area, nms_thresh)
        if self.output_mode == "coco_rle":
            segmentations = [amg.coco_encode_rle(rle) for rle in data["rles"]]
        elif self.output_mode == "binary_mask":
            segmentations = [amg.rle_to_mask(rle) for rle in data["rles"]]
        else:
            segmentations = data["rles"]
        return [
            {
                "segmentation": segmentations[i],
                "area": amg.area_from_rle(data["rles"][i]),
                "bbox": amg.box_xyxy_to_xywh(data["boxes"][i]).tolist(),
                "predicted_iou": float(data["iou_preds"][i]),
                "point_coords": [data["points"][i].tolist()],
                "stability_score": float(data["stability_score"][i]),
                "crop_box": amg.box_xyxy_to_xywh(data["crop_boxes"][i]).tolist(),
            }
            for i in range(len(segmentations))
        ]

    def _generate_masks(self, image: np.ndarray) -> dict[str, Any]:
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = amg.generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        data = _cat(
            [
                self._process_crop(image, box, layer, orig_size)
                for box, layer in zip(crop_boxes, layer_idxs, strict=True)
            ]
        )
        if len(crop_boxes) > 1:  # duplicates between crops: the smaller crop's mask wins
            area = amg.box_area(data["crop_boxes"]).astype(np.float32)
            keep = amg.nms(data["boxes"], np.float32(1) / area, self.crop_nms_thresh)
            data = _filter(data, keep)
        return data

    def _process_crop(
        self,
        image: np.ndarray,
        crop_box: list[int],
        layer: int,
        orig_size: tuple[int, int],
    ) -> dict[str, Any]:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1]
        size = crop.shape[:2]
        self.predictor.set_image(crop)
        points = self.point_grids[layer] * np.array(size)[None, ::-1]
        data = _cat(
            [
                self._process_batch(batch, size, crop_box, orig_size)
                for (batch,) in amg.batch_iterator(self.points_per_batch, points)
            ]
        )
        self.predictor.reset_image()
        data = _filter(data, amg.nms(data["boxes"], data["iou_preds"], self.box_nms_thresh))
        data["boxes"] = amg.uncrop_boxes_xyxy(data["boxes"], crop_box)
        data["points"] = amg.uncrop_points(data["points"], crop_box)
        data["crop_boxes"] = np.tile(np.asarray(crop_box, np.int64), (len(data["rles"]), 1))
        return data

    def _process_batch(
        self,
        points: np.ndarray,
        size: tuple[int, int],
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> dict[str, Any]:
        """One batch of grid points (pixels of the crop) -> the masks that pass the filters,
        as RLEs in the whole image's frame."""
        p = len(points)
        pred = self.predictor
        labels = np.ones((p, 1), np.int64)
        low_res, iou, _ = pred._decode_padded(points[:, None], labels, None, None, True, 0)
        masks, stability, boxes = _batch_stats(
            low_res, pred.input_sizes[0], size, self.stability_score_offset, pred.prompt_size
        )
        iou = np.asarray(iou)[:p].reshape(-1)  # prompt-major, as the reference's flatten
        stability = np.asarray(stability)[:p].reshape(-1)
        boxes = np.asarray(boxes)[:p].reshape(-1, 4).astype(np.int64)
        keep = np.ones(len(iou), bool)
        if self.pred_iou_thresh > 0.0:
            keep &= iou > self.pred_iou_thresh
        if self.stability_score_thresh > 0.0:
            keep &= stability >= self.stability_score_thresh  # NaN (empty) fails
        orig_h, orig_w = orig_size
        keep &= ~amg.is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
        idx = np.flatnonzero(keep)
        masks = np.asarray(masks)[:p].reshape(-1, *size)[idx]
        return {
            "rles": amg.mask_to_rle(amg.uncrop_masks(masks, crop_box, orig_h, orig_w)),
            "boxes": boxes[idx],
            "iou_preds": iou[idx],
            "points": np.repeat(points, len(iou) // p, axis=0)[idx],
            "stability_score": stability[idx],
        }

    @staticmethod
    def postprocess_small_regions(
        data: dict[str, Any], min_area: int, nms_thresh: float
    ) -> dict[str, Any]:
        """Fill holes and drop islands smaller than ``min_area`` in every mask, then NMS
        again, preferring the masks that needed no change (the reference's rule)."""
        if len(data["rles"]) == 0:
            return data
        masks, scores = [], []
        for rle in data["rles"]:
            mask, filled = amg.remove_small_regions(amg.rle_to_mask(rle), min_area, "holes")
            mask, cut = amg.remove_small_regions(mask, min_area, "islands")
            masks.append(mask)
            scores.append(0.0 if filled or cut else 1.0)
        masks = np.stack(masks)
        boxes = np.asarray(amg.batched_mask_to_box(masks)).astype(np.int64)
        keep = amg.nms(boxes, np.asarray(scores, np.float32), nms_thresh)
        data = dict(data, rles=list(data["rles"]), boxes=np.array(data["boxes"]))
        for i in keep:  # only changed masks get a new RLE and box
            if scores[i] == 0.0:
                data["rles"][i] = amg.mask_to_rle(masks[i : i + 1])[0]
                data["boxes"][i] = boxes[i]
        return _filter(data, keep)


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _batch_stats(
    low_res: jax.Array,
    input_size: tuple[int, int],
    size: tuple[int, int],
    offset: float,
    prompt_size: int = transforms.PROMPT_SIZE,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Boolean masks at the crop's size, their stability scores and boxes, from the
    decoder's low-resolution logits (the logits at full size never leave the device)."""
    logits = transforms.postprocess_masks(low_res, input_size, size, prompt_size)
    stability = amg.calculate_stability_score(logits, MASK_THRESHOLD, offset)
    masks = logits > MASK_THRESHOLD
    return masks, stability, amg.batched_mask_to_box(masks)


_FIELDS = {
    "rles": None,
    "boxes": (np.int64, (0, 4)),
    "iou_preds": (np.float32, (0,)),
    "points": (np.float64, (0, 2)),
    "stability_score": (np.float32, (0,)),
    "crop_boxes": (np.int64, (0, 4)),
}


def _cat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The records of ``parts`` one after the other (segment_anything's ``MaskData.cat``)."""
    out: dict[str, Any] = {}
    for key, spec in _FIELDS.items():
        values = [part[key] for part in parts if key in part]
        if spec is None:
            out[key] = [v for value in values for v in value]
        elif len(values) == len(parts):  # a field of every part (crop_boxes: of crops)
            out[key] = np.concatenate(values) if values else np.zeros(spec[1], spec[0])
    return out


def _filter(data: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """The records at indices (or where the boolean mask) ``keep``, in that order."""
    keep = np.asarray(keep)
    idx = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
    return {
        key: [value[i] for i in idx] if isinstance(value, list) else value[idx]
        for key, value in data.items()
    }
