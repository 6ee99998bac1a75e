"""A training step of EfficientViT-Seg, this package's against MIT's model in PyTorch eager.

Both sides do the same step: the stride-8 logits upsampled bilinearly to the crop, softmax
cross-entropy over the pixels not labelled 255, AdamW. Ours is the package's own train step
(``training.steps.make_train_step`` with ``training.seg.seg_loss``), jitted; MIT's is its
``create_seg_model`` from ``efficientvit-gml`` (``tests/reference-requirements.txt``) with
``F.interpolate`` + ``F.cross_entropy(ignore_index=255)``. Each side runs in its own process,
so that its peak resident memory is its own.

    python benchmarks/seg_train_bench.py --size 512 --batch 8 --steps 3

prints a table and writes ``--out`` (JSON). Step times exclude the first step (compilation,
first-touch allocations).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
K = 19  # Cityscapes' classes: MIT's B0 head as released


def _data(size: int, batch: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, K, (batch, size, size)).astype(np.int32)
    y[rng.random(y.shape) < 0.1] = 255
    return x, y


def _timed(step, steps: int) -> list[float]:
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times[1:]


def run_jax(size: int, batch: int, steps: int) -> list[float]:
    import jax

    from efficientvit_jax.training import create_train_state, make_optimizer, make_train_step
    from efficientvit_jax.training.seg import seg_loss
    from efficientvit_jax.zoo import create_model

    model = create_model("efficientvit_seg_b0_cityscapes", image_size=size)
    optimizer = make_optimizer(1e-3, total_steps=100)
    x, y = _data(size, batch)
    holder = {"state": create_train_state(model, optimizer, 0, x)}
    step = make_train_step(model, optimizer, loss_fn=seg_loss("NCHW"))
    batch_ = {"images": x, "labels": y}

    def one() -> None:
        holder["state"], m = step(holder["state"], batch_)
        jax.block_until_ready(m["loss"])

    return _timed(one, steps)


def run_torch(size: int, batch: int, steps: int) -> list[float]:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "tests" / "zoo"))
    from _mit_reference import load_create_seg_model

    torch.set_num_threads(os.cpu_count() or 1)
    model = load_create_seg_model()("b0", "cityscapes", pretrained=False).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, y = (torch.from_numpy(a) for a in _data(size, batch))

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        logits = F.interpolate(model(x), size=(size, size), mode="bilinear", align_corners=False)
        F.cross_entropy(logits, y.long(), ignore_index=255).backward()
        opt.step()

    return _timed(one, steps)


def child(side: str, size: int, batch: int, steps: int) -> dict:
    times = (run_jax if side == "jax" else run_torch)(size, batch, steps)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {
        "side": side, "size": size, "batch": batch, "step_s": min(times),
        "img_s": batch / min(times), "peak_rss_gb": peak_kb / 2**20,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--sides", default="jax,torch")
    p.add_argument("--out", default="seg_train_bench.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.size, a.batch, a.steps)))
        return 0
    rows = []
    for side in a.sides.split(","):
        cmd = [sys.executable, __file__, "--child", side, "--size", str(a.size),
               "--batch", str(a.batch), "--steps", str(a.steps)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(
        "| side | crop | batch | s/step | img/s | peak RSS (GB) |\n| --- | --- | --- | --- | --- | --- |"
    )
    for r in rows:
        print(f"| {r['side']} | {r['size']} | {r['batch']} | {r['step_s']:.2f} | "
              f"{r['img_s']:.2f} | {r['peak_rss_gb']:.2f} |")  # fmt: skip
    Path(a.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
