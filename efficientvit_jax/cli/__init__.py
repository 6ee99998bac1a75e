"""``efficientvit-jax``: the command-line program, one module per command.

Commands:
  train    train on scikit-learn's digits (no download); metrics, plot, checkpoints; with a
           segment-anything --model, fine-tune SAM on a segmentation dataset's masks
  predict  top classes of image files with a pretrained (or converted) model
  segment  label maps and overlays of images with a segmentation model
  sam      segment anything: masks of an image from points, a box, or all of them (--auto)
  eval     top-1, top-5 and loss of a model on an image-folder tree; mIoU of a segmentation one
  convert  a timm checkpoint of a paper model -> Flax variables saved with orbax
  export   a model -> ONNX or StableHLO file
  summary  parameters per stage, FLOPs and output_size for any config
  demo     build a model, init it, run a batch; print shapes and sizes

A user's mistake (bad flag or value, unreadable file, unwritable output, mismatched weights)
prints one line on stderr and exits 2, before anything is written. Ctrl-C (and SIGTERM during
`train`) prints one line and exits 130; `train` first saves its state at the step reached and
the line says how to resume. A second Ctrl-C while it saves stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import os
import shlex
import sys
from collections.abc import Sequence

# Each module registers its subparser (``register(sub)``) with ``func=run``.
COMMANDS = ("train", "predict", "segment", "sam", "eval", "convert", "export", "summary", "demo")

# An optional dependency that is missing -> the extra that brings it, per command: tqdm and
# orbax come with both `train` and `zoo`, and the README names `zoo` for predict, segment,
# eval, convert and export (its --weights and --checkpoint); "*" is every other command.
_ZOO = {"tqdm": "zoo", "orbax": "zoo", "huggingface_hub": "zoo"}
_EXTRAS: dict[str, dict[str, str]] = {
    "*": {
        "tqdm": "train",
        "sklearn": "train",
        "matplotlib": "train",
        "orbax": "train",
        "safetensors": "zoo",
        "huggingface_hub": "zoo",  # a tag's weights fetched by name (train's --model TAG)
        "torch": "timm",
        "jax2onnx": "export",
        "onnx": "export",
        "onnxruntime": "export",
    },
    **{command: _ZOO for command in ("predict", "segment", "sam", "eval", "convert", "export")},
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
    if argv is None:  # the console script or ``python -m``: this process is ours to tune
        _fewer_full_collections()
    try:
        return _main(argv)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM during `train`: one line, no traceback
        print(interrupted_line(argv, e), file=sys.stderr, flush=True)
        if argv is None:  # the console script or ``python -m``: this process is ours to end
            _exit_now(130)
        return 130


def _fewer_full_collections() -> None:
    """Python's full garbage collections a tenth as often as its default (a threshold of at
    least 100; one set higher already is kept). Each scans every object of the process (JAX,
    Flax and orbax hold hundreds of thousands once imported), and tracing a model allocates
    enough to start one every second or so; the young generations, where short-lived cycles
    die, are still collected as usual. Measured on a 3-step ``train`` of the tiny builder
    model: 0.61 s of full collections (6) of its 11.6 s, against 0.06 s (2)."""
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, max(full, 100))


def _exit_now(code: int) -> None:
    """End the process without the interpreter's shutdown, where the work an interrupt cut
    short would report itself (orbax's writer threads log tracebacks once their executor is
    gone) or hang (JAX tearing down a half-traced function, up to a crash)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def interrupted_line(argv: Sequence[str] | None, e: KeyboardInterrupt) -> str:
    """``efficientvit-jax CMD: interrupted``; for a training run, where it stopped and how to
    go on (the ``Interrupted`` that ``training.loop.fit`` raises)."""
    words = sys.argv[1:] if argv is None else list(argv)
    command = next((w for w in words if w in COMMANDS), None)
    prefix = "efficientvit-jax" + (f" {command}" if command else "")
    # Only loaded when training ran: then ``e`` may be its ``Interrupted``.
    mod = sys.modules.get("efficientvit_jax.training.interrupt")
    if mod is None or not isinstance(e, mod.Interrupted):
        return f"{prefix}: interrupted"
    line = f"{prefix}: {e}"
    if e.checkpoint is not None and e.workdir is not None:
        out = shlex.quote(mod.shown_path(e.workdir))
        line += f"; continue with: efficientvit-jax {command or 'train'} --output {out} --resume"
    return line


def _main(argv: Sequence[str] | None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"efficientvit-jax {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # Commands need optional dependencies; say which extra brings them.
        module = (e.name or "").split(".")[0]
        extra = _EXTRAS.get(args.command, {}).get(module) or _EXTRAS["*"].get(module)
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
