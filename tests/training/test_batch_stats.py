"""Models with BatchNorm (the paper models) train with the same state, steps and checkpoints."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax.training import (
    Checkpointer,
    create_train_state,
    make_eval_step,
    make_optimizer,
    make_train_step,
)
from efficientvit_jax.zoo.mit import MIT_CONFIGS, EfficientViTMIT

# B0's structure with tiny widths: same blocks (MBConv, LiteMLA, BatchNorm everywhere).
TINY = dataclasses.replace(
    MIT_CONFIGS["efficientvit_b0"],
    widths=(8, 8, 16, 16, 32),
    depths=(1, 1, 1, 1, 1),
    head_dim=8,
    head_widths=(32, 32),
    num_classes=4,
)


@pytest.mark.slow
def test_batchnorm_model_trains_updates_statistics_and_checkpoints(tmp_path):
    model = EfficientViTMIT(TINY)
    rng = np.random.default_rng(0)
    batch = {
        "images": jnp.asarray(rng.normal(size=(8, 3, 32, 32)), jnp.float32),
        "labels": jnp.asarray(rng.integers(0, 4, size=8)),
    }
    optimizer = make_optimizer(3e-3, total_steps=10, warmup_steps=1)
    state = create_train_state(model, optimizer, 0, batch["images"])
    assert set(state.batch_stats) and jax.tree.structure(state.batch_stats) == jax.tree.structure(
        jax.eval_shape(model.init, jax.random.key(0), batch["images"])["batch_stats"]
    )
    before = jax.tree.map(np.asarray, state.batch_stats)
    step = make_train_step(model, optimizer, donate=False)
    losses = []
    for _ in range(4):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    moved = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(before), strict=True)
    ]
    assert all(moved)  # every running statistic was updated by the steps

    # Evaluation uses the running statistics (train=False), not the batch's.
    ev = make_eval_step(model)(state, batch)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, batch["images"])
    expect = (jnp.argmax(logits, -1) == batch["labels"]).sum()
    assert float(ev["correct"]) == float(expect) and float(ev["count"]) == 8

    ckpt = Checkpointer(tmp_path / "ckpt", config={"model": "tiny-b0"})
    ckpt.save(state)
    restored, _ = ckpt.restore(create_train_state(model, optimizer, 1, batch["images"]))
    ckpt.close()
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
