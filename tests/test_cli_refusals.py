"""Issue 17: a user's mistake is one line on stderr, exit 2, before anything is written:
folder layouts, output paths, unknown model names; and what each command names as its extra."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pytest

from efficientvit_jax._io import check_output_writable
from efficientvit_jax.cli import main


def _tree(root: Any, classes: dict[str, int]) -> str:
    """``root/<class>/<i>.png`` placeholders: the layout checks read names, never pixels."""
    for c, n in classes.items():
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(n):
            open(os.path.join(root, c, f"{i}.png"), "wb").close()
    return str(root)


def _error(rc: int, capsys: Any, *needles: str) -> str:
    """The one stderr line of a refused command, checked to hold every needle."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err.strip().split(": error: ", 1)[1]


def _train_data(data: str, out: Any, *extra: str) -> int:
    return main(["train", "--data", data, "--no-progress", "-o", str(out), *extra])


# -- folder layouts ------------------------------------------------------------------------------


def test_train_refuses_one_class(tmp_path, capsys):
    data = _tree(tmp_path / "d", {"cat": 4})
    rc = _train_data(data, tmp_path / "run", "--val-split", "0.25")
    _error(rc, capsys, f"--data {data} has one class folder (cat)", "at least two")
    assert not (tmp_path / "run").exists()


def test_train_refuses_one_class_in_train_val(tmp_path, capsys):
    _tree(tmp_path / "d" / "train", {"cat": 2})
    _tree(tmp_path / "d" / "val", {"cat": 1})
    rc = _train_data(str(tmp_path / "d"), tmp_path / "run")
    _error(rc, capsys, "train/ has one class folder (cat)")
    assert not (tmp_path / "run").exists()


def test_val_split_on_a_split_dataset_says_which_folder(tmp_path, capsys):
    d = tmp_path / "d"
    _tree(d / "train", {"a": 2, "b": 2})
    _tree(d / "val", {"a": 1, "b": 1})
    rc = _train_data(str(d), tmp_path / "run", "--val-split", "0.2")
    _error(rc, capsys, "holds train/ and val/", "drop --val-split", f"pass {d / 'train'}")
    assert not (tmp_path / "run").exists()


def test_eval_on_a_split_dataset_says_which_folder(tmp_path, capsys):
    d = tmp_path / "d"
    _tree(d / "train", {"a": 2, "b": 2})
    _tree(d / "val", {"a": 1, "b": 1})
    out = tmp_path / "r.json"
    argv = ["eval", "--model", "efficientvit_b0", "--weights", str(tmp_path / "w.safetensors")]
    rc = main([*argv, "--data", str(d), "--json", str(out), "--no-progress"])
    _error(rc, capsys, f"{d} holds train/ and val/", f"pass {d / 'val'} to eval")
    assert not out.exists()


# -- output paths --------------------------------------------------------------------------------


def test_export_refuses_a_missing_folder(tmp_path, capsys):
    out = tmp_path / "nope" / "m.stablehlo"
    rc = main(["export", "--format", "stablehlo", "-o", str(out), "--embed-dim", "8"])
    _error(rc, capsys, "--output", str(out), f"folder {tmp_path / 'nope'} does not exist")
    assert os.listdir(tmp_path) == []


def test_convert_refuses_a_missing_folder(tmp_path, capsys):
    out = tmp_path / "nope" / "conv"
    rc = main(["convert", "--model", "efficientvit_b0", "--input", str(tmp_path / "x"),
               "--output", str(out)])  # fmt: skip
    _error(rc, capsys, f"--output {out}", f"folder {tmp_path / 'nope'} does not exist")
    assert os.listdir(tmp_path) == []


def test_eval_json_refuses_a_missing_folder(tmp_path, capsys):
    data = _tree(tmp_path / "d", {"a": 1, "b": 1})
    out = tmp_path / "nope" / "r.json"
    rc = main(["eval", "--model", "efficientvit_b0", "--weights", "w", "--data", data,
               "--json", str(out)])  # fmt: skip
    _error(rc, capsys, f"--json {out}", f"folder {tmp_path / 'nope'} does not exist")
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_train_refuses_a_missing_folder(tmp_path, capsys):
    out = tmp_path / "nope" / "run"
    rc = main(["train", "--max-steps", "1", "--no-progress", "-o", str(out)])
    _error(rc, capsys, f"--output {out}", f"folder {tmp_path / 'nope'} does not exist")
    assert os.listdir(tmp_path) == []


def test_output_folder_creates_only_its_last_part_and_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"--output a/b cannot be written: folder .*a does not"):
        check_output_writable("a/b")
    assert os.listdir(tmp_path) == []
    check_output_writable("runs/digits")  # train's default, on a fresh machine
    assert os.listdir(tmp_path / "runs") == ["digits"] and not os.listdir(tmp_path / "runs/digits")
    with pytest.raises(ValueError, match="does not exist"):
        check_output_writable("runs/x/y")  # runs/ only directly under the current folder


# -- unknown model names -------------------------------------------------------------------------


