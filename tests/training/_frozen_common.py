"""Shared by test_frozen and its mesh worker: a tiny BatchNorm model fine-tuned with a frozen
backbone, and the check that the backbone (weights and statistics) did not move.

Imported by the worker after it set the device count, and by the test through importlib.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from efficientvit_jax.training import TrainState, finetune, make_optimizer
from efficientvit_jax.training import precision as prec
from efficientvit_jax.zoo.mit import MIT_CONFIGS, EfficientViTMIT

# B0's blocks (MBConv, LiteMLA, BatchNorm everywhere) with tiny widths and one attention
# stage: the step compiles in seconds.
TINY = dataclasses.replace(
    MIT_CONFIGS["efficientvit_b0"],
    widths=(8, 8, 16, 16, 32),
    depths=(0, 1, 1, 1, 1),
    stage_kinds=("mbconv", "mbconv", "mbconv", "attention"),
    head_dim=8,
    head_widths=(32, 32),
    num_classes=4,
)
BATCH = 8
SIZE = 32
STEPS = 3


def scale_setup(precision: str, data: int = 1, fsdp: int = 1) -> Any:
    """The ``distributed.ScaleSetup`` the CLI would make for ``--precision`` and ``--mesh``
    (loss scaling for float16 only); ``min_fsdp_size`` 64 splits the tiny model's kernels."""
    from efficientvit_jax.training import distributed, sharding

    loss_scale = {"init_scale": 2.0**8, "growth_interval": 2000}  # fp16's backward holds it
    return distributed.ScaleSetup(
        mesh=sharding.make_mesh(data=data, fsdp=fsdp),
        fsdp=fsdp > 1,
        min_fsdp_size=64,
        precision=precision,
        model_options=prec.dtype_options(precision),
        loss_scale=loss_scale if precision == "float16" else None,
        multiprocess=False,
        process_index=0,
        process_count=1,
    )


def setup(precision: str, data: int = 1, fsdp: int = 1) -> tuple[Any, Any, Any, list[str]]:
    """``(state, train_step, batch, head)`` of a frozen-backbone run, made as the job makes
    them: the CLI's optimizer (AdamW with weight decay on the head, nothing on the backbone)
    wrapped by the setup (loss scale for float16), the step from ``job._steps`` with the
    CLI's ``Tuning`` (evaluation mode, the head's gradients alone)."""
    from efficientvit_jax.training import job

    setup = scale_setup(precision, data, fsdp)
    model = EfficientViTMIT(dataclasses.replace(TINY, **setup.model_options))
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.normal(size=(BATCH, 3, SIZE, SIZE)).astype(np.float32),
        "labels": rng.integers(0, TINY.num_classes, BATCH).astype(np.int32),
    }
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, SIZE, SIZE)))
    head = finetune.classifier_paths(shapes["params"], TINY.num_classes)
    # No warm-up: the first learning rate would be 0 and the head would not move either.
    adamw = make_optimizer(1e-2, total_steps=10, warmup_steps=0, weight_decay=0.05)
    optimizer = setup.wrap_optimizer(
        finetune.finetune_optimizer(adamw, None, shapes["params"], head)
    )
    variables = _draw(shapes, rng)  # NumPy, not model.init: its compilation costs seconds
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        opt_state=optimizer.init(variables["params"]),
        rng=jax.random.PRNGKey(0),
        batch_stats=variables["batch_stats"],
    )
    tuning = job.Tuning(frozen_backbone=True, trainable=lambda p: finetune.head_mask(p, head))
    state, step = job._steps(model, optimizer, state, setup, None, tuning)
    return state, step, batch, head


def _draw(shapes: Any, rng: np.random.Generator) -> Any:
    """Well-conditioned random variables; "loaded" statistics away from the initial 0 / 1,
    as a pretrained backbone's are."""

    def draw(path: Any, leaf: Any) -> jax.Array:
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']") or name.endswith("['var']"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 10
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def check(before: Any, after: Any, head: list[str]) -> dict[str, Any]:
    """What moved between two host copies of a state: backbone leaves and statistics that
    are not bit-identical (names), head leaves that are (names), and the counts."""
    p0, p1 = _flat(before.params), _flat(after.params)
    is_head = {p: any(p.startswith(h + "/") for h in head) for p in p0}
    s0, s1 = _flat(before.batch_stats), _flat(after.batch_stats)
    return {
        "backbone_moved": [p for p in p0 if not is_head[p] and not _same_bits(p0[p], p1[p])],
        "stats_moved": [p for p in s0 if not _same_bits(s0[p], s1[p])],
        "head_still": [p for p in p0 if is_head[p] and np.array_equal(p0[p], p1[p])],
        "n_backbone": sum(not h for h in is_head.values()),
        "n_head": sum(is_head.values()),
        "n_stats": len(s0),
    }


def host(tree: Any) -> Any:
    """NumPy copies (the donating steps delete the buffers they were given)."""
    return jax.tree.map(np.asarray, tree)
