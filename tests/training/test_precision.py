"""Mixed precision: bf16 training on the digits, and dynamic loss scaling for fp16."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficientvit_jax.training import create_train_state, iterate_batches, make_train_step
from efficientvit_jax.training import precision as prec


def _params():
    return {"w": jnp.array([1.0, 2.0]), "b": jnp.array(0.5)}


def test_loss_scale_unscales_and_grows():
    opt = prec.dynamic_loss_scale(optax.sgd(0.1), init_scale=8.0, growth_interval=2)
    params = _params()
    state = opt.init(params)
    grads = {"w": jnp.array([0.5, -1.0]), "b": jnp.array(2.0)}
    scaled = jax.tree.map(lambda g: g * 8.0, grads)
    updates, state = opt.update(scaled, state, params)
    # SGD's update on the unscaled gradients.
    np.testing.assert_allclose(updates["w"], [-0.05, 0.1], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], -0.2, rtol=1e-6)
    assert (float(state.scale), int(state.good_steps)) == (8.0, 1)
    _, state = opt.update(scaled, state, params)
    # Two finite steps in a row (growth_interval): the scale doubles, the count restarts.
    assert (float(state.scale), int(state.good_steps)) == (16.0, 0)


@pytest.mark.parametrize("bad", [jnp.inf, jnp.nan])
def test_loss_scale_skips_non_finite_steps(bad):
    opt = prec.dynamic_loss_scale(
        optax.adam(0.1), init_scale=4.0, growth_interval=10, min_scale=1.0
    )
    params = _params()
    state = opt.init(params)
    good = {"w": jnp.array([1.0, 1.0]), "b": jnp.array(1.0)}
    _, state = opt.update(good, state, params)
    before = state
    grads = {"w": jnp.array([1.0, bad]), "b": jnp.array(1.0)}
    updates, state = opt.update(grads, state, params)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    # Adam's moments and step count untouched; scale halved; good-step count reset.
    for a, b in zip(jax.tree.leaves(state.inner), jax.tree.leaves(before.inner), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (float(state.scale), int(state.good_steps), int(state.skipped)) == (2.0, 0, 1)
    for _ in range(3):
        _, state = opt.update(grads, state, params)
    assert float(state.scale) == 1.0  # never below min_scale


def test_loss_scale_rejects_bad_options():
    with pytest.raises(ValueError, match="min_scale"):
        prec.dynamic_loss_scale(optax.sgd(1.0), init_scale=0.5)
    with pytest.raises(ValueError, match="growth_interval"):
        prec.dynamic_loss_scale(optax.sgd(1.0), growth_interval=0)


def test_dtype_options():
    assert prec.dtype_options("bfloat16") == {"dtype": jnp.bfloat16, "param_dtype": jnp.float32}
    with pytest.raises(ValueError, match="precision"):
        prec.dtype_options("float8")


def test_step_without_loss_scale_state_is_refused(tiny_model, optimizer, sample, subset):
    model = tiny_model()
    state = create_train_state(model, optimizer, 0, sample)
    step = prec.make_train_step_with_loss_scale(model, optimizer, donate=False)
    batch = {"images": subset[0][:16], "labels": subset[1][:16]}
    with pytest.raises(TypeError, match="dynamic_loss_scale"):
        step(state, batch)


@pytest.mark.slow
def test_fp16_overflow_is_skipped_then_training_proceeds(tiny_model, optimizer, sample, subset):
    # A scale far beyond fp16's range (65504) overflows the fp16 backward pass: the first
    # steps must be skipped with the scale halving each time, until it fits; then the
    # parameters move, stay finite and float32.
    model = tiny_model(**prec.dtype_options("float16"))
    opt = prec.dynamic_loss_scale(optimizer, init_scale=2.0**40)
    state = create_train_state(model, opt, 0, sample)
    p0 = jax.tree.map(np.asarray, state.params)
    step = prec.make_train_step_with_loss_scale(model, opt)
    batch = {"images": subset[0][:16], "labels": subset[1][:16]}
    history = []
    for _ in range(40):
        state, m = step(state, batch)
        history.append((float(m["finite"]), float(m["loss_scale"])))
        if m["finite"] == 1.0 and len(history) > 1 and history[-2][0] == 1.0:
            break
    assert history[0] == (0.0, 2.0**40)
    assert history[1][1] == 2.0**39  # halved after the skipped step
    assert history[-1][0] == 1.0, history
    skipped = int(state.opt_state.skipped)
    assert skipped == sum(f == 0.0 for f, _ in history) and skipped >= 1
    moved = max(
        float(np.max(np.abs(np.asarray(a) - b)))
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(p0), strict=True)
    )
    assert moved > 0
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_bf16_training_on_digits_lowers_the_loss(tiny_model, optimizer, sample, subset):
    model = tiny_model(**prec.dtype_options("bfloat16"))
    state = create_train_state(model, optimizer, 0, sample)
    step = make_train_step(model, optimizer)
    losses = []
    for epoch in range(5):
        for batch in iterate_batches(*subset, 16, seed=0, epoch=epoch, remainder="drop"):
            state, m = step(state, batch)
            losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses))
    # bf16 logits are noisy: compare the mean of the first and the last epoch.
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.2, losses
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state) if x.ndim)
