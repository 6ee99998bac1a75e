"""The MIT segmentation head on EfficientViT backbones: shapes, non-square inputs, a training step."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from efficientvit_jax.zoo.mit import MIT_CONFIGS
from efficientvit_jax.zoo.seg import SEG_HEADS, EfficientViTSeg

B0 = MIT_CONFIGS["efficientvit_b0"]
# a minimal backbone (one block per stage, still with attention stages): the train step's
# XLA compile on B0 costs ~45 s on 2 CPU cores; the head under test is the same
TINY = dataclasses.replace(
    B0, widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8, head_widths=(32, 32)
)


def test_non_square_output_shape_and_train_step_lowers_loss(random_variables: Any) -> None:
    """64x96 input -> [B, 64, 96, C]; one adam step on a fixed batch lowers the cross-entropy."""
    model = EfficientViTSeg(TINY, num_classes=5, head_width=16, head_depth=1, final_expand=2)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 3, 64, 96)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, size=(2, 64, 96)))
    # random values on eval_shape's tree: a jitted ``init`` costs ~25 s of XLA compile on
    # CPU (the RNG), the step below ~10 s; init itself is traced in the next test
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    variables = random_variables(shapes, 0)
    params, stats = variables["params"], variables["batch_stats"]
    assert set(params) == {"backbone", "head"} and "head" not in params["backbone"]
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)

    def loss_fn(p: Any, s: Any) -> tuple[jax.Array, Any]:
        logits, new = model.apply(
            {"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, new["batch_stats"])

    @jax.jit
    def step(p: Any, s: Any, o: Any) -> Any:
        (loss, (logits, s)), g = jax.value_and_grad(loss_fn, has_aux=True)(p, s)
        updates, o = opt.update(g, o, p)
        return optax.apply_updates(p, updates), s, o, loss, logits

    params, stats, opt_state, loss0, logits = step(params, stats, opt_state)
    assert logits.shape == (2, 64, 96, 5)
    assert np.isfinite(np.asarray(loss0))
    _, _, _, loss1, _ = step(params, stats, opt_state)
    # same batch, one adam step: a real decrease, not noise
    assert float(loss1) < float(loss0) - 1e-3, (float(loss0), float(loss1))


def test_published_head_shapes_without_compute() -> None:
    """MIT head presets build on their backbones (eval_shape: nothing is computed).

    One of each head form: MBConv + final_expand, FusedMBConv with expand 1, FusedMBConv + final_expand.
    """
    for key in [
        ("efficientvit_b0", "cityscapes"),
        ("efficientvit_l1", "cityscapes"),
        ("efficientvit_l1", "ade20k"),
    ]:
        name, kw = key[0], SEG_HEADS[key]
        model = EfficientViTSeg(MIT_CONFIGS[name], **kw)
        x = jax.ShapeDtypeStruct((1, 3, 64, 128), jnp.float32)
        out = jax.eval_shape(lambda x, m=model: m.init_with_output(jax.random.PRNGKey(0), x)[0], x)
        assert out.shape == (1, 64, 128, kw["num_classes"]), name


def test_indivisible_input_is_rejected() -> None:
    model = EfficientViTSeg(B0, num_classes=3, head_width=8, head_depth=1)
    with pytest.raises(ValueError, match="divisible by 32"):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 3, 64, 80)))
