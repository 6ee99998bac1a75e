"""SAM's training loss (Kirillov et al. 2023, section 3 and appendix A): a linear combination
of the sigmoid focal loss and the dice loss on the mask logits, 20:1, plus the mean squared
error between the IoU head's prediction and the IoU of the predicted mask with the target.

Everything is scored on the decoder's low-resolution grid (256 x 256 for SAM's sizes): the
targets are sampled there (``training.sam_prompts.grid_map``) rather than the logits
upsampled to the image, which would cost 16 times the memory per mask for a loss that the
decoder's own resolution bounds anyway. Pixels that do not count (ignored labels, the padding
past the resized image) carry a weight of 0 in ``valid``.

Ambiguity as SAM trains it: a prompt that is a lone positive point gets the decoder's three
masks and only the one with the smallest mask loss is trained (its IoU head is trained on all
three); any other prompt gets the single-mask output. ``decode(..., multimask_output=None)``
gives all four masks, the single one first, so one decoder call serves both kinds.

Every sum and division is in float32, whatever the logits' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
FOCAL_WEIGHT = 20.0  # SAM: focal and dice at 20:1
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0
DICE_SMOOTH = 1.0  # the +1 of DETR's dice loss, which SAM's follows: defined for empty masks


def _pixel_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over the last two axes, weighted by ``valid`` (0 where a pixel does not count)."""
    return (values * valid).sum((-2, -1)) / jnp.maximum(valid.sum((-2, -1)), 1.0)


def sigmoid_focal_loss(
    logits: jax.Array, targets: jax.Array, valid: jax.Array,
    alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA,
) -> jax.Array:  # fmt: skip
    """Per mask (``[..., H, W]`` -> ``[...]``): the mean over valid pixels of
    ``alpha_t (1 - p_t)^gamma BCE(logit, target)`` (Lin et al.; SAM's alpha 0.25, gamma 2)."""
    x, t = logits.astype(jnp.float32), targets.astype(jnp.float32)
    p = jax.nn.sigmoid(x)
    bce = jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))  # stable BCE of logits
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = alpha * t + (1 - alpha) * (1 - t)
    return _pixel_mean(alpha_t * (1 - p_t) ** gamma * bce, valid.astype(jnp.float32))


def dice_loss(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Per mask: ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` over valid pixels."""
    p, t = jax.nn.sigmoid(logits.astype(jnp.float32)), targets.astype(jnp.float32)
    v = valid.astype(jnp.float32)
    inter = (p * t * v).sum((-2, -1))
    return 1 - (2 * inter + DICE_SMOOTH) / (
        (p * v).sum((-2, -1)) + (t * v).sum((-2, -1)) + DICE_SMOOTH
    )


def mask_iou(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """Per mask: IoU of ``logits > 0`` with ``targets > 0.5`` over valid pixels (0 when both
    are empty). No gradient: it is the IoU head's target."""
    pred, t = logits > 0, targets > 0.5
    v = valid > 0
    inter = (pred & t & v).sum((-2, -1)).astype(jnp.float32)
    union = ((pred | t) & v).sum((-2, -1)).astype(jnp.float32)
    return jax.lax.stop_gradient(inter / jnp.maximum(union, 1.0))


def sam_loss(
    logits: jax.Array,
    iou_pred: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    multi: jax.Array,
    weight: jax.Array,
    *,
    focal_weight: float = FOCAL_WEIGHT,
    dice_weight: float = DICE_WEIGHT,
    iou_weight: float = IOU_WEIGHT,
) -> dict[str, jax.Array]:
    """SAM's loss of P prompts.

    Args:
      logits: ``[P, 4, H, W]`` all of the decoder's masks, the single-mask one first.
      iou_pred: ``[P, 4]`` the IoU head's predictions.
      targets: ``[P, H, W]`` 0/1 target masks; valid: ``[P, H, W]`` pixel weights.
      multi: ``[P]`` bool: the prompt is ambiguous (masks 1..3, the best trained) or not
        (mask 0).
      weight: ``[P]`` prompt weights (0: padding, no instance).

    Returns:
      ``loss`` (the weighted mean over prompts of ``focal_weight * focal + dice_weight *
      dice`` of the trained mask plus ``iou_weight *`` the IoU head's squared error, averaged
      over the masks the prompt gets), the three terms so averaged (``focal``, ``dice``,
      ``iou_mse``: unweighted), ``chosen [P]`` (the trained mask's index) and ``iou [P, 4]``
      (each mask's actual IoU with the target).
    """
    t, v = targets[:, None], valid[:, None]
    focal = sigmoid_focal_loss(logits, t, v)  # [P, 4]
    dice = dice_loss(logits, t, v)
    iou = mask_iou(logits, t, v)
    squared = (iou_pred.astype(jnp.float32) - iou) ** 2
    per_mask = focal_weight * focal + dice_weight * dice
    best = 1 + jnp.argmin(per_mask[:, 1:], axis=1)
    chosen = jnp.where(multi, best, 0)

    def pick(x: jax.Array) -> jax.Array:
        return jnp.take_along_axis(x, chosen[:, None], axis=1)[:, 0]

    iou_mse = jnp.where(multi, squared[:, 1:].mean(1), squared[:, 0])
    w = weight.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)

    def mean(x: jax.Array) -> jax.Array:
        return (x * w).sum() / n

    terms = {"focal": mean(pick(focal)), "dice": mean(pick(dice)), "iou_mse": mean(iou_mse)}
    loss = mean(pick(per_mask) + iou_weight * iou_mse)
    return {"loss": loss, **terms, "chosen": chosen, "iou": iou}


def predicted_choice(iou_pred: jax.Array, multi: jax.Array) -> jax.Array:
    """``[P]``: the mask a user of the model gets: for an ambiguous prompt the one of masks
    1..3 with the highest predicted IoU (as ``SamPredictor``'s callers pick), else mask 0."""
    return jnp.where(multi, 1 + jnp.argmax(iou_pred[:, 1:], axis=1), 0)


__all__ = [
    "DICE_WEIGHT",
    "FOCAL_ALPHA",
    "FOCAL_GAMMA",
    "FOCAL_WEIGHT",
    "IOU_WEIGHT",
    "dice_loss",
    "mask_iou",
    "predicted_choice",
    "sam_loss",
    "sigmoid_focal_loss",
]
