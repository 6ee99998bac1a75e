"""The GPU section for dense prediction: EfficientViT-SAM's image encoders and the segmentation
models in bfloat16, ours against MIT's code under ``torch.autocast``, eager and ``torch.compile``,
in one process.

    python benchmarks/gpu_dense_bench.py --out benchmarks/results/gpu_dense   # the GPU tables
    python benchmarks/gpu_dense_bench.py --quick --no-compile                 # a smoke run, any machine

- ``sam``: the five encoders (``embed_images``; MIT's ``image_encoder``) at batch 16 and their own
  input size (L0-L2 512 px, XL0-XL1 1024 px), throughput in images/s, beside MIT's published
  TensorRT fp16 throughput on an A100 (MIT's EfficientViT-SAM README; the table of issue 20).
- ``seg``: the segmentation models at batch 1 on a Cityscapes frame (1024x2048): latency.

Both sides hold the same weights: MIT's random init (``torch.manual_seed(0)``, norms perturbed as
the parity tests do) converted by ``load_mit_weights``. Ours: ``dtype=bfloat16`` (float32
parameters; the linear attention's sums and division and the LayerNorms stay float32), jitted;
MIT's: ``torch.autocast(dtype=torch.bfloat16)`` in ``torch.inference_mode``. Both take the same
NCHW float32 batch already on the device; every call ends with a device sync, so wall time is
device time. Times are the median of ``--repeats`` calls after three warm-up calls; first calls
(compilation, autotuning) are reported apart. The outputs' largest difference from MIT's eager
output is reported beside its scale: a check that both sides ran the same model, not a parity
test (bfloat16). Rows are written as they are measured (``rows.jsonl``); ``--budget-s`` stops
starting new models after that many seconds, so a run cut short keeps what it measured. Needs
``tests/reference-requirements.txt`` (``efficientsam``, ``efficientvit-gml``) and torch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# JAX and PyTorch share the GPU here: JAX must not take 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests" / "zoo"))  # MIT's models as the parity tests build them

from gpu_bench import TorchRunner, compare_inference  # noqa: E402  (the classifier table's)

from efficientvit_jax.zoo import create_model, load_mit_weights  # noqa: E402

SAM = {"l0": 512, "l1": 512, "l2": 512, "xl0": 1024, "xl1": 1024}
# MIT's README (EfficientViT-SAM): TensorRT, fp16, A100, images/s; quoted in issue 20.
SAM_TENSORRT = {"l0": 762, "l1": 638, "l2": 538, "xl0": 278, "xl1": 182}
SEG = ("b0", "b1", "b2", "b3", "l1", "l2")


def _reference(family: str, variant: str) -> Any:
    """MIT's model (random, seed 0, norms perturbed) and the module whose time is measured."""
    if family == "sam":
        from _sam_reference import reference

        net = reference(f"efficientvit_sam_{variant}", seed=0)
        return net, net.image_encoder
    import torch
    from _mit_reference import load_create_seg_model

    torch.manual_seed(0)
    net = load_create_seg_model()(variant, "cityscapes", pretrained=False).eval()
    return net, net


def _ours(family: str, variant: str, state: dict[str, np.ndarray], dtype: Any) -> tuple[Any, Any]:
    """The jitted forward of our model in ``dtype`` and its variables (MIT's weights)."""
    name = (
        f"efficientvit_sam_{variant}"
        if family == "sam"
        else f"efficientvit_seg_{variant}_cityscapes"
    )
    model = create_model(name, dtype=dtype)
    variables = jax.device_put(load_mit_weights(state, name))
    if family == "sam":
        return jax.jit(lambda v, x: model.apply(v, x, method="embed_images")), variables
    return jax.jit(model.apply), variables


