"""The steps of SAM fine-tuning (``training.sam``): its state, the decoder on a batch of
prompts, the jitted train and held-out steps, the embedding of images.

The compiled functions are cached per (model, recipe) (``functools.lru_cache`` over hashable
arguments: a linen module hashes by its config), so that two runs in one process (a resume
in a test, a notebook) compile each program once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from efficientvit_jax.training.sam_loss import predicted_choice, sam_loss

# What learns when the encoder is frozen (the model's top-level modules).
TRAINED_WITH_FROZEN_ENCODER = ("prompt_encoder", "mask_decoder")


@flax.struct.dataclass
class SamState:
    """What a SAM fine-tuning run checkpoints: every variable of the model (the frozen ones
    too, so that a run folder is a model on its own), the optimizer's state of the trained
    ones, the step."""

    step: jax.Array
    params: Any
    opt_state: Any
    batch_stats: Any
    constants: Any

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats, "constants": self.constants}


@dataclasses.dataclass(frozen=True)
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0


def trainable_names(params: Mapping[str, Any], train_encoder: bool) -> tuple[str, ...]:
    """The top-level parameter modules that learn."""
    return tuple(sorted(params)) if train_encoder else TRAINED_WITH_FROZEN_ENCODER


def _split(params: Mapping[str, Any], names: tuple[str, ...]) -> tuple[dict, dict]:
    return {k: params[k] for k in names}, {k: v for k, v in params.items() if k not in names}


def decode_all(model: Any, variables: Any, features: jax.Array, batch: Mapping, encoder: bool):
    """``(logits [P, 4, m, m], iou [P, 4])`` of a batch's ``B x K`` prompts, all four masks
    each; ``features`` are embeddings, or with ``encoder`` the images to embed."""
    cfg = model.config
    emb = model.apply(variables, features, method="embed_images") if encoder else features
    b, k, t = batch["labels"].shape
    p, m, nchw = b * k, cfg.mask_size, cfg.data_format == "NCHW"
    masks = jnp.zeros((p, 1, m, m) if nchw else (p, m, m, 1), jnp.float32)
    logits, iou = model.apply(
        variables, jnp.repeat(emb, k, axis=0), batch["coords"].reshape(p, t, 2),
        batch["labels"].reshape(p, t), masks, jnp.zeros((p,), jnp.float32), None,
        method="decode",
    )  # fmt: skip
    return (logits if nchw else jnp.moveaxis(logits, -1, 1)), iou


def targets(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """``(targets, valid)`` ``[P, m, m]`` float32: each prompt's instance on the grid, and the
    pixels that count."""
    grid, target = batch["grid"], batch["target"]
    b, k = target.shape
    t = grid[:, None] == target[:, :, None, None]
    valid = jnp.broadcast_to((grid >= 0)[:, None], t.shape)
    shape = (b * k, *grid.shape[1:])
    return t.reshape(shape).astype(jnp.float32), valid.reshape(shape).astype(jnp.float32)


def mask_sums(logits: jax.Array, out: Mapping, t: jax.Array, v: jax.Array, w: jax.Array,
              choice: jax.Array) -> dict[str, jax.Array]:  # fmt: skip
    """Sums over prompts (weights ``w``) of the ``choice`` mask's IoU, correct and counted
    pixels."""
    sel = jnp.take_along_axis(logits, choice[:, None, None, None], axis=1)[:, 0]
    correct = (((sel > 0) == (t > 0.5)) * v).sum((1, 2))
    iou = jnp.take_along_axis(out["iou"], choice[:, None], axis=1)[:, 0]
    return {"iou_sum": (iou * w).sum(), "correct": (correct * w).sum(),
            "pixels": (v.sum((1, 2)) * w).sum(), "count": w.sum()}  # fmt: skip


def _loss(model: Any, encoder: bool, weights: LossWeights, variables: Any, batch: Mapping):
    logits, iou_pred = decode_all(model, variables, batch["features"], batch, encoder)
    t, v = targets(batch)
    multi, w = batch["multi"].reshape(-1), batch["weight"].reshape(-1)
    out = sam_loss(logits, iou_pred, t, v, multi, w, focal_weight=weights.focal,
                   dice_weight=weights.dice, iou_weight=weights.iou)  # fmt: skip
    return out, logits, iou_pred, t, v, multi, w


@functools.lru_cache(maxsize=8)
def train_step_fn(model: Any, encoder: bool, weights: LossWeights, tx: Any) -> Any:
    """The jitted ``(state, batch) -> (state, metrics)`` (one per model and recipe, so runs
    of one process share its compilation)."""

    def step(state: SamState, batch: Mapping) -> tuple[SamState, dict]:
        trained, frozen = _split(state.params, trainable_names(state.params, encoder))

        def loss_fn(trained: Any) -> tuple[jax.Array, Any]:
            variables = {**state.variables, "params": {**frozen, **trained}}
            out, logits, _, t, v, _, w = _loss(model, encoder, weights, variables, batch)
            return out["loss"], (out, mask_sums(logits, out, t, v, w, out["chosen"]))

        (loss, (out, sums)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        updates, opt_state = tx.update(grads, state.opt_state, trained)
        params = {**frozen, **optax.apply_updates(trained, updates)}
        metrics = {"loss": loss, "accuracy": sums["correct"] / jnp.maximum(sums["pixels"], 1.0),
                   "iou": sums["iou_sum"] / jnp.maximum(sums["count"], 1.0),
                   **{k: out[k] for k in ("focal", "dice", "iou_mse")}}  # fmt: skip
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=8)
def eval_step_fn(model: Any, encoder: bool, weights: LossWeights) -> Any:
    """The jitted ``(variables, batch) -> sums`` of one held-out batch (the mask a user gets:
    ``sam_loss.predicted_choice``)."""

    def step(variables: Any, batch: Mapping) -> dict[str, jax.Array]:
        out, logits, iou_pred, t, v, multi, w = _loss(model, encoder, weights, variables, batch)
        sums = mask_sums(logits, out, t, v, w, predicted_choice(iou_pred, multi))
        return {**sums, "loss_sum": out["loss"] * w.sum()}

    return jax.jit(step)


@functools.lru_cache(maxsize=4)
def embed_fn(model: Any) -> Any:
    return jax.jit(lambda variables, images: model.apply(variables, images, method="embed_images"))


@functools.lru_cache(maxsize=8)
def optimizer(lr: float, total: int, warmup: int | None, weight_decay: float) -> Any:
    """AdamW as the package's other recipes (cached: equal recipes share compilations)."""
    from efficientvit_jax.training.steps import make_optimizer

    return make_optimizer(lr, total_steps=total, warmup_steps=warmup, weight_decay=weight_decay)


__all__ = [
    "TRAINED_WITH_FROZEN_ENCODER",
    "LossWeights",
    "SamState",
    "decode_all",
    "embed_fn",
    "eval_step_fn",
    "mask_sums",
    "optimizer",
    "targets",
    "train_step_fn",
    "trainable_names",
]
