"""Sharding: mesh, placements and the partitioned train step.

The equality tests need several devices, so they run in a subprocess with 8 simulated CPU
devices (``_sharded_worker.py``); the rest runs in-process on the one CPU device.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from efficientvit_jax.training import create_train_state, make_train_step
from efficientvit_jax.training import sharding as sh

HERE = Path(__file__).resolve().parent


def _helpers():
    spec = importlib.util.spec_from_file_location("evit_test_subprocess", HERE / "_subprocess.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The tests of the one worker run: pytest-xdist keeps them on one test process, so that the
# module fixture runs once (spread over two, each ran it: 37 s and 28 s).
ON_EIGHT = pytest.mark.xdist_group("eight_devices")


@pytest.fixture(scope="module")
def eight_devices():
    """The worker's result: single-device vs sharded steps on 8 simulated devices."""
    h = _helpers()
    [(rc, out, result)] = h.run_workers("_sharded_worker.py", [[]], timeout=900, env=h.worker_env())
    assert rc == 0 and result is not None, out[-4000:]
    return result


@pytest.mark.slow
@ON_EIGHT
@pytest.mark.parametrize("mode", ["dp", "fsdp"])
def test_sharded_step_equals_single_device_step(eight_devices, mode):
    r = eight_devices
    assert r["devices"] == 8
    # The reference did move the parameters, so equality below is not vacuous.
    assert r["moved"] > 1e-3
    m = r[mode]
    assert m["params_diff"] < 1e-5
    # The whole state (Adam moments hold the gradients themselves) and the metrics
    # (loss, grad_norm) agree too: a wrong gradient average would show here even where
    # Adam's first, sign-like update hides it in the parameters.
    assert m["state_diff"] < 1e-5
    assert m["metrics_diff"] < 1e-5
    assert m["images_per_device"] == 2  # 16 examples over 8 devices


@pytest.mark.slow
@ON_EIGHT
def test_fsdp_splits_large_leaves_only(eight_devices):
    dp, fsdp = eight_devices["dp"], eight_devices["fsdp"]
    assert dp["n_sharded_params"] == 0
    # Some leaves are split, the small ones (below min_fsdp_size) are not.
    assert 0 < fsdp["n_sharded_params"] < fsdp["n_params"]
    # Device 0 holds half of the patch-embedding kernel, after the step too.
    assert fsdp["shard_fraction"] == 0.5


@pytest.mark.slow
@ON_EIGHT
def test_indivisible_batch_and_mesh_errors_name_the_numbers(eight_devices):
    msg = eight_devices["indivisible_error"]
    assert msg is not None and "12" in msg and "8" in msg
    msg = eight_devices["mesh_error"]
    assert msg is not None and "data=3" in msg and "8 devices" in msg


# --- in-process, one device --------------------------------------------------------------


def test_fsdp_spec_picks_largest_divisible_axis():
    assert sh.fsdp_spec((16, 64), 4, min_size=0) == P(None, "fsdp")
    assert sh.fsdp_spec((64, 16), 4, min_size=0) == P("fsdp")
    assert sh.fsdp_spec((6, 10), 4, min_size=0) == P()  # nothing divisible
    assert sh.fsdp_spec((10, 6, 8), 2, min_size=0) == P("fsdp")  # largest divisible
    assert sh.fsdp_spec((3, 3, 1, 64), 4, min_size=0) == P(None, None, None, "fsdp")
    assert sh.fsdp_spec((), 4, min_size=0) == P()
    assert sh.fsdp_spec((16, 64), 4) == P()  # below the default minimum size
    assert sh.fsdp_spec((16, 64), 1, min_size=0) == P()


def test_make_mesh_uses_all_devices_and_refuses_a_mismatch():
    n = jax.device_count()
    mesh = sh.make_mesh()
    assert sh.mesh_shape(mesh) == {"data": n, "fsdp": 1}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match=rf"data={n + 1} x fsdp=1 .* {n} devices"):
        sh.make_mesh(data=n + 1)
    with pytest.raises(ValueError, match="fsdp"):
        sh.make_mesh(fsdp=0)


def test_one_device_mesh_step_matches_plain_step(tiny_model, optimizer, sample, subset):
    # On one device the sharded step is the plain step with explicit shardings; it also
    # keeps the caller's state alive although it donates its input.
    model = tiny_model()
    state = create_train_state(model, optimizer, 0, sample)
    batch = {"images": subset[0][:16], "labels": subset[1][:16]}
    mesh = sh.make_mesh()
    shardings = sh.state_sharding(state, mesh)
    placed = sh.shard_state(state, mesh, shardings)
    step = sh.make_sharded_train_step(model, optimizer, mesh, shardings)
    out, metrics = step(placed, batch)
    out, metrics = step(out, batch)
    ref, ref_metrics = make_train_step(model, optimizer, donate=False)(state, batch)
    ref, ref_metrics = make_train_step(model, optimizer, donate=False)(ref, batch)
    assert not jax.tree.leaves(state)[0].is_deleted()
    np.testing.assert_allclose(float(metrics["loss"]), float(ref_metrics["loss"]), atol=1e-6)
    for a, b in zip(jax.tree.leaves(out.params), jax.tree.leaves(ref.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert int(out.step) == 2
    host = sh.to_host(out.params)
    assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))


def test_shard_batch_rejects_inconsistent_batch():
    mesh = sh.make_mesh()
    with pytest.raises(ValueError, match="disagree"):
        sh.shard_batch({"images": np.zeros((4, 1, 2, 2)), "labels": np.zeros(3, np.int32)}, mesh)
    out = sh.shard_batch({"images": jnp.zeros((4, 1, 2, 2)), "labels": np.zeros(4)}, mesh)
    assert out["images"].sharding == sh.batch_sharding(mesh)
