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
