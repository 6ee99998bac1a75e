"""``train(config, workdir)`` across processes: the digits job run by two processes on
localhost (one CPU device each) against one process with the same global batch; and, in
process, each process's share of the training and held-out batches of both sources."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from efficientvit_jax.training.folders import Splits, folder_source
from efficientvit_jax.training.job import array_source

from ._subprocess import free_port, run_workers, worker_env

HERE = Path(__file__).resolve().parent
CLI = Path(sys.modules["efficientvit_jax"].__file__).parent / "cli" / "__main__.py"
TINY = [
    "train", "--image-size", "16", "--patch-size", "4", "--embed-dim", "8", "--depths", "1,1",
    "--num-heads", "2,2", "--batch-size", "32", "--max-steps", "3", "--no-progress",
    "--cpu-devices", "1",
]  # fmt: skip


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """The reference and the two processes run at once (all three are mostly compiling)."""
    env = worker_env()
    for k in ("EVIT_COORDINATOR", "EVIT_NUM_PROCESSES", "EVIT_PROCESS_ID"):
        env.pop(k, None)
    ref, multi = tmp_path / "one", tmp_path / "two"
    joined = ["--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2"]
    argv = [[*TINY, "-o", str(ref)]]
    argv += [[*TINY, "-o", str(multi), *joined, "--process-id", str(i)] for i in (0, 1)]
    results = run_workers(str(CLI), argv, timeout=900, env=env)
    for name, (rc, out, _) in zip(("reference", "process 0", "process 1"), results, strict=True):
        assert rc == 0, f"{name}:\n{out[-4000:]}"
    out0, out1 = results[1][1], results[2][1]
    assert "2 devices (1 local) in 2 process(es)" in out0 and "test accuracy:" in out0
    assert "test accuracy:" not in out1 and "training " not in out1  # process 0 speaks
    a = json.loads((ref / "metrics.json").read_text())
    b = json.loads((multi / "metrics.json").read_text())
    np.testing.assert_allclose(b["step_losses"], a["step_losses"], rtol=1e-5)
    assert b["step"] == 3 and b["test_count"] == a["test_count"] == 360
    for k in ("test_loss", "test_accuracy", "test_top5"):
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, err_msg=k)
    assert sorted(os.listdir(multi)) == [
        "checkpoints", "config.json", "curves.png", "metrics.json", "run.json"
    ]  # fmt: skip
    assert os.listdir(multi / "checkpoints") == ["3"]
    # The reference's state as the target: a checkpoint saved across processes names their
    # devices, so it is restored onto this one by giving the placement.
    a_state = _restore(ref, None)
    b_state = _restore(multi, a_state)
    diff = jax.tree.map(lambda x, y: np.abs(np.asarray(x) - np.asarray(y)).max(), a_state, b_state)
    assert max(jax.tree.leaves(diff["params"])) < 1e-5
    assert int(b_state["step"]) == 3


def _restore(run, target):
    from efficientvit_jax.training.checkpoint import Checkpointer
    from efficientvit_jax.training.config import load_config
    from efficientvit_jax.training.run import identity

    ckpt = Checkpointer(run / "checkpoints", config=identity(load_config(run)))
    try:
        return ckpt.restore(target).state
    finally:
        ckpt.close()


def _shares(batches_of_process, count):
    """Per global batch, the processes' shares put back together in process order."""
    per_process = [list(batches_of_process(i)) for i in range(count)]
    assert len({len(p) for p in per_process}) == 1  # the same number of (collective) steps
    return [
        {k: np.concatenate([p[b][k] for p in per_process]) for k in per_process[0][b]}
        for b in range(len(per_process[0]))
    ]


def _assert_same_batches(shared, whole):
    assert len(shared) == len(whole)
    for s, w in zip(shared, whole, strict=True):
        keep = np.asarray(w["mask"], bool)
        np.testing.assert_array_equal(np.asarray(s["mask"], bool), keep)
        for k in ("images", "labels"):
            np.testing.assert_array_equal(s[k][keep], w[k][keep])


def test_array_source_shares_make_the_global_batches():
    rng = np.random.default_rng(0)
    data = SimpleNamespace(
        train_images=rng.normal(size=(20, 1, 2, 2)).astype(np.float32),
        train_labels=np.arange(20) % 3,
        test_images=rng.normal(size=(7, 1, 2, 2)).astype(np.float32),
        test_labels=np.arange(7) % 3,
    )

    def src(i, n):
        return array_source(data, 8, 4, seed=1, process_index=i, process_count=n)

    one = src(0, 1)
    for epoch, first in ((0, 0), (1, 1)):
        shared = _shares(lambda i, e=epoch, f=first: src(i, 2).epoch_batches(e, f), 2)
        _assert_same_batches(shared, list(one.epoch_batches(epoch, first)))
    _assert_same_batches(_shares(lambda i: src(i, 2).held_out(), 2), list(one.held_out()))
    assert src(1, 2).sample_images.shape == (4, 1, 2, 2)


@pytest.mark.parametrize("n_val", [7, 5, 8])  # process 1's share of the last batch: 1, 0, 2 rows
def test_folder_held_out_shares_make_the_global_batches(n_val):
    def image(path, rng=None):  # a fake decoder: the file's number, no files needed
        return np.full((2, 2, 1), float(path[1:]), np.float32)

    splits = Splits(
        tuple((f"t{i}", i % 2) for i in range(8)),
        tuple((f"v{i}", i % 2) for i in range(n_val)),
        ("a", "b"),
    )

    def src(i, n):
        source, _ = folder_source(
            splits, image, image, batch_size=4, eval_batch_size=4, seed=0, workers=0,
            process_index=i, process_count=n,
        )  # fmt: skip
        return source

    shared = _shares(lambda i: src(i, 2).held_out(), 2)
    _assert_same_batches(shared, list(src(0, 1).held_out()))
