"""``efficientvit-jax convert``: a timm checkpoint to Flax variables saved with orbax.

    efficientvit-jax convert --model efficientvit_b1 --input model.safetensors --output out/

writes ``out/variables`` and ``out/model.json`` (``efficientvit_jax.zoo.load_converted``
reads them back). Without ``--input``, the tag's published weights (from the Hugging Face
Hub's cache, downloaded into it on first use).
"""

from __future__ import annotations

import argparse
import os
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="a timm checkpoint -> Flax variables saved with orbax")
    p.add_argument("--model", required=True, help="timm model name or tag, e.g. efficientvit_b1")
    p.add_argument(
        "--input",
        help=".safetensors or PyTorch zip checkpoint (default: the tag's published weights, "
        "from the Hugging Face Hub's cache)",
    )
    p.add_argument("--output", required=True, help="directory to write (must be empty or new)")
    p.add_argument("--num-classes", type=int, default=None, help="if the head was re-sized")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from efficientvit_jax._io import require_parent
    from efficientvit_jax.zoo import get_entry, load_timm_weights, save_converted

    get_entry(args.model)  # an unknown name lists the known ones
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
        from efficientvit_jax.zoo.hub import fetch_weights

        args.input = fetch_weights(args.model)
    variables = load_timm_weights(args.input, args.model, **overrides)
    save_converted(out, variables, model=args.model, overrides=overrides, force=args.force)
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    print(f"converted {args.model} ({n:,} parameters) -> {out}")
    return 0
