"""The EMA tracker against the explicit recurrence, and its place in the optimizer state."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficientvit_jax.training.ema import ema_params, track_ema, with_ema


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_the_recurrence(warmup: bool) -> None:
    decay, lr = 0.9, 0.1
    opt = optax.chain(optax.sgd(lr), track_ema(decay, warmup=warmup))
    params = {"w": jnp.ones(3), "b": jnp.full((2, 2), 2.0)}
    state = opt.init(params)
    ema = {k: np.asarray(v, np.float64) for k, v in params.items()}
    cur = dict(ema)
    for t in range(6):
        grads = {k: jnp.full(v.shape, float(t + 1)) for k, v in params.items()}
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        for k in cur:
            cur[k] = cur[k] - lr * (t + 1)
            ema[k] = d * ema[k] + (1 - d) * cur[k]
    got = ema_params(state)
    for k in ema:
        np.testing.assert_allclose(np.asarray(params[k]), cur[k], rtol=0, atol=1e-5)
        np.testing.assert_allclose(
            np.asarray(got[k]), ema[k], rtol=0, atol=1e-5
        )  # float32 vs float64


def test_ema_state_is_a_copy_and_decay_is_checked() -> None:
    params = {"w": jnp.ones(3)}
    state = with_ema(optax.sgd(0.1), 0.99).init(params)
    assert ema_params(state)["w"] is not params["w"]
    assert ema_params(optax.sgd(0.1).init(params)) is None
    with pytest.raises(ValueError, match=r"EMA decay must be in \[0, 1\), got 1.5"):
        track_ema(1.5)
