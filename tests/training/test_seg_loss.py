"""The segmentation loss and held-out metrics against explicit references: NumPy cross-entropy
with an ignore index, PyTorch's bilinear upsampling + ``cross_entropy(ignore_index=255)``
(what mmsegmentation trains with), and mIoU from a confusion matrix counted in NumPy."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax.training.seg import evaluate_seg, make_seg_eval_step, pixel_cross_entropy
from efficientvit_jax.training.state import TrainState

K = 5


def _data(seed: int, size: tuple[int, int], b: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (b, *size, K)).astype(np.float32)
    labels = rng.integers(0, K, (b, *size))
    labels[rng.random((b, *size)) < 0.3] = 255  # ignored pixels
    return logits, labels.astype(np.int32)


def _numpy_ce(logits: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> float:
    """Mean over labelled pixels of -sum(target * log softmax), targets smoothed uniformly."""
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    keep = labels != 255
    lp, y = logp[keep], labels[keep]
    target = np.full(lp.shape, smoothing / K)
    target[np.arange(len(y)), y] += 1 - smoothing
    return float(-(target * lp).sum(-1).mean())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_at_the_labels_size_is_numpy_cross_entropy_with_ignore(smoothing: float) -> None:
    logits, labels = _data(0, (8, 8))
    loss, acc = pixel_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), label_smoothing=smoothing
    )
    np.testing.assert_allclose(float(loss), _numpy_ce(logits, labels, smoothing), rtol=1e-5)
    keep = labels != 255
    np.testing.assert_allclose(float(acc), (logits.argmax(-1) == labels)[keep].mean(), rtol=1e-6)


def test_masked_images_count_nowhere() -> None:
    logits, labels = _data(1, (8, 8), b=4)
    mask = np.array([1, 0, 1, 0], bool)
    loss, _ = pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), mask=jnp.asarray(mask))
    np.testing.assert_allclose(float(loss), _numpy_ce(logits[mask], labels[mask]), rtol=1e-5)
    all_ignored = np.full_like(labels, 255)
    loss, acc = pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(all_ignored))
    assert float(loss) == 0.0 and float(acc) == 0.0  # no pixel: no NaN


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_stride_8_logits_are_upsampled_as_torch_does(data_format: str) -> None:
    torch = pytest.importorskip("torch")
    logits, _ = _data(2, (4, 6))
    _, labels = _data(3, (32, 48))
    x = torch.from_numpy(logits).permute(0, 3, 1, 2)
    up = torch.nn.functional.interpolate(x, size=(32, 48), mode="bilinear", align_corners=False)
    y = torch.from_numpy(labels).long()
    ref = torch.nn.functional.cross_entropy(up, y, ignore_index=255, label_smoothing=0.1)
    given = logits if data_format == "NHWC" else logits.transpose(0, 3, 1, 2)
    loss, _ = pixel_cross_entropy(
        jnp.asarray(given), jnp.asarray(labels), data_format=data_format, label_smoothing=0.1
    )
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    # bfloat16 logits (a bf16 run): the loss is still computed in float32
    loss16, _ = pixel_cross_entropy(
        jnp.asarray(given, jnp.bfloat16), jnp.asarray(labels), data_format=data_format,
        label_smoothing=0.1,
    )  # fmt: skip
    assert loss16.dtype == jnp.float32 and abs(float(loss16) - float(ref)) < 0.02


@dataclasses.dataclass(frozen=True)
class _Config:
    data_format: str = "NHWC"


class _LogitsAsImages:
    """A "model" whose logits are its input (already at the labels' size)."""

    config = _Config()

    def apply(self, variables: Any, x: jax.Array, train: bool = False) -> jax.Array:
        return x


def test_held_out_miou_is_the_confusion_counted_in_numpy() -> None:
    batches, confusion = [], np.zeros((K, K), np.int64)
    for seed in range(3):
        logits, labels = _data(10 + seed, (8, 8), b=4)
        mask = np.array([1, 1, 1, seed != 2], bool)  # the last batch padded
        batches.append({"images": logits, "labels": labels, "mask": mask})
        keep = (labels != 255) & mask[:, None, None]
        np.add.at(confusion, (labels[keep], logits.argmax(-1)[keep]), 1)
    state = TrainState(jnp.zeros((), jnp.int32), {}, (), jax.random.PRNGKey(0))
    out = evaluate_seg(make_seg_eval_step(_LogitsAsImages(), K), state, batches)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    np.testing.assert_allclose(out["miou"], (inter / union).mean(), rtol=1e-12)
    np.testing.assert_allclose(out["accuracy"], inter.sum() / confusion.sum(), rtol=1e-12)
    np.testing.assert_allclose(out["per_class_iou"], inter / union, rtol=1e-12)
    assert out["count"] == 11