def bench(family: str, variant: str, shape: tuple[int, ...], a: argparse.Namespace) -> dict:
    """One row: ours and MIT's eager (and compiled) forward of a batch of ``shape`` (NCHW)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    net, module = _reference(family, variant)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    fwd, variables = _ours(family, variant, state, jnp.dtype(a.dtype))
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    xj, xt = jax.device_put(x), torch.from_numpy(x).to(device)
    jax_run = lambda: jax.block_until_ready(fwd(variables, xj))  # noqa: E731
    row: dict[str, Any] = dict(
        family=family, model=variant, batch=shape[0], size=list(shape[2:]), dtype=a.dtype
    )
    row.update(compare_inference(
        jax_run, TorchRunner(module, device), xt, a.repeats, a.compile,
        bf16=a.dtype == "bfloat16", scale_key="output_scale",
    ))  # fmt: skip
    if family == "sam":
        row["mit_tensorrt_fp16_a100_images_per_s"] = SAM_TENSORRT[variant]
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table: milliseconds per call, images/s, and ours against eager and compiled."""
    lines = [
        "| family | model | batch | size | ours ms | MIT eager ms | MIT compile ms | ours images/s "
        "| vs eager | vs compile | MIT TensorRT fp16 A100 images/s |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if "jax_ms" not in r:
            continue
        ours, comp = r["jax_ms"], r.get("compile_ms")
        trt = r.get("mit_tensorrt_fp16_a100_images_per_s", "-")
        size = "x".join(map(str, r["size"]))
        comp_ms, comp_x = (f"{comp:.2f}", f"{comp / ours:.2f}x") if comp else ("-", "-")
        lines.append(
            f"| {r['family']} | {r['model']} | {r['batch']} | {size} | {ours:.2f} | "
            f"{r['eager_ms']:.2f} | {comp_ms} | {1e3 * r['batch'] / ours:.1f} | "
            f"{r['eager_ms'] / ours:.2f}x | {comp_x} | {trt} |"
        )
    return "\n".join(lines) + "\n"


def _cases(a: argparse.Namespace) -> list[tuple[str, str, tuple[int, ...]]]:
    cases = []
    if "sam" in a.families:
        for v in a.sam_models.split(","):
            side = 256 if a.quick else SAM[v]
            cases.append(("sam", v, (a.sam_batch, 3, side, side)))
    if "seg" in a.families:
        h, w = (int(s) for s in a.seg_size.lower().split("x"))
        cases += [("seg", v, (1, 3, h, w)) for v in a.seg_models.split(",")]
    return cases


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_dense"))
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    p.add_argument("--families", default="sam,seg")
    p.add_argument("--sam-models", default=",".join(SAM))
    p.add_argument("--sam-batch", type=int, default=16)
    p.add_argument("--seg-models", default=",".join(SEG))
    p.add_argument("--seg-size", default="1024x2048", help="HxW")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--budget-s", type=float, default=480.0)
    p.add_argument(
        "--dtype", choices=("bfloat16", "float32"), help="compute dtype (default: bfloat16; "
        "--quick: float32, since torch's bfloat16 convolutions on a CPU take minutes)",
    )  # fmt: skip
    a = p.parse_args()
    if a.quick:
        a.sam_models, a.sam_batch, a.seg_models, a.seg_size, a.repeats = "l0", 2, "b0", "64x128", 3
    a.dtype = a.dtype or ("float32" if a.quick else "bfloat16")
    return a


def main() -> None:
    a = _parse()
    a.out.mkdir(parents=True, exist_ok=True)
    import torch

    env = dict(
        dtype=a.dtype, jax=jax.__version__, jax_device=str(jax.devices()[0]),
        torch=torch.__version__,
        torch_device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    )  # fmt: skip
    print(json.dumps(env), flush=True)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    with (a.out / "rows.jsonl").open("w") as jsonl:
        for family, variant, shape in _cases(a):
            if time.perf_counter() - start > a.budget_s:
                print(f"budget of {a.budget_s:.0f} s spent: {family} {variant} and later not run")
                break
            try:
                row = bench(family, variant, shape, a)
            except Exception:  # one model's failure must not lose the others' rows
                traceback.print_exc()
                row = dict(family=family, model=variant, error=traceback.format_exc(limit=3))
            rows.append(row)
            print(json.dumps(row), flush=True)
            jsonl.write(json.dumps(row) + "\n")
            jsonl.flush()
    (a.out / "results.json").write_text(json.dumps(dict(env=env, rows=rows), indent=1))
    (a.out / "table.md").write_text(markdown(rows))
    print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
