"""What ``predict`` and ``eval`` share: the model/weights flags and loading them."""

from __future__ import annotations

import argparse
import os
from typing import Any


def add_pretrained_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (--model [--weights], or --checkpoint)")
    g.add_argument("--model", help="zoo name or pretrained tag, e.g. efficientvit_b1.r288_in1k")
    g.add_argument(
        "--weights",
        help="timm checkpoint (.safetensors, .pth) or a convert folder "
        "(default: the tag's published weights, from the Hugging Face Hub's cache)",
    )
    g.add_argument(
        "--num-classes", type=int, default=None, help="classifier outputs if not the tag's 1000"
    )
    add_checkpoint_flags(g)
    p.add_argument("--batch-size", type=int, default=32, help="images per model call")
    p.add_argument("--workers", type=int, default=2, help="decoding threads")


def add_checkpoint_flags(g: Any) -> None:
    """``--checkpoint RUN [--step N] [--ema]``: a ``train`` run as the model."""
    g.add_argument(
        "--checkpoint", metavar="RUN", help="a `train` run folder (or its checkpoints/, or a step)"
    )
    g.add_argument("--step", type=int, help="with --checkpoint: this step (default: newest intact)")
    g.add_argument("--ema", action="store_true", help="with --checkpoint: the EMA weights")


def check_source(args: argparse.Namespace) -> None:
    """One source of weights: ``--checkpoint`` alone, or ``--model`` (with ``--weights``, or
    the tag's published weights)."""
    if args.checkpoint is not None:
        given = [f for f in ("model", "weights", "num_classes") if getattr(args, f) is not None]
        if given:
            flags = ", ".join("--" + f.replace("_", "-") for f in given)
            raise ValueError(f"{flags}: not with --checkpoint (the run fixes its model)")
        return
    for flag in ("step", "ema"):
        if getattr(args, flag):
            raise ValueError(f"--{flag} goes with --checkpoint RUN")
    if args.model is None:
        what = "--weights goes with --model NAME; give" if args.weights is not None else "give"
        raise ValueError(
            f"{what} --checkpoint RUN (a `train` run), or --model TAG (its published weights, "
            "or --weights FILE)"
        )


def check_counts(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.num_classes is not None and args.num_classes < 1:
        raise ValueError(f"--num-classes must be >= 1, got {args.num_classes}")
    check_source(args)


def load_classifier(args: argparse.Namespace) -> tuple[Any, Any, list[str]]:
    """``(Classifier, transform, class names)`` for ``--checkpoint`` (the run's model, data
    config and classes) or ``--model`` with ``--weights`` or the tag's published weights
    (the tag's data config, in the model's input layout; ImageNet's names for a 1000-way
    head)."""
    from efficientvit_jax.data import create_transform, resolve_data_config
    from efficientvit_jax.inference import Classifier, load_pretrained

    if args.checkpoint is not None:
        from efficientvit_jax.training.loaded import load_run

        run = load_run(args.checkpoint, step=args.step, ema=args.ema)
        classifier = Classifier(run.model, run.variables, args.batch_size)
        return classifier, create_transform(run.data_config), list(run.classes)
    model, variables = load_pretrained(args.model, args.weights, num_classes=args.num_classes)
    config = resolve_data_config(args.model, data_format=model.config.data_format)
    classifier = Classifier(model, variables, args.batch_size)
    return classifier, create_transform(config), label_names(classifier.num_classes)


def label_names(num_classes: int) -> list[str]:
    """ImageNet's names for a 1000-way head, else the class indices as text."""
    from efficientvit_jax.data import imagenet

    if num_classes == imagenet.NUM_CLASSES:
        return list(imagenet.class_names())
    return [str(i) for i in range(num_classes)]


def check_json_path(path: str) -> None:
    """A ``--json OUT`` file that can be written, checked before any work."""
    from efficientvit_jax._io import require_parent

    require_parent(path, "--json")  # names the missing folder
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.access(parent, os.W_OK):
        raise ValueError(f"--json {path} cannot be written (is a folder, or no writable folder)")
