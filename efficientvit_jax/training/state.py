"""The train state: params, optimizer state, step, rng (and BatchNorm statistics), as one pytree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from efficientvit_jax import ops
from efficientvit_jax._once import run_once


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue exactly.

    Attributes:
      step: number of optimizer steps taken (int32 scalar).
      params: the model's ``"params"`` collection.
      opt_state: the optimizer's state.
      rng: a raw ``uint32[2]`` PRNG key; each step folds ``step`` into it, so the
        randomness of a step depends on the state alone (exact resume).
      batch_stats: the model's ``"batch_stats"`` collection (BatchNorm running
        statistics of the paper models), updated by every train step; ``{}``
        for models without one.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    batch_stats: Any = dataclasses.field(default_factory=dict)


def _raw_key(rng: jax.Array | int) -> jax.Array:
    if isinstance(rng, int):
        return jax.random.PRNGKey(rng)
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        # Typed keys do not serialise; store the raw bits.
        return jax.random.key_data(rng)
    return rng


def create_train_state(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    rng: jax.Array | int,
    sample_images: Any,
    *,
    init: Callable[[jax.Array, Any], Any] | None = None,
) -> TrainState:
    """Initialise ``model`` on ``sample_images`` and the optimizer on its params.

    Args:
      model: any flax linen module called as ``model.apply(v, x, train=...)``
        whose only variable collection is ``"params"``.
      optimizer: an optax transformation (see ``make_optimizer``).
      rng: a PRNG key or an int seed; split into the init key and the state's key.
      sample_images: an example batch (or a ``jax.ShapeDtypeStruct``) for the shapes.
      init: ``(init_key, sample_images) -> variables`` in place of ``model.init`` (a run
        that starts from pretrained variables: ``finetune.init_from_pretrained``).
    """
    init_key, state_key = jax.random.split(_raw_key(rng))
    if isinstance(sample_images, jax.ShapeDtypeStruct):
        sample_images = jnp.zeros(sample_images.shape, sample_images.dtype)
    if init is None:
        variables = run_once(model.init, init_key, sample_images)
    else:
        variables = init(init_key, sample_images)
    extra = set(variables) - {"params", "batch_stats"}
    if extra:
        raise ValueError(
            f"create_train_state supports models with 'params' and 'batch_stats' variables; "
            f"this one also has {sorted(extra)}"
        )
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=optimizer.init(params),
        rng=state_key,
        batch_stats=variables.get("batch_stats", {}),
    )


def abstract_train_state(
    model: nn.Module, optimizer: optax.GradientTransformation, sample_images: Any
) -> TrainState:
    """``create_train_state``'s structure, shapes and dtypes as ``jax.ShapeDtypeStruct``s on
    this process's first device, with nothing computed: the target a resumed run restores
    into (its checkpoint holds every value, so the init program is neither compiled nor run,
    and a large model's state is not held twice while the checkpoint is read)."""
    # ``init=model.init``: traced, not the compiled program ``run_once`` builds by default
    # (under ``eval_shape`` nothing may compile; the seed only feeds draws never made).
    return shapes_on_first_device(
        lambda x: create_train_state(model, optimizer, 0, x, init=model.init), sample_images
    )


def shapes_on_first_device(fn: Callable[..., Any], *args: Any) -> Any:
    """``jax.eval_shape(fn, *args)`` with every leaf placed on this process's first device
    (where a fresh array lives): a restore target that computes nothing."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = ops.eval_shape(fn, *args)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
