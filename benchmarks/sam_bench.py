"""EfficientViT-SAM on this CPU: this package's model against MIT's code in torch eager.

Three cases, each (case, model, size, side) in a fresh process of its own, so that neither
framework's allocator or threads disturb the other's timing:

- ``encoder``: ``embed_images`` at batch 1 (L0 at 512 px, XL0 at 1024 px) against MIT's
  ``image_encoder``; a random normalised image.
- ``decoder``: one prompt (one point), and a batch of 64 one-point prompts, against a fixed
  random L0 embedding: ours the jitted ``decode``; MIT's ``prompt_encoder`` then
  ``mask_decoder``, called as its ``predict_torch`` calls them (SAM's pad point appended, no
  mask input, three masks per prompt; the upsampling to the image's size is left out on both
  sides). Prompt arrays are on the device before the clock starts, on both sides.
- ``amg``: ``generate`` on scikit-learn's china.jpg (427 x 640), L0, ``points_per_side`` 16
  (and 32), every other argument the reference's default; ours ``SamAutomaticMaskGenerator``,
  MIT's ``EfficientViTSamAutomaticMaskGenerator``. A fresh generator per call, so that no
  embedding is reused. The warm-up is one ``generate`` at 8 points per side (one full batch
  of 64 points: every program that the timed calls run, compiled).

Ours runs jitted in both layouts (``NHWC`` and ``NCHW``, MIT's), each in its own process; the
table gives both and the speed-up of the faster. Both sides get the same weights: MIT's
random init (``torch.manual_seed(0)``), BatchNorm statistics and every norm's affine perturbed
as ``tests/sam/conftest.py`` does, written once per model to a safetensors file that the torch
side loads and ours converts (``load_mit_weights``). Random weights make most automatic masks
fail the IoU and stability filters; the whole ``generate`` is timed all the same. Times are the
best of ``--repeats`` (``--amg-repeats`` for ``amg``) after one warm-up call (ours: the
compilation), torch with as many threads as JAX uses (the cores this process may run on).

    python benchmarks/sam_bench.py                                # all cases, amg at 16 and 32
    python benchmarks/sam_bench.py --cases encoder,decoder --repeats 5

prints a Markdown table (with the 1-minute load average as each side's process started) and
the load average of the whole run, and writes ``--out`` (JSON rows; ``--table FILE`` prints an
earlier run's table again). Needs
``efficientsam`` (``tests/reference-requirements.txt``) for the reference side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import timing  # benchmarks/timing.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
THREADS = len(os.sched_getaffinity(0))
LAYOUTS = ("NHWC", "NCHW")
ENCODERS = (("l0", 512), ("xl0", 1024))
DECODER_PROMPTS = (1, 64)
AMG_WARMUP_POINTS = 8  # one batch of 64 points


def _name(model: str) -> str:
    return f"efficientvit_sam_{model}"


def _photo():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images[0].copy()  # china.jpg, 427 x 640


def _points(n: int):
    """``[n, 1, 2]`` one-point prompts in the prompt frame (1024 px), float32."""
    import numpy as np

    return np.random.default_rng(0).uniform(0, 1024, (n, 1, 2)).astype(np.float32)


# --------------------------------------------------------------------------- the reference


def _reference(model: str, weights: str | None = None) -> Any:
    """MIT's model in eval mode: random (seed 0) with perturbed norms as the parity tests build
    it (``tests/zoo/_sam_reference.py``), then ``weights`` loaded if given."""
    sys.path.insert(0, str(ROOT / "tests" / "zoo"))
    from _sam_reference import reference

    net = reference(_name(model), seed=0)
    if weights is not None:
        from safetensors.torch import load_file

        net.load_state_dict(load_file(weights))
    return net


def prepare(model: str, path: str) -> dict:
    """Write the shared weights of ``model`` to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _reference(model).state_dict().items()}
    save_file(state, path)
    return {"weights": path}


def run_torch(case: str, model: str, size: int, a: argparse.Namespace) -> tuple[float, float]:
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    net = _reference(model, a.weights)
    if case == "encoder":
        x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, size, size)))
        x = x.float()

        def one() -> None:
            with torch.inference_mode():
                net.image_encoder(x)

        return timing.best(one, a.repeats)
    if case == "decoder":
        return timing.best(_torch_decoder(net, size), a.repeats)
    return _torch_amg(net, size, a.amg_repeats)


