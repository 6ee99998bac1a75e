"""Evaluation metrics, one implementation each.

Classification (``example_metrics``, ``batch_metrics``): behind the training eval step
(``training.steps.make_eval_step``) and folder evaluation (``inference.evaluate_folder``).
Segmentation (``confusion_counts``, ``iou_summary``): mIoU as MIT's ``SegIOU`` accumulates it,
behind segmentation evaluation and training.

Kept apart from both users so that neither drags in the other's imports (the training package,
or the zoo).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def example_metrics(logits: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """Per-example float32 ``[B]`` arrays: ``loss`` (plain cross-entropy, no smoothing),
    ``correct`` (top-1) and ``correct5`` (the label among the 5 largest logits, or among
    all of them with fewer classes).

    Args:
      logits: ``[B, K]`` in any float dtype (cast to float32 first, as for the loss).
      labels: ``[B]`` integer classes.
    """
    logits = logits.astype(jnp.float32)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
        "correct": (jnp.argmax(logits, -1) == labels).astype(jnp.float32),
        "correct5": (top5 == labels[:, None]).any(-1).astype(jnp.float32),
    }


def batch_metrics(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Sums over the unmasked examples, so that batches of different fill add up exactly:
    ``loss_sum``, ``correct``, ``correct5`` (see ``example_metrics``) and ``count``.

    ``mask``: ``[B]`` weights, 0 (or False) for padding; ``None`` counts every example.
    """
    mask = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    per = example_metrics(logits, labels)
    return {
        "loss_sum": (per["loss"] * mask).sum(),
        "correct": (per["correct"] * mask).sum(),
        "correct5": (per["correct5"] * mask).sum(),
        "count": mask.sum(),
    }


def confusion_counts(
    pred: jax.Array, target: jax.Array, num_classes: int, ignore_index: int = 255
) -> jax.Array:
    """Confusion matrix of one batch of label maps: ``[K, K]`` int32, row = target class,
    column = predicted class. Jit-able; counts of several batches add up.

    Pixels whose target is ``ignore_index`` or outside ``[0, K)`` are not counted (MIT's
    ``SegIOU`` zeroes them out of all three histograms), nor are predictions outside ``[0, K)``
    (an argmax never gives one).

    Args:
      pred: integer predicted classes, any shape.
      target: integer target classes, the same shape as ``pred``.
      num_classes: K.
      ignore_index: the target value that marks pixels to skip.
    """
    pred = jnp.asarray(pred).reshape(-1).astype(jnp.int32)
    target = jnp.asarray(target).reshape(-1).astype(jnp.int32)
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    valid &= (pred >= 0) & (pred < num_classes)
    # One flat bincount over target * K + pred: a scatter-add of K*K bins, far cheaper than
    # K one-hot comparisons per pixel at Cityscapes' 2 million pixels an image.
    index = jnp.where(valid, target * num_classes + pred, num_classes * num_classes)
    counts = jnp.bincount(index, length=num_classes * num_classes + 1)[:-1]
    return counts.reshape(num_classes, num_classes).astype(jnp.int32)


def iou_summary(counts) -> dict:
    """mIoU, pixel accuracy and per-class IoU of a confusion matrix summed over a dataset.

    As MIT's ``SegIOU`` and its evaluation script: per class, intersection (the diagonal) and
    union (target pixels + predicted pixels - intersection) are summed over the whole dataset
    first, and the class IoU is their ratio; mIoU is the mean over classes.

    A class with an empty union (neither in any target nor predicted anywhere) has IoU NaN, as
    MIT's ``intersection.sum / union.sum`` gives 0 / 0 = NaN; MIT's ``.mean()`` would then make
    the mIoU NaN too, whereas here the mIoU is the mean over the classes with a non-empty union
    (the same number whenever every class occurs, as on Cityscapes' and ADE20K's validation
    sets; NaN only if no class does).

    Returns:
      ``{"miou": float, "pixel_accuracy": float, "per_class_iou": np.ndarray [K] float64,
      "intersection": np.ndarray [K], "union": np.ndarray [K]}``; fractions in [0, 1].
    """
    counts = np.asarray(counts, dtype=np.int64)
    inter = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = inter / union  # float64; 0 / 0 = NaN for an empty union
    present = union > 0
    total = counts.sum()
    return {
        "miou": float(per_class[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(inter.sum() / total) if total else float("nan"),
        "per_class_iou": per_class,
        "intersection": inter,
        "union": union,
    }
