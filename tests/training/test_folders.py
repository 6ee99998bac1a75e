"""Folder training: the pipeline's determinism and sharding, splits, digits as PNG folders,
fine-tuning from timm checkpoints, exact resume, and every bad input of ``train --data``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from efficientvit_jax.cli import main
from efficientvit_jax.data.pipeline import TrainPipeline
from efficientvit_jax.training.folders import find_splits, stratified_split

TINY = ["--patch-size", "4", "--embed-dim", "8", "--depths", "1,1", "--num-heads", "2,2"]


def _tagged(path: str, rng: np.random.Generator) -> np.ndarray:
    """A fake augmentation that records which file and which random draw made the image."""
    return np.array([float(os.path.basename(path).split(".")[0]), rng.random()], np.float32)


def _pipe(**kw: Any) -> TrainPipeline:
    samples = [(f"{i}.png", i % 3) for i in range(23)]
    return TrainPipeline(samples, _tagged, **{"batch_size": 4, "seed": 5, **kw})


def _epoch(pipe: TrainPipeline, epoch: int, start: int = 0) -> list[np.ndarray]:
    return [b["images"] for b in pipe.epoch(epoch, start)]


def test_same_seed_and_epoch_give_the_same_batches_whatever_the_workers() -> None:
    a = _epoch(_pipe(workers=0), 1)
    b = _epoch(_pipe(workers=2), 1)
    assert len(a) == 5  # 23 images, batch 4: the short batch is dropped
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    files = np.concatenate(a)[:, 0]
    assert len(set(files)) == 20  # no file twice in an epoch
    other = np.concatenate(_epoch(_pipe(), 2))[:, 0]
    assert not np.array_equal(files, other)  # another epoch, another order
    np.testing.assert_array_equal(np.stack(_epoch(_pipe(), 1, start=3)), np.stack(a[3:]))


def test_processes_read_disjoint_rows_of_the_global_batch() -> None:
    whole = np.stack(_epoch(_pipe(), 0))
    parts = [np.stack(_epoch(_pipe(process_index=i, process_count=2), 0)) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    with pytest.raises(ValueError, match="batch size 4 is not divisible by the 3 processes"):
        _pipe(process_count=3)


def test_stratified_split_is_fixed_and_per_class() -> None:
    samples = [(f"{c}/{i}.png", c) for c in range(3) for i in range(10)]
    tr, va = stratified_split(samples, 0.2)
    assert stratified_split(samples, 0.2) == (tr, va)
    assert sorted(y for _, y in va) == [0, 0, 1, 1, 2, 2]
    assert set(tr) | set(va) == set(samples) and not set(tr) & set(va)


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: Any, image_files: dict, make_class_tree: Any) -> str:
    """train/ and val/ with three classes of photos (12 train, 6 val)."""
    root = str(tmp_path_factory.mktemp("photos"))
    kinds = sorted(image_files)
    for split, n in (("train", 4), ("val", 2)):
        make_class_tree(
            os.path.join(root, split),
            {c: [image_files[kinds[(3 * j + i) % len(kinds)]] for j in range(n)]
             for i, c in enumerate(("ant", "bee", "cat"))},
        )  # fmt: skip
    return root


def test_train_val_class_mismatch_is_named(tmp_path: Any, photo_tree: str, capsys: Any) -> None:
    import shutil

    shutil.copytree(photo_tree, tmp_path / "d")
    os.rename(tmp_path / "d" / "val" / "cat", tmp_path / "d" / "val" / "cow")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tmp_path / "d"), *TINY, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "only in train/: ['cat']; only in val/: ['cow']" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_find_splits(photo_tree: str) -> None:
    s = find_splits(photo_tree)
    assert s.classes == ("ant", "bee", "cat") and len(s.train) == 12 and len(s.val) == 6
    assert sorted({y for _, y in s.train}) == [0, 1, 2]


def _train(out: Any, data: str, *extra: str) -> int:
    argv = ["train", "--data", data, "--image-size", "32", *TINY, "--batch-size", "4"]
    return main([*argv, "--eval-batch-size", "4", "--no-progress", "-o", str(out), *extra])


@pytest.mark.slow
def test_resume_mid_epoch_is_exact_with_workers(tmp_path: Any, photo_tree: str) -> None:
    """6 steps straight against 2 + resume to 6 (mid-epoch: 3 steps per epoch), light
    augmentation and 2 workers: the same losses and final parameters, bit for bit."""
    common = ["--augment", "light", "--workers", "2", "--epochs", "2", "--ema-decay", "0.9"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(a, photo_tree, *common) == 0
    assert _train(b, photo_tree, *common, "--max-steps", "2") == 0
    assert _train(b, photo_tree, *common, "--resume") == 0
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["step_losses"] == mb["step_losses"] and len(ma["step_losses"]) == 6
    assert mb["steps_this_run"] == 4
    assert ma["test_loss"] == mb["test_loss"] and ma["test_ema_loss"] == mb["test_ema_loss"]
    assert {"test_top5", "test_ema_accuracy"} <= set(ma) and ma["best"] in ("raw", "ema")
    assert [h["epoch"] for h in ma["history"]] == [1, 2]


@pytest.mark.slow
@pytest.mark.usefixtures("optimised_compiles")
def test_digits_as_png_folders_match_the_in_memory_job(tmp_path: Any) -> None:
    """The digits written as PNGs into class folders, --augment none: within one point of
    the in-memory digits job with the same model (grey: --in-channels 1), split and schedule.

    Two runs of 180 steps each (4 epochs: 97.8% and 97.5%, measured; at 6 epochs 98.3% and
    97.8% in 40 s against 34 s), so with XLA's optimisations: measured alone at 6 epochs, 70 s
    against 113 s without (the second run's steps are the first's programs: one batch dtype)."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images / 16.0 * 255).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=360, stratify=d.target, random_state=0
    )
    for split, xs, ys in (("train", xtr, ytr), ("val", xte, yte)):
        for i, (a, c) in enumerate(zip(xs, ys, strict=True)):
            os.makedirs(tmp_path / "digits" / split / str(c), exist_ok=True)
            Image.fromarray(a).save(tmp_path / "digits" / split / str(c) / f"{i:04d}.png")
    flags = ["--epochs", "4", "--no-progress"]
    assert main(["train", *flags, "-o", str(tmp_path / "mem")]) == 0
    folder = ["--data", str(tmp_path / "digits"), "--augment", "none", "--image-size", "32"]
    # the digits job's model (a folder run from scratch takes the builder's own defaults)
    folder += ["--patch-size", "4", "--embed-dim", "16", "--drop-path-rate", "0.1"]
    folder += ["--in-channels", "1"]
    assert main(["train", *flags, *folder, "-o", str(tmp_path / "png")]) == 0
    mem, png = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("mem", "png"))
    assert png["test_count"] == mem["test_count"] == 360
    assert mem["test_accuracy"] > 0.9
    assert abs(png["test_accuracy"] - mem["test_accuracy"]) <= 0.01
    # a grey folder run reads luminance, normalised by ImageNet's statistics through the luma
    # weights (ITU-R 601), as predict and eval of the run will
    grey = json.loads((tmp_path / "png" / "run.json").read_text())["data_config"]
    luma = np.array([0.299, 0.587, 0.114])
    assert grey["input_size"][0] == 1
    np.testing.assert_allclose(grey["mean"], [luma @ [0.485, 0.456, 0.406]], rtol=1e-12)
    np.testing.assert_allclose(grey["std"], [luma @ [0.229, 0.224, 0.225]], rtol=1e-12)


