"""``efficientvit-jax``: the command-line program, one module per command.

Commands:
  train    train on scikit-learn's digits (no download); metrics, plot, checkpoints
  predict  top classes of image files with a pretrained (or converted) model
  eval     top-1, top-5 and loss of a model on an image-folder tree
  convert  a timm checkpoint of a paper model -> Flax variables saved with orbax
  export   a model -> ONNX or StableHLO file
  summary  parameters per stage, FLOPs and output_size for any config
  demo     build a model, init it, run a batch; print shapes and sizes

A user's mistake (bad flag or value, unreadable file, unwritable output, mismatched weights)
prints one line on stderr and exits 2, before anything is written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each module registers its subparser (``register(sub)``) with ``func=run``.
COMMANDS = ("train", "predict", "eval", "convert", "export", "summary", "demo")

# An optional dependency that is missing -> the extra that brings it.
_EXTRAS = {
    "tqdm": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "orbax": "train",
    "safetensors": "zoo",
    "torch": "timm",
    "jax2onnx": "export",
    "onnx": "export",
    "onnxruntime": "export",
}


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="efficientvit-jax", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"efficientvit_jax.cli.{name}").register(sub)
    return p


def one_line(e: BaseException, limit: int = 3) -> str:
    """An error as one line; a multi-line report (e.g. every mismatching tensor) is folded to
    its first ``limit`` problems and a count."""
    lines = [" ".join(s.split()) for s in str(e).splitlines() if s.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(e).__name__
    head, rest = lines[0], lines[1:]
    more = f"; ... ({len(rest) - limit} more)" if len(rest) > limit else ""
    return f"{head} {'; '.join(rest[:limit])}{more}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"efficientvit-jax {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # Commands need optional dependencies; say which extra brings them.
        extra = _EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"efficientvit-jax {args.command}: error: `{args.command}` needs {e.name}: "
            f"pip install 'efficientvit-jax[{extra}]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
