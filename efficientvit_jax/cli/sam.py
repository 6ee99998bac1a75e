"""``efficientvit-jax sam IMAGE (--model M [--weights F] | --checkpoint RUN) (--point X,Y[,LABEL]
... [--box X0,Y0,X1,Y1] | --auto) --output DIR [--json]``: EfficientViT-SAM's masks of one image.

Prompts (``sam.SamPredictor``): points (LABEL 1, the default, on the object; 0 off it) and/or
one box, in the image's pixels. One point alone gives SAM's three candidate masks, anything
else one mask. ``--auto`` (``sam.SamAutomaticMaskGenerator``): every mask, from a grid of
points. Written to DIR: ``<stem>_mask<k>.png`` (0/255, the image's size; best score first),
``<stem>_overlay.png`` (the best mask, or with ``--auto`` every mask, coloured over the image,
the prompts marked) and with ``--json`` ``<stem>.json`` (also printed): each mask's file,
score, box (x0, y0, x1, y1, inclusive pixel edges) and area.

``--weights``: one of MIT's checkpoint files (``.pt``, ``.safetensors``) or a ``convert``
folder; without it, MIT's published checkpoint from the Hugging Face Hub's cache (downloaded
into it on first use), as ``segment`` does: never random weights. ``--checkpoint RUN``: a SAM
fine-tuning run (``efficientvit-jax train --model efficientvit_sam_* --data DIR``; its folder,
``checkpoints/`` or one step), the model and weights it trained (``--model``, if given, must be
the run's).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sam", help="segment anything: masks from points, a box, or --auto")
    p.add_argument("image", metavar="IMAGE", help="an image file")
    p.add_argument("--model", help="efficientvit_sam_l0 .. efficientvit_sam_xl1 (or MIT's names)")
    p.add_argument("--checkpoint", metavar="RUN",
                   help="a SAM fine-tuning run of `train` (instead of --model and --weights)")  # fmt: skip
    p.add_argument(
        "--weights",
        help="MIT's checkpoint (.pt, .safetensors) or a convert folder (default: MIT's "
        "published checkpoint, from the Hugging Face Hub's cache)",
    )
    p.add_argument(
        "--point",
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a point prompt in pixels; LABEL 1 (default: on the object) or 0 (off it); repeatable",
    )
    p.add_argument("--box", metavar="X0,Y0,X1,Y1", help="a box prompt in pixels")
    p.add_argument("--auto", action="store_true", help="every mask (automatic mask generator)")
    p.add_argument("--output", "-o", required=True, help="folder for the PNGs (and the JSON)")
    p.add_argument("--json", action="store_true", help="write <stem>.json and print it")
    g = p.add_argument_group("--auto (segment_anything's defaults)")
    g.add_argument("--points-per-side", type=int, default=32)
    g.add_argument("--points-per-batch", type=int, default=64)
    g.add_argument("--pred-iou-thresh", type=float, default=0.88)
    g.add_argument("--stability-score-thresh", type=float, default=0.95)
    g.add_argument("--min-mask-region-area", type=int, default=0)
    p.set_defaults(func=run)


def _numbers(text: str, flag: str, shape: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(np.isfinite(values)):
        raise ValueError(f"{flag} {text!r}: expected {shape} (numbers, comma-separated)")
    return values


def parse_prompts(args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None, Any]:
    """``(points [N, 2], labels [N], box [4])`` from the flags (None where not given)."""
    points, labels = [], []
    for text in args.point:
        values = _numbers(text, "--point", "X,Y or X,Y,LABEL", (2, 3))
        if len(values) == 3 and values[2] not in (0.0, 1.0):
            raise ValueError(f"--point {text!r}: LABEL must be 1 (on the object) or 0 (off it)")
        points.append(values[:2])
        labels.append(int(values[2]) if len(values) == 3 else 1)
    box = None
    if args.box is not None:
        box = np.array(_numbers(args.box, "--box", "X0,Y0,X1,Y1", (4,)))
        if box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"--box {args.box!r}: needs X0 < X1 and Y0 < Y1")
    if not points:
        return None, None, box
    return np.array(points), np.array(labels), box


def check_flags(args: argparse.Namespace) -> None:
    if args.model is None and args.checkpoint is None:
        raise ValueError("give --model NAME (efficientvit_sam_l0 .. efficientvit_sam_xl1) or "
                         "--checkpoint RUN (a SAM fine-tuning run)")  # fmt: skip
    if args.checkpoint is not None and args.weights is not None:
        raise ValueError("--checkpoint and --weights: give one (the run holds its weights)")
    prompted = bool(args.point) or args.box is not None
    if prompted == args.auto:
        raise ValueError("give prompts (--point X,Y[,LABEL] ..., --box X0,Y0,X1,Y1) or --auto")
    for flag in ("points_per_side", "points_per_batch", "min_mask_region_area"):
        low = 0 if flag == "min_mask_region_area" else 1
        if getattr(args, flag) < low:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= {low}")


def check_inside(points: Any, box: Any, size: tuple[int, int], args: argparse.Namespace) -> None:
    """Prompts within the image, ``[0, W] x [0, H]`` (pixel edges included)."""
    h, w = size
    where = f"the image is {w} x {h} (x in [0, {w}], y in [0, {h}])"
    for text, xy in zip(args.point, [] if points is None else points, strict=True):
        if not (0 <= xy[0] <= w and 0 <= xy[1] <= h):
            raise ValueError(f"--point {text}: outside the image; {where}")
    if box is not None and not (box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h):
        raise ValueError(f"--box {args.box}: outside the image; {where}")


def load_sam(name: str, weights: str | None) -> tuple[Any, Any]:
    """``(model, variables)`` of SAM variant ``name`` from ``weights`` (MIT's file, a
    convert folder, or None: MIT's published checkpoint through the Hub's cache)."""
    from efficientvit_jax import zoo

    name = zoo.registry.check_task(name, ("sam",), "sam").name
    if weights is None:  # MIT's published checkpoint, through the Hub's cache
        weights = zoo.fetch_pretrained(name)
    if not os.path.exists(weights):
        raise ValueError(f"--weights {weights}: no such file or folder")
    if os.path.isdir(weights):
        return zoo.converted.load_converted_as(name, weights)
    return zoo.create_model(name), zoo.load_mit_weights(weights, name)


def load_run_model(path: str, name: str | None) -> tuple[Any, Any]:
    """``(model, variables)`` of a SAM fine-tuning run; ``name`` (``--model``) must be its."""
    from efficientvit_jax.training.sam import load_sam_run
    from efficientvit_jax.zoo import registry

    run = load_sam_run(path)
    if (
        name is not None
        and registry.get_entry(name).name != registry.get_entry(run.config.model).name
    ):
        raise ValueError(f"--model {name}: the run {run.path} fine-tuned {run.config.model}")
    print(f"model {run.config.model} fine-tuned in {run.path} (step {run.step})")
    return run.model, run.variables


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    points, labels, box = parse_prompts(args)
    from efficientvit_jax._io import check_output_folder, check_output_writable
    from efficientvit_jax.data.image import load_image
    from efficientvit_jax.zoo import registry

    if args.model is not None:  # another task's model: refused first
        registry.check_task(args.model, ("sam",), "sam")
    check_output_folder(args.output)
    if not os.path.isfile(args.image):
        raise ValueError(f"IMAGE {args.image}: no such file")
    image = np.asarray(load_image(args.image))
    check_inside(points, box, image.shape[:2], args)
    if args.checkpoint is not None:
        model, variables = load_run_model(args.checkpoint, args.model)
    else:
        model, variables = load_sam(args.model, args.weights)
    check_output_writable(args.output)
    if args.auto:
        records = _generate(model, variables, image, args)
    else:
        records = _predict(model, variables, image, points, labels, box)
    report = write_outputs(args, image, records, points, labels, box)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for m in report["masks"]:
            print(f"{m['mask']}  score {m['score']:.3f}  area {m['area']}  box {m['box']}")
        print(f"overlay: {report['overlay']}")
    return 0


def _predict(model: Any, variables: Any, image: np.ndarray, points: Any, labels: Any, box: Any):
    """``[(mask, score, extra)]``, best score first: SAM's three masks for a lone point, else
    one."""
    from efficientvit_jax.sam import SamPredictor

    predictor = SamPredictor(model, variables)
    predictor.set_image(image)
    multimask = points is not None and len(points) == 1 and box is None
    masks, scores, _ = predictor.predict(points, labels, box, multimask_output=multimask)
    order = np.argsort(-scores, kind="stable")
    return [(masks[k], float(scores[k]), {}) for k in order]


def _generate(model: Any, variables: Any, image: np.ndarray, args: argparse.Namespace):
    from efficientvit_jax.sam import SamAutomaticMaskGenerator

    generator = SamAutomaticMaskGenerator(
        model,
        variables,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        min_mask_region_area=args.min_mask_region_area,
    )
    records = generator.generate(image)
    extra = ("stability_score", "point_coords")
    return [(r["segmentation"], r["predicted_iou"], {k: r[k] for k in extra}) for r in records]


def mask_box(mask: np.ndarray) -> list[int]:
    """``[x0, y0, x1, y1]`` (inclusive) around a mask; ``[0, 0, 0, 0]`` when empty."""
    ys, xs = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])]


def colours(n: int) -> np.ndarray:
    """``n`` distinct bright colours (hues a golden-ratio step apart), uint8 ``[n, 3]``."""
    import colorsys

    hues = (0.1 + 0.618034 * np.arange(n)) % 1.0
    return np.array([colorsys.hsv_to_rgb(h, 0.75, 1.0) for h in hues]).reshape(-1, 3) * 255


def overlay(
    image: np.ndarray, masks: list[np.ndarray], points: Any, labels: Any, box: Any
) -> np.ndarray:
    """The masks in colours at half opacity over the image (largest first, so that small ones
    stay visible); points as squares (green on the object, red off it), the box in yellow."""
    out = image.astype(np.float32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i, colour in zip(order, colours(len(masks)), strict=True):
        out[masks[i]] = 0.5 * out[masks[i]] + 0.5 * colour
    h, w = image.shape[:2]
    r = max(2, min(h, w) // 150)
    for (x, y), label in zip(
        [] if points is None else points, [] if labels is None else labels, strict=True
    ):
        x, y = int(x), int(y)
        out[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = (
            (0, 255, 0) if label else (255, 0, 0)
        )
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        x1, y1 = min(x1, w - 1), min(y1, h - 1)
        for sl in (
            np.s_[y0 : y0 + r, x0 : x1 + 1],
            np.s_[max(y1 - r + 1, 0) : y1 + 1, x0 : x1 + 1],
            np.s_[y0 : y1 + 1, x0 : x0 + r],
            np.s_[y0 : y1 + 1, max(x1 - r + 1, 0) : x1 + 1],
        ):
            out[sl] = (255, 220, 0)
    return out.astype(np.uint8)


def write_outputs(
    args: argparse.Namespace,
    image: np.ndarray,
    records: list[tuple[np.ndarray, float, dict[str, Any]]],
    points: Any,
    labels: Any,
    box: Any,
) -> dict[str, Any]:
    """The mask PNGs, the overlay and (``--json``) the JSON report; returns the report."""
    from PIL import Image

    from efficientvit_jax._io import write_json

    stem = os.path.splitext(os.path.basename(args.image))[0]
    masks = []
    for k, (mask, score, extra) in enumerate(records):
        path = os.path.join(args.output, f"{stem}_mask{k}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        entry = {"mask": path, "score": score, "box": mask_box(mask), "area": int(mask.sum())}
        masks.append({**entry, **extra})
    shown = [m for m, _, _ in (records if args.auto else records[:1])]
    over = os.path.join(args.output, f"{stem}_overlay.png")
    Image.fromarray(overlay(image, shown, points, labels, box)).save(over)
    report = {
        "image": args.image,
        "model": args.model or args.checkpoint,
        "mode": "auto" if args.auto else "prompt",
        "masks": masks,
        "overlay": over,
    }
    if args.json:
        write_json(os.path.join(args.output, f"{stem}.json"), report)
    return report
