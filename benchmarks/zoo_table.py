"""The README's table of paper models: parameters, FLOPs (XLA cost analysis), published top-1.

    python benchmarks/zoo_table.py [--size 224] [--out benchmarks/results/zoo_table.md]

Parameters come from ``jax.eval_shape`` (nothing is allocated). FLOPs are XLA's cost analysis of the
jitted ``apply`` for one image, compiled for this machine's backend; they count every floating-point
operation XLA emits (multiply and add separately), so they are about twice the "MACs" papers quote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

from efficientvit_jax.summary import compiled_flops
from efficientvit_jax.zoo import create_model, get_entry, list_models


def row(name: str, size: int) -> str:
    entry = get_entry(name)
    model = create_model(name)
    x = jax.ShapeDtypeStruct((1, 3, size, size), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    params = sum(a.size for a in jax.tree.leaves(variables["params"]))
    flops = compiled_flops(jax.jit(model.apply).lower(variables, x).compile())
    gflops = "" if flops is None else f"{flops / 1e9:.2f}"
    top1 = "" if entry.top1 is None else f"{entry.top1:.1f}"
    return f"| `{name}` | {entry.family.upper()} | {params / 1e6:.2f} M | {gflops} | {top1} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    lines = [
        f"| model | paper | parameters | GFLOPs at {args.size}x{args.size} (XLA) | published top-1 (%) |",
        "| --- | --- | --- | --- | --- |",
    ]
    # the classifiers: a top-1 table (the segmentation models have their own numbers, mIoU)
    names = [n for n in list_models() if get_entry(n).task == "classification"]
    for name in names:
        lines.append(row(name, args.size))
        print(lines[-1], flush=True)
    sources = sorted({get_entry(n).top1_source for n in names if get_entry(n).top1_source})
    lines.append("")
    lines += [f"Top-1 source: {s}" for s in sources]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
