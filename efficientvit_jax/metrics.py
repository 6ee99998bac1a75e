"""Classification metrics of one batch of logits: the one implementation behind the training
eval step (``training.steps.make_eval_step``) and folder evaluation
(``inference.evaluate_folder``).

Kept apart from both so that neither drags in the other's imports (the training package,
or the zoo).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
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
