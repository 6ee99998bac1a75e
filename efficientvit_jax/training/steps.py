"""Loss, the default optimizer, and the jitted train and eval steps.

The steps are pure functions ``(state, batch) -> (state, metrics)`` and
``(state, batch) -> metrics`` with no global state, so they can later be sharded over a
``data`` mesh axis unchanged. ``batch`` is a dict with ``"images"``, ``"labels"`` and an
optional ``"mask"`` (0 for padding, see ``data.iterate_batches``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from efficientvit_jax.metrics import batch_metrics
from efficientvit_jax.training.state import TrainState

Metrics = dict[str, jax.Array]
# ``(logits, batch) -> (mean loss, accuracy)``, both float32 scalars: what a train step
# minimises. Classification's is ``classification_loss``; segmentation's (pixels, an ignore
# index) is ``training.seg.seg_loss``. One step body serves both.
LossFn = Callable[[jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array]]


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    label_smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy and accuracy over the unmasked examples, in float32.

    Args:
      logits: ``[B, K]`` in any float dtype (cast to float32 first: bf16 log-softmax
        loses too much precision for a loss).
      labels: ``[B]`` integer classes, or ``[B, K]`` soft targets (mixup/cutmix; they
        carry their own smoothing, so ``label_smoothing`` does not apply to them).
      label_smoothing: mass spread uniformly over the ``K`` classes (0 = one-hot).
      mask: ``[B]`` weights, 0 for padding; ``None`` counts every example.
    """
    logits = logits.astype(jnp.float32)
    k = logits.shape[-1]
    if labels.ndim == 2:  # soft targets; accuracy against their largest class
        targets, labels = labels.astype(jnp.float32), jnp.argmax(labels, -1)
    else:
        targets = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    if mask is None:
        return losses.mean(), correct.mean()
    mask = mask.astype(jnp.float32)
    denom = jnp.maximum(mask.sum(), 1.0)
    return (losses * mask).sum() / denom, (correct * mask).sum() / denom


