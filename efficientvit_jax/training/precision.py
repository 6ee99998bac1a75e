"""Mixed precision: model dtypes per precision, and dynamic loss scaling for float16.

- ``bfloat16``: compute in bf16, keep float32 parameters (and optimizer state); the linear
  attention accumulates in float32 (``attention.linear_attention``) and the loss is taken in
  float32 (``steps.cross_entropy``). bf16 has float32's exponent range, so no loss scaling.
- ``float16``: same, but fp16's range is small: gradients underflow to 0 unless the loss is
  multiplied by a large factor first. ``dynamic_loss_scale`` wraps an optimizer so that it
  unscales the gradients, skips the update (and halves the scale) when they are not finite,
  and doubles the scale after ``growth_interval`` finite steps in a row. Its state lives in
  the optimizer state, so ``TrainState``, sharding and checkpoints need no change::

      optimizer = dynamic_loss_scale(make_optimizer(1e-3, total_steps=n))
      model = build(**opts, **dtype_options("float16"))
      state = create_train_state(model, optimizer, seed, sample)
      train_step = make_train_step_with_loss_scale(model, optimizer)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from efficientvit_jax.training.state import TrainState
from efficientvit_jax.training.steps import LossFn, Metrics, all_finite, make_train_step

PRECISIONS = ("float32", "bfloat16", "float16")


def dtype_options(precision: str) -> dict[str, Any]:
    """Model options for a precision: ``{"dtype": <compute dtype>, "param_dtype": float32}``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"dtype": jnp.dtype(precision), "param_dtype": jnp.dtype("float32")}


class LossScaleState(NamedTuple):
    """Optimizer state of ``dynamic_loss_scale``.

    Attributes:
      scale: the current loss scale (float32 scalar).
      good_steps: finite steps since the scale last changed (int32 scalar).
      skipped: total steps skipped for non-finite gradients (int32 scalar).
      inner: the wrapped optimizer's state.
    """

    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array
    inner: Any


def dynamic_loss_scale(
    optimizer: optax.GradientTransformation,
    *,
    init_scale: float = 2.0**15,
    growth_interval: int = 2000,
    factor: float = 2.0,
    min_scale: float = 1.0,
) -> optax.GradientTransformation:
    """Wrap ``optimizer`` to take gradients of the *scaled* loss (``loss * scale``).

    ``update`` divides the gradients by the scale; if any is not finite it returns zero
    updates, leaves the inner state untouched and divides the scale by ``factor`` (not
    below ``min_scale``); otherwise it applies ``optimizer`` and, after ``growth_interval``
    finite steps in a row, multiplies the scale by ``factor``.
    """
    if init_scale < min_scale or min_scale <= 0:
        raise ValueError(f"need 0 < min_scale <= init_scale, got {min_scale} and {init_scale}")
    if growth_interval < 1 or factor <= 1:
        raise ValueError(
            f"need growth_interval >= 1 and factor > 1, got {growth_interval} and {factor}"
        )

    def init(params: Any) -> LossScaleState:
        return LossScaleState(
            scale=jnp.asarray(init_scale, jnp.float32),
            good_steps=jnp.zeros((), jnp.int32),
            skipped=jnp.zeros((), jnp.int32),
            inner=optimizer.init(params),
        )

    def update(
        scaled_grads: Any, state: LossScaleState, params: Any = None
    ) -> tuple[Any, LossScaleState]:
        grads = jax.tree.map(lambda g: g.astype(jnp.float32) / state.scale, scaled_grads)
        finite = all_finite(grads)
        # Zeros in place of inf/nan, so the inner update stays finite even when discarded.
        safe = jax.tree.map(lambda g: jnp.where(finite, g, jnp.zeros_like(g)), grads)
        updates, inner = optimizer.update(safe, state.inner, params)
        updates = jax.tree.map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), updates)
        inner = jax.tree.map(lambda new, old: jnp.where(finite, new, old), inner, state.inner)
        good = jnp.where(finite, state.good_steps + 1, 0)
        grow = good >= growth_interval
        scale = jnp.where(
            finite,
            jnp.where(grow, state.scale * factor, state.scale),
            jnp.maximum(state.scale / factor, min_scale),
        )
        return updates, LossScaleState(
            scale=scale.astype(jnp.float32),
            good_steps=jnp.where(grow, 0, good).astype(jnp.int32),
            skipped=state.skipped + (~finite).astype(jnp.int32),
            inner=inner,
        )

    return optax.GradientTransformation(init, update)


def loss_scale_state(opt_state: Any) -> LossScaleState:
    """The ``LossScaleState`` at the top of an optimizer state (``TypeError`` if absent)."""
    if not isinstance(opt_state, LossScaleState):
        raise TypeError(
            "the optimizer state has no loss scale: create the train state with "
            "dynamic_loss_scale(optimizer)"
        )
    return opt_state


def make_train_step_with_loss_scale(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    donate: bool = True,
    jit: bool = True,
    frozen_backbone: bool = False,
    loss_fn: LossFn | None = None,
    trainable: Any | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]:
    """``steps.make_train_step`` with dynamic loss scaling (for ``float16`` compute): a
    thin wrapper passing it ``loss_scale_of`` (one step body for both).

    ``optimizer`` must come from ``dynamic_loss_scale`` (and the state be created with it).
    The loss is multiplied by the current scale before differentiation, so small gradients
    survive fp16's range; the wrapped optimizer unscales them and skips non-finite steps
    (``state.step`` still counts the attempt, so the drop-path keys never repeat). Metrics
    add ``loss_scale`` (the scale used in this step) and ``finite`` (1.0 or 0.0) to
    ``loss``, ``accuracy`` and ``grad_norm`` (of the unscaled gradients).

    Args:
      jit: ``False`` returns the plain function (e.g. to hand to
        ``sharding.make_sharded_train_step(step_fn=...)``, which jits it).
      frozen_backbone: as for ``steps.make_train_step``: the model runs in evaluation mode,
        so the BatchNorm statistics stay as loaded; pair it with
        ``dynamic_loss_scale(finetune.finetune_optimizer(..., backbone_opt=None))``, whose
        backbone updates are zero at any scale.
      loss_fn, trainable: as for ``steps.make_train_step`` (``loss_fn`` a ``steps.LossFn``,
        default the classifier's; ``trainable`` the leaves differentiated, default all).
    """
    return make_train_step(
        model,
        optimizer,
        label_smoothing=label_smoothing,
        donate=donate,
        frozen_backbone=frozen_backbone,
        loss_scale_of=lambda opt_state: loss_scale_state(opt_state).scale,
        jit=jit,
        loss_fn=loss_fn,
        trainable=trainable,
    )
