"""Pretrained models on images: load a tag's weights, class probabilities, folder evaluation.

``load_pretrained("efficientvit_b1.r288_in1k", "model.safetensors")`` gives ``(model,
variables)`` from a timm checkpoint or a ``convert`` folder (without the file: the tag's
published weights, from the Hugging Face Hub's cache); ``Classifier`` runs it jitted at
a fixed batch size (one compilation) and ``evaluate_folder`` measures top-1, top-5 and the
loss over a ``data.ImageLoader``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax import zoo
from efficientvit_jax.metrics import example_metrics


def load_pretrained(
    name: str, weights: str | os.PathLike | None = None, *, num_classes: int | None = None
) -> tuple[Any, dict[str, Any]]:
    """``(module, variables)`` of zoo model or tag ``name`` with ``weights``: a timm checkpoint
    file (``.safetensors`` or PyTorch zip) or a folder written by ``efficientvit-jax convert``;
    ``None``: the tag's published weights, from the Hugging Face Hub's cache (downloaded into
    it on first use; ``zoo.hub``).

    Weights of another variant, or a head of another size than ``num_classes`` (default:
    the tag's), raise ``ValueError`` naming the mismatching tensors.
    """
    # unknown model or tag: one line listing the known ones; another task's model: its command
    zoo.registry.check_task(name, ("classification",), "predict")
    overrides = {} if num_classes is None else {"num_classes": num_classes}
    if weights is None:
        return zoo.create_model(name, pretrained=True, **overrides)
    weights = os.fspath(weights)
    if not os.path.exists(weights):
        raise ValueError(f"--weights {weights}: no such file or folder")
    if os.path.isdir(weights):
        return zoo.converted.load_converted_as(name, weights, **overrides)
    return zoo.create_model(name, **overrides), zoo.load_timm_weights(weights, name, **overrides)


@dataclasses.dataclass
class Classifier:
    """A model and its variables as one jitted ``images -> float32 logits`` function.

    Batches are padded to ``batch_size`` so the function compiles once.
    """

    model: Any
    variables: dict[str, Any]
    batch_size: int = 32

    def __post_init__(self) -> None:
        def logits(variables: Any, images: jax.Array) -> jax.Array:
            return self.model.apply(variables, images, train=False).astype(jnp.float32)

        def metrics(variables: Any, images: jax.Array, labels: jax.Array) -> dict:
            return example_metrics(logits(variables, images), labels)

        self._logits = jax.jit(logits)
        self._metrics = jax.jit(metrics)  # compiled once per classifier, not per evaluation

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_classes)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits of any number of images (padded and cut to ``batch_size`` chunks)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            pad = self.batch_size - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self._logits(self.variables, chunk))[: self.batch_size - pad])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def example_metrics(self, images: np.ndarray, labels: np.ndarray) -> dict[str, jax.Array]:
        """``metrics.example_metrics`` of one batch of exactly ``batch_size`` images (pad it:
        another size compiles again), as device arrays not yet read back, so that the host
        can prepare the next batch while the device runs this one."""
        return self._metrics(self.variables, images, labels)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Softmax of the logits, in float64 on the host so that they sum to 1 exactly."""
        z = self.logits(images).astype(np.float64)
        z -= z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)


def top_k(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest entries of each row, largest first (ties: lower index)."""
    return np.argsort(-probabilities, axis=-1, kind="stable")[..., :k]


def evaluate_folder(
    classifier: Classifier,
    batches: Iterable[Any],
    num_labels: int,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Top-1, top-5, mean loss and per-class accuracy over ``data.loader.Batch`` objects.

    Padded and skipped entries (``mask`` False) count nowhere. ``progress(n)`` is called
    with the number of images of each batch. The host decodes the next batches while the
    device runs this one (JAX dispatch is asynchronous; results are read one batch late).
    """
    correct1, correct5 = np.zeros(num_labels), np.zeros(num_labels)
    seen, loss_sum, waited = np.zeros(num_labels), 0.0, 0.0
    inflight = None

    def collect(item: Any) -> None:
        nonlocal loss_sum
        per, labels, mask = item
        per = {k: np.asarray(v)[mask] for k, v in per.items()}  # padding and skipped files out
        y = labels[mask]
        np.add.at(seen, y, 1)
        np.add.at(correct1, y, per["correct"])
        np.add.at(correct5, y, per["correct5"])
        loss_sum += float(per["loss"].astype(np.float64).sum())
        if progress is not None:
            progress(int(mask.sum()))

    t0 = time.perf_counter()
    it = iter(batches)
    while True:
        t_wait = time.perf_counter()
        batch = next(it, None)
        waited += time.perf_counter() - t_wait
        if batch is None:
            break
        out = classifier.example_metrics(batch.images, batch.labels)
        if inflight is not None:
            collect(inflight)
        inflight = (out, batch.labels, batch.mask.astype(bool))
    if inflight is not None:
        collect(inflight)
    wall = time.perf_counter() - t0
    n = int(seen.sum())
    return {
        "top1": float(correct1.sum() / max(n, 1)),
        "top5": float(correct5.sum() / max(n, 1)),
        "loss": loss_sum / max(n, 1),
        "count": n,
        "images_per_second": n / wall if wall > 0 else 0.0,
        "data_wait_fraction": waited / wall if wall > 0 else 0.0,
        "per_class": {
            int(y): {"count": int(seen[y]), "top1": float(correct1[y] / seen[y])}
            for y in np.flatnonzero(seen)
        },
    }
