"""The GPU section: zoo models in bfloat16, JAX against timm eager and ``torch.compile``, one process.

    python benchmarks/gpu_bench.py --out benchmarks/results/gpu     # the table in docs/benchmarks.md
    python benchmarks/gpu_bench.py --quick --no-compile             # a smoke run on any machine

JAX runs each zoo model with ``dtype=bfloat16`` (float32 parameters, bfloat16 compute; the linear
attention keeps its sums and division in float32). timm runs the same weights under
``torch.autocast(dtype=torch.bfloat16)``, eager and through ``torch.compile`` (default mode). Both take
the same NCHW float32 batch already on the GPU. Inference: each call is followed by a device sync, so
batch 1 is a latency; the median of ``--repeats`` calls after warm-up. Train step: AdamW on a
cross-entropy loss, parameters updated in place (donated buffers in JAX). Compile times are the first
call's wall time. Rows are written as they are measured (``rows.jsonl``), so a run cut short keeps
what it did; ``--budget-s`` stops starting new models after that many seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# JAX and PyTorch share the GPU here: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# benchmarks/run.py: the same train step and timing as the CPU tables
from run import JaxTrainer, median_time

from efficientvit_jax.zoo import create_model, load_timm_weights

# Every function timed here returns only once the device is done (JAX blocks on its result,
# the torch runs synchronise), so wall time is device time.


def first_call(fn: Callable[[], Any]) -> float:
    """Seconds of the first call: compilation (and autotuning) included."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median milliseconds of a call after three warm-up calls."""
    return 1e3 * median_time(fn, repeats, warmup=3)


class TorchRunner:
    """A torch module under bf16 autocast, eager or compiled, inference or an AdamW train step."""

    def __init__(self, module: Any, device: str):
        import torch

        self.torch, self.device = torch, device
        self.model = module.to(device)

    @classmethod
    def timm(cls, name: str, state: dict[str, Any], device: str) -> TorchRunner:
        """timm's model ``name`` with ``state``."""
        import timm

        model = timm.create_model(name, pretrained=False)
        model.load_state_dict(state)
        return cls(model, device)

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def infer(self, x: Any, compiled: bool, bf16: bool = True) -> Callable[[], Any]:
        torch = self.torch
        self.model.eval()
        model = torch.compile(self.model, dynamic=False) if compiled else self.model

        def run():
            autocast = torch.autocast(self.device, dtype=torch.bfloat16, enabled=bf16)
            with torch.inference_mode(), autocast:
                out = model(x)
            self.sync()
            return out

        return run

    def train(self, x: Any, y: Any, compiled: bool) -> Callable[[], Any]:
        torch = self.torch
        self.model.train()
        model = torch.compile(self.model, dynamic=False) if compiled else self.model
        opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)

        def run():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            self.sync()

        return run


def bench_model(name: str, args: argparse.Namespace, emit: Callable[[dict], None]) -> None:
    import timm
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    state = timm.create_model(name, pretrained=False).state_dict()
    variables = jax.device_put(load_timm_weights({k: v.numpy() for k, v in state.items()}, name))
    model = create_model(name, dtype=jnp.bfloat16)
    runner = TorchRunner.timm(name, state, device)
    size = args.size
    for batch in args.batches:
        x = np.random.default_rng(batch).random((batch, 3, size, size), np.float32)
        xj = jax.device_put(x)
        xt = torch.from_numpy(x).to(device)
        apply = jax.jit(model.apply)
        jax_run = lambda apply=apply, xj=xj: apply(variables, xj).block_until_ready()  # noqa: E731
        row: dict[str, Any] = dict(model=name, mode="infer", batch=batch)
        row.update(compare_inference(jax_run, runner, xt, args.repeats, args.compile))
        emit(row)
    batch = args.train_batch
    x = np.random.default_rng(0).random((batch, 3, size, size), np.float32)
    y = np.arange(batch) % 1000
    trainer = JaxTrainer(
        model, jax.tree.map(jnp.copy, variables), jax.device_put(x), jax.device_put(y)
    )
    row = dict(model=name, mode="train", batch=batch)
    row["jax_compile_s"] = first_call(trainer)
    row["jax_ms"] = ms(trainer, args.repeats)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)
    row["eager_ms"] = ms(runner.train(xt, yt, compiled=False), args.repeats)
    if args.compile and args.compile_train:
        compiled = runner.train(xt, yt, compiled=True)
        row["compile_first_call_s"] = first_call(compiled)
        row["compile_ms"] = ms(compiled, args.repeats)
    emit(row)


