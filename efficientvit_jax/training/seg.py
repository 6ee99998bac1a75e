"""Segmentation in the training loop: the pixel loss, the held-out mIoU, the predictions plot.

The model's logits are at stride 8; the loss upsamples them to the crop (bilinear, PyTorch's
``align_corners=False``: ``zoo.seg.resize_logits``) rather than shrinking the labels to the
logits, as mmsegmentation's decode heads do. Shrinking a mask has no right answer (nearest
neighbour drops thin classes, a majority vote shifts edges) and would train the model on a
coarser task than the one scored; upsampled logits are scored at every labelled pixel, as
evaluation scores them. The cost is one ``[B, H, W, K]`` float32 tensor.

The held-out metrics are MIT's evaluation's (``metrics.confusion_counts`` and
``iou_summary``): the logits resized to the label's size bicubically (MIT's ``resize``), the
argmax, confusion counts summed over the whole split, then mIoU.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax.metrics import confusion_counts, iou_summary
from efficientvit_jax.training.job import Task
from efficientvit_jax.training.state import TrainState
from efficientvit_jax.training.steps import LossFn, Metrics
from efficientvit_jax.zoo.seg.model import resize_logits

IGNORE_INDEX = 255


def _classes_last(logits: jax.Array, data_format: str) -> jax.Array:
    return jnp.moveaxis(logits, 1, -1) if data_format == "NCHW" else logits


def pixel_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    data_format: str = "NHWC",
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """``(loss, pixel accuracy)``: mean softmax cross-entropy over the labelled pixels, in
    float32, and the fraction of them predicted right.

    Args:
      logits: the model's stride-8 output, ``[B, h, w, K]`` (``NHWC``) or ``[B, K, h, w]``,
        any float dtype; upsampled bilinearly to the labels' size (see the module).
      labels: ``[B, H, W]`` integer classes; ``ignore_index`` (and any value outside
        ``[0, K)``) counts nowhere.
      label_smoothing: mass spread uniformly over the ``K`` classes (0: none).
      mask: ``[B]`` weights, 0 for a padded or skipped image (all its pixels ignored).
    """
    size = labels.shape[1:3]
    logits = resize_logits(logits.astype(jnp.float32), size, data_format=data_format,
                           method="bilinear")  # fmt: skip
    logits = _classes_last(logits, data_format)
    k = logits.shape[-1]
    valid = (labels != ignore_index) & (labels >= 0) & (labels < k)
    if mask is not None:
        valid &= mask.astype(bool)[:, None, None]
    target = jnp.where(valid, labels, 0).astype(jnp.int32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    # Smoothing as optax.smooth_labels: targets (1 - a) one-hot + a / K.
    losses = (1 - label_smoothing) * nll - label_smoothing * logp.mean(-1)
    weight = valid.astype(jnp.float32)
    n = jnp.maximum(weight.sum(), 1.0)
    correct = (jnp.argmax(logits, -1) == target).astype(jnp.float32)
    return (losses * weight).sum() / n, (correct * weight).sum() / n


def seg_loss(
    data_format: str, *, ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0
) -> LossFn:
    """The ``steps.LossFn`` of segmentation: ``pixel_cross_entropy`` of ``batch["labels"]``
    (``[B, H, W]``), weighted by ``batch["mask"]``."""

    def loss(logits: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        return pixel_cross_entropy(
            logits, batch["labels"], data_format=data_format, ignore_index=ignore_index,
            label_smoothing=label_smoothing, mask=batch.get("mask"),
        )  # fmt: skip

    return loss


def make_seg_eval_step(
    model: Any, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Callable[[TrainState, Mapping[str, jax.Array]], Metrics]:
    """A jitted ``(state, batch) -> sums`` of one held-out batch (``images`` at the model's
    input size, ``labels`` ``[B, H, W]`` at the image's own): ``confusion`` ``[K, K]``,
    ``loss_sum`` (plain cross-entropy over labelled pixels), ``pixels`` and ``count`` (the
    unmasked images). Sums of batches add up exactly."""
    fmt = model.config.data_format

    def eval_step(state: TrainState, batch: Mapping[str, jax.Array]) -> Metrics:
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        logits = model.apply(variables, batch["images"], train=False).astype(jnp.float32)
        labels = batch["labels"]
        logits = _classes_last(resize_logits(logits, labels.shape[1:3], data_format=fmt), fmt)
        keep = batch.get("mask", jnp.ones(labels.shape[0], bool)).astype(bool)[:, None, None]
        valid = keep & (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
        target = jnp.where(valid, labels, ignore_index)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
        return {
            "confusion": confusion_counts(
                jnp.argmax(logits, -1), target, num_classes, ignore_index
            ),
            "loss_sum": (nll * valid).sum(),
            "pixels": valid.sum().astype(jnp.float32),
            "count": keep.sum().astype(jnp.float32),
        }

    return jax.jit(eval_step)


def evaluate_seg(
    eval_step: Callable[[TrainState, Mapping[str, jax.Array]], Metrics],
    state: TrainState,
    batches: Any,
) -> dict[str, Any]:
    """``eval_step`` over the held-out batches: ``loss`` (per labelled pixel), ``accuracy``
    (pixel accuracy), ``miou``, ``per_class_iou`` (``None`` for a class in no label and no
    prediction) and ``count`` (images)."""
    confusion, sums = None, {"loss_sum": 0.0, "pixels": 0.0, "count": 0.0}
    for batch in batches:
        m = jax.device_get(eval_step(state, batch))
        c = np.asarray(m["confusion"], np.int64)
        confusion = c if confusion is None else confusion + c
        for k in sums:
            sums[k] += float(m[k])
    if confusion is None:
        raise ValueError("the held-out split gave no batch")
    s = iou_summary(confusion)
    return {
        "loss": sums["loss_sum"] / max(sums["pixels"], 1.0),
        "accuracy": s["pixel_accuracy"],
        "miou": s["miou"],
        "per_class_iou": [None if math.isnan(v) else float(v) for v in s["per_class_iou"]],
        "count": int(sums["count"]),
    }


def segmentation_task(
    model: Any,
    num_classes: int,
    *,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    finish: Callable[..., Any] | None = None,
) -> Task:
    """The ``job.Task`` of a segmentation run: ``seg_loss``, the mIoU evaluation, mIoU as
    the score (which weights are best, the final line), and ``finish`` (the predictions
    plot)."""
    fmt = model.config.data_format
    return Task(
        loss_fn=seg_loss(fmt, ignore_index=ignore_index, label_smoothing=label_smoothing),
        make_eval_step=lambda m: make_seg_eval_step(m, num_classes, ignore_index),
        evaluate=evaluate_seg,
        score="miou",
        finish=finish,
    )


def predictions_plot(
    model: Any, samples: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]],
    classes: tuple[str, ...], colors: Any,
) -> Callable[[Any, str, bool], None]:  # fmt: skip
    """A ``Task.finish``: ``workdir/predictions.png``, a few held-out images with their true
    and predicted masks. ``samples()`` gives ``(pixels uint8 [n, H, W, 3], model inputs,
    labels [n, H, W])``. Every process calls it (gathering a sharded state is collective);
    the main one draws."""
    from efficientvit_jax.training import sharding
    from efficientvit_jax.training.report import plot_segmentations

    fmt = model.config.data_format

    @functools.partial(jax.jit, static_argnums=2)  # one program, not one per operation
    def predict(variables: Any, inputs: jax.Array, size: tuple[int, int]) -> jax.Array:
        logits = model.apply(variables, inputs, train=False).astype(jnp.float32)
        return jnp.argmax(_classes_last(resize_logits(logits, size, data_format=fmt), fmt), -1)

    def finish(state: Any, workdir: str, main: bool) -> None:
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        variables = sharding.to_host(variables)
        if not main:
            return
        pixels, inputs, labels = samples()
        predicted = np.asarray(predict(variables, inputs, labels.shape[1:3]))
        path = os.path.join(workdir, "predictions.png")
        plot_segmentations(path, pixels, labels, predicted, classes, colors)
        print(f"wrote {path}")

    return finish


__all__ = [
    "evaluate_seg",
    "make_seg_eval_step",
    "pixel_cross_entropy",
    "predictions_plot",
    "seg_loss",
    "segmentation_task",
]
