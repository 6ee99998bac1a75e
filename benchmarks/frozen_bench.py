"""What ``--freeze-backbone`` costs: the frozen step taking every gradient (the optimizer then
zeroing the backbone's) against the step differentiating the head alone, as the CLI runs it.

    python benchmarks/frozen_bench.py --model efficientvit_m0 --size 224 --batch 16

prints the compile time and the best step time of each (the same state and batch, jitted,
no donation), in this process, one after the other.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
import timing  # benchmarks/timing.py, beside this script

from efficientvit_jax.training import create_train_state, finetune, steps
from efficientvit_jax.zoo import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="efficientvit_m0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    classes = 10
    model = create_model(a.model, num_classes=classes)
    x = np.random.default_rng(0).normal(size=(a.batch, 3, a.size, a.size)).astype(np.float32)
    batch = {"images": x, "labels": np.arange(a.batch, dtype=np.int32) % classes}
    shapes = jax.eval_shape(model.init, jax.random.key(0), x[:1])["params"]
    head = finetune.classifier_paths(shapes, classes)
    adamw = steps.make_optimizer(1e-3, total_steps=100)
    optimizer = finetune.finetune_optimizer(adamw, None, shapes, head)
    state = create_train_state(model, optimizer, 0, x[:1])
    for name, trainable in (
        ("every gradient", None),
        ("head alone", finetune.head_mask(shapes, head)),
    ):
        step = steps.make_train_step(
            model, optimizer, frozen_backbone=True, trainable=trainable, donate=False
        )
        t = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_s = time.perf_counter() - t
        _, best = timing.best(
            lambda c=compiled: c(state, batch)[1]["loss"].block_until_ready(), a.repeats
        )
        print(f"{a.model} {a.size} px batch {a.batch}, {name}: compile {compile_s:.1f} s, "
              f"step {best * 1e3:.0f} ms", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
