"""Checkpoints: exact round trip, exact resume, interrupted saves, config mismatch, corruption."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from efficientvit_jax.training import (
    Checkpointer,
    CheckpointError,
    config_differences,
    config_to_dict,
    create_train_state,
    iterate_batches,
    make_train_step,
)

CONFIG = {"model": {"embed_dim": 8, "depths": (1, 1)}, "train": {"seed": 0, "lr": 0.01}}


@pytest.fixture(scope="module")
def setup(tiny_model, optimizer, sample):
    model = tiny_model(drop_path_rate=0.3)  # drop path: the rng matters for exactness
    return model, make_train_step(model, optimizer), sample


def _fresh(setup, optimizer, seed=0):
    model, _, sample = setup
    return create_train_state(model, optimizer, seed, sample)


def _run(step_fn, state, x, y, start, stop, spe):
    """Steps ``start`` -> ``stop`` of the epoch-structured data stream, as the CLI runs it."""
    losses = []
    step = start
    while step < stop:
        epoch, first = divmod(step, spe)
        for batch in iterate_batches(
            x, y, 16, seed=5, epoch=epoch, remainder="drop", start_batch=first
        ):
            state, m = step_fn(state, batch)
            losses.append(float(m["loss"]))
            step += 1
            if step == stop:
                break
    return state, losses


def test_resume_is_bit_exact(setup, optimizer, subset, tmp_path, tree_equal):
    """2N steps straight == N steps, save, restore into a fresh state, N more steps."""
    x, y = subset
    _, step_fn, _ = setup
    spe, n = 4, 6  # N = 6 stops in the middle of the second epoch
    straight, losses_straight = _run(step_fn, _fresh(setup, optimizer), x, y, 0, 2 * n, spe)

    half, losses_a = _run(step_fn, _fresh(setup, optimizer), x, y, 0, n, spe)
    ckpt = Checkpointer(tmp_path / "ck", config=CONFIG)
    assert ckpt.save(half, extra={"losses": losses_a}) == n
    ckpt.close()
    del half
    again = Checkpointer(tmp_path / "ck", config=CONFIG)
    restored, extra = again.restore(_fresh(setup, optimizer, seed=99))  # other init: overwritten
    assert int(restored.step) == n and extra["losses"] == losses_a
    # Placed as a fresh state's arrays are (not committed to a device): the same program, so
    # the train step a fresh run compiled serves the resumed run (so does the compilation
    # cache); a committed restore lowers with sharding annotations on every argument.
    touch = jax.jit(lambda s: [x.sum() for x in jax.tree.leaves(s)])
    assert touch.lower(restored).as_text() == touch.lower(_fresh(setup, optimizer)).as_text()
    resumed, losses_b = _run(step_fn, restored, x, y, n, 2 * n, spe)

    assert losses_a + losses_b == losses_straight  # bit for bit (float equality)
    assert tree_equal(resumed.params, straight.params)
    assert tree_equal(resumed.opt_state, straight.opt_state)
    assert tree_equal(resumed.rng, straight.rng) and int(resumed.step) == 2 * n


def test_mismatched_config_is_refused_naming_the_fields(setup, optimizer, tmp_path):
    state = _fresh(setup, optimizer)
    Checkpointer(tmp_path, config=CONFIG).save(state)
    other = {"model": {"embed_dim": 16, "depths": (1, 1)}, "train": {"seed": 0, "lr": 0.01}}
    with pytest.raises(CheckpointError, match=r"model\.embed_dim: checkpoint 8, now 16") as e:
        Checkpointer(tmp_path, config=other).restore(state)
    assert "depths" not in str(e.value) and "\n" not in str(e.value)


def test_config_helpers():
    d = config_to_dict({"a": (1, 2), "b": np.dtype("float32"), "c": np.int64(3)})
    assert d == {"a": [1, 2], "b": "float32", "c": 3}
    assert config_differences({"a": 1, "n": {"x": 1}}, {"a": 1, "n": {"x": 2}, "z": 0}) == [
        "n.x: checkpoint 1, now 2",
        "z: checkpoint (absent), now 0",
    ]


def test_missing_checkpoint(setup, optimizer, tmp_path):
    ck = Checkpointer(tmp_path / "nothing", config=CONFIG)
    assert ck.latest_step() is None
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ck.restore(_fresh(setup, optimizer))


def test_corrupt_checkpoint_is_a_clear_error(setup, optimizer, tmp_path):
    state = _fresh(setup, optimizer)
    Checkpointer(tmp_path, config=CONFIG).save(state)
    for root, _, files in os.walk(tmp_path / "0" / "state"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        Checkpointer(tmp_path, config=CONFIG).restore(state)


def test_leftover_temporary_directory_is_ignored(setup, optimizer, tmp_path, tree_equal):
    state = _fresh(setup, optimizer)
    Checkpointer(tmp_path, config=CONFIG).save(state)
    partial = tmp_path / "7.orbax-checkpoint-tmp-1234"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half").write_bytes(b"\x00" * 10)
    ck = Checkpointer(tmp_path, config=CONFIG)
    assert ck.all_steps() == [0]
    restored, _ = ck.restore(state)
    assert tree_equal(restored, state)


KILLED_SAVE = textwrap.dedent(
    """
    import os, sys
    import jax, numpy as np
    import jax.numpy as jnp
    import efficientvit_jax as ev
    from orbax.checkpoint._src.path import atomicity
    from efficientvit_jax.training import Checkpointer, create_train_state, make_optimizer

    model = ev.build(image_size=16, patch_size=4, in_channels=1, embed_dim=8, depths=(1,),
                     num_heads=(2,), num_classes=10)
    opt = make_optimizer(1e-2, total_steps=10)
    state = create_train_state(model, opt, 0, jnp.zeros((2, 1, 16, 16)))
    ck = Checkpointer(sys.argv[1], config={"k": 1})
    ck.save(state.replace(step=jnp.int32(1)))
    np.savez(sys.argv[2], *jax.tree.leaves(state.params))  # what step 1 holds

    async def die(self):  # everything is written, the commit (rename) never happens
        os._exit(17)

    atomicity.AtomicRenameTemporaryPath.finalize = die
    ck.save(state.replace(step=jnp.int32(2), params=state.params | {"x": jnp.ones(3)}))
    """
)


def test_save_killed_half_way_leaves_the_previous_checkpoint(setup, optimizer, tmp_path):
    """A process killed in the middle of a save: the step never appears, the last good
    checkpoint restores, and the next open removes the debris."""
    d = tmp_path / "ck"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_SAVE, str(d), str(tmp_path / "step1.npz")],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    names = sorted(os.listdir(d))
    assert "1" in names and "2" not in names
    assert any(n.startswith("2.orbax-checkpoint-tmp") for n in names), names
    ck = Checkpointer(d, config={"k": 1})
    assert ck.latest_step() == 1
    model = setup[0].clone(config=setup[0].config.replace(depths=(1,), num_heads=(2,)))
    target = create_train_state(model, optimizer, 0, np.zeros((2, 1, 16, 16), np.float32))
    restored, _ = ck.restore(target)
    assert int(restored.step) == 1
    expected = np.load(tmp_path / "step1.npz")
    leaves = jax.tree.leaves(restored.params)
    assert len(leaves) == len(expected.files)
    for i, leaf in enumerate(leaves):
        assert np.array_equal(leaf, expected[f"arr_{i}"])
    assert not any("tmp" in n for n in os.listdir(d))  # debris cleaned on open


# --------------------------------------------------------------- damage after the fact


def _small_state(value):
    """A train state of a few named arrays (no model: these tests are about the files)."""
    import jax.numpy as jnp

    from efficientvit_jax.training import TrainState

    rng = np.random.default_rng(value)  # random: the array files dominate, uncompressed
    params = {f"w{i}": jnp.asarray(rng.normal(size=(32, 64)), jnp.float32) for i in range(4)}
    return TrainState(
        step=jnp.int32(value), params=params, opt_state={}, rng=jnp.zeros(2, jnp.uint32)
    )


@pytest.fixture
def two_steps(tmp_path, tree_equal):
    """Checkpoints at steps 1 and 2 (different values) in ``tmp_path / "ck"``."""
    d = tmp_path / "ck"
    ck = Checkpointer(d, config=CONFIG)
    ck.save(_small_state(1))
    ck.save(_small_state(2))
    ck.close()
    return d


def _largest_array_file(step_dir):
    files = [
        os.path.join(r, f)
        for r, _, fs in os.walk(step_dir / "state")
        for f in fs
        if os.sep + "d" + os.sep in os.path.join(r, f)
    ]
    return max(files, key=os.path.getsize)


def _flip_byte(path, where=0.5):
    with open(path, "r+b") as f:
        f.seek(int(os.path.getsize(path) * where))
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))


def test_flipped_byte_in_an_array_falls_back_to_the_previous_step(two_steps, tree_equal):
    _flip_byte(_largest_array_file(two_steps / "2"))
    reports = []
    r = Checkpointer(two_steps, config=CONFIG).restore(_small_state(0), report=reports.append)
    assert r.step == 1 and int(r.state.step) == 1 and r.verified
    assert tree_equal(r.state, _small_state(1))
    assert [s.step for s in r.skipped] == [2]
    assert len(reports) == 1 and "\n" not in reports[0]
    assert f"{two_steps / '2'} is corrupt or unreadable" in reports[0]
    assert "restored step 1" in reports[0]
    state, extra = r  # the (state, extra) shape of earlier callers
    assert state is r.state and extra == {}


def test_a_checksum_mismatch_names_the_array(two_steps):
    """Bytes that orbax reads back without complaint but that are not what was saved."""
    meta_file = two_steps / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    sums = meta["checksums"]["arrays"]
    assert set(sums) >= {"params/w0", "params/w3", "step", "rng"}
    sums["params/w2"] = "0" * 64
    meta_file.write_text(json.dumps(meta))
    r = Checkpointer(two_steps, config=CONFIG).restore(_small_state(0), report=lambda m: None)
    assert r.step == 1
    assert r.skipped[0].reason == "array params/w2 fails its sha256 checksum"


def test_destroyed_metadata_falls_back(two_steps):
    (two_steps / "2" / "meta" / "metadata").write_bytes(b"\x00garbage")
    r = Checkpointer(two_steps, config=CONFIG).restore(_small_state(0), report=lambda m: None)
    assert r.step == 1 and r.skipped[0].step == 2
    assert r.skipped[0].reason.startswith("metadata: JSONDecodeError")


def test_all_damaged_is_one_line_naming_each_step(two_steps):
    _flip_byte(_largest_array_file(two_steps / "2"))
    (two_steps / "1" / "meta" / "metadata").write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        Checkpointer(two_steps, config=CONFIG).restore(_small_state(0))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"no intact checkpoint in {two_steps}: ")
    assert "step 2 is corrupt or unreadable (" in msg
    assert "step 1 is corrupt or unreadable (metadata" in msg
    assert e.value.__cause__ is None  # orbax's traceback (and its asyncio tasks) let go


def test_an_explicit_damaged_step_does_not_fall_back(two_steps):
    _flip_byte(_largest_array_file(two_steps / "2"))
    ck = Checkpointer(two_steps, config=CONFIG)
    with pytest.raises(CheckpointError, match=r"ck/2 is corrupt or unreadable \("):
        ck.restore(_small_state(0), step=2)
    assert ck.restore(_small_state(0), step=1).step == 1


def test_the_next_save_moves_the_damaged_step_aside(two_steps, tree_equal):
    """Resumed from step 1, the run reaches step 2 again: its save must not collide with
    (nor be outlived by) the damaged step 2."""
    _flip_byte(_largest_array_file(two_steps / "2"))
    ck = Checkpointer(two_steps, config=CONFIG)
    r = ck.restore(_small_state(0), report=lambda m: None)
    assert sorted(os.listdir(two_steps)) == ["1", "2"]  # restoring changes nothing
    new2 = _small_state(2).replace(params={"w0": r.state.params["w0"] * 0 + 7})
    new2 = r.state.replace(step=new2.step, params=r.state.params | new2.params)
    assert ck.save(new2) == 2
    assert sorted(os.listdir(two_steps)) == ["1", "2", "2.damaged"]
    again = Checkpointer(two_steps, config=CONFIG)
    assert again.all_steps() == [1, 2]
    r2 = again.restore(_small_state(0))
    assert r2.step == 2 and not r2.skipped and tree_equal(r2.state, new2)


def test_checkpoints_without_checksums_still_restore(two_steps, tree_equal):
    meta_file = two_steps / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["checksums"]  # as written before checksums were stored
    meta_file.write_text(json.dumps(meta))
    r = Checkpointer(two_steps, config=CONFIG).restore(_small_state(0))
    assert r.step == 2 and not r.verified and tree_equal(r.state, _small_state(2))


# One failed shard read while its siblings are still reading: what orbax does when a file
# is truncated under a real model (the race made deterministic). Before the fix asyncio
# logged each cancelled sibling with a TensorStore spec: thousands of lines on stderr.
FAILED_READ = textwrap.dedent(
    """
    import asyncio, os, sys
    import jax.numpy as jnp
    from orbax.checkpoint._src.serialization import serialization
    from efficientvit_jax.training import Checkpointer, CheckpointError, TrainState

    def state(v):
        params = {f"w{i}": jnp.full((4, 4), v + i, jnp.float32) for i in range(12)}
        return TrainState(step=jnp.int32(v), params=params, opt_state={},
                          rng=jnp.zeros(2, jnp.uint32))

    ck = Checkpointer(sys.argv[1], config={"k": 1})
    for v in (1, 2):
        ck.save(state(v))
    read, seen = serialization._read_shard, set()
    damaged = ["1", "2"] if sys.argv[2] == "all" else ["2"]

    async def flaky(t, **kw):
        step = next((s for s in damaged if f"{os.sep}{s}{os.sep}state" in str(t.kvstore)), None)
        if step is not None:
            if step not in seen:  # the first read of a damaged step fails ...
                seen.add(step)
                raise ValueError("DATA_LOSS: simulated")
            await asyncio.sleep(30)  # ... while the others are cancelled when it gives up
        return await read(t, **kw)

    serialization._read_shard = flaky
    try:
        r = Checkpointer(sys.argv[1], config={"k": 1}).restore(state(0))
        print("restored", r.step)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    """
)


@pytest.mark.parametrize("damaged", ["latest", "all"])
def test_a_failed_read_leaves_one_line_on_stderr(tmp_path, damaged):
    proc = subprocess.run(
        [sys.executable, "-c", FAILED_READ, str(tmp_path / "ck"), damaged],
        capture_output=True,
        text=True,
        timeout=400,
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "ValueError: DATA_LOSS: simulated" in lines[0]
    if damaged == "latest":
        assert proc.returncode == 0 and proc.stdout.strip() == "restored 1"
        assert lines[0].endswith("restored step 1, the newest intact checkpoint")
    else:
        assert proc.returncode == 2 and lines[0].startswith("error: no intact checkpoint")
