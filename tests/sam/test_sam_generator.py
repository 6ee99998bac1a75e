"""``SamAutomaticMaskGenerator`` against MIT's ``EfficientViTSamAutomaticMaskGenerator``.

Two models:

- **L0 with random weights** (MIT's, converted), the photograph, a 4 x 4 grid. A random SAM's
  masks hardly depend on the prompt: every point gives nearly the same three image-wide masks,
  so at segment_anything's defaults the IoU filter (predictions near 0) and the stability
  filter (logits of scale ~0.3 against an offset of 1) drop everything, and box NMS would fold
  the rest into one mask. The check is meaningful with the IoU filter off, the stability
  offset at 0.05 and its threshold at 0.3 (a third of the masks pass: 16 of 48) and NMS off
  (``box_nms_thresh=1``): then each surviving mask is matched to the package's mask of the
  same prompt point, not merely to some similar mask. The points go 4 per decoder call.
- **A stand-in decoder** whose masks are discs around the prompt point (three radii, the
  largest with a small hole at the point; logits ``radius - distance`` in the 1024 frame, IoU
  predictions a fixed function of the point), put in place of the decoder on both sides. Its
  masks are local, so segment_anything's default thresholds, box NMS, crop layers with their
  edge filter and cross-crop NMS, and the small-region postprocessing (the holes filled) all
  act; the records must then be the reference's, in order.
"""

from __future__ import annotations

import types
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference is PyTorch code")
pytest.importorskip(
    "efficientsam", reason="pip install --no-deps -r tests/reference-requirements.txt"
)

from efficientvit_jax.sam import SamAutomaticMaskGenerator, amg  # noqa: E402

pytestmark = pytest.mark.xdist_group("sam")

KEYS = {
    "segmentation",
    "area",
    "bbox",
    "predicted_iou",
    "point_coords",
    "stability_score",
    "crop_box",
}
RANDOM_L0 = {
    "points_per_side": 4,
    "points_per_batch": 4,  # 4 decoder calls, each the (4 prompts, 2 tokens) bucket
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.3,
    "stability_score_offset": 0.05,
    "box_nms_thresh": 1.0,
}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def _embedded_once(generator: Any, mit_predictor: Any, photo: np.ndarray) -> Any:
    """MIT's generator with the session's embedding of the photo instead of a second encoder
    run (the encoder is compared in test_sam_predictor.py); everything after it is MIT's."""
    pred = generator.predictor

    def set_image(image: np.ndarray, image_format: str = "RGB") -> None:
        assert image.shape == photo.shape and image_format == "RGB"
        pred.reset_image()
        pred.original_size, pred.input_size = mit_predictor.original_size, mit_predictor.input_size
        pred.features, pred.is_image_set = mit_predictor.features, True

    pred.set_image = set_image
    return generator


def test_random_l0_generator_equals_mit(
    predictor: Any, mit_l0: Any, mit_predictor: Any, photo: np.ndarray
) -> None:
    from efficientsam.models.efficientvit.sam import EfficientViTSamAutomaticMaskGenerator

    reference = EfficientViTSamAutomaticMaskGenerator(mit_l0, **RANDOM_L0)
    want = _embedded_once(reference, mit_predictor, photo).generate(photo)
    got = SamAutomaticMaskGenerator(predictor, **RANDOM_L0).generate(photo)
    print(f"random L0: reference {len(want)} masks, package {len(got)}")
    assert 10 <= len(want) <= 40  # the settings keep a meaningful number (not 0, not all 48)
    assert abs(len(got) - len(want)) <= 0.05 * len(want)
    assert all(set(r) == KEYS for r in got)
    worst = 1.0
    for ref in want:
        same_point = [r for r in got if r["point_coords"] == ref["point_coords"]]
        mine = min(same_point, key=lambda r: abs(r["predicted_iou"] - ref["predicted_iou"]))
        assert abs(mine["predicted_iou"] - ref["predicted_iou"]) <= 1e-4
        assert abs(mine["stability_score"] - ref["stability_score"]) <= 1e-2
        worst = min(worst, _iou(mine["segmentation"], ref["segmentation"]))
        assert np.abs(np.subtract(mine["bbox"], ref["bbox"])).max() <= 2
        assert mine["crop_box"] == ref["crop_box"] == [0, 0, 627, 411]
    print(f"random L0: worst IoU of a reference mask with the package's {worst:.5f}")
    assert worst >= 0.9


# ---------------------------------------------------------------- the disc decoder

RADII = (40.0, 90.0, 160.0)  # in the 1024 prompt frame
HOLE = 12.0  # the largest disc's hole around the point: ~80 pixels of the whole photo


