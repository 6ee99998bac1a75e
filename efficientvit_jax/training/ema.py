"""An exponential moving average of the parameters, kept in the optimizer's state.

``with_ema(optimizer, decay)`` passes the updates through unchanged and tracks
``ema = decay * ema + (1 - decay) * new_params``. Living in ``opt_state``, the average is
sharded, checkpointed and restored with the rest of the train state at no extra wiring;
``ema_params(opt_state)`` reads it. BatchNorm statistics are not averaged: the EMA weights
are evaluated with the raw model's running statistics.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaState(NamedTuple):
    count: jax.Array
    ema: Any


def track_ema(decay: float, *, warmup: bool = True) -> optax.GradientTransformation:
    """The tracker alone (chain it last). With ``warmup`` the decay is
    ``min(decay, (1 + t) / (10 + t))`` at step ``t``, so early averages are not dominated by
    the initialisation (the schedule of TensorFlow's and timm's EMA warm-up)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")

    def init(params: Any) -> EmaState:
        # A copy: sharing the params' buffers would make a donating train step donate one
        # buffer twice.
        return EmaState(
            jnp.zeros((), jnp.int32), jax.tree.map(lambda p: jnp.array(p, copy=True), params)
        )

    def update(updates: Any, state: EmaState, params: Any = None) -> tuple[Any, EmaState]:
        if params is None:
            raise ValueError("track_ema needs params: call optimizer.update(g, s, params)")
        t = state.count.astype(jnp.float32)
        d = jnp.minimum(decay, (1.0 + t) / (10.0 + t)) if warmup else jnp.float32(decay)
        new = optax.apply_updates(params, updates)

        # e + (1 - d) (p - e), not d e + (1 - d) p: the same average, but exactly e where the
        # weights did not move (a frozen backbone's EMA stays bit-identical to it).
        def step(e: jax.Array, p: jax.Array) -> jax.Array:
            e32 = e.astype(jnp.float32)
            return (e32 + (1 - d) * (p.astype(jnp.float32) - e32)).astype(e.dtype)

        ema = jax.tree.map(step, state.ema, new)
        return updates, EmaState(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def with_ema(optimizer: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
    """``optimizer`` followed by an EMA tracker of the resulting parameters."""
    return optax.chain(optimizer, track_ema(decay))


def ema_params(opt_state: Any) -> Any:
    """The EMA parameters held in an ``opt_state`` built with ``with_ema`` (or ``None``)."""
    found = [
        s.ema
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EmaState))
        if isinstance(s, EmaState)
    ]
    return found[-1] if found else None
