"""``efficientvit-jax train --data DIR``: the folder half of the ``train`` command.

Builds the model (a zoo name or tag, or the core builder), the transforms, the pretrained
start and the optimizer from the flags, then runs ``training.job.train_classifier`` over a
``training.folders`` source. Everything that can be checked is checked before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any

AUGMENT_LEVELS = ("none", "light", "strong")


def add_folder_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training on image folders (--data)")
    g.add_argument("--data", default=None, help="DIR/train/<class>/... and DIR/val/<class>/...")
    g.add_argument("--val-split", type=float, default=None, help="hold out this fraction of DIR")
    g.add_argument("--model", default=None, help="zoo name or tag (default: the core builder)")
    g.add_argument("--weights", default=None, help="start from a timm checkpoint or convert folder")
    g.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    g.add_argument(
        "--backbone-lr-scale", type=float, default=0.1,
        help="with --weights: backbone learning rate = this x --learning-rate",
    )  # fmt: skip
    g.add_argument("--augment", choices=AUGMENT_LEVELS, default="light")
    g.add_argument("--ema-decay", type=float, default=None, help="also keep an EMA of the weights")
    g.add_argument("--workers", type=int, default=2, help="decoding threads")
    g.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed)")


def check_folder_args(args: argparse.Namespace) -> None:
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.ema_decay is not None and not 0 <= args.ema_decay < 1:
        raise ValueError(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    s = args.backbone_lr_scale
    if not (math.isfinite(s) and s >= 0):
        raise ValueError(f"--backbone-lr-scale must be a finite number >= 0, got {s}")
    if args.model is None and args.weights is not None:
        raise ValueError("--weights needs --model (a zoo name or tag); the core builder has none")
    if args.freeze_backbone and args.weights is None:
        raise ValueError(
            "--freeze-backbone needs --weights (a frozen random backbone learns nothing)"
        )
    if args.weights is not None and not os.path.exists(args.weights):
        raise ValueError(f"--weights {args.weights}: no such file or folder")


def build_model(args: argparse.Namespace, num_classes: int) -> tuple[Any, Any]:
    """``(model, data_config)`` for ``--model`` (zoo) or the builder flags, ``num_classes``
    outputs, at ``--image-size`` (default: the tag's size; 224 for the builder)."""
    from efficientvit_jax.data import DataConfig, resolve_data_config

    if args.model is not None:
        from efficientvit_jax.data.tags import get_tag
        from efficientvit_jax.zoo import create_model, get_config

        size = args.image_size = args.image_size or get_tag(args.model).image_size
        extra = {"img_size": size} if hasattr(get_config(args.model), "img_size") else {}
        model = create_model(args.model, num_classes=num_classes, **extra)
        fmt = model.config.data_format
        return model, resolve_data_config(args.model, input_size=size, data_format=fmt)
    from efficientvit_jax.cli.common import config_from_args
    from efficientvit_jax.model import EfficientViT

    args.image_size = args.image_size or 224
    args.in_channels = 3 if args.in_channels is None else args.in_channels
    if args.in_channels != 3:
        raise ValueError(f"--in-channels must be 3 for image folders (RGB), got {args.in_channels}")
    args.num_classes = num_classes
    cfg = config_from_args(args)
    # No tag: the whole image (crop 1.0), bilinear like the digits job, ImageNet's statistics.
    data = DataConfig((3, cfg.image_size, cfg.image_size), "bilinear", crop_pct=1.0)
    return EfficientViT(cfg), dataclasses.replace(data, data_format=cfg.data_format)


def pretrained_tuning(args: argparse.Namespace, model: Any, num_classes: int) -> Any:
    """The ``Tuning`` of ``--weights``: load what fits, re-initialise the rest (named), the
    head at ``--learning-rate`` and the backbone at ``--backbone-lr-scale`` times it (or
    frozen)."""
    from efficientvit_jax.training import finetune
    from efficientvit_jax.training.job import Tuning
    from efficientvit_jax.training.steps import make_optimizer

    if args.weights is None:
        return Tuning()
    pretrained = _load_pretrained(args)
    holder: dict[str, Any] = {}

    def prepare(state: Any) -> Any:
        merged = finetune.merge_pretrained(
            {"params": state.params, "batch_stats": state.batch_stats}, pretrained
        )
        print(f"loaded {len(merged.loaded)} tensors from {args.weights}", flush=True)
        print(f"re-initialised {len(merged.reinitialised)}: {', '.join(merged.reinitialised)}")
        holder["head"] = _head_paths(merged, num_classes)
        v = merged.variables
        return state.replace(params=v["params"], batch_stats=v.get("batch_stats", {}))

    def optimizer(total: int) -> Any:
        def adamw(lr: float) -> Any:
            return make_optimizer(
                lr,
                total_steps=total,
                warmup_steps=args.warmup_steps,
                weight_decay=args.weight_decay,
            )

        head = holder.get("head") or finetune.classifier_paths(
            _param_shapes(model, args), num_classes
        )
        backbone = (
            None if args.freeze_backbone else adamw(args.learning_rate * args.backbone_lr_scale)
        )
        return finetune.finetune_optimizer(
            adamw(args.learning_rate), backbone, _param_shapes(model, args), head
        )

    return Tuning(optimizer=optimizer, prepare=prepare, frozen_backbone=args.freeze_backbone)


def _param_shapes(model: Any, args: argparse.Namespace) -> Any:
    import jax
    import jax.numpy as jnp

    cfg = model.config
    s = args.image_size
    shape = (1, 3, s, s) if cfg.data_format == "NCHW" else (1, s, s, 3)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))["params"]


