"""What ``predict`` and ``eval`` share: the model/weights flags and loading them."""

from __future__ import annotations

import argparse
from typing import Any


def add_pretrained_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="zoo name or pretrained tag, e.g. efficientvit_b1.r288_in1k"
    )
    p.add_argument(
        "--weights", required=True, help="timm checkpoint (.safetensors, .pth) or a convert folder"
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="classifier outputs if not the tag's 1000"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per model call")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")


def check_counts(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {args.num_classes}")


def load_classifier(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(Classifier, transform)`` for ``--model``/``--weights`` (the tag's data config, in
    the model's input layout)."""
    from efficientvit_jax.data import create_transform, resolve_data_config
    from efficientvit_jax.inference import Classifier, load_pretrained

    model, variables = load_pretrained(args.model, args.weights, num_classes=args.num_classes)
    config = resolve_data_config(args.model, data_format=model.config.data_format)
    return Classifier(model, variables, args.batch_size), create_transform(config)


def label_names(num_classes: int) -> list[str]:
    """ImageNet's names for a 1000-way head, else the class indices as text."""
    from efficientvit_jax.data import imagenet

    if num_classes == imagenet.NUM_CLASSES:
        return list(imagenet.class_names())
    return [str(i) for i in range(num_classes)]
