"""``efficientvit-jax segment IMAGE|DIR... (--model M [--weights F] | --checkpoint RUN) --output DIR
[--json]``: each image's label map (``DIR/<stem>.png``, a palette PNG at the image's size in
the dataset's colours) and an overlay (``DIR/<stem>_overlay.jpg``), preprocessed as the model's
evaluation. ``--weights``: one of MIT's checkpoint files or a ``convert`` folder; without it,
MIT's published checkpoint (from the Hugging Face Hub's cache).

Also the segmentation half of ``eval`` (``run_eval``): mIoU, pixel accuracy and per-class IoU
on a Cityscapes, ADE20K or generic dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from efficientvit_jax.cli.images import add_checkpoint_flags, check_json_path, check_source


def add_crop_size_flag(p: Any) -> None:
    p.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="segmentation: MIT's --crop_size (Cityscapes models: N x 2N, default 1024; ADE20K "
        "models: shorter side N, default 512)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="label maps and overlays of images (segmentation model)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    g = p.add_argument_group("model (--model --weights, or --checkpoint)")
    g.add_argument("--model", help="segmentation model, e.g. efficientvit-seg-b0-cityscapes")
    g.add_argument(
        "--weights",
        help="MIT's checkpoint (.pt, .safetensors) or a convert folder (default: MIT's published "
        "checkpoint, from the Hugging Face Hub's cache)",
    )
    add_checkpoint_flags(g)
    p.add_argument(
        "--output", "-o", required=True, help="folder for <stem>.png, <stem>_overlay.jpg"
    )
    p.add_argument("--json", action="store_true", help="print each image's class fractions (JSON)")
    add_crop_size_flag(p)
    p.add_argument("--batch-size", type=int, default=1, help="images of one size per model call")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")
    p.set_defaults(func=run, num_classes=None)


def check_flags(args: argparse.Namespace) -> None:
    """Counts and the one source of weights (``--num-classes`` has no meaning here: the
    weights fix the head)."""
    if args.num_classes is not None:
        raise ValueError("--num-classes: not for a segmentation model (its weights fix the head)")
    for flag in ("batch_size", "crop_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    check_source(args)


def load_segmenter(args: argparse.Namespace) -> Any:
    """The ``Segmenter`` of ``--checkpoint`` or ``--model`` with ``--weights``."""
    from efficientvit_jax import segmentation

    if args.checkpoint is not None:
        from efficientvit_jax.training.loaded import load_run

        if not segmentation.is_segmentation_run(args.checkpoint):
            raise ValueError(
                f"--checkpoint {args.checkpoint} trained a classifier: use `efficientvit-jax "
                "predict` or `eval`"
            )
        run = load_run(args.checkpoint, step=args.step, ema=args.ema)
        return segmentation.segmenter_from_run(
            run, batch_size=args.batch_size, crop_size=args.crop_size
        )
    return segmentation.load_segmenter(
        args.model, args.weights, batch_size=args.batch_size, crop_size=args.crop_size
    )


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    from efficientvit_jax._io import check_output_folder, check_output_writable
    from efficientvit_jax.data.folders import image_files
    from efficientvit_jax.segmentation import output_names, segment_files

    check_output_folder(args.output)
    args.images = image_files(args.images)  # folders expanded, before loading any weights
    output_names(args.images)  # two images of one name: refused before any work
    segmenter = load_segmenter(args)
    check_output_writable(args.output)
    results = segment_files(segmenter, args.images, args.output, workers=args.workers)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            top = ", ".join(f"{c['name']} {c['fraction']:.1%}" for c in r["classes"][:5])
            print(f"{r['image']} -> {r['mask']}  ({top})")
    return 0


def is_segmentation(args: argparse.Namespace) -> bool:
    """Whether ``eval``'s model is a segmentation model (a run's, read from its config)."""
    if args.checkpoint is not None:
        from efficientvit_jax.segmentation import is_segmentation_run

        return is_segmentation_run(args.checkpoint)
    if args.model is None:
        return False  # check_source says what to give
    from efficientvit_jax import zoo

    entry = zoo.registry.check_task(args.model, ("classification", "segmentation"), "eval")
    return entry.task == "segmentation"


def run_eval(args: argparse.Namespace) -> int:
    """``eval`` of a segmentation model: every user error (flags, a missing mask, an image and
    mask of different sizes, labels out of range) is one line before any image is scored."""
    check_flags(args)
    if args.json is not None:
        check_json_path(args.json)
    from tqdm import tqdm

    from efficientvit_jax.data.segmentation import check_seg_dataset, find_seg_dataset, without
    from efficientvit_jax.segmentation import evaluate_segmentation, report_classes

    dataset = find_seg_dataset(args.data, skip_missing=args.skip_bad)
    segmenter = load_segmenter(args)
    names = report_classes(segmenter, dataset, f"--data {args.data}")
    bad = check_seg_dataset(dataset, segmenter.num_classes, workers=max(args.workers, 1))
    if bad and not args.skip_bad:
        more = f" (and {len(bad) - 1} more; --skip-bad leaves them out)" if len(bad) > 1 else ""
        raise ValueError(bad[0][1] + more)
    dataset = without(dataset, bad)
    if not dataset.images:
        raise ValueError(f"--data {args.data}: every sample was skipped")
    with tqdm(
        total=len(dataset.images), unit="img", disable=args.no_progress, file=sys.stderr
    ) as bar:
        result = evaluate_segmentation(
            segmenter, dataset, workers=args.workers, skip_bad=args.skip_bad, progress=bar.update
        )
    report = _report(result, names, dataset.layout, args.data)
    if args.json is not None:
        from efficientvit_jax._io import write_json

        write_json(args.json, report)
    return 0


def _number(x: float) -> float | None:
    return None if math.isnan(x) else float(x)  # JSON has no NaN


def _report(result: dict, names: tuple[str, ...], layout: str, data: str) -> dict[str, Any]:
    per_class = {
        name: {
            "iou": _number(iou),
            "intersection": int(i),
            "union": int(u),
        }
        for name, iou, i, u in zip(
            names, result["per_class_iou"], result["intersection"], result["union"], strict=True
        )
    }
    print(
        f"mIoU {result['miou']:.3%}  pixel accuracy {result['pixel_accuracy']:.3%}  on "
        f"{result['count']} images ({layout} layout, {len(names)} classes, "
        f"{result['images_per_second']:.2f} images/s)"
    )
    for name, v in per_class.items():
        shown = "    -   (absent)" if v["iou"] is None else f"{v['iou']:8.3%}"
        print(f"  {shown}  {name}")
    skipped = [{"image": p, "error": e} for p, e in result["skipped"]]
    if skipped:
        print(f"skipped {len(skipped)} sample(s): {', '.join(s['image'] for s in skipped)}")
    return {
        "miou": _number(result["miou"]),
        "pixel_accuracy": _number(result["pixel_accuracy"]),
        "count": result["count"],
        "layout": layout,
        "data": data,
        "images_per_second": result["images_per_second"],
        "per_class": per_class,
        "skipped": skipped,
    }
