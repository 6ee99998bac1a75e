"""Worker for test_distributed: one of two processes joined by jax.distributed on localhost.

Run as ``python _distributed_worker.py CKPT_DIR [scale flags]``; the coordinates come from
the flags or from ``EVIT_*`` environment variables (the test uses both). Each process has
2 CPU devices; the 4 devices form a data=2 x fsdp=2 mesh. Each process computes the
single-device reference on its own, feeds its half of the batch to the sharded step, and
saves and restores an orbax checkpoint together with the other process.
"""

from __future__ import annotations

import argparse

import _scale_common as common

from efficientvit_jax.training import distributed

parser = distributed.add_scale_flags(argparse.ArgumentParser())
parser.add_argument("ckpt_dir")
args = parser.parse_args()
# Before any computation: device count, jax.distributed, the mesh.
common.configure(2)
setup = distributed.setup_from_args(args)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from efficientvit_jax.training import Checkpointer, make_train_step  # noqa: E402
from efficientvit_jax.training import sharding as sh  # noqa: E402


def main() -> None:
    model, optimizer, state0, batch = common.setup()
    pid, n = jax.process_index(), jax.process_count()
    result: dict = {
        "process_index": pid,
        "process_count": n,
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "mesh": sh.mesh_shape(setup.mesh),
    }

    # Reference: the plain step on this process's first device, the whole global batch.
    ref_step = make_train_step(model, optimizer, donate=False)
    ref = state0
    for _ in range(common.STEPS):
        ref, ref_m = ref_step(ref, batch)

    mesh = setup.mesh
    shardings = sh.state_sharding(state0, mesh, min_fsdp_size=common.MIN_FSDP_SIZE)
    state = sh.shard_state(state0, mesh, shardings)
    step = sh.make_sharded_train_step(model, optimizer, mesh, shardings)
    local = len(batch["labels"]) // n
    mine = {k: v[pid * local : (pid + 1) * local] for k, v in batch.items()}
    for _ in range(common.STEPS):
        state, m = step(state, mine)
    # The global batch put together from the two halves is the reference's batch, in order
    # (process 0's examples first), so the per-example drop-path draws line up.
    gathered = sh.to_host(sh.shard_batch(mine, mesh))
    result["batch_diff"] = common.max_diff(gathered, batch)
    host = sh.to_host(state)
    result["params_diff"] = common.max_diff(host.params, ref.params)
    result["state_diff"] = common.max_diff(host, ref)
    result["loss_diff"] = abs(float(m["loss"]) - float(ref_m["loss"]))
    result["moved"] = common.max_diff(ref.params, state0.params)
    result["n_sharded"] = sum(
        not leaf.is_fully_replicated for leaf in jax.tree.leaves(state.params)
    )

    # Orbax from all processes: both save (each writes its own shards), both restore
    # into the sharded target.
    ckpt = Checkpointer(args.ckpt_dir, config=common.TINY)
    result["saved_step"] = ckpt.save(state)
    restored, _ = ckpt.restore(sh.shard_state(state0, mesh, shardings))
    ckpt.close()
    result["restore_diff"] = common.max_diff(sh.to_host(restored), host)
    result["restored_shardings_match"] = all(
        a.sharding == b.sharding
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
    )
    result["finite"] = bool(np.isfinite(float(m["loss"])))
    common.report(result)


if __name__ == "__main__":
    main()