def test_every_command_gives_the_same_unknown_model_message(tmp_path, capsys):
    name, img = "efficientvit_b9", tmp_path / "x.png"
    img.touch()
    data = _tree(tmp_path / "d", {"a": 2, "b": 2})
    w = ["--weights", str(tmp_path / "w.safetensors")]
    runs = [
        ["predict", str(img), "--model", name, *w],
        ["eval", "--data", data, "--model", name, *w, "--no-progress"],
        ["train", "--data", data, "--val-split", "0.5", "--model", name, "-o", str(tmp_path / "o")],
        [
            "export",
            "--format",
            "stablehlo",
            "--model",
            name,
            "--random-weights",
            "-o",
            str(tmp_path / "m.stablehlo"),
        ],
        ["convert", "--model", name, "--input", str(img), "--output", str(tmp_path / "c")],
    ]
    errors = {tuple(argv[:1]): _error(main(argv), capsys) for argv in runs}
    assert len(set(errors.values())) == 1, errors
    msg = next(iter(errors.values()))
    assert msg.startswith(f"unknown model '{name}'; zoo models: efficientvit_b0, ")
    assert "efficientvit_m5, efficientvit_sam_l0, " in msg  # every family
    assert "efficientvit_sam_xl1, efficientvit_seg_b0_cityscapes, " in msg
    assert "efficientvit_seg_l2_cityscapes; pretrained tags: efficientvit_b0.r224_in1k, " in msg
    assert msg.endswith("efficientvit_m5.r224_in1k")
    assert sorted(os.listdir(tmp_path)) == ["d", "x.png"]


# -- predict on a folder -------------------------------------------------------------------------


def test_predict_reads_the_images_of_a_folder(tmp_path, capsys, monkeypatch):
    from efficientvit_jax.cli import predict

    class Uniform:  # the folder expansion is what is tested, not a model
        num_classes = 3

        def probabilities(self, images: np.ndarray) -> np.ndarray:
            return np.full((len(images), 3), 1 / 3)

    monkeypatch.setattr(
        predict,
        "load_classifier",
        lambda args: (Uniform(), lambda p: np.zeros((2, 2, 3)), ["x", "y", "z"]),
    )
    _tree(tmp_path / "d", {"b": 1, "a": 2})
    (tmp_path / "d" / "notes.txt").touch()
    assert main(["predict", str(tmp_path / "d"), "--model", "efficientvit_b0", "--weights", "w",
                 "--top", "1", "--workers", "0"]) == 0  # fmt: skip
    shown = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    d = tmp_path / "d"
    assert shown == [str(d / "a" / "0.png"), str(d / "a" / "1.png"), str(d / "b" / "0.png")]


def test_predict_refuses_a_folder_without_images(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").touch()
    rc = main(["predict", str(tmp_path / "d"), "--model", "efficientvit_b0", "--weights", "w"])
    _error(rc, capsys, f"image folder {tmp_path / 'd'} holds no image files")


# -- extras --------------------------------------------------------------------------------------


def test_eval_names_the_zoo_extra(tmp_path, capsys, monkeypatch):
    """tqdm comes with `train` and with `zoo`; the README names `zoo` for eval."""
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if no extra were installed
    data = _tree(tmp_path / "d", {"a": 1, "b": 1})
    rc = main(["eval", "--data", data, "--model", "efficientvit_b0", "--weights", "w"])
    _error(rc, capsys, "`eval` needs tqdm: pip install 'efficientvit-jax[zoo]'")


def test_each_command_names_the_extra_that_brings_its_module():
    from efficientvit_jax.cli import _EXTRAS

    def extra(command: str, module: str) -> str:  # as main() looks it up
        return _EXTRAS.get(command, {}).get(module) or _EXTRAS["*"][module]

    for command in ("predict", "eval", "convert", "export"):
        assert extra(command, "tqdm") == extra(command, "orbax") == "zoo"
    assert extra("train", "tqdm") == extra("train", "orbax") == "train"
    assert extra("export", "jax2onnx") == "export" and extra("convert", "torch") == "timm"


# -- a model of another task ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, model, takes, serves",
    [
        (["predict", "{img}"], "efficientvit_sam_l0", "classifiers", "sam"),
        (["predict", "{img}"], "efficientvit-seg-b0-cityscapes", "classifiers", "segment"),
        (["eval", "--data", "{data}"], "efficientvit_sam_xl0", "classifiers or segmentation models", "sam"),
        (["sam", "{img}", "--point", "1,1", "-o", "{out}/masks"], "efficientvit_b0",
         "segment-anything models", "predict"),
    ],
)  # fmt: skip
def test_a_model_of_another_task_names_its_command(
    argv: list[str], model: str, takes: str, serves: str, tmp_path: Any, capsys: Any
) -> None:
    """Each command refuses another task's model in one line that names the command serving
    it, before any weights are read or anything is written."""
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(img)
    data = _tree(tmp_path / "data", {"a": 1, "b": 1})
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(img=img, data=data, out=out) for a in argv]
    err = _error(main([*args, "--model", model]), capsys, f"--model {model} is ")
    command = argv[0]
    assert err.endswith(f"`{command}` takes {takes}; use `efficientvit-jax {serves}`"), err
    assert os.listdir(out) == []
