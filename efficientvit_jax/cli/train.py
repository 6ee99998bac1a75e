"""``efficientvit-jax train``: train on scikit-learn's digits (the main job) or, with
``--data DIR``, on image folders (``cli.train_folders``); metrics, plot, checkpoints.

Thin over the library: the flags are checked here, the run is ``training.job``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

from efficientvit_jax._io import check_output_writable
from efficientvit_jax.cli.common import add_model_flags, config_from_args
from efficientvit_jax.cli.train_folders import add_folder_flags, run_folders
from efficientvit_jax.training.distributed import add_scale_flags

# Defaults of `train`: the default architecture (depths 1,2,3, heads 4,4,4, mlp_ratio 4)
# scaled down to 1,797 tiny images. The 8x8 digits are upsampled to 32x32 and cut into 4x4
# patches, so the token grids are 8x8 -> 4x4 -> 2x2, the same shrinking as 224/16 on
# ImageNet; embed_dim 16 (widths 16, 32, 64) trains in about a minute on 2 CPU cores and
# generalises better here than wider models, with drop path and label smoothing 0.1.
# image_size, in_channels and num_classes default to None: the digits job fills in 32, 1 and
# 10; a folder run takes the tag's size (224 for the builder), 3 channels and its classes.
TRAIN_MODEL_DEFAULTS = dict(
    image_size=None, patch_size=4, in_channels=None, embed_dim=16, num_classes=None,
    drop_path_rate=0.1,
)  # fmt: skip
DIGITS_DEFAULTS = dict(image_size=32, in_channels=1, num_classes=10)
TRAIN_DEFAULTS = dict(
    epochs=12,
    batch_size=64,
    learning_rate=3e-3,
    warmup_steps=None,
    weight_decay=0.05,
    label_smoothing=0.1,
    seed=0,
    output="runs/digits",
    save_every=100,
    keep=3,
    eval_batch_size=120,
)
# The training options that identify a run: a checkpoint is resumed only under the same values.
RUN_KEYS = (
    "epochs", "batch_size", "learning_rate", "warmup_steps", "weight_decay", "label_smoothing",
    "seed",
)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train on the digits, or on image folders with --data")
    add_model_flags(p)
    p.set_defaults(**TRAIN_MODEL_DEFAULTS)
    add_train_flags(p)
    add_folder_flags(p)
    add_scale_flags(p)
    p.set_defaults(func=run)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The training options of `train` (the model's are ``add_model_flags``)."""
    d = TRAIN_DEFAULTS
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--batch-size", type=int, default=d["batch_size"])
    g.add_argument(
        "--learning-rate", "--lr", type=float, default=d["learning_rate"],
        help="peak AdamW learning rate (after warm-up, then cosine decay)",
    )  # fmt: skip
    g.add_argument(
        "--warmup-steps", type=int, default=d["warmup_steps"],
        help="linear warm-up steps (default: 5%% of all steps)",
    )  # fmt: skip
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--label-smoothing", type=float, default=d["label_smoothing"])
    g.add_argument(
        "--seed", type=int, default=d["seed"],
        help="init, shuffling and drop path (the held-out split is fixed)",
    )  # fmt: skip
    g.add_argument("--eval-batch-size", type=int, default=d["eval_batch_size"])
    g = p.add_argument_group("output and checkpoints")
    g.add_argument(
        "--output", "-o", default=d["output"],
        help="folder for metrics.json, curves.png and checkpoints/",
    )  # fmt: skip
    g.add_argument(
        "--save-every", type=int, default=d["save_every"],
        help="checkpoint every this many steps (and always at the end)",
    )  # fmt: skip
    g.add_argument("--keep", type=int, default=d["keep"], help="checkpoints to keep")
    g.add_argument(
        "--resume", action="store_true",
        help="continue from the latest checkpoint in OUTPUT/checkpoints",
    )  # fmt: skip
    g.add_argument(
        "--max-steps", type=int, default=None,
        help="stop after this many steps in all (the schedule still spans --epochs)",
    )  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_train_args(args: argparse.Namespace) -> None:
    """Every training flag's rule, before any work (``ValueError`` naming the flag)."""

    def need(ok: bool, flag: str, rule: str, value: Any) -> None:
        if not ok:
            raise ValueError(f"{flag} must be {rule}, got {value}")

    need(args.epochs >= 1, "--epochs", ">= 1", args.epochs)
    need(args.batch_size >= 1, "--batch-size", ">= 1", args.batch_size)
    need(args.eval_batch_size >= 1, "--eval-batch-size", ">= 1", args.eval_batch_size)
    lr = args.learning_rate
    need(math.isfinite(lr) and lr > 0, "--learning-rate", "a finite number > 0", lr)
    if args.warmup_steps is not None:
        need(args.warmup_steps >= 0, "--warmup-steps", ">= 0", args.warmup_steps)
    wd = args.weight_decay
    need(math.isfinite(wd) and wd >= 0, "--weight-decay", "a finite number >= 0", wd)
    ls = args.label_smoothing
    need(0 <= ls < 1, "--label-smoothing", "in [0, 1)", ls)
    need(args.save_every >= 1, "--save-every", ">= 1", args.save_every)
    need(args.keep >= 1, "--keep", ">= 1", args.keep)
    if args.max_steps is not None:
        need(args.max_steps >= 1, "--max-steps", ">= 1", args.max_steps)


