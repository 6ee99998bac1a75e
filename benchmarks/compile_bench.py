"""Where a train step's compile time goes: the same model's programs from the forward pass to the
recipe's whole step, each traced, lowered and compiled apart, with the number of kernels XLA made.

    python benchmarks/compile_bench.py --models efficientvit_m0,efficientvit_b1 --size 224 --batch 16
    python benchmarks/compile_bench.py --quick        # M0 at 64 px, batch 4

The programs, in order, each adding one part to the one before:

- ``forward``: ``model.apply`` in evaluation mode;
- ``gradient``: the loss (training mode: BatchNorm's batch statistics, drop path) and its gradient;
- ``step_sgd``: ``make_train_step`` with plain SGD (the step's bookkeeping: statistics, the RNG,
  the metrics, among them the gradient norm);
- ``step_adamw``: the recipe's AdamW (masked weight decay, the warm-up and cosine schedule);
- ``step_recipe``: that AdamW after ``clip_by_global_norm`` (the recipe's default).

The differences between rows are what each part costs. ``kernels`` counts the compiled program's
fusions and custom calls (one compiled kernel each); XLA compiles each apart, so on a CPU the
compile time grows with their number. Each program is compiled once, in this process, without the
persistent cache; ``--level0`` compiles as ``JAX_DISABLE_MOST_OPTIMIZATIONS`` does (the test suite).
Writes ``--out`` (JSON rows) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from efficientvit_jax.training import create_train_state, steps
from efficientvit_jax.zoo import create_model


def _timed(jitted: Any, *args: Any) -> dict[str, Any]:
    """Seconds of tracing, lowering and compiling ``jitted`` at ``args``; kernels compiled."""
    t0 = time.perf_counter()
    traced = jitted.trace(*args)
    t1 = time.perf_counter()
    lowered = traced.lower()
    t2 = time.perf_counter()
    compiled = lowered.compile()
    t3 = time.perf_counter()
    text = compiled.as_text() or ""
    entry = text[text.find("ENTRY") :]
    kernels = len(re.findall(r" (?:fusion|custom-call)\(", entry))
    return dict(trace_s=t1 - t0, lower_s=t2 - t1, compile_s=t3 - t2, kernels=kernels)


def _programs(model: Any, x: np.ndarray, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """``{name: (jitted function, args)}`` of the five programs (see the module)."""
    recipe = dict(learning_rate=1e-3, total_steps=100)
    optimizers = {
        "step_sgd": optax.sgd(1e-3),
        "step_adamw": steps.make_optimizer(**recipe, clip_norm=None),
        "step_recipe": steps.make_optimizer(**recipe),
    }
    # One init (a compile of its own); each optimizer's state over the same parameters.
    state = create_train_state(model, optimizers["step_recipe"], 0, x[:1])
    states = {k: state.replace(opt_state=opt.init(state.params)) for k, opt in optimizers.items()}
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    loss_fn = steps.classification_loss()

    def gradient(state: Any, batch: dict[str, Any]) -> Any:
        def loss(params: Any) -> Any:
            logits, _ = steps.apply_for_training(model, params, state, batch["images"], state.rng)
            return loss_fn(logits, batch)[0]

        return jax.value_and_grad(loss)(state.params)

    out: dict[str, Any] = {
        "forward": (jax.jit(lambda v, x: model.apply(v, x)), (variables, batch["images"])),
        "gradient": (jax.jit(gradient), (state, batch)),
    }
    for name, opt in optimizers.items():
        out[name] = (steps.make_train_step(model, opt, donate=False), (states[name], batch))
    return out


def bench(name: str, a: argparse.Namespace) -> list[dict[str, Any]]:
    model = create_model(name, num_classes=10)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(a.batch, 3, a.size, a.size)).astype(np.float32)
    batch = {"images": x, "labels": np.arange(a.batch, dtype=np.int32) % 10,
             "mask": np.ones(a.batch, bool)}  # fmt: skip
    rows = []
    for program, (fn, args) in _programs(model, x, batch).items():
        row = dict(model=name, program=program, size=a.size, batch=a.batch, **_timed(fn, *args))
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | program | trace s | lower s | compile s | kernels |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['program']} | {r['trace_s']:.1f} | {r['lower_s']:.1f} | "
                     f"{r['compile_s']:.1f} | {r['kernels']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="efficientvit_m0,efficientvit_b1")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--level0", action="store_true", help="XLA's optimisations off (the tests)")
    p.add_argument("--quick", action="store_true", help="M0 at 64 px, batch 4")
    p.add_argument("--out", type=Path, default=Path("compile_bench.json"))
    a = p.parse_args()
    if a.quick:
        a.models, a.size, a.batch = "efficientvit_m0", 64, 4
    jax.config.update("jax_disable_most_optimizations", a.level0)
    jax.config.update("jax_enable_compilation_cache", False)
    env = dict(device=str(jax.devices()[0]), jax=jax.__version__, level0=a.level0)
    print(json.dumps(env), flush=True)
    rows = [r for name in a.models.split(",") for r in bench(name, a)]
    a.out.write_text(json.dumps(dict(env=env, rows=rows), indent=1))
    print(markdown(rows), flush=True)


if __name__ == "__main__":
    main()
