"""``efficientvit-jax export``: a model -> one ONNX or StableHLO file that runs without the package.

    efficientvit-jax export --format onnx --output b0.onnx --model efficientvit_b0.r224_in1k
    efficientvit-jax export --format stablehlo --output run.stablehlo --checkpoint runs/digits
    efficientvit-jax export --format onnx --output core.onnx --embed-dim 32 --seed 0
    efficientvit-jax export --format onnx --output sam_l0/ --model efficientvit_sam_l0

The model comes from ``--model`` (a zoo name or timm tag, with ``--weights``: a timm file or a
folder written by ``convert``; without it, the tag's published weights from the Hugging Face
Hub's cache; ``--random-weights``: the model's own initialisation), from ``--checkpoint`` (any ``train`` run, digits or folders,
builder or zoo model: ``load_run``; the newest intact step unless ``--step``, the EMA
weights with ``--ema``; the file then carries the run's class names and data config), or
else from the builder options with random weights (``--seed``). BatchNorms are folded
unless ``--no-fold``.

A segment-anything model (``--model efficientvit_sam_l0`` .. ``xl1``, MIT's checkpoint as
``--weights``) is two files, written into the folder ``--output`` (created if missing):
``encoder.<format>`` and ``decoder.<format>`` (``export.sam``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from efficientvit_jax.cli.common import add_model_flags, config_from_args

FORMATS = ("onnx", "stablehlo")
# Builder options that only the core builder (no --model, no --checkpoint) takes.
_BUILDER_ONLY = (
    "patch_size", "in_channels", "embed_dim", "depths", "num_heads", "mlp_ratio", "layout",
    "drop_path_rate", "remat",
)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="a model -> ONNX or StableHLO file (BatchNorms folded)")
    g = p.add_argument_group("export")
    g.add_argument("--format", default=None, help=f"one of {', '.join(FORMATS)}")
    g.add_argument("--output", "-o", default=None, help="the file to write (SAM models: a folder)")
    g.add_argument("--no-fold", action="store_true", help="keep the BatchNorms as they are")
    g.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    g.add_argument(
        "--platforms",
        default=None,
        help="StableHLO: comma-separated, e.g. cpu,cuda (default: this backend)",
    )
    g = p.add_argument_group("source (one of)")
    g.add_argument("--model", default=None, help="zoo model or timm tag, e.g. efficientvit_b0")
    g.add_argument(
        "--weights",
        default=None,
        help="timm .safetensors/.pth, or a `convert` folder (default: the tag's published "
        "weights, from the Hugging Face Hub's cache)",
    )
    g.add_argument("--random-weights", action="store_true", help="--model with random weights")
    g.add_argument(
        "--checkpoint", default=None, help="a `train` run folder (or checkpoints/, or a step)"
    )
    g.add_argument("--step", type=int, default=None, help="with --checkpoint: this step")
    g.add_argument("--ema", action="store_true", help="with --checkpoint: the EMA weights")
    g.add_argument("--seed", type=int, default=0, help="random weights' seed")
    add_model_flags(p)
    # None = the model's own (zoo: its config, checkpoint: the run's), set after parsing.
    p.set_defaults(image_size=None, dtype=None, data_format=None, func=run)


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The flags among ``names`` set to something else than the core config's default."""
    from efficientvit_jax.config import EfficientViTConfig

    d = EfficientViTConfig()
    return ["--" + n.replace("_", "-") for n in names if getattr(args, n) != getattr(d, n)]


def _check_args(args: argparse.Namespace) -> None:
    if args.format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
    if not args.output:
        raise ValueError("--output PATH is required (the file to write)")
    if args.model and args.checkpoint:
        raise ValueError("--model and --checkpoint are two sources; give one")
    if (args.weights or args.random_weights) and not args.model:
        raise ValueError("--weights and --random-weights go with --model NAME")
    if args.weights and args.random_weights:
        raise ValueError("--weights and --random-weights are two sources of weights; give one")
    if (args.step is not None or args.ema) and not args.checkpoint:
        raise ValueError("--step and --ema go with --checkpoint RUN")
    source = "--model" if args.model else "--checkpoint" if args.checkpoint else None
    bad = _given(args, _BUILDER_ONLY + (("num_classes",) if args.checkpoint else ()))
    if source and bad:
        raise ValueError(
            f"{', '.join(bad)}: builder options, not for {source} (its config is fixed)"
        )
    if args.opset is not None and args.format != "onnx":
        raise ValueError("--opset is an ONNX option")
    if args.platforms is not None and args.format != "stablehlo":
        raise ValueError("--platforms is a StableHLO option")


def load_model(args: argparse.Namespace) -> Any:
    """The ``Exportable`` the source flags describe."""
    from efficientvit_jax import export

    dtype = args.dtype or "float32"
    if args.model:
        overrides: dict[str, Any] = {}
        for k, v in (("num_classes", args.num_classes), ("data_format", args.data_format)):
            if v is not None:
                overrides[k] = v
        if args.dtype:
            overrides["dtype"] = args.dtype
        return export.from_zoo(
            args.model,
            args.weights,
            random_weights=args.random_weights,
            seed=args.seed,
            image_size=args.image_size,
            **overrides,
        )
    if args.checkpoint:
        return export.from_checkpoint(
            args.checkpoint, args.step, ema=args.ema, dtype=dtype, image_size=args.image_size,
            data_format=args.data_format,
        )  # fmt: skip
    args.image_size = args.image_size or 224
    args.data_format = args.data_format or "NCHW"
    args.dtype = dtype
    return export.from_config(config_from_args(args), seed=args.seed)


def _is_sam(args: argparse.Namespace) -> bool:
    if not args.model:
        return False
    from efficientvit_jax.zoo.registry import get_entry

    return get_entry(args.model).task == "sam"


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    from efficientvit_jax._io import check_output_folder
    from efficientvit_jax.export.prepare import check_output_file

    sam = _is_sam(args)
    if sam:  # before any work
        check_output_folder(args.output)
    else:
        check_output_file(args.output)
    if args.format == "onnx":
        import jax2onnx  # noqa: F401  (missing: main names the `export` extra)
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    from efficientvit_jax import export

    model = load_model(args)
    options: dict[str, Any] = {"fold": not args.no_fold}
    if args.opset is not None:
        options["opset"] = args.opset
    if args.platforms:
        options["platforms"] = tuple(args.platforms.split(","))
    info = export.export(model, args.output, args.format, **options)
    if sam:
        for part in info.values():
            inputs = ", ".join(f"{k} {v}" for k, v in part["inputs"].items())
            print(_line(model.name, part, f"inputs {inputs}"))
        return 0
    shape = ", ".join(["batch", *(str(d) for d in model.image_shape)])
    print(_line(model.name, info, f"input images [{shape}] {model.dtype}"))
    return 0


def _line(name: str, info: dict[str, Any], inputs: str) -> str:
    return (
        f"exported {name} -> {os.path.relpath(info['path'])}: {info['format']}, {inputs}, "
        f"{info['folded_batchnorms']} BatchNorms folded, {info['bytes'] / 1e6:.1f} MB, "
        f"{info['seconds']:.1f} s"
    )
