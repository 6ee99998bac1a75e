"""Worker for test_sharding: 8 simulated CPU devices, sharded step vs single-device step.

Run as ``python _sharded_worker.py``; prints ``RESULT {json}`` as its last line. One
process computes the single-device reference and every sharded variant, so the model is
built once and the test pays the subprocess start-up once.
"""

from __future__ import annotations

import _scale_common as common

common.configure(8)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from efficientvit_jax.training import make_train_step  # noqa: E402
from efficientvit_jax.training import sharding as sh  # noqa: E402


def main() -> None:
    model, optimizer, state0, batch = common.setup()
    result: dict = {"devices": jax.device_count()}

    # Reference: the unchanged train step on one device, the whole global batch.
    ref_step = make_train_step(model, optimizer, donate=False)
    ref = state0
    ref_metrics = []
    for _ in range(common.STEPS):
        ref, m = ref_step(ref, batch)
        ref_metrics.append({k: float(v) for k, v in m.items()})
    result["moved"] = common.max_diff(ref.params, state0.params)

    for name, (data, fsdp) in {"dp": (8, 1), "fsdp": (4, 2)}.items():
        mesh = sh.make_mesh(data=data, fsdp=fsdp)
        shardings = sh.state_sharding(state0, mesh, min_fsdp_size=common.MIN_FSDP_SIZE)
        state = sh.shard_state(state0, mesh, shardings)
        step = sh.make_sharded_train_step(model, optimizer, mesh, shardings)
        metrics = []
        for _ in range(common.STEPS):
            state, m = step(state, batch)
            metrics.append({k: float(v) for k, v in m.items()})
        specs = [str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)]
        kernel = state.params["patch_embed"]["kernel"]  # [16, 8]: split over fsdp on axis 0
        result[name] = {
            "params_diff": common.max_diff(state.params, ref.params),
            "state_diff": common.max_diff(state, ref),
            "metrics_diff": max(
                abs(a[k] - b[k]) for a, b in zip(metrics, ref_metrics, strict=True) for k in a
            ),
            "n_sharded_params": sum("fsdp" in s for s in specs),
            "n_params": len(specs),
            # Bytes of one parameter leaf held by device 0: 1/fsdp of it when split.
            "shard_fraction": kernel.addressable_shards[0].data.size / kernel.size,
            "images_per_device": int(
                sh.shard_batch(batch, mesh)["images"].addressable_shards[0].data.shape[0]
            ),
        }

    # A batch the 8 devices cannot split evenly must be refused with both numbers named.
    mesh = sh.make_mesh()
    try:
        sh.shard_batch({k: v[:12] for k, v in batch.items()}, mesh)
        result["indivisible_error"] = None
    except ValueError as e:
        result["indivisible_error"] = str(e)
    try:
        sh.make_mesh(data=3, fsdp=2)
        result["mesh_error"] = None
    except ValueError as e:
        result["mesh_error"] = str(e)
    result["finite"] = bool(np.all([np.isfinite(m["loss"]) for m in ref_metrics]))
    common.report(result)


if __name__ == "__main__":
    main()
