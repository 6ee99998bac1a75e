"""``efficientvit-jax predict IMAGE|DIR... (--model TAG [--weights FILE] | --checkpoint RUN)
[--top 5] [--json]``: the top classes of each image (a run's own class names). Without
``--weights``, the tag's published weights (downloaded into the Hugging Face Hub's cache on
first use)."""

from __future__ import annotations

import argparse
import json

from efficientvit_jax.cli.images import (
    add_pretrained_flags,
    check_counts,
    load_classifier,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top classes of image files with a pretrained model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_pretrained_flags(p)
    p.add_argument("--top", type=int, default=5, help="classes to show per image")
    p.add_argument("--json", action="store_true", help="one JSON list instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_counts(args)
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    from efficientvit_jax.data.folders import image_files

    args.images = image_files(args.images)  # folders expanded, before loading any weights
    from efficientvit_jax.data.loader import ImageLoader
    from efficientvit_jax.inference import top_k

    classifier, transform, names = load_classifier(args)
    k = min(args.top, classifier.num_classes)
    loader = ImageLoader(
        [(p, 0) for p in args.images], transform, args.batch_size, workers=args.workers
    )
    results = []
    for batch in loader:  # an unreadable file raises its one-line ValueError: exit 2
        probs = classifier.probabilities(batch.images)[: len(batch.paths)]
        for path, p, idx in zip(batch.paths, probs, top_k(probs, k), strict=True):
            top = [{"index": int(i), "label": names[i], "probability": float(p[i])} for i in idx]
            results.append({"image": path, "top": top})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(r["image"])
            for t in r["top"]:
                print(f"  {t['probability']:8.4f}  {t['index']:4d}  {t['label']}")
    return 0
