"""EfficientViT-Seg inference on this CPU: this package's models against MIT's code in torch eager.

Each (side, model, size) runs in a fresh process of its own, so that its peak resident memory is
its own and neither framework's allocator disturbs the other's timing. Ours is the registered
model (``create_model``), jitted, random weights, in the layout given by ``--layout`` (NHWC by
default: XLA's CPU convolutions prefer it; NCHW is MIT's); MIT's is ``create_seg_model`` from
``efficientvit-gml`` (``tests/reference-requirements.txt``), eval mode, ``torch.inference_mode``.
Times are the best of ``--repeats`` forwards at batch 1 after one warm-up forward (ours: the
compilation), with the same number of threads on both sides.

    python benchmarks/seg_bench.py                     # B0, B1, L1 at 1024x2048
    python benchmarks/seg_bench.py --memory b0,l1      # peak RSS at 1024x2048 and 2048x4096

prints a Markdown table and writes ``--out`` (JSON rows).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import timing  # benchmarks/timing.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
DATASET = "cityscapes"


def _image(h: int, w: int):
    import numpy as np

    return np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)


def run_jax(variant: str, h: int, w: int, repeats: int, layout: str) -> tuple[float, float]:
    import jax
    import jax.numpy as jnp

    from efficientvit_jax.zoo import create_model

    model = create_model(f"efficientvit_seg_{variant}_{DATASET}", data_format=layout)
    x = _image(h, w)
    if layout == "NHWC":
        x = x.transpose(0, 2, 3, 1)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    # Weights' values do not change the time: ones scaled small keep the activations finite.
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
    fwd = jax.jit(model.apply)
    xj = jnp.asarray(x)
    return timing.best(lambda: jax.block_until_ready(fwd(variables, xj)), repeats)


def run_torch(variant: str, h: int, w: int, repeats: int) -> tuple[float, float]:
    import torch

    sys.path.insert(0, str(ROOT / "tests" / "zoo"))
    from _mit_reference import load_create_seg_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_create_seg_model()(variant, DATASET, pretrained=False).eval()
    x = torch.from_numpy(_image(h, w))

    def one() -> None:
        with torch.inference_mode():
            model(x)

    return timing.best(one, repeats)


def child(side: str, variant: str, h: int, w: int, repeats: int, layout: str) -> dict:
    if side == "jax":
        first, best = run_jax(variant, h, w, repeats, layout)
    else:
        first, best = run_torch(variant, h, w, repeats)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {
        "side": side, "model": variant, "height": h, "width": w, "first_s": first,
        "forward_s": best, "peak_rss_gb": peak_kb / 2**20,
        "layout": layout if side == "jax" else "NCHW",
    }  # fmt: skip


def _spawn(side: str, variant: str, h: int, w: int, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--models", variant, "--size", f"{h}x{w}",
           "--repeats", str(a.repeats), "--layout", a.layout]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def _speed_table(rows: list[dict]) -> list[str]:
    out = ["| model | size | MIT torch eager (s) | ours (s) | speed-up | ours: first call (s) |",
           "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        if r["side"] != "jax":
            continue
        t = next(
            x for x in rows if x["side"] == "torch" and x["model"] == r["model"]
            and x["height"] == r["height"]
        )  # fmt: skip
        out.append(f"| {r['model']} | {r['height']}x{r['width']} | {t['forward_s']:.2f} | "
                   f"{r['forward_s']:.2f} | {t['forward_s'] / r['forward_s']:.2f}x | "
                   f"{r['first_s']:.1f} |")  # fmt: skip
    return out


def _memory_table(rows: list[dict]) -> list[str]:
    out = ["| side | model | peak RSS 1x (GB) | peak RSS 4x pixels (GB) | ratio |",
           "| --- | --- | --- | --- | --- |"]  # fmt: skip
    pairs: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        pairs.setdefault((r["side"], r["model"]), []).append(r)
    for (side, model), rs in pairs.items():
        if len(rs) == 2:
            small, big = sorted(rs, key=lambda r: r["height"])
            ratio = big["peak_rss_gb"] / small["peak_rss_gb"]
            out.append(f"| {side} | {model} | {small['peak_rss_gb']:.2f} | "
                       f"{big['peak_rss_gb']:.2f} | {ratio:.2f}x |")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="b0,b1,l1", help="variants for the speed table")
    p.add_argument("--size", default="1024x2048", help="HxW of the speed table")
    p.add_argument(
        "--memory", default="", help="variants whose peak RSS is also measured at 2x the side"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--layout", default="NHWC", choices=("NHWC", "NCHW"), help="ours")
    p.add_argument("--sides", default="torch,jax")
    p.add_argument("--out", default="seg_bench.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    h, w = _size(a.size)
    if a.child:
        print(json.dumps(child(a.child, a.models, h, w, a.repeats, a.layout)))
        return 0
    speed = [_spawn(s, m, h, w, a) for m in a.models.split(",") if m for s in a.sides.split(",")]
    memory = [
        _spawn(s, m, h * k, w * k, a)
        for m in a.memory.split(",") if m
        for s in a.sides.split(",")
        for k in (1, 2)
    ]  # fmt: skip
    print("\n".join(_speed_table(speed)))
    if memory:
        print()
        print("\n".join(_memory_table(memory)))
    Path(a.out).write_text(json.dumps({"speed": speed, "memory": memory}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
