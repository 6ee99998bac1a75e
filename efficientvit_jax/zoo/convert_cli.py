"""``efficientvit-jax convert``: a timm checkpoint to Flax variables saved with orbax.

    efficientvit-jax convert --model efficientvit_b1 --input model.safetensors --output out/

writes ``out/variables`` (an orbax ``StandardCheckpointer`` checkpoint of
``{"params", "batch_stats"}``) and ``out/model.json`` (the model name and
overrides, so that ``load_converted`` can rebuild the module). Errors are one
line on stderr with a non-zero exit status; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

import efficientvit_jax.zoo  # noqa: F401  (registers every family)
from efficientvit_jax.zoo.registry import create_model, get_entry, load_timm_weights

VARIABLES_DIR = "variables"
META_FILE = "model.json"


def add_convert_args(p: argparse.ArgumentParser) -> None:
    """The ``convert`` flags, for reuse as a subcommand of the main CLI."""
    p.add_argument("--model", required=True, help="timm model name, e.g. efficientvit_b1")
    p.add_argument("--input", required=True, help=".safetensors or PyTorch zip checkpoint")
    p.add_argument("--output", required=True, help="directory to write (must be empty or new)")
    p.add_argument("--num-classes", type=int, default=None, help="if the head was re-sized")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty --output")


def _one_line(e: Exception, limit: int = 3) -> str:
    """A multi-line conversion report folded to one line: the first problems and a count."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    head, rest = lines[0], lines[1:]
    more = f"; ... ({len(rest) - limit} more)" if len(rest) > limit else ""
    return f"{head} {'; '.join(rest[:limit])}{more}"


def run_convert(args: argparse.Namespace) -> int:
    """Convert and save; returns the exit status (errors go to stderr as one line)."""
    try:
        get_entry(args.model)  # an unknown name lists the known ones
        overrides: dict[str, Any] = {}
        if args.num_classes is not None:
            overrides["num_classes"] = args.num_classes
        out = os.path.abspath(args.output)
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--output {args.output} exists and is not a directory")
        if os.path.isdir(out) and os.listdir(out) and not args.force:
            raise ValueError(f"--output {args.output} is not empty (use --force to overwrite)")
        variables = load_timm_weights(args.input, args.model, **overrides)
        _save(out, variables, {"model": args.model, "overrides": overrides}, force=args.force)
    except (ValueError, OSError) as e:
        print(f"efficientvit-jax convert: error: {_one_line(e)}", file=sys.stderr)
        return 1
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    print(f"converted {args.model} ({n:,} parameters) -> {out}")
    return 0


def _save(out: str, variables: dict[str, Any], meta: dict[str, Any], *, force: bool) -> None:
    import orbax.checkpoint as ocp

    os.makedirs(out, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(out, VARIABLES_DIR), variables, force=force)
    ckptr.wait_until_finished()
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load_converted(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(module, variables)`` from a directory written by ``convert``."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    with open(os.path.join(directory, META_FILE)) as f:
        meta = json.load(f)
    variables = ocp.StandardCheckpointer().restore(os.path.join(directory, VARIABLES_DIR))
    return create_model(meta["model"], **meta.get("overrides", {})), variables


def main(argv: Sequence[str] | None = None) -> int:
    """``efficientvit-jax convert ...`` (the leading ``convert`` may be omitted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["convert"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="efficientvit-jax convert",
        description="Convert a timm checkpoint to Flax variables (orbax).",
    )
    add_convert_args(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse already printed its one-line usage error
        return int(e.code or 0)
    return run_convert(args)


if __name__ == "__main__":
    sys.exit(main())