def _head_paths(merged: Any, num_classes: int) -> list[str]:
    """The re-initialised parameter modules, or the classifier when everything loaded."""
    from efficientvit_jax.training import finetune

    heads = sorted(
        {
            p.split("/", 1)[1].rsplit("/", 1)[0]
            for p in merged.reinitialised
            if p.startswith("params/")
        }
    )
    return heads or finetune.classifier_paths(merged.variables["params"], num_classes)


def _load_pretrained(args: argparse.Namespace) -> dict[str, Any]:
    """Variables from a timm checkpoint (its classifier dropped when it has another size) or
    a ``convert`` folder of the same architecture."""
    from efficientvit_jax.zoo.converted import load_converted_as

    if os.path.isdir(args.weights):
        # any head size: merge_pretrained re-initialises a classifier that does not fit
        return load_converted_as(args.model, args.weights)[1]
    variables, dropped = _timm_at_some_size(args)
    if dropped:
        print(f"checkpoint classifier not loaded (another class count): {', '.join(dropped)}")
    return variables


def augmenter(level: str, data_config: Any, num_classes: int, model: str | None) -> tuple:
    """``(augment(path, rng) -> image, mix)`` of ``--augment``: ``none`` is the evaluation
    transform (resize, centre crop); ``light`` and ``strong`` are ``data.augment``'s, the
    latter with the recipe of the paper that trained ``model``. The augmentations work on
    ``[H, W, C]`` images; ``mix`` mixes a batch (``strong``) and lays it out as the model
    takes it."""
    from efficientvit_jax.data import augment, create_transform, load_image

    if level == "none":
        evaluate = create_transform(data_config)
        return (lambda path, rng: evaluate(path)), None
    recipe = augment.recipe_for_model(model or "")
    aug = augment.build_augment_from_config(
        level, data_config, num_classes=num_classes, recipe=recipe
    )
    nchw = data_config.data_format == "NCHW"

    def per_image(path: str, rng: Any) -> Any:
        return aug(load_image(path), rng)

    def mix(images: Any, labels: Any, rng: Any) -> tuple:
        if aug.mix is not None:
            images, labels = aug.mix(images, labels, rng)
        return (images.transpose(0, 3, 1, 2) if nchw else images), labels

    return per_image, mix


def run_folders(args: argparse.Namespace, t_start: float) -> int:
    """Train ``--model`` (or the builder) on ``--data``; see the module."""
    from efficientvit_jax.cli.train import open_checkpoints
    from efficientvit_jax.data import create_transform
    from efficientvit_jax.training import config_to_dict, distributed, sharding
    from efficientvit_jax.training.folders import find_splits, folder_source
    from efficientvit_jax.training.job import TrainOptions, train_classifier

    check_folder_args(args)
    splits = find_splits(args.data, args.val_split)  # one-line errors for bad trees
    k = len(splits.classes)
    model, data_config = build_model(args, k)
    setup = distributed.setup_from_args(args)
    sharding.check_batch_size(args.batch_size, setup.mesh)
    if setup.multiprocess:
        raise ValueError(
            "multi-process folder training is not wired into the CLI; see docs/scaling.md"
        )
    if args.freeze_backbone and setup.mesh.size > 1:
        raise ValueError("--freeze-backbone runs on one device; drop --mesh/--cpu-devices")
    tuning = pretrained_tuning(args, model, k)  # loads --weights: errors before any write
    augment, mix = augmenter(args.augment, data_config, k, args.model)
    source, pipe = folder_source(
        splits, augment, create_transform(data_config), batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, seed=args.seed, workers=args.workers, mix=mix,
        skip_bad=args.skip_bad,
    )  # fmt: skip
    keys = ("data", "val_split", "model", "weights", "freeze_backbone", "backbone_lr_scale",
            "augment", "ema_decay", "epochs", "batch_size", "learning_rate", "warmup_steps",
            "weight_decay", "label_smoothing", "seed")  # fmt: skip
    run_config = {
        "model": config_to_dict(model.config),
        "data": config_to_dict(data_config),
        "classes": list(splits.classes),
        "train": {key: getattr(args, key) for key in keys},
    }
    opts = TrainOptions.from_args(args)
    ckpt = open_checkpoints(args, run_config)
    train_classifier(model, source, opts, ckpt, run_config, setup, tuning=tuning, t_start=t_start)
    skipped = list(dict.fromkeys(p for p, _ in pipe.skipped))  # once each, first seen first
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}")
    return 0


def _timm_at_some_size(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """A timm checkpoint read at ``--image-size``, else at the tag's size: the MSRA models'
    attention-bias tables depend on the size the checkpoint was made for. Where the sizes
    differ, ``merge_pretrained`` re-initialises the tables that do not fit (and names them)."""
    from efficientvit_jax.data.tags import get_tag
    from efficientvit_jax.zoo import get_config, load_timm_backbone
    from efficientvit_jax.zoo.convert import ConversionError

    if not hasattr(get_config(args.model), "img_size"):
        return load_timm_backbone(args.weights, args.model)
    sizes = dict.fromkeys([args.image_size, get_tag(args.model).image_size])
    error = None
    for size in sizes:
        try:
            return load_timm_backbone(args.weights, args.model, img_size=size)
        except ConversionError as e:
            error = error or e
    raise error
