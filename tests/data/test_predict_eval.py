"""``predict`` and ``eval`` against timm itself: the same probabilities, top-1, top-5 and loss
from a timm checkpoint (random weights, perturbed BatchNorm statistics) on real photographs."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest

from efficientvit_jax.cli import main
from efficientvit_jax.data import imagenet

PROB_ATOL = 1e-4
KINDS = ("photo_jpeg", "photo_png", "cmyk", "palette", "tall", "wide", "tiny")  # 7 images


def _randomised_timm(timm: Any, tag: str, num_classes: int = 1000) -> Any:
    """Random weights, random BatchNorm statistics, and a classifier scaled up so that the
    probabilities are far from uniform (a 1e-4 tolerance then means something)."""
    import torch

    torch.manual_seed(0)
    model = timm.create_model(tag, pretrained=False, num_classes=num_classes).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(40.0)
    return model


def _save(model: Any, path: Any) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def _timm_probabilities(timm: Any, model: Any, paths: list[str]) -> np.ndarray:
    import timm.data
    import torch
    from PIL import Image

    t = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    x = torch.stack([t(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        return model(x).double().softmax(-1).numpy()


TAGS = [
    pytest.param("efficientvit_b0.r224_in1k", id="b0"),
    pytest.param("efficientvit_b1.r288_in1k", id="b1-288", marks=pytest.mark.slow),
    pytest.param("efficientvit_m0.r224_in1k", id="m0", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("tag", TAGS)
def test_predict_and_eval_equal_timm(
    timm: Any, tag: str, image_files: dict, make_class_tree: Any, tmp_path: Any, capsys: Any
) -> None:
    model = _randomised_timm(timm, tag)
    weights = _save(model, tmp_path / "w.safetensors")
    paths = [image_files[k] for k in KINDS]
    want = _timm_probabilities(timm, model, paths)
    assert want.max(-1).min() > 0.05  # peaked enough for the tolerance to bite

    assert main(["predict", *paths, "--model", tag, "--weights", weights, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["image"] for g in got] == paths
    for g, p in zip(got, want, strict=True):
        idx = [t["index"] for t in g["top"]]
        assert idx == list(np.argsort(-p)[:5])
        np.testing.assert_allclose([t["probability"] for t in g["top"]], p[idx], atol=PROB_ATOL)
        assert g["top"][0]["label"] == imagenet.class_names()[idx[0]]

    # A class tree whose labels make top-1 right for some images, top-5 for others, neither
    # for the rest; 7 images at batch 3 leave a padded last batch of 1.
    ranks = np.argsort(-want, axis=-1)
    labels = [int(ranks[i, (0, 2, 50)[i % 3]]) for i in range(len(paths))]
    tree: dict[str, list[str]] = {}
    for p, y in zip(paths, labels, strict=True):
        tree.setdefault(imagenet.synsets()[y], []).append(p)
    root = make_class_tree(str(tmp_path / "val"), tree)
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", tag, "--weights", weights, "--data", root, "--batch-size", "3"]
    assert main([*argv, "--json", str(out), "--no-progress"]) == 0
    r = json.loads(out.read_text())
    # each file was copied as <i>.<ext> into its class folder: read timm's side in that order
    rows = np.arange(len(paths))
    assert r["count"] == len(paths)
    assert r["top1"] == pytest.approx(np.mean(ranks[rows, 0] == labels))
    assert r["top5"] == pytest.approx(np.mean([y in ranks[i, :5] for i, y in enumerate(labels)]))
    assert r["loss"] == pytest.approx(-np.mean(np.log(want[rows, labels])), abs=1e-3)
    assert sum(c["count"] for c in r["per_class"].values()) == len(paths)
    assert r["skipped"] == [] and r["images_per_second"] > 0


def test_converted_folder_gives_the_same_predictions(
    timm_b0: str, image_files: dict, tmp_path: Any, capsys: Any
) -> None:
    conv = tmp_path / "conv"
    assert (
        main(["convert", "--model", "efficientvit_b0", "--input", timm_b0, "--output", str(conv)])
        == 0
    )
    capsys.readouterr()
    img = image_files["photo_jpeg"]
    runs = []
    for w in (timm_b0, str(conv)):
        assert main(["predict", img, "--model", "efficientvit_b0", "--weights", w, "--json"]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert runs[0] == runs[1]


def _one_line_error(rc: int, capsys: Any, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return out


@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_predict_unreadable_file(timm_b0: str, bad_files: dict, kind: str, capsys: Any) -> None:
    rc = main(["predict", bad_files[kind], "--model", "efficientvit_b0", "--weights", timm_b0])
    assert _one_line_error(rc, capsys, f"cannot read image {bad_files[kind]}") == ""


def test_predict_missing_file_unknown_tag_and_other_variant(
    timm_b0: str, image_files: dict, capsys: Any
) -> None:
    img = image_files["photo_jpeg"]
    rc = main(["predict", "nope.jpg", "--model", "efficientvit_b0", "--weights", timm_b0])
    _one_line_error(rc, capsys, "image nope.jpg: no such file")
    rc = main(["predict", img, "--model", "efficientvit_b0.r512_in1k", "--weights", timm_b0])
    _one_line_error(rc, capsys, "unknown pretrained tag 'efficientvit_b0.r512_in1k'")
    rc = main(["predict", img, "--model", "efficientvit_b1", "--weights", timm_b0])
    _one_line_error(rc, capsys, "tensor(s) do not match")


@pytest.fixture()
def tree(tmp_path: Any, image_files: dict, bad_files: dict, make_class_tree: Any) -> Any:
    """Two synset classes, one unreadable file among three."""
    return make_class_tree(str(tmp_path / "val"), {
        "n01440764": [image_files["photo_jpeg"], bad_files["truncated"]],
        "n01443537": [image_files["grey"]],
    })  # fmt: skip


def test_eval_stops_at_a_bad_file_or_skips_it(
    timm_b0: str, tree: str, tmp_path: Any, capsys: Any
) -> None:
    out = tmp_path / "r.json"
    argv = ["eval", "--model", "efficientvit_b0", "--weights", timm_b0, "--data", tree]
    argv += ["--json", str(out), "--no-progress", "--batch-size", "2"]
    _one_line_error(main(argv), capsys, "cannot read image", "1.jpg")
    assert not out.exists()
    assert main([*argv, "--skip-bad"]) == 0
    text = capsys.readouterr().out
    bad = os.path.join(tree, "n01440764", "1.jpg")
    assert f"skipped 1 unreadable file(s): {bad}" in text
    r = json.loads(out.read_text())
    assert r["count"] == 2 and [s["image"] for s in r["skipped"]] == [bad]


@pytest.mark.parametrize(
    "layout, needle",
    [
        ("empty", "has nothing: no class subfolders"),
        ("no_classes", "image file(s) but no class subfolders"),
        ("empty_class", "class folder(s) with no image files"),
        ("too_many", "has 3 classes, more than the 2 outputs of --model efficientvit_b0"),
    ],
)
def test_eval_folder_errors(
    timm: Any, timm_b0: str, image_files: dict, make_class_tree: Any, tmp_path: Any,
    capsys: Any, layout: str, needle: str,
) -> None:  # fmt: skip
    root, weights, extra = tmp_path / "d", timm_b0, []
    root.mkdir()
    img = image_files["photo_jpeg"]
    if layout == "no_classes":
        make_class_tree(str(tmp_path), {"d": [img]})
    elif layout == "empty_class":
        make_class_tree(str(root), {"a": [img]})
        (root / "b").mkdir()
    elif layout == "too_many":
        make_class_tree(str(root), {"a": [img], "b": [img], "c": [img]})
        two = _randomised_timm(timm, "efficientvit_b0", num_classes=2)
        weights, extra = _save(two, tmp_path / "two.safetensors"), ["--num-classes", "2"]
    out = tmp_path / "r.json"
    argv = ["eval", "--model", "efficientvit_b0", "--weights", weights, "--data", str(root)]
    _one_line_error(main([*argv, *extra, "--json", str(out)]), capsys, needle)
    assert not out.exists()
