"""Segmentation runs on the command line: the digits-seg preset is the library's config, a
segmentation model starts from the segmentation defaults, and what only segmentation refuses
is one line, exit 2, nothing written."""

from __future__ import annotations

import os
from typing import Any

import pytest

from efficientvit_jax.cli import main, make_parser
from efficientvit_jax.cli.train import config_from_args
from efficientvit_jax.data import digits_seg
from efficientvit_jax.training.config import (
    SEG_DEFAULTS,
    DataOptions,
    ModelOptions,
    TrainConfig,
    differences,
    digits_seg_config,
)

SEG = "efficientvit_seg_b0_cityscapes"


def _config(*argv: str) -> TrainConfig:
    return config_from_args(make_parser().parse_args(["train", *argv]))


def test_the_preset_is_the_library_config() -> None:
    assert _config("--preset", "digits-seg") == digits_seg_config(
        os.path.join("runs", "digits-seg", "data")
    )
    assert _config("--preset", "digits-seg", "-o", "o").data.folder == os.path.join("o", "data")
    given = _config("--preset", "digits-seg", "--data", "D", "--epochs", "3")
    preset = digits_seg_config("D")
    changes = differences(preset, given, ignore=frozenset())
    assert changes == [f"schedule.epochs: {preset.schedule.epochs} -> 3"]


def test_a_segmentation_model_starts_from_the_segmentation_defaults() -> None:
    base = TrainConfig(data=DataOptions(folder="d"), model=ModelOptions(name=SEG))
    assert _config("--data", "d", "--model", SEG) == base.with_values(SEG_DEFAULTS)
    assert _config("--data", "d", "--model", SEG, "--batch-size", "4").data.batch_size == 4
    assert _config("--data", "d", "--model", "efficientvit_b0").data.batch_size == 64


def test_remat_goes_to_the_zoo_model_or_the_builder() -> None:
    from efficientvit_jax.training.recipe import build_model

    zoo = _config("--data", "d", "--model", SEG, "--remat", "block")
    assert zoo.model.remat == "block" and zoo.model.builder is None
    assert build_model(zoo, 19).config.backbone_config.remat == "block"
    assert _config("--data", "d", "--remat", "block").model.builder.remat == "block"
    assert _config("--data", "d", "--model", SEG).model.remat == "none"
    msra = _config("--data", "d", "--model", "efficientvit_m0", "--remat", "block")
    with pytest.raises(ValueError, match="efficientvit_m0 has no rematerialisation"):
        build_model(msra, 10)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: Any) -> str:
    spec = digits_seg.Spec(canvas=32, train=4, val=2, scales=(2.0, 4.0))
    return digits_seg.generate(str(tmp_path_factory.mktemp("d") / "data"), spec)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--val-split", "0.2"], "--val-split: a segmentation dataset brings its own val split"),
        (["--image-size", "48"], "--image-size must be a multiple of 32 for a segmentation"),
        (["--scale-range", "2,1"], "--scale-range must be LOW,HIGH with 0 < LOW <= HIGH"),
    ],
)
def test_segmentation_refusals(tiny: str, tmp_path: Any, capsys: Any, extra, fragment) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--data", tiny, "--model", SEG, *extra, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and err.count("\n") == 1, err
    assert not out.exists()


def test_one_split_folder_is_refused(tiny: str, tmp_path: Any, capsys: Any) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--data", os.path.join(tiny, "train"), "--model", SEG, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "is one split" in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_classifier_on_a_segmentation_dataset_is_refused(tiny: str, tmp_path: Any, capsys: Any):
    out = tmp_path / "run"
    rc = main(["train", "--data", tiny, "-o", str(out)])  # images/ and masks/ are not classes
    err = capsys.readouterr().err
    assert rc == 2 and "a segmentation dataset" in err and err.count("\n") == 1, err
    assert not out.exists()
