"""A segmentation run through ``efficientvit-jax train``: its run folder, ``load_run`` giving
the model that scored the run's mIoU, and an interrupted run resumed to the same bits.

One tiny dataset (digits-seg, 32 px canvases) and two invocations shared by the module's
tests: a straight run of 4 steps (2 epochs, EMA, the whole augmentation recipe, 2 decoding
threads, checkpoints at steps 1 and 4), and a copy of its folder cut back to step 1 then
resumed to the end. The two compile the same programs (the persistent compilation cache
serves the second). A third run, on a mesh of two simulated devices, takes the same steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from PIL import Image

from efficientvit_jax import load_run
from efficientvit_jax.cli import main
from efficientvit_jax.data import digits_seg
from efficientvit_jax.data.seg_augment import IMAGENET_MEAN, IMAGENET_STD
from efficientvit_jax.data.segmentation import find_seg_dataset
from efficientvit_jax.zoo.seg import EfficientViTSeg, resize_logits

pytestmark = [pytest.mark.xdist_group("seg_runs"), pytest.mark.slow]

MODEL = "efficientvit_seg_b0_cityscapes"


@pytest.fixture(scope="module")
def data(tmp_path_factory: Any) -> str:
    spec = digits_seg.Spec(canvas=32, train=16, val=5, scales=(2.0, 4.0))
    return digits_seg.generate(str(tmp_path_factory.mktemp("seg") / "data"), spec)


def _argv(data: str, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--data", data, "--model", MODEL, "--image-size", "32", "--batch-size", "8",
        "--eval-batch-size", "4", "--epochs", "2", "--ema-decay", "0.9", "--workers", "2",
        "--learning-rate", "1e-2", "--remat", "block", "--no-progress", "-o", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def runs(data: str, tmp_path_factory: Any, interrupted_copy: Any) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    straight = root / "straight"
    assert main(_argv(data, straight, "--save-every", "3")) == 0  # checkpoints 3 and 4
    # The run as a Ctrl-C after step 3 leaves it: step 3 saved, nothing after (mid-epoch 2).
    resumed = interrupted_copy(straight, root / "resumed", 3)
    assert main(["train", "--resume", "--no-progress", "-o", str(resumed)]) == 0
    return straight, resumed


def _metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


def test_resume_is_bit_exact(runs: tuple[Path, Path], tree_equal: Any) -> None:
    a, b = (_metrics(r) for r in runs)
    assert len(a["step_losses"]) == 4 and a["step_losses"] == b["step_losses"]
    assert b["steps_this_run"] == 1 and a["steps_this_run"] == 4
    for k in ("test_loss", "test_miou", "test_ema_miou", "test_per_class_iou"):
        assert a[k] == b[k], k
    assert tree_equal(load_run(runs[0]).variables, load_run(runs[1]).variables)
    assert tree_equal(load_run(runs[0], ema=True).variables, load_run(runs[1], ema=True).variables)


def test_the_run_folder_describes_a_segmentation_run(runs: tuple[Path, Path]) -> None:
    run = runs[0]
    assert {"curves.png", "predictions.png", "run.json", "config.json"} <= {
        p.name for p in run.iterdir()
    }
    info = json.loads((run / "run.json").read_text())
    assert info["task"] == "segmentation" and info["layout"] == "generic"
    assert info["classes"] == list(digits_seg.CLASSES) and info["ignore_index"] == 255
    m = _metrics(run)
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    assert all(0 <= h["test_miou"] <= 1 for h in m["history"])
    assert len(m["test_per_class_iou"]) == 11 and m["best"] in ("raw", "ema")
    with Image.open(run / "predictions.png") as im:
        assert im.width > 300 and im.height > 300


def test_load_run_gives_the_model_that_scored_the_run(runs: tuple[Path, Path], data: str) -> None:
    """The run's final held-out mIoU, recomputed here from ``load_run``'s model: the val images
    normalised in NumPy, the logits resized to the labels (bicubic, MIT's evaluation), the
    confusion matrix counted in NumPy."""
    loaded = load_run(runs[0])
    assert isinstance(loaded.model, EfficientViTSeg) and loaded.classes == digits_seg.CLASSES
    assert loaded.model.config.num_classes == 11
    val = find_seg_dataset(data, "val")
    pixels = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in val.images])
    x = ((pixels - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2)  # the model is NCHW
    labels = np.stack([np.asarray(Image.open(p)) for p in val.masks]).astype(np.int64)
    logits = jax.jit(loaded.model.apply)(loaded.variables, x)
    predicted = np.asarray(resize_logits(logits, (32, 32), data_format="NCHW")).argmax(1)
    confusion = np.zeros((11, 11), np.int64)
    keep = labels != 255
    np.add.at(confusion, (labels[keep], predicted[keep]), 1)
    inter, union = np.diag(confusion), confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    miou = (inter[union > 0] / union[union > 0]).mean()
    np.testing.assert_allclose(miou, _metrics(runs[0])["test_miou"], rtol=1e-6)
    assert jax.tree.structure(loaded.variables) == jax.tree.structure(
        load_run(runs[0], ema=True).variables
    )


def test_remat_is_the_run_s_own_and_kept_on_resume(runs: tuple[Path, Path]) -> None:
    """``--remat`` with ``--model`` is the zoo model's (recorded, used, kept by ``--resume``);
    the bit-exact resume above ran with it."""
    for run in runs:
        assert load_run(run).config.model.remat == "block"
        assert load_run(run).model.config.remat == "block"


def test_a_run_on_a_two_device_mesh_steps_as_on_one(
    data: str, runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Segmentation shards as classification does: the same run on a mesh of 2 (simulated) CPU
    devices, each holding half of every batch, takes the same first 2 steps as the one-device
    run (the per-pixel loss summed across devices: equal to float32 rounding)."""
    out = tmp_path / "mesh"
    # a fresh process: the CPU device count must be set before JAX starts
    argv = [*_argv(data, out, "--max-steps", "2"), "--cpu-devices", "2", "--mesh", "data=2"]
    proc = subprocess.run(
        [sys.executable, "-m", "efficientvit_jax.cli", *argv],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 devices (2 local) in 1 process(es); mesh data=2 fsdp=1" in proc.stdout
    mesh, one = _metrics(out), _metrics(runs[0])
    assert mesh["step"] == 2
    np.testing.assert_allclose(mesh["step_losses"], one["step_losses"][:2], rtol=1e-5)
