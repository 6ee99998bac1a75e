"""Worker for test_frozen: a frozen-backbone run on 2 simulated CPU devices, data parallel,
FSDP and float16 with loss scaling, each step made by ``job._steps`` (so partitioned by
``sharding.make_sharded_train_step``).

Run as ``python _frozen_worker.py``; prints ``RESULT {json}`` as its last line.
"""

from __future__ import annotations

import _scale_common as common

common.configure(2)

import _frozen_common as frozen  # noqa: E402
import jax  # noqa: E402

from efficientvit_jax.training import sharding as sh  # noqa: E402

# name: (data, fsdp, precision)
VARIANTS = {"dp": (2, 1, "float32"), "fsdp": (1, 2, "float32"), "dp_fp16": (2, 1, "float16")}


def run(data: int, fsdp: int, precision: str) -> dict:
    state, step, batch, head = frozen.setup(precision, data, fsdp)
    before = sh.to_host(state)
    for _ in range(frozen.STEPS):
        state, metrics = step(state, batch)
    specs = [str(x.sharding.spec) for x in jax.tree.leaves(state.params)]
    return {
        **frozen.check(before, sh.to_host(state), head),
        "n_fsdp_split": sum("fsdp" in s for s in specs),
        "loss_scaled": "loss_scale" in metrics,
        "finite": float(metrics.get("finite", 1.0)),
    }


def main() -> None:
    result = {"devices": jax.device_count()}
    for name, (data, fsdp, precision) in VARIANTS.items():
        result[name] = run(data, fsdp, precision)
    common.report(result)


if __name__ == "__main__":
    main()