@pytest.mark.parametrize(
    "case, needle",
    [
        ("empty", "has nothing: no class subfolders"),
        ("empty_class", "class folder(s) with no image files"),
        ("bad_file", "cannot read image"),
        ("weights_format", "refused: only .safetensors files and PyTorch zip checkpoints"),
        ("weights_family", "tensor(s) do not match"),
        ("freeze_core", "--freeze-backbone needs --weights"),
        ("weights_core", "--weights needs --model"),
        ("no_train_val", "needs train/ and val/ class folders"),
    ],
)
def test_bad_inputs(
    case: str, needle: str, tmp_path: Any, photo_tree: str, bad_files: dict, timm_b0: str,
    capsys: Any,
) -> None:  # fmt: skip
    import shutil

    data, extra = str(tmp_path / "d"), []
    shutil.copytree(photo_tree, data)
    if case == "empty":
        shutil.rmtree(os.path.join(data, "train"))
        os.makedirs(os.path.join(data, "train"))
    elif case == "empty_class":
        for f in os.listdir(os.path.join(data, "train", "bee")):
            os.remove(os.path.join(data, "train", "bee", f))
    elif case == "bad_file":
        # in val/: every held-out image is read at the end of the first epoch (3 steps)
        shutil.copy(bad_files["truncated"], os.path.join(data, "val", "ant", "zz.jpg"))
        extra = ["--max-steps", "4", "--augment", "none"]
    elif case == "weights_format":
        (tmp_path / "w.bin").write_bytes(b"\x80\x04not a checkpoint")
        extra = ["--model", "efficientvit_b0", "--weights", str(tmp_path / "w.bin")]
    elif case == "weights_family":
        extra = ["--model", "efficientvit_m0", "--weights", timm_b0]
    elif case == "freeze_core":
        extra = ["--freeze-backbone"]
    elif case == "weights_core":
        extra = ["--weights", timm_b0]
    elif case == "no_train_val":
        data = os.path.join(data, "train")  # a plain class tree without --val-split
    out = tmp_path / "run"
    rc = _train(out, data, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if case != "bad_file":  # a bad file is only met while training (and named then)
        assert not out.exists()


def test_skip_bad_names_the_skipped_file(
    tmp_path: Any, photo_tree: str, bad_files: dict, capsys: Any
) -> None:
    import shutil

    data = str(tmp_path / "d")
    shutil.copytree(photo_tree, data)
    bad = os.path.join(data, "val", "ant", "zz.jpg")
    shutil.copy(bad_files["truncated"], bad)
    assert (
        _train(tmp_path / "run", data, "--max-steps", "3", "--skip-bad", "--augment", "none") == 0
    )
    assert f"skipped 1 unreadable file(s): {bad}" in capsys.readouterr().out
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["test_count"] == 6  # the 6 readable held-out images, the bad one left out


def test_batch_not_divisible_by_devices(tmp_path: Any, photo_tree: str) -> None:
    cmd = [sys.executable, "-m", "efficientvit_jax.cli", "train", "--data", photo_tree,
           "--cpu-devices", "2", "--batch-size", "3", "-o", str(tmp_path / "run"), *TINY]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "global batch size 3 is not divisible by the 2 devices" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