def compare_inference(
    jax_run: Callable[[], Any],
    runner: TorchRunner,
    x: Any,
    repeats: int,
    compile: bool,
    *,
    bf16: bool = True,
    scale_key: str = "logit_scale",
) -> dict[str, Any]:
    """Our forward (``jax_run``) against the torch module's on ``x``, eager and (``compile``)
    through ``torch.compile``: first calls and median milliseconds, and the largest difference of
    our output from torch's eager output beside that output's scale (``scale_key``). Same weights,
    same compute dtype: the outputs agree to its precision (a sanity check that both sides ran the
    same model, not a parity test)."""
    row = dict(jax_compile_s=first_call(jax_run), jax_ms=ms(jax_run, repeats))
    eager = runner.infer(x, compiled=False, bf16=bf16)
    row["eager_ms"] = ms(eager, repeats)
    ref = eager().float().cpu().numpy()
    row["max_abs_diff_vs_eager"] = float(np.abs(np.asarray(jax_run(), np.float32) - ref).max())
    row[scale_key] = float(np.abs(ref).max())
    if compile:
        compiled = runner.infer(x, compiled=True, bf16=bf16)
        row["compile_first_call_s"] = first_call(compiled)
        row["compile_ms"] = ms(compiled, repeats)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | mode | batch | JAX ms | timm eager ms | timm compile ms | JAX vs eager | JAX vs compile |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "jax_ms" not in r:
            continue
        comp = r.get("compile_ms")
        comp_ms = f"{comp:.2f}" if comp else "-"
        comp_x = f"{comp / r['jax_ms']:.2f}x" if comp else "-"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {r['jax_ms']:.2f} | {r['eager_ms']:.2f} | "
            f"{comp_ms} | {r['eager_ms'] / r['jax_ms']:.2f}x | {comp_x} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument(
        "--models",
        default="efficientvit_b0,efficientvit_m0,efficientvit_b1,efficientvit_m4,"
        "efficientvit_b2,efficientvit_l1",
    )
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--compile-train", action="store_true", help="also torch.compile the train step")
    p.add_argument("--budget-s", type=float, default=420.0)
    args = p.parse_args()
    args.size = 64 if args.quick else 224
    args.batches = (1, 2) if args.quick else (1, 256)
    args.train_batch = 2 if args.quick else 128
    if args.quick:
        args.models, args.repeats = "efficientvit_b0,efficientvit_m0", 3
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    jsonl = (args.out / "rows.jsonl").open("w")

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        jsonl.write(json.dumps(row) + "\n")
        jsonl.flush()

    import torch

    env = dict(
        jax=jax.__version__,
        jax_device=str(jax.devices()[0]),
        torch=torch.__version__,
        torch_device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    )
    print(json.dumps(env), flush=True)
    start = time.perf_counter()
    for name in args.models.split(","):
        if time.perf_counter() - start > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: {name} and later not run", flush=True)
            break
        try:
            bench_model(name, args, emit)
        except Exception:  # a failure of one model must not lose the others' rows
            traceback.print_exc()
            emit(dict(model=name, error=traceback.format_exc(limit=3)))
    (args.out / "results.json").write_text(json.dumps(dict(env=env, rows=rows), indent=1))
    (args.out / "table.md").write_text(markdown(rows))
    print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