def _torch_decoder(net: Any, prompts: int) -> Any:
    import numpy as np
    import torch

    emb = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 256, 64, 64))).float()
    coords = torch.from_numpy(_points(prompts))
    labels = torch.ones((prompts, 1), dtype=torch.int)

    def one() -> None:
        with torch.inference_mode():  # predict_torch's two calls, without its upsampling
            sparse, dense = net.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
            net.mask_decoder(
                image_embeddings=emb,
                image_pe=net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )

    return one


def _torch_amg(net: Any, points: int, repeats: int) -> tuple[float, float, int]:
    import torch
    from efficientsam.models.efficientvit.sam import EfficientViTSamAutomaticMaskGenerator

    photo = _photo()
    found = []

    def generate(n: int) -> None:
        generator = EfficientViTSamAutomaticMaskGenerator(net, points_per_side=n)
        with torch.inference_mode():
            found.append(len(generator.generate(photo)))

    first, best = timing.best(
        lambda: generate(points), repeats, lambda: generate(AMG_WARMUP_POINTS)
    )
    return first, best, found[-1]


# --------------------------------------------------------------------------- ours


def run_jax(case: str, model: str, size: int, layout: str, a: argparse.Namespace) -> tuple:
    import jax
    import numpy as np

    from efficientvit_jax.zoo import create_model, load_mit_weights

    net = create_model(_name(model), data_format=layout)
    variables = jax.device_put(load_mit_weights(a.weights, _name(model), data_format=layout))
    if case == "encoder":
        shape = (1, 3, size, size) if layout == "NCHW" else (1, size, size, 3)
        x = jax.device_put(np.random.default_rng(0).normal(size=shape).astype(np.float32))
        embed = jax.jit(lambda v, x: net.apply(v, x, method="embed_images"))
        return timing.best(lambda: jax.block_until_ready(embed(variables, x)), a.repeats)
    if case == "decoder":
        return timing.best(_jax_decoder(net, variables, size, layout), a.repeats)
    return _jax_amg(net, variables, size, a.amg_repeats)


def _jax_decoder(net: Any, variables: Any, prompts: int, layout: str) -> Any:
    import jax
    import numpy as np

    emb = np.random.default_rng(1).normal(size=(1, 256, 64, 64)).astype(np.float32)
    mask = np.zeros((prompts, 1, 256, 256), np.float32)
    if layout == "NHWC":
        emb, mask = emb.transpose(0, 2, 3, 1), mask.transpose(0, 2, 3, 1)
    # the point and SAM's pad point (0, 0), label -1: what the predictor sends
    coords = np.concatenate([_points(prompts), np.zeros((prompts, 1, 2), np.float32)], axis=1)
    labels = np.tile(np.array([[1, -1]], np.int32), (prompts, 1))
    args = jax.device_put((emb, coords, labels, mask, np.zeros(prompts, np.float32)))
    decode = jax.jit(lambda v, *a: net.apply(v, *a, True, method="decode"))
    return lambda: jax.block_until_ready(decode(variables, *args))


def _jax_amg(net: Any, variables: Any, points: int, repeats: int) -> tuple[float, float, int]:
    from efficientvit_jax.sam import SamAutomaticMaskGenerator

    photo = _photo()
    found = []

    def generate(n: int) -> None:  # a fresh generator: its predictor has no embedding cached
        generator = SamAutomaticMaskGenerator(net, variables, points_per_side=n)
        found.append(len(generator.generate(photo)))

    first, best = timing.best(
        lambda: generate(points), repeats, lambda: generate(AMG_WARMUP_POINTS)
    )
    return first, best, found[-1]


# --------------------------------------------------------------------------- driver


def child(a: argparse.Namespace) -> dict:
    if a.child == "prepare":
        return prepare(a.model, a.weights)
    load = os.getloadavg()[0]
    if a.child == "torch":
        out = run_torch(a.case, a.model, a.size, a)
    else:
        out = run_jax(a.case, a.model, a.size, a.layout, a)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    return {
        "side": a.child, "layout": a.layout if a.child == "jax" else "NCHW", "case": a.case,
        "model": a.model, "size": a.size, "first_s": out[0], "best_s": out[1],
        "masks": out[2] if len(out) > 2 else None, "peak_rss_gb": peak_kb / 2**20,
        "load_before": load, "load_after": os.getloadavg()[0], "threads": THREADS,
    }  # fmt: skip