def open_checkpoints(args: argparse.Namespace, run_config: dict[str, Any]) -> Any:
    """The run's ``Checkpointer``; refuses to mix runs (resume without checkpoints, or
    checkpoints present without --resume) before anything is written."""
    from efficientvit_jax.training import Checkpointer

    ckpt_dir = os.path.join(args.output, "checkpoints")
    if args.resume:
        if not os.path.isdir(ckpt_dir):
            raise ValueError(f"--resume: no checkpoint folder {ckpt_dir}")
    else:
        check_output_writable(args.output)
    ckpt = Checkpointer(ckpt_dir, config=run_config, max_to_keep=args.keep)
    if not args.resume and ckpt.latest_step() is not None:
        raise ValueError(
            f"{ckpt_dir} already holds checkpoints (latest step {ckpt.latest_step()}); "
            "pass --resume to continue, or choose another --output"
        )
    return ckpt


def run(args: argparse.Namespace) -> int:
    """Train on the digits; write metrics.json, curves.png and checkpoints under --output."""
    t_start = time.perf_counter()
    check_train_args(args)
    # The `train` extra's modules, before anything is written (a missing one names the extra).
    import matplotlib  # noqa: F401
    import tqdm  # noqa: F401

    if args.data is not None:
        return run_folders(args, t_start)
    for flag in ("model", "weights", "val_split"):
        if getattr(args, flag) is not None:
            raise ValueError(
                f"--{flag.replace('_', '-')} needs --data (the digits job takes neither)"
            )
    for key, value in DIGITS_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.in_channels != 1:
        raise ValueError(
            f"--in-channels must be 1 for the digits (grey images), got {args.in_channels}"
        )
    if args.num_classes != 10:
        raise ValueError(f"--num-classes must be 10 for the digits, got {args.num_classes}")
    cfg = config_from_args(args)  # validates the model options (ValueError)

    from efficientvit_jax.model import EfficientViT
    from efficientvit_jax.training import config_to_dict, distributed, sharding
    from efficientvit_jax.training.digits import load_digits_split
    from efficientvit_jax.training.job import TrainOptions, array_source, train_classifier

    setup = distributed.setup_from_args(args)  # devices and the mesh before any computation
    if setup.multiprocess:
        raise ValueError(
            "multi-process training is not wired into `efficientvit-jax train`; use the "
            "library (docs/scaling.md) with one process per host"
        )
    sharding.check_batch_size(args.batch_size, setup.mesh)
    if setup.precision != "float32":
        cfg = cfg.replace(**setup.model_options)
    data = load_digits_split(cfg.image_size, cfg.data_format)
    n_train = len(data.train_images)
    if args.batch_size > n_train:
        raise ValueError(
            f"--batch-size must be <= {n_train} (the training images), got {args.batch_size}"
        )
    run_config = {
        "model": config_to_dict(cfg),
        "train": {"dataset": "sklearn-digits", **{k: getattr(args, k) for k in RUN_KEYS}},
    }
    options = TrainOptions.from_args(args)
    source = array_source(data, args.batch_size, args.eval_batch_size, args.seed)
    ckpt = open_checkpoints(args, run_config)
    train_classifier(EfficientViT(cfg), source, options, ckpt, run_config, setup, t_start=t_start)
    return 0
