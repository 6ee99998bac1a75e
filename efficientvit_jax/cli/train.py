"""``efficientvit-jax train``: train on scikit-learn's digits (the main job) or, with
``--data DIR``, on image folders or a segmentation dataset (with an ``efficientvit_seg_*``
``--model``); ``--preset digits-seg`` is the digits segmentation job (its data generated
first); metrics, plot, checkpoints. With a segment-anything ``--model``
(``efficientvit_sam_*``) it fine-tunes SAM on a segmentation dataset's masks
(``cli.sam_train``).

Only flags -> ``training.TrainConfig`` here; the run is ``training.train(config, workdir)``.
Every flag defaults to ``None`` ("not given"), so that the config's own defaults (the
digits preset, or the builder's defaults for a folder run) apply, and so that ``--resume``
can tell the flags given now from the recipe stored in the run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from efficientvit_jax.cli import sam_train
from efficientvit_jax.cli.common import add_model_flags
from efficientvit_jax.training.config import PRESETS
from efficientvit_jax.training.distributed import add_scale_flags

DEFAULT_OUTPUT = "runs/digits"
# Builder flags (``add_model_flags``): ``model.builder.<name>``; --image-size is the zoo
# model's ``model.image_size`` when --model is given.
_BUILDER = (
    "image_size", "patch_size", "in_channels", "embed_dim", "depths", "num_heads", "mlp_ratio",
    "num_classes", "layout", "data_format", "dtype", "drop_path_rate", "remat",
)  # fmt: skip
# Flags that only a folder run takes.
_FOLDER_ONLY = ("model", "weights", "val_split")
PRESET_OUTPUT = "runs/{preset}"  # a preset's default --output


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train on the digits, or on image folders with --data; fine-tune SAM on masks",
    )
    add_model_flags(p)
    add_train_flags(p)
    add_folder_flags(p)
    sam_train.add_sam_flags(p)
    add_scale_flags(p)
    # Every default None: "not given" (the config's defaults apply; see the module).
    p.set_defaults(**{a.dest: None for a in p._actions if a.dest != "help"})
    p.set_defaults(func=run)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The training options of `train` (the model's are ``add_model_flags``)."""
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, help="default 12")
    g.add_argument("--batch-size", type=int, help="default 64")
    g.add_argument("--learning-rate", "--lr", type=float,
                   help="peak AdamW learning rate (after warm-up, then cosine decay; default 3e-3)")  # fmt: skip
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: 5%% of all)")
    g.add_argument("--weight-decay", type=float, help="default 0.05")
    g.add_argument("--label-smoothing", type=float, help="default 0.1")
    g.add_argument("--seed", type=int,
                   help="init, shuffling and drop path (the held-out split is fixed; default 0)")  # fmt: skip
    g.add_argument("--eval-batch-size", type=int, help="default 120")
    g = p.add_argument_group("output and checkpoints")
    g.add_argument("--output", "-o",
                   help=f"folder for metrics.json, curves.png and checkpoints/ (default {DEFAULT_OUTPUT})")  # fmt: skip
    g.add_argument("--save-every", type=int,
                   help="checkpoint every this many steps (and always at the end; default 100)")  # fmt: skip
    g.add_argument("--keep", type=int, help="checkpoints to keep (default 3)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in OUTPUT (its stored recipe; --epochs may grow)")  # fmt: skip
    g.add_argument("--max-steps", type=int,
                   help="stop after this many steps in all (the schedule still spans --epochs)")  # fmt: skip
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_folder_flags(p: argparse.ArgumentParser) -> None:
    from efficientvit_jax.training.config import AUGMENT_LEVELS

    g = p.add_argument_group("training on image folders (--data)")
    g.add_argument("--data", help="DIR/train/<class>/... and DIR/val/<class>/...; with a "
                   "segmentation or SAM --model, a Cityscapes, ADE20K or generic (train/ + val/) "
                   "root")  # fmt: skip
    g.add_argument("--val-split", type=float, help="hold out this fraction of DIR")
    g.add_argument("--model", help="zoo name or tag (default: the core builder at 224 px)")
    g.add_argument("--weights", help="start from a timm checkpoint or convert folder (a SAM "
                   "--model: MIT's checkpoint file)")  # fmt: skip
    g.add_argument("--freeze-backbone", action="store_true", help="train the head only")
    g.add_argument("--backbone-lr-scale", type=float,
                   help="with --weights: backbone learning rate = this x --learning-rate (0.1)")  # fmt: skip
    g.add_argument("--augment", choices=AUGMENT_LEVELS, help="default light")
    g.add_argument("--ema-decay", type=float, help="also keep an EMA of the weights")
    g.add_argument("--workers", type=int, help="decoding threads (default 2)")
    g.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed)")
    g.add_argument("--scale-range", type=_float_pair, metavar="LOW,HIGH",
                   help="segmentation: random scale of the evaluation size (default 0.5,2.0)")  # fmt: skip
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help="a documented job: digits-seg generates its dataset into --data "
                        "(default OUTPUT/data) unless there, then trains on it")  # fmt: skip


def _float_pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    return lo, hi


