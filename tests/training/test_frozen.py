"""``--freeze-backbone`` holds in every train-step variant: after a few steps the backbone's
weights and BatchNorm statistics are bit-identical to the loaded ones, while the head trains.

Each step is made by ``job._steps``, as the CLI makes it: the plain jitted step (float32,
bfloat16), the loss-scaled float16 step, and the sharded step on a 2-device CPU mesh (data
parallel, FSDP, float16) in a subprocess (``_frozen_worker.py``). The optimizer is the CLI's
(weight decay on the head, nothing on the backbone; float16 wraps it in the loss scale).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"evit_test_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


frozen = _load("_frozen_common")


def _assert_frozen(moved: dict[str, Any]) -> None:
    assert moved["n_backbone"] > 0 and moved["n_stats"] > 0 and moved["n_head"] == 2
    assert moved["backbone_moved"] == []
    assert moved["stats_moved"] == []
    assert moved["head_still"] == []  # the head did train: the check can fail


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float16"])
def test_one_device_step_keeps_the_backbone(precision: str) -> None:
    state, step, batch, head = frozen.setup(precision)
    before = frozen.host(state)
    finite = []
    for _ in range(frozen.STEPS):
        state, m = step(state, batch)
        finite.append(float(m.get("finite", 1.0)))
    assert finite == [1.0] * frozen.STEPS  # real updates, none skipped
    if precision == "float16":
        assert "loss_scale" in m  # the loss-scaled step ran
    _assert_frozen(frozen.check(before, frozen.host(state), head))


@pytest.fixture(scope="module")
def two_devices() -> dict[str, Any]:
    h = _load("_subprocess")
    [(rc, out, result)] = h.run_workers("_frozen_worker.py", [[]], timeout=900, env=h.worker_env())
    assert rc == 0 and result is not None, out[-4000:]
    assert result["devices"] == 2
    return result


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dp", "fsdp", "dp_fp16"])
def test_sharded_step_keeps_the_backbone(two_devices: dict[str, Any], variant: str) -> None:
    moved = two_devices[variant]
    _assert_frozen(moved)
    assert moved["finite"] == 1.0
    assert moved["loss_scaled"] == (variant == "dp_fp16")
    if variant == "fsdp":
        assert moved["n_fsdp_split"] > 0  # some parameters really were split


def test_head_only_gradients_equal_the_full_steps_and_skip_the_backbones_backward() -> None:
    """The frozen step differentiates the head alone: its update equals the step that takes
    every gradient (and lets the optimizer zero the backbone's), its ``grad_norm`` is the
    norm of the head's gradient computed on its own, and its program does far less work."""
    import jax
    import numpy as np
    import optax

    from efficientvit_jax.training import finetune, steps

    state, _, batch, head = frozen.setup("float32")
    model = frozen.EfficientViTMIT(frozen.TINY)
    optimizer = finetune.finetune_optimizer(
        steps.make_optimizer(1e-2, total_steps=10, warmup_steps=0), None, state.params, head
    )
    state = state.replace(opt_state=optimizer.init(state.params))
    mask = finetune.head_mask(state.params, head)
    make = dict(frozen_backbone=True, donate=False)
    head_only = steps.make_train_step(model, optimizer, trainable=mask, **make)
    head_only = head_only.lower(state, batch).compile()
    every = steps.make_train_step(model, optimizer, **make).lower(state, batch).compile()
    new, m = head_only(state, batch)
    ref, _ = every(state, batch)
    a, b = frozen._flat(new.params), frozen._flat(ref.params)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], rtol=1e-5, atol=1e-7, err_msg=path)
    assert frozen.check(frozen.host(state), frozen.host(new), head)["head_still"] == []

    # The head's gradient on its own: the backbone's features held as data.
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    fc = state.params["head"]["fc"]

    def head_loss(fc_params: dict) -> jax.Array:
        params = {**state.params, "head": {**state.params["head"], "fc": fc_params}}
        logits = model.apply({**variables, "params": params}, batch["images"], train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    want = optax.tree.norm(jax.jit(jax.grad(head_loss))(fc))
    np.testing.assert_allclose(float(m["grad_norm"]), float(want), rtol=1e-5)

    flops = [step.cost_analysis()["flops"] for step in (head_only, every)]
    # Measured on the tiny model: 4.6 against 17.2 MFLOP (the forward and the head's backward
    # are left).
    assert flops[0] < 0.6 * flops[1], flops