def _disc_logits(xp: Any, points: Any) -> tuple[Any, Any]:
    """``(low_res [P, 3, 256, 256], iou [P, 3])`` for points ``[P, 2]`` in the prompt frame,
    with the same float32 arithmetic in NumPy-like ``xp`` (jnp or torch)."""
    centres = (xp.arange(256, dtype=xp.float32) + 0.5) * 4
    dx = centres[None, None, :] - points[:, 0, None, None]
    dy = centres[None, :, None] - points[:, 1, None, None]
    dist = xp.sqrt(dx * dx + dy * dy)
    radii = [r - dist for r in RADII]
    radii[-1] = xp.minimum(radii[-1], dist - HOLE)
    low_res = xp.stack(radii, 1)
    x, y = points[:, 0:1], points[:, 1:2]
    iou = 0.99 - 0.00013 * x - 0.000071 * y - xp.asarray([[0.0, 0.021, 0.043]], dtype=xp.float32)
    return low_res, iou


class _DiscModel:
    """The package's side: ``embed_images`` gives a dummy embedding, ``decode`` the discs
    around each prompt's first token."""

    config = types.SimpleNamespace(
        image_size=32, prompt_size=1024, mask_size=256, data_format="NCHW"
    )

    def apply(self, variables: Any, x: Any, *args: Any, method: str, **kwargs: Any) -> Any:
        if method == "embed_images":
            return x[:, :1, :1, :1]
        return _disc_logits(jnp, args[0][:, 0])  # args: coords, labels, mask, has_mask, multimask


def _mit_disc_generator(mit_l0: Any, kwargs: dict[str, Any]) -> Any:
    """MIT's generator whose predictor decodes discs (its resize and postprocessing kept)."""
    from efficientsam.models.efficientvit.sam import EfficientViTSamAutomaticMaskGenerator

    generator = EfficientViTSamAutomaticMaskGenerator(mit_l0, **kwargs)
    pred = generator.predictor
    pred.model = types.SimpleNamespace(
        image_format="RGB",
        mask_threshold=0.0,
        transform=lambda image: torch.zeros(3, 32, 32),
        image_encoder=lambda x: x,
        image_size=(1024, 32),
        postprocess_masks=mit_l0.postprocess_masks,
        parameters=lambda: iter([torch.zeros(1)]),  # MIT's get_device reads the first one
    )

    def predict_torch(points: Any, labels: Any, *args: Any, **kw: Any) -> Any:
        low_res, iou = _disc_logits(torch, points[:, 0].float())
        masks = mit_l0.postprocess_masks(low_res, pred.input_size, pred.original_size)
        return masks, iou, low_res

    pred.predict_torch = predict_torch
    return generator


DISC_SETTINGS = {
    "defaults": {"points_per_side": 8},
    "crops": {
        "points_per_side": 6,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
        "min_mask_region_area": 400,
        "output_mode": "uncompressed_rle",
    },
}


@pytest.mark.parametrize("setting", list(DISC_SETTINGS))
def test_disc_generator_records_equal_mit(mit_l0: Any, photo: np.ndarray, setting: str) -> None:
    kwargs = DISC_SETTINGS[setting]
    image = photo[:211, :317]  # the discs ignore the pixels: a smaller image is cheaper
    want = _mit_disc_generator(mit_l0, kwargs).generate(image)
    got = SamAutomaticMaskGenerator(_DiscModel(), {}, **kwargs).generate(image)
    print(f"discs, {setting}: reference {len(want)} masks, package {len(got)}")
    assert len(want) >= 10 and len(got) == len(want)
    rle = kwargs.get("output_mode") == "uncompressed_rle"
    holes = 0  # masks without their own prompt point: a hole left open
    for mine, ref in zip(got, want, strict=True):
        x, y = (int(v) for v in mine["point_coords"][0])
        mask = amg.rle_to_mask(mine["segmentation"]) if rle else mine["segmentation"]
        holes += int(not mask[y, x])
        for key in ("area", "bbox", "point_coords", "crop_box"):
            assert mine[key] == ref[key], key
        for key in ("predicted_iou", "stability_score"):
            assert abs(mine[key] - ref[key]) <= 1e-6, key
        if rle:
            assert mine["segmentation"] == ref["segmentation"]
        else:
            np.testing.assert_array_equal(mine["segmentation"], ref["segmentation"])
    # min_mask_region_area fills every hole (on both sides: the records are equal)
    assert holes == 0 if kwargs.get("min_mask_region_area") else holes > 0


def test_generator_arguments() -> None:
    with pytest.raises(ValueError, match="exactly one of points_per_side and point_grids"):
        SamAutomaticMaskGenerator(_DiscModel(), {}, points_per_side=None)
    with pytest.raises(ValueError, match="output_mode must be one of"):
        SamAutomaticMaskGenerator(_DiscModel(), {}, output_mode="png")
    grid = [np.array([[0.5, 0.5]])]
    gen = SamAutomaticMaskGenerator(_DiscModel(), {}, points_per_side=None, point_grids=grid)
    image = np.zeros((300, 200, 3), np.uint8)
    records = gen.generate(image)  # one centred point: its largest discs pass the filters
    assert [r["point_coords"] for r in records] == [[[100.0, 150.0]]] * len(records)
    coco = SamAutomaticMaskGenerator(
        _DiscModel(), {}, points_per_side=None, point_grids=grid, output_mode="coco_rle"
    ).generate(image)
    assert [r["segmentation"]["size"] for r in coco] == [[300, 200]] * len(records)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in coco)