def _spawn(a: argparse.Namespace, **kw: Any) -> dict:
    cmd = [sys.executable, __file__, "--repeats", str(a.repeats), "--amg-repeats",
           str(a.amg_repeats)]  # fmt: skip
    for key, value in kw.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _rows(a: argparse.Namespace) -> list[tuple[str, str, int]]:
    cases = a.cases.split(",")
    rows = [("encoder", m, s) for m, s in ENCODERS if "encoder" in cases]
    rows += [("decoder", "l0", p) for p in DECODER_PROMPTS if "decoder" in cases]
    if "amg" in cases:
        rows += [("amg", "l0", int(n)) for n in a.points_per_side.split(",") if n]
    return rows


SIZE_LABEL = {"encoder": "{} px", "decoder": "{} prompt(s)", "amg": "{} points/side"}


def _table(rows: list[dict]) -> list[str]:
    out = ["| case | model | size | MIT torch eager (s) | ours NHWC (s) | ours NCHW (s) | "
           "speed-up (faster layout) | ours: first call (s) | masks kept (MIT / ours) | "
           "load (MIT / ours) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    keys = dict.fromkeys((r["case"], r["model"], r["size"]) for r in rows)
    for case, model, size in keys:
        got = {
            (r["side"], r["layout"]): r
            for r in rows
            if (r["case"], r["model"], r["size"]) == (case, model, size)
        }
        ref = got.get(("torch", "NCHW"))
        ours = {lay: got[("jax", lay)] for lay in LAYOUTS if ("jax", lay) in got}
        fast = min(ours.values(), key=lambda r: r["best_s"], default=None)

        def cell(r: dict | None) -> str:
            return "-" if r is None else f"{r['best_s']:.3g}"

        ratio = "-" if ref is None or fast is None else (
            f"{ref['best_s'] / fast['best_s']:.2f}x ({fast['layout']})"
        )  # fmt: skip
        masks = "-" if case != "amg" else " / ".join(
            str(r["masks"]) if r else "-" for r in (ref, fast)
        )  # fmt: skip
        first = "-" if fast is None else f"{fast['first_s']:.3g}"
        load = " / ".join("-" if r is None else f"{r['load_before']:.1f}" for r in (ref, fast))
        out.append(f"| {case} | {model.upper()} | {SIZE_LABEL[case].format(size)} | {cell(ref)} | "
                   f"{cell(ours.get('NHWC'))} | {cell(ours.get('NCHW'))} | {ratio} | {first} | "
                   f"{masks} | {load} |")  # fmt: skip
    return out


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="encoder,decoder,amg")
    p.add_argument("--points-per-side", default="16,32", help="amg grids")
    p.add_argument("--repeats", type=int, default=5, help="timed calls: encoder, decoder")
    p.add_argument("--amg-repeats", type=int, default=1, help="timed calls: amg")
    p.add_argument("--sides", default="torch,jax", help="torch (MIT's), jax (ours)")
    p.add_argument("--layouts", default="NHWC,NCHW", help="ours")
    p.add_argument("--out", default="sam_bench.json")
    p.add_argument("--table", metavar="JSON", help="print the table of an earlier run's --out")
    for hidden in ("--child", "--case", "--model", "--size", "--layout", "--weights"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.size is not None:
        a.size = int(a.size)
    return a


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    if a.child:
        print(json.dumps(child(a)))
        return 0
    if a.table:
        print("\n".join(_table(json.loads(Path(a.table).read_text())["rows"])))
        return 0
    start = os.getloadavg()
    rows = _rows(a)
    results = []
    with tempfile.TemporaryDirectory(prefix="sam_bench_") as work:
        weights = {}
        for model in dict.fromkeys(m for _, m, _ in rows):
            weights[model] = os.path.join(work, f"{model}.safetensors")
            _spawn(a, child="prepare", model=model, weights=weights[model])
        for case, model, size in rows:
            common = {"case": case, "model": model, "size": size, "weights": weights[model]}
            if "torch" in a.sides.split(","):
                results.append(_spawn(a, child="torch", **common))
            if "jax" in a.sides.split(","):
                for layout in a.layouts.split(","):
                    results.append(_spawn(a, child="jax", layout=layout, **common))
    end = os.getloadavg()
    print("\n".join(_table(results)))
    print(f"\n{THREADS} threads; load average (1, 5, 15 min) at the start "
          f"{start[0]:.2f}, {start[1]:.2f}, {start[2]:.2f}, at the end "
          f"{end[0]:.2f}, {end[1]:.2f}, {end[2]:.2f}")  # fmt: skip
    meta = {"threads": THREADS, "load_start": start, "load_end": end}
    Path(a.out).write_text(json.dumps({"meta": meta, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
