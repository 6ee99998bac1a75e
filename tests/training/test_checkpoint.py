"""Checkpoints: exact round trip, exact resume, interrupted saves, config mismatch, corruption."""

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
        timeout=120,
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
