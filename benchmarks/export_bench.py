"""Exported models in onnxruntime against timm eager and JAX, and the time each export takes.

    python benchmarks/export_bench.py                       # B0, B1, M0, M4 at 224, batch 1 and 32
    python benchmarks/export_bench.py --quick --out DIR     # tiny: a smoke run

For each model: export to ONNX (timed, BatchNorms folded, onnxruntime's basic optimisations
applied offline) and to StableHLO (timed), then inference at each batch size of
- onnxruntime, CPU provider, ``--threads`` intra-op threads, all graph optimisations;
- timm eager (``torch.inference_mode``, ``--threads`` threads), in a worker process of its own
  (benchmarks/torch_worker.py says why), the same weights;
- JAX: the package's own model, jitted (its CPU kernels, not the exported graph).
Runs alternate (onnxruntime, timm, JAX, ...) so that drift of the machine hits all alike; each
time is the median of ``--repeats`` runs after a warm-up. Weights are timm's random init (no
download), converted with ``load_timm_weights``, so all three compute the same function.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import alternate, block

MODELS = "efficientvit_b0,efficientvit_b1,efficientvit_m0,efficientvit_m4"


def _session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # onnxruntime's pool spins after each run by default, taking the cores from the timm
    # worker and JAX that run next in turn; without spinning each side gets the machine alone.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def bench_model(name: str, args: argparse.Namespace, worker: Any, tmp: str) -> list[dict]:
    import timm
    import torch

    from efficientvit_jax import export
    from efficientvit_jax.zoo import create_model, load_timm_weights

    torch.manual_seed(0)
    state = {k: v.numpy() for k, v in timm.create_model(name).state_dict().items()}
    variables = load_timm_weights(state, name)
    model = create_model(name)
    size = 64 if args.quick else 224
    source = export.Exportable(model, variables, (3, size, size), jnp.float32, name)
    onnx_info = export.export_onnx(source, os.path.join(tmp, f"{name}.onnx"))
    hlo_info = export.export_stablehlo(source, os.path.join(tmp, f"{name}.stablehlo"))
    print(f"{name}: onnx {onnx_info['seconds']:.1f} s, stablehlo {hlo_info['seconds']:.1f} s",
          flush=True)  # fmt: skip
    sess = _session(onnx_info["path"], args.threads)
    apply = jax.jit(model.apply)
    rows = []
    for batch in (1, 2) if args.quick else (1, 32):
        x = np.random.default_rng(batch).random((batch, 3, size, size), np.float32)
        xj = jnp.asarray(x)
        worker.setup(name, state, x, None, train=False)
        want = np.asarray(apply(variables, xj))
        got = sess.run(None, {"images": x})[0]
        times = alternate(
            {
                "onnxruntime": lambda x=x: sess.run(None, {"images": x}),
                "timm": worker,
                "jax": lambda xj=xj: block(apply(variables, xj)),
            },
            args.repeats,
        )
        row = dict(model=name, batch=batch, **{f"{k}_ms": 1e3 * v for k, v in times.items()})
        row.update(
            onnx_vs_timm=times["timm"] / times["onnxruntime"],
            onnx_vs_jax=times["jax"] / times["onnxruntime"],
            max_abs_diff=float(np.abs(got - want).max()),
            onnx_export_s=onnx_info["seconds"],
            stablehlo_export_s=hlo_info["seconds"],
            onnx_nodes=onnx_info["nodes"],
            onnx_transposes=onnx_info["ops"].get("Transpose", 0),
        )
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    out = [
        "| model | batch | onnxruntime (ms) | timm eager (ms) | JAX (ms) | timm / onnxruntime "
        "| JAX / onnxruntime | ONNX export (s) | StableHLO export (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['batch']} | {r['onnxruntime_ms']:.1f} | {r['timm_ms']:.1f} | "
            f"{r['jax_ms']:.1f} | {r['onnx_vs_timm']:.2f}x | {r['onnx_vs_jax']:.2f}x | "
            f"{r['onnx_export_s']:.1f} | {r['stablehlo_export_s']:.1f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--models", default=MODELS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="64x64, batch 1 and 2: a smoke run")
    args = p.parse_args(argv)
    from torch_worker import TorchWorker

    args.out.mkdir(parents=True, exist_ok=True)
    worker = TorchWorker(args.threads)
    rows: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name in args.models.split(","):
                rows += bench_model(name, args, worker, tmp)
    finally:
        worker.close()
    results = dict(command=" ".join(sys.argv), cpu_count=os.cpu_count(), rows=rows)
    (args.out / "export.json").write_text(json.dumps(results, indent=2))
    table = markdown(rows)
    (args.out / "export.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
