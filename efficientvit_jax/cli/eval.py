"""``efficientvit-jax eval (--model TAG [--weights FILE] | --checkpoint RUN) --data DIR
[--batch-size N] [--json OUT]``: top-1, top-5 and mean loss on an image-folder tree (one
subfolder per class; a run's classes are matched by name). Without ``--weights``, the tag's
published weights (from the Hugging Face Hub's cache).

A segmentation model (``--model efficientvit-seg-...``, with MIT's checkpoint as ``--weights``
or, without it, MIT's published one; or a segmentation run): mIoU, pixel accuracy and per-class IoU on a Cityscapes, ADE20K or generic
dataset (``cli.segment.run_eval``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from efficientvit_jax.cli.images import (
    add_pretrained_flags,
    check_counts,
    check_json_path,
    load_classifier,
)
from efficientvit_jax.cli.segment import add_crop_size_flag, is_segmentation, run_eval


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="top-1, top-5 and loss on an image-folder tree; mIoU of a segmentation model"
    )
    add_pretrained_flags(p)
    p.set_defaults(batch_size=None)  # per task: 32 classifier images, 1 segmentation image
    p.add_argument(
        "--data",
        required=True,
        help="folder with one subfolder of images per class; for a segmentation model a "
        "Cityscapes, ADE20K or generic (images/ + masks/) dataset or one of its splits",
    )
    p.add_argument("--json", metavar="OUT", default=None, help="write the results to this file")
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable images or bad samples (listed)"
    )
    add_crop_size_flag(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if is_segmentation(args):
        args.batch_size = 1 if args.batch_size is None else args.batch_size
        return run_eval(args)
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    if args.crop_size is not None:
        raise ValueError("--crop-size is for segmentation models")
    check_counts(args)
    if args.json is not None:
        check_json_path(args.json)
    from tqdm import tqdm

    from efficientvit_jax.data.folders import relabel, scan_folder
    from efficientvit_jax.data.loader import ImageLoader
    from efficientvit_jax.inference import evaluate_folder
    from efficientvit_jax.training.report import write_json

    folder = scan_folder(args.data)  # one-line errors for empty or class-less folders
    classifier, transform, names = load_classifier(args)
    if args.checkpoint is not None:  # the run's classes, matched by name
        folder = relabel(folder, names, model=f"run {args.checkpoint}")
    elif folder.num_classes > classifier.num_classes:
        raise ValueError(
            f"--data {args.data} has {folder.num_classes} classes, more than the "
            f"{classifier.num_classes} outputs of --model {args.model}"
        )
    loader = ImageLoader(
        folder.samples, transform, args.batch_size, workers=args.workers, skip_bad=args.skip_bad
    )
    with tqdm(
        total=len(folder.samples), unit="img", disable=args.no_progress, file=sys.stderr
    ) as bar:
        result = evaluate_folder(classifier, loader, classifier.num_classes, progress=bar.update)
    result = _report(result, folder, loader.skipped)
    if args.json is not None:
        write_json(args.json, result)
    return 0


def _report(result: dict[str, Any], folder: Any, skipped: list[tuple[str, str]]) -> dict[str, Any]:
    result["per_class"] = {folder.class_name(y): v for y, v in result["per_class"].items()}
    result["skipped"] = [{"image": p, "error": e} for p, e in skipped]
    print(
        f"top-1 {result['top1']:.2%}  top-5 {result['top5']:.2%}  loss {result['loss']:.4f}  "
        f"on {result['count']} images of {len(folder.classes)} classes "
        f"({result['images_per_second']:.1f} images/s)"
    )
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(p for p, _ in skipped)}")
    return result
