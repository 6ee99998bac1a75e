"""``efficientvit-jax sam``: a point run and an ``--auto`` run write their files (L0 with MIT's
random weights as a ``.pt`` file), and every user mistake is one line on stderr, exit 2, before
any model is loaded."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest
from PIL import Image

from efficientvit_jax.cli import main

torch = pytest.importorskip("torch", reason="the weights file is written with torch")
pytest.importorskip(
    "efficientsam", reason="pip install --no-deps -r tests/reference-requirements.txt"
)

pytestmark = pytest.mark.xdist_group("sam")
MODEL = "efficientvit-sam-l0"


@pytest.fixture(scope="module")
def files(tmp_path_factory: Any, photo: np.ndarray, mit_l0: Any) -> dict[str, str]:
    d = tmp_path_factory.mktemp("sam_cli")
    Image.fromarray(photo).save(d / "china.png")
    torch.save({"state_dict": mit_l0.state_dict()}, d / "l0.pt")  # MIT's file layout
    return {"image": str(d / "china.png"), "weights": str(d / "l0.pt"), "dir": str(d)}


def test_point_run_writes_masks_overlay_and_json(
    files: dict[str, str], tmp_path: Any, capsys: Any
) -> None:
    """Three masks for a lone point, best first; each PNG is the JSON's mask (area, box). (The
    masks themselves are the predictor's, tested against MIT's in test_sam_predictor.py.)"""
    out = tmp_path / "out"
    argv = ["sam", files["image"], "--model", MODEL, "--weights", files["weights"]]
    assert main([*argv, "--point", "300,200", "--output", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / "china.json").read_text()) == report
    assert report["mode"] == "prompt" and len(report["masks"]) == 3  # a lone point: 3 masks
    scores = [m["score"] for m in report["masks"]]
    assert scores == sorted(scores, reverse=True)
    for k, m in enumerate(report["masks"]):
        assert m["mask"] == str(out / f"china_mask{k}.png")
        png = np.asarray(Image.open(m["mask"])) > 0
        assert png.shape == (411, 627) and m["area"] == int(png.sum())
        if m["area"]:
            ys, xs = np.nonzero(png)
            assert m["box"] == [xs.min(), ys.min(), xs.max(), ys.max()]
    overlay = np.asarray(Image.open(out / "china_overlay.png"))
    assert overlay.shape == (411, 627, 3)


def test_auto_run(files: dict[str, str], tmp_path: Any, capsys: Any) -> None:
    out = tmp_path / "auto"
    argv = ["sam", files["image"], "--model", MODEL, "--weights", files["weights"], "--auto"]
    small = ["--points-per-side", "2", "--points-per-batch", "4", "--pred-iou-thresh", "0"]
    rc = main([*argv, *small, "--stability-score-thresh", "0", "-o", str(out), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "auto" and report["masks"]
    for m in report["masks"]:
        assert os.path.isfile(m["mask"]) and len(m["point_coords"]) == 1
        assert set(m) == {"mask", "score", "box", "area", "stability_score", "point_coords"}
    assert os.path.isfile(out / "china_overlay.png")


def _error(rc: int, capsys: Any, *needles: str) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("efficientvit-jax sam: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_mistakes_are_one_line(files: dict[str, str], tmp_path: Any, capsys: Any) -> None:
    image, weights, out = files["image"], files["weights"], str(tmp_path / "out")
    base = ["sam", image, "--model", MODEL, "--weights", weights, "-o", out]
    cases = [
        (["--point", "700,10"], "--point 700,10: outside the image; the image is 627 x 411"),
        (["--point", "10,-1"], "outside the image"),
        (["--box", "10,10,900,50"], "--box 10,10,900,50: outside the image"),
        (["--point", "3,x"], "--point '3,x': expected X,Y or X,Y,LABEL"),
        (["--point", "3"], "expected X,Y or X,Y,LABEL"),
        (["--point", "3,4,2"], "LABEL must be 1 (on the object) or 0"),
        (["--box", "50,10,40,20"], "needs X0 < X1 and Y0 < Y1"),
        (["--box", "1,2,3"], "--box '1,2,3': expected X0,Y0,X1,Y1"),
        ([], "give prompts"),
        (["--auto", "--point", "3,4"], "give prompts"),
        (["--auto", "--points-per-side", "0"], "--points-per-side must be >= 1"),
    ]
    for extra, needle in cases:
        _error(main([*base, *extra]), capsys, needle)
    point = ["--point", "3,4"]
    missing = str(tmp_path / "nope.jpg")
    _error(main(["sam", missing, "--model", MODEL, "-o", out, *point]), capsys, "no such file")
    deep = str(tmp_path / "no" / "such" / "out")
    _error(main([*base[:-2], "-o", deep, *point]), capsys, "does not exist")
    _error(main(["sam", image, "-o", out, *point]), capsys, "give --model")
    classifier = ["sam", image, "--model", "efficientvit_b0", "--weights", weights, "-o", out]
    refusal = "is a classifier: `sam` takes segment-anything models; use `efficientvit-jax predict`"
    _error(main([*classifier, *point]), capsys, refusal)
    gone = ["sam", image, "--model", MODEL, "--weights", missing, "-o", out, *point]
    _error(main(gone), capsys, f"--weights {missing}: no such file or folder")
    assert not os.path.exists(out)  # refused before anything was written
