"""``efficientvit-jax convert``: a timm checkpoint to Flax variables saved with orbax.

    efficientvit-jax convert --model efficientvit_b1 --input model.safetensors --output out/
    efficientvit-jax convert --model efficientvit-seg-b0-cityscapes --input b0.pt --output out/

writes ``out/variables`` and ``out/model.json`` (``efficientvit_jax.zoo.load_converted``
reads them back). A segmentation model's ``--input`` is one of MIT's checkpoint files
(``load_mit_weights``). Without ``--input``, the published weights (a tag's timm file, MIT's
checkpoint of a segmentation model; from the Hugging Face Hub's cache, downloaded into it on
first use).
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="a timm (or MIT segmentation) checkpoint -> Flax variables saved with orbax"
    )
    p.add_argument(
        "--model",
        required=True,
        help="model name or tag, e.g. efficientvit_b1 or efficientvit-seg-b0-cityscapes",
    )
    p.add_argument(
        "--input",
        help=".safetensors or PyTorch zip checkpoint: timm's, or MIT's for a segmentation model "
        "(default: the published weights, from the Hugging Face Hub's cache)",
    )
    p.add_argument("--output", required=True, help="directory to write (must be empty or new)")
    p.add_argument("--num-classes", type=int, default=None, help="if the head was re-sized")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from efficientvit_jax._io import require_parent
    from efficientvit_jax.zoo import get_entry, load_mit_weights, load_timm_weights, save_converted
    from efficientvit_jax.zoo.registry import canonical_name

    entry = get_entry(args.model)  # an unknown name lists the known ones
    segmentation = entry.task == "segmentation"
    overrides: dict[str, Any] = {}
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    out = os.path.abspath(args.output)
    require_parent(args.output, "--output")  # only the last folder is created
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--output {args.output} exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not args.force:
        raise ValueError(f"--output {args.output} is not empty (use --force to overwrite)")
    if args.input is None:
        from efficientvit_jax.zoo import fetch_pretrained

        args.input = fetch_pretrained(args.model)
    load = load_mit_weights if segmentation else load_timm_weights
    variables = load(args.input, args.model, **overrides)
    model = canonical_name(args.model)  # MIT's hyphenated spelling saved as the registered name
    save_converted(out, variables, model=model, overrides=overrides, force=args.force)
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    print(f"converted {model} ({n:,} parameters) -> {out}")
    return 0
