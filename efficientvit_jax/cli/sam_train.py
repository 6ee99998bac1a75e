"""``efficientvit-jax train --model efficientvit_sam_<variant> --data DIR``: fine-tuning
EfficientViT-SAM on a segmentation dataset's masks (``training.sam.finetune_sam``).

Not a command of its own: ``train`` hands a run over here when ``--model`` is a
segment-anything model, when ``--checkpoint RUN`` starts from a SAM run (its model, unless
``--model`` and ``--image-size`` say otherwise), or when ``--resume`` names a SAM run's folder. The flags it shares
with the other runs mean what they mean there (``--data``, ``--weights``, ``--epochs``,
``--batch-size`` (images per step), ``--learning-rate``, ...); its own are in the group
below. A flag of the other runs that a SAM run has no use for (``--augment``,
``--ema-decay``, the builder's, the mesh's) is refused in one line, before any work.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

DEFAULT_OUTPUT = "runs/sam"
# Flags of this group: SAM fine-tuning's alone (refused for the other runs).
SAM_ONLY = (
    "checkpoint", "train_encoder", "prompts_per_image", "max_points", "box_prob",
    "negative_prob", "min_mask_area",
)  # fmt: skip
# ``train``'s flags that a SAM run shares (``SamTuneConfig`` fields of the same name).
SHARED = (
    "data", "model", "weights", "image_size", "epochs", "batch_size", "learning_rate",
    "warmup_steps", "weight_decay", "seed", "eval_batch_size", "save_every", "keep",
    "max_steps", "skip_bad",
)  # fmt: skip
_ALWAYS = ("func", "command", "output", "resume", "no_progress")


def add_sam_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fine-tuning a segment-anything --model (efficientvit_sam_*)")
    g.add_argument("--checkpoint", metavar="RUN",
                   help="start from a SAM fine-tuning run (instead of --weights FILE)")  # fmt: skip
    g.add_argument("--train-encoder", action="store_true",
                   help="train the image encoder too (default: prompt encoder + mask decoder, "
                        "the embeddings computed once)")  # fmt: skip
    g.add_argument("--prompts-per-image", type=int, help="prompts drawn per image per step (4)")
    g.add_argument("--max-points", type=int, help="positive points of a point prompt: 1..N (3)")
    g.add_argument("--box-prob", type=float, help="probability of a box prompt (0.5)")
    g.add_argument("--negative-prob", type=float,
                   help="probability of one negative point with points (0.5)")  # fmt: skip
    g.add_argument("--min-mask-area", type=int,
                   help="instances under this many pixels are not prompted (16)")  # fmt: skip


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def wants_sam(args: argparse.Namespace) -> bool:
    """Whether ``train``'s flags describe a SAM fine-tuning run: a segment-anything
    ``--model``, ``--checkpoint`` (a SAM run to start from, whose model it then is) or
    ``--resume`` of a SAM run's folder. Any other run refuses this group's flags."""
    from efficientvit_jax.training.sam_config import is_sam_run

    sam = args.checkpoint is not None  # a SAM run to start from: this group's own flag
    if args.model is not None:
        from efficientvit_jax.zoo.registry import get_entry

        try:
            sam = get_entry(args.model).task == "sam"
        except ValueError:  # an unknown name: `train`'s own path says so
            sam = False
    elif args.resume:
        sam = is_sam_run(output_folder(args))
    if args.model is not None and args.checkpoint is not None and not sam:
        raise ValueError(f"--checkpoint: a SAM fine-tuning run to start from; --model "
                         f"{args.model} is not a segment-anything model")  # fmt: skip
    if not sam:
        given = [d for d in SAM_ONLY if getattr(args, d, None) is not None]
        if given:
            raise ValueError(f"{_flag(given[0])}: an option of SAM fine-tuning (a segment-anything "
                             "--model such as efficientvit_sam_l0)")  # fmt: skip
    return sam


def output_folder(args: argparse.Namespace) -> str:
    return args.output or DEFAULT_OUTPUT


def config_from_args(args: argparse.Namespace) -> Any:
    """The ``SamTuneConfig`` the flags describe (``--resume``: the stored one, with the flags
    given now over it)."""
    from efficientvit_jax.training.sam_config import SamTuneConfig, load_config

    unused = [d for d, v in vars(args).items()
              if v is not None and d not in (*SHARED, *SAM_ONLY, *_ALWAYS)]  # fmt: skip
    if unused:
        raise ValueError(f"{_flag(unused[0])}: not an option of SAM fine-tuning (the flags it "
                         "takes: `efficientvit-jax train --help`, its own group and "
                         f"{', '.join(_flag(d) for d in SHARED)})")  # fmt: skip
    given: dict[str, Any] = {d: getattr(args, d) for d in (*SHARED, *SAM_ONLY)
                             if getattr(args, d) is not None}  # fmt: skip
    given["progress"] = not args.no_progress
    if args.resume:
        # --max-steps says where this invocation stops: not carried over from the last one.
        return load_config(output_folder(args)).replace(**{"max_steps": None, **given})
    if "checkpoint" in given:  # the run's model, unless the flags name one
        given = {**_run_model(given["checkpoint"]), **given}
    if "data" not in given:
        raise ValueError("--data DIR is needed: a segmentation dataset with train/ and val/ "
                         "(images/ + masks/) whose masks' instances give the prompts")  # fmt: skip
    return SamTuneConfig(**given)


def _run_model(path: str) -> dict[str, Any]:
    """The model fields (``model``, ``image_size``, ``architecture``) of the SAM run in
    ``path``: a run started from it fine-tunes that model."""
    from efficientvit_jax.training.loaded import locate_run
    from efficientvit_jax.training.sam_config import load_config

    stored = load_config(locate_run(path)[0])
    return {k: getattr(stored, k) for k in ("model", "image_size", "architecture")}


def run(args: argparse.Namespace) -> int:
    """Fine-tune as the flags say; see the module."""
    config = config_from_args(args)  # every rule checked: one-line ValueError
    import matplotlib  # noqa: F401  (the `train` extra, before anything is written)
    import tqdm  # noqa: F401

    from efficientvit_jax.training.sam import finetune_sam

    out = output_folder(args)
    if args.resume and not os.path.isdir(out):
        raise ValueError(f"--resume: no run folder {out}")
    finetune_sam(config, out, resume=bool(args.resume))
    return 0
