"""Multi-process training: two processes on localhost joined by jax.distributed.

The two-process test starts both workers (``_distributed_worker.py``) itself, with a time
limit, and kills them in all cases. The flag/env parsing is tested in-process.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
from pathlib import Path

import jax.numpy as jnp
import pytest

from efficientvit_jax.training import distributed

HERE = Path(__file__).resolve().parent
ENV_VARS = (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID)


def _helpers():
    spec = importlib.util.spec_from_file_location("evit_test_subprocess", HERE / "_subprocess.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_two_processes_step_together_and_checkpoint(tmp_path):
    h = _helpers()
    port = h.free_port()
    env = h.worker_env()
    for k in ENV_VARS:
        env.pop(k, None)
    ckpt = str(tmp_path / "ckpt")
    # Process 0 gets its coordinates from flags, process 1 from the environment: both ways
    # of launching are exercised.
    argv0 = [ckpt, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    argv0 += ["--process-id", "0", "--mesh", "data=2,fsdp=2"]
    env1 = {
        **env,
        distributed.ENV_COORDINATOR: f"127.0.0.1:{port}",
        distributed.ENV_NUM_PROCESSES: "2",
        distributed.ENV_PROCESS_ID: "1",
    }
    results = h.run_workers(
        "_distributed_worker.py",
        [argv0, [ckpt, "--mesh", "data=2,fsdp=2"]],
        timeout=900,
        env=[env, env1],
    )
    for pid, (rc, out, r) in enumerate(results):
        assert rc == 0 and r is not None, f"process {pid}:\n{out[-4000:]}"
        assert (r["process_index"], r["process_count"]) == (pid, 2)
        assert (r["devices"], r["local_devices"]) == (4, 2)
        assert r["mesh"] == {"data": 2, "fsdp": 2}
        assert r["batch_diff"] == 0.0  # the two halves form the global batch, in order
        assert r["moved"] > 1e-3  # the reference step changed the parameters
        assert r["n_sharded"] > 0  # some parameters were split across the processes
        assert r["params_diff"] < 1e-5
        assert r["state_diff"] < 1e-5
        assert r["loss_diff"] < 1e-5
        assert r["saved_step"] == 2
        assert r["restore_diff"] == 0.0
        assert r["restored_shardings_match"]
        assert r["finite"]


# --- in-process -------------------------------------------------------------------------


def test_parse_mesh():
    assert distributed.parse_mesh("data=4,fsdp=2") == {"data": 4, "fsdp": 2}
    assert distributed.parse_mesh("fsdp=2") == {"data": None, "fsdp": 2}
    assert distributed.parse_mesh("") == {"data": None, "fsdp": 1}
    for bad in ("model=2", "data", "data=x", "data=0"):
        with pytest.raises(ValueError, match="--mesh"):
            distributed.parse_mesh(bad)


def test_initialize_is_a_no_op_without_coordinates(monkeypatch):
    for k in ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize() is False


def test_initialize_refuses_incomplete_coordinates(monkeypatch):
    for k in ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="number of processes"):
        distributed.initialize("127.0.0.1:1")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match="coordinator"):
        distributed.initialize()
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "2")
    with pytest.raises(ValueError, match="process_id"):
        distributed.initialize()
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "one")
    with pytest.raises(ValueError, match=distributed.ENV_PROCESS_ID):
        distributed.initialize()


@pytest.mark.parametrize(
    ("precision", "loss_scale", "scaled"),
    [
        ("float32", "auto", False),
        ("bfloat16", "auto", False),
        ("float16", "auto", True),
        ("bfloat16", "dynamic", True),
        ("float16", "none", False),
    ],
)
def test_setup_from_args_single_process(monkeypatch, precision, loss_scale, scaled):
    for k in ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    parser = distributed.add_scale_flags(argparse.ArgumentParser())
    args = parser.parse_args(["--precision", precision, "--loss-scale", loss_scale])
    setup = distributed.setup_from_args(args)
    assert not setup.multiprocess and setup.process_count == 1
    assert setup.model_options == {"dtype": jnp.dtype(precision), "param_dtype": jnp.float32}
    assert (setup.loss_scale is not None) == scaled
    assert not setup.fsdp
    assert "mesh data=" in setup.describe()


def test_workers_past_the_time_limit_are_killed():
    h = _helpers()
    with pytest.raises(TimeoutError, match="did not finish") as info:
        h.run_workers("_sleep_worker.py", [["60"], ["60"]], timeout=3, env=h.worker_env())
    pids = [int(p) for p in re.findall(r"PID (\d+)", str(info.value))]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone (and reaped), not left running