def _flag_paths() -> dict[str, str]:
    """argparse dest -> config path, from the config's own ``flag`` metadata."""
    from efficientvit_jax.training.config import SECTIONS

    out = {}
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            if "flag" in f.metadata:
                out[f.metadata["flag"].lstrip("-").replace("-", "_")] = f"{name}.{f.name}"
    out["seed"] = "seed"
    return out


def given_values(args: argparse.Namespace, zoo: bool) -> dict[str, Any]:
    """``{"section.field": value}`` of the flags given on the command line."""
    paths = _flag_paths()
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or dest in ("func", "command", "output", "resume", "no_progress"):
            continue
        if dest in _BUILDER:
            zoo_field = zoo and dest in ("image_size", "remat")  # a zoo model's own options
            out[f"model.{dest}" if zoo_field else f"model.builder.{dest}"] = value
        elif dest in paths:
            out[paths[dest]] = value
    if args.no_progress:
        out["output.progress"] = False
    return out


def output_folder(args: argparse.Namespace) -> str:
    """``--output``, or the default of the job (a preset's own)."""
    if args.output:
        return args.output
    return PRESET_OUTPUT.format(preset=args.preset) if args.preset else DEFAULT_OUTPUT


def config_from_args(args: argparse.Namespace) -> Any:
    """The ``TrainConfig`` the flags describe: the digits preset, a folder run's or a named
    preset's, with the given flags over it (a new run), or the stored recipe with them
    (``--resume``)."""
    from efficientvit_jax.training.config import TrainConfig
    from efficientvit_jax.training.run import stored_config

    if args.resume:
        stored = stored_config(output_folder(args))
        # --max-steps says where this invocation stops: not carried over from the last one.
        given = {"schedule.max_steps": None, **given_values(args, stored.model.name is not None)}
        return stored.with_values(given)
    if args.data is None and args.preset is None:
        for flag in _FOLDER_ONLY:
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --data (the digits job takes neither)")  # fmt: skip
        return TrainConfig().with_values(given_values(args, zoo=False))
    base = _base_config(args)
    given = given_values(args, zoo=base.model.name is not None)
    if base.model.name is not None:
        builder = sorted(k for k in given if k.startswith("model.builder."))
        if builder:  # as before the typed config: accepted, and now said to be unused
            flags = ", ".join("--" + k.rsplit(".", 1)[1].replace("_", "-") for k in builder)
            print(f"note: {flags} are core-builder options, unused by --model "
                  f"{given.get('model.name', base.model.name)} (its architecture is fixed; "
                  "--image-size, --remat and --precision apply)")  # fmt: skip
            given = {k: v for k, v in given.items() if k not in builder}
    elif "model.builder.num_classes" in given:
        raise ValueError("--num-classes: a folder run has one output per class folder")
    drop = ("data.folder",) if args.preset else ("data.folder", "model.name")
    return base.with_values({k: v for k, v in given.items() if k not in drop})


def _base_config(args: argparse.Namespace) -> Any:
    """What the given flags go over: a preset (its data in ``--data``, by default
    ``OUTPUT/data``); a zoo model's run (a segmentation model's with ``SEG_DEFAULTS``); or
    the builder's own defaults (Edifice's) at 224 px, RGB, for a folder run from scratch."""
    from efficientvit_jax.config import EfficientViTConfig
    from efficientvit_jax.training.config import (
        SEG_DEFAULTS,
        DataOptions,
        ModelOptions,
        TrainConfig,
    )

    if args.preset is not None:
        return PRESETS[args.preset](args.data or os.path.join(output_folder(args), "data"))
    data = DataOptions(folder=args.data)
    if args.model is None:
        return TrainConfig(data=data, model=ModelOptions(builder=EfficientViTConfig(in_channels=3)))
    from efficientvit_jax.zoo.registry import check_task

    base = TrainConfig(data=data, model=ModelOptions(name=args.model))
    seg = check_task(args.model, ("classification", "segmentation"), "train").task == "segmentation"
    return base.with_values(SEG_DEFAULTS) if seg else base


def prepare_preset_data(preset: str, folder: str, output: str) -> None:
    """The dataset of ``preset`` in ``folder``: generated there unless it exists (then used
    as it is). A folder inside ``output`` makes ``output`` first."""
    from efficientvit_jax._io import check_output_writable
    from efficientvit_jax.data import digits_seg

    if os.path.exists(folder):
        print(f"{preset}: using the dataset in {folder}", flush=True)
        return
    inside = os.path.abspath(folder).startswith(os.path.abspath(output) + os.sep)
    if inside:
        check_output_writable(output)
    spec = digits_seg.Spec()
    print(f"{preset}: writing {spec.train} + {spec.val} canvases into {folder}", flush=True)
    digits_seg.generate(folder, spec)


def run(args: argparse.Namespace) -> int:
    """Train as the flags say; see the module."""
    if sam_train.wants_sam(args):  # a segment-anything model: its own recipe and run
        return sam_train.run(args)
    config = config_from_args(args)  # every rule checked: one-line ValueError
    # The `train` extra's modules, before anything is written (a missing one names the extra).
    import matplotlib  # noqa: F401
    import tqdm  # noqa: F401

    from efficientvit_jax.training.run import train

    output = output_folder(args)
    if args.preset is not None and not args.resume:
        prepare_preset_data(args.preset, config.data.folder, output)
    train(config, output, resume=bool(args.resume))
    return 0