def classification_loss(label_smoothing: float = 0.0) -> LossFn:
    """The classifier's ``LossFn``: ``cross_entropy`` of ``batch["labels"]`` with the
    smoothing, weighted by ``batch["mask"]`` where there is one."""

    def loss(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return cross_entropy(
            logits, batch["labels"], label_smoothing=label_smoothing, mask=batch.get("mask")
        )

    return loss


def _decay_mask(params: Any) -> Any:
    # No weight decay on biases and norm scales (rank-1 leaves), as usual for ViTs.
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    learning_rate: float = 3e-3,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    weight_decay: float = 0.05,
    clip_norm: float | None = 1.0,
    end_lr_ratio: float = 0.01,
) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay (the default optimizer).

    Args:
      learning_rate: peak learning rate, reached after the warm-up.
      total_steps: length of the whole schedule (warm-up included).
      warmup_steps: linear warm-up from 0; default 5% of ``total_steps`` (at least 1).
      weight_decay: decoupled weight decay, applied to rank >= 2 leaves only.
      clip_norm: global gradient-norm clip, ``None`` for none.
      end_lr_ratio: final learning rate as a fraction of the peak.
    """
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps is None:
        warmup_steps = max(1, total_steps // 20)
    warmup_steps = min(warmup_steps, total_steps - 1) if total_steps > 1 else 0
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=learning_rate * end_lr_ratio,
    )
    adamw = optax.adamw(schedule, weight_decay=weight_decay, mask=_decay_mask)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw) if clip_norm else adamw


def apply_for_training(
    model: nn.Module,
    params: Any,
    state: TrainState,
    images: jax.Array,
    dropout_key: jax.Array,
    *,
    frozen: bool = False,
) -> tuple[jax.Array, Any]:
    """``model`` in training mode: ``(logits, new_batch_stats)``.

    Models with a ``"batch_stats"`` collection (BatchNorm) use the batch's
    statistics and return the updated running ones; others return ``{}``.
    Whether the state has statistics is known at trace time (a pytree's shape).
    ``frozen=True`` runs the model as in evaluation (running statistics used and kept, no
    dropout or drop path): a linear probe on a frozen backbone.
    """
    variables = {"params": params}
    if frozen:
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        return model.apply(variables, images, train=False), state.batch_stats
    if not state.batch_stats:
        logits = model.apply(variables, images, train=True, rngs={"dropout": dropout_key})
        return logits, state.batch_stats
    logits, updates = model.apply(
        {**variables, "batch_stats": state.batch_stats},
        images,
        train=True,
        rngs={"dropout": dropout_key},
        mutable=["batch_stats"],
    )
    return logits, updates["batch_stats"]


def all_finite(tree: Any) -> jax.Array:
    """A boolean scalar: every element of every leaf is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _loss_and_grads(
    model: nn.Module,
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    loss_fn: LossFn,
    frozen: bool,
    scale: jax.Array | None,
    trainable: Any | None = None,
) -> tuple[jax.Array, jax.Array, Any, Any]:
    """``(loss, accuracy, new_batch_stats, grads)`` of one batch; the gradients are of
    ``loss * scale`` where a loss scale is given (the returned loss is unscaled), and zero
    on the leaves that ``trainable`` marks False."""
    dropout_key = jax.random.fold_in(state.rng, state.step)

    def objective(params: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array, Any]]:
        if trainable is not None:
            # Constants to differentiation: their zero tangents prune the backward pass of
            # everything only they feed (a frozen backbone's whole backward, not just its
            # weight gradients, which an optimizer's set_to_zero would discard after).
            params = jax.tree.map(
                lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable
            )
        logits, stats = apply_for_training(
            model, params, state, batch["images"], dropout_key, frozen=frozen
        )
        loss, acc = loss_fn(logits, batch)
        # No multiplication without a scale, so the plain step's graph is the plain loss's.
        return (loss if scale is None else loss * scale), (loss, acc, stats)

    (_, (loss, acc, stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    return loss, acc, stats, grads


def _unscale(
    scaled_grads: Any, stats: Any, old_stats: Any, scale: jax.Array
) -> tuple[Any, Any, Metrics]:
    """``(grads, batch_stats, extra metrics)`` of a loss-scaled step: the gradients divided
    by the scale, and the old BatchNorm statistics where they are not finite (the optimizer
    skips that step, so the statistics must not move either)."""
    grads = jax.tree.map(lambda g: g.astype(jnp.float32) / scale, scaled_grads)
    finite = all_finite(grads)
    stats = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stats, old_stats)
    return grads, stats, {"loss_scale": scale, "finite": finite.astype(jnp.float32)}


def make_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    *,
    label_smoothing: float = 0.0,
    donate: bool = True,
    frozen_backbone: bool = False,
    loss_scale_of: Callable[[Any], jax.Array] | None = None,
    jit: bool = True,
    loss_fn: LossFn | None = None,
    trainable: Any | None = None,
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]:
    """A jitted ``(state, batch) -> (new_state, metrics)`` training step.

    ``frozen_backbone=True`` applies the model in evaluation mode (see
    ``apply_for_training``), so the BatchNorm statistics stay as they are; pair it with
    ``trainable`` (the head's mask) and an optimizer that leaves a zero gradient's leaf
    unchanged (``finetune.finetune_optimizer(..., backbone_opt=None)``: AdamW's weight decay
    would move it), which keeps the backbone's weights. The sharded step takes the same flags.

    Metrics: ``loss`` and ``accuracy`` (``loss_fn``'s: by default cross-entropy with the smoothing,
    float32) and ``grad_norm``. The drop-path key is ``fold_in(state.rng, state.step)``: it depends
    on the state only. ``donate=True`` reuses the input state's buffers (do not use it after).

    Args:
      loss_scale_of: ``opt_state -> scale`` for dynamic loss scaling (see
        ``precision.make_train_step_with_loss_scale``, which passes it): the loss is
        multiplied by the scale before differentiation, ``grad_norm`` is of the unscaled
        gradients, a non-finite step keeps the BatchNorm statistics, and the metrics add
        ``loss_scale`` and ``finite`` (1.0 or 0.0).
      jit: ``False`` returns the plain function (e.g. to hand to
        ``sharding.make_sharded_train_step(step_fn=...)``, which jits it).
      loss_fn: what to minimise (``LossFn``); default ``classification_loss(label_smoothing)``
        (the smoothing is then the loss function's business).
      trainable: a pytree of bools over the params (``finetune.head_mask``): the True
        leaves are differentiated, the others get zero gradients and no backward pass runs
        for what only they feed; ``grad_norm`` is the True leaves'. ``None``: every leaf.
    """
    loss_fn = loss_fn or classification_loss(label_smoothing)

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, Metrics]:
        scale = None if loss_scale_of is None else loss_scale_of(state.opt_state)
        loss, acc, stats, grads = _loss_and_grads(
            model, state, batch, loss_fn=loss_fn, frozen=frozen_backbone, scale=scale,
            trainable=trainable,
        )  # fmt: skip
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra: Metrics = {}
        if scale is not None:
            grads, stats, extra = _unscale(grads, stats, state.batch_stats, scale)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, batch_stats=stats
        )
        metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads)}
        return new_state, {**metrics, **extra}

    if not jit:
        return train_step
    return jax.jit(train_step, donate_argnums=(0,) if donate else ())


def make_eval_step(
    model: nn.Module,
) -> Callable[[TrainState, Mapping[str, jax.Array]], Metrics]:
    """A jitted ``(state, batch) -> metrics`` evaluation step (``train=False``).

    Returns ``metrics.batch_metrics``'s sums, so that batches of different fill add up
    exactly: ``loss_sum`` (plain cross-entropy, no smoothing), ``correct``, ``correct5``
    (label among the 5 largest logits) and ``count`` (the number of unmasked examples).
    Accuracy over a dataset is ``sum(correct) / sum(count)``.
    """

    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Metrics:
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits = model.apply(variables, batch["images"], train=False)
        return batch_metrics(logits, batch["labels"], batch.get("mask"))

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable[[TrainState, Mapping[str, jax.Array]], Metrics],
    state: TrainState,
    batches: Any,
) -> dict[str, float]:
    """Run ``eval_step`` over an iterable of batches; mean ``loss``, ``accuracy`` (top-1) and,
    where the step reports it, ``top5``."""
    totals: dict[str, float] = {}
    for batch in batches:
        m = jax.device_get(eval_step(state, batch))
        for k, v in m.items():
            totals[k] = totals.get(k, 0.0) + float(v)
    n = max(totals.get("count", 0.0), 1.0)
    out = {
        "loss": totals.get("loss_sum", 0.0) / n,
        "accuracy": totals.get("correct", 0.0) / n,
        "count": int(totals.get("count", 0.0)),
    }
    if "correct5" in totals:
        out["top5"] = totals["correct5"] / n
    return out
