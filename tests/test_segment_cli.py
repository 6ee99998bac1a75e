"""``segment`` and segmentation ``eval``: end to end on tiny generic datasets.

The metric is checked with models whose output is known: an oracle that reads each pixel's
class from its colour (mIoU 1) and a model that always says class 0 (IoU of class 0 = its
pixels over all valid pixels, the others 0), both counted by hand. The real B0 (random weights
in a ``convert`` folder, MIT's Cityscapes preprocessing at ``--crop-size 32``) runs through the
commands, and ``eval``'s JSON is recomputed in NumPy from the PNGs ``segment`` writes.
"""

from __future__ import annotations

import json
import os
import types
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from efficientvit_jax.cli import main
from efficientvit_jax.data.seg_transform import SegEvalTransform
from efficientvit_jax.data.segmentation import find_seg_dataset
from efficientvit_jax.segmentation import Segmenter, evaluate_segmentation

MODEL = "efficientvit-seg-b0-cityscapes"
COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)  # class k's colour


def _generic(root: Any, masks: list[np.ndarray], classes: str | None = None) -> str:
    """``root/val/images/<i>.png`` painted in the classes' colours (ignored pixels grey) and
    ``root/val/masks/<i>.png``."""
    for sub in ("images", "masks"):
        os.makedirs(root / "val" / sub, exist_ok=True)
    for i, mask in enumerate(masks):
        image = np.where(mask[..., None] == 255, 128, COLOURS[np.minimum(mask, 2)])
        Image.fromarray(image.astype(np.uint8)).save(root / "val" / "images" / f"{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "val" / "masks" / f"{i}.png")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return str(root)


def _stripes(classes: list[int]) -> np.ndarray:
    """A 32 x 64 mask of four 16-pixel-wide vertical stripes: edges on the stride-8 grid, and
    regions two logit cells wide, where a bicubic upsampling of one-hot logits keeps every
    pixel's argmax (diagonal corners of one class would not: there the other class's two
    quadrants outweigh the pixel's own, for real models too)."""
    return np.repeat(np.repeat(np.array([classes], np.uint8), 16, axis=1), 32, axis=0)


MASKS = [_stripes([0, 1, 2, 255]), _stripes([1, 1, 0, 2])]


class _ColourModel:
    """Stride-8 logits: one-hot of the class whose colour each 8x8 cell shows (``constant``:
    class 0 everywhere)."""

    def __init__(self, constant: bool = False) -> None:
        self.config = types.SimpleNamespace(num_classes=3, data_format="NHWC")
        self.constant = constant
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        self.table = jnp.asarray((COLOURS / 255 - mean) / std, jnp.float32)

    def apply(self, variables: Any, x: Any, train: bool = False) -> Any:
        b, h, w, _ = x.shape
        cells = x.reshape(b, h // 8, 8, w // 8, 8, 3).mean((2, 4))
        d = ((cells[..., None, :] - self.table) ** 2).sum(-1)
        logits = 10.0 * (d == d.min(-1, keepdims=True))
        return jnp.zeros_like(logits).at[..., 0].set(1.0) if self.constant else logits


def _segmenter(constant: bool) -> Segmenter:
    return Segmenter(
        _ColourModel(constant), {}, SegEvalTransform("round"), ("a", "b", "c"), tuple(COLOURS), 2
    )


def test_eval_of_known_models_is_hand_computable(tmp_path: Any) -> None:
    ds = find_seg_dataset(_generic(tmp_path, MASKS))
    perfect = evaluate_segmentation(_segmenter(False), ds, workers=1)
    assert perfect["count"] == 2 and perfect["miou"] == 1.0 and perfect["pixel_accuracy"] == 1.0
    # stripes of 32 x 16 pixels: class 0 in 1 + 1, class 1 in 1 + 2, class 2 in 1 + 1
    n0, n1, n2 = 2 * 512, 3 * 512, 2 * 512
    valid = n0 + n1 + n2
    zero = evaluate_segmentation(_segmenter(True), ds, workers=2)
    assert zero["per_class_iou"].tolist() == [n0 / valid, 0.0, 0.0]
    assert zero["miou"] == pytest.approx(n0 / valid / 3)
    assert zero["pixel_accuracy"] == pytest.approx(n0 / valid)


@pytest.fixture(scope="module")
def b0_folder(tmp_path_factory: Any, random_variables: Any) -> str:
    """B0 Cityscapes with random weights, saved as `efficientvit-jax convert` saves."""
    from efficientvit_jax.zoo import create_model, save_converted

    model = create_model(MODEL)
    variables = random_variables(model, jnp.zeros((1, 3, 64, 64), jnp.float32))
    out = tmp_path_factory.mktemp("b0") / "converted"
    save_converted(out, variables, model=MODEL.replace("-", "_"))
    return str(out)


def _photo_dataset(root: Any, photos: list, classes: str) -> str:
    """Two 40x60 photo crops with random masks of classes 0..2 and some 255."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        os.makedirs(root / "val" / sub, exist_ok=True)
    for i, photo in enumerate(photos):
        Image.fromarray(photo[100:140, 200:260]).save(root / "val" / "images" / f"p{i}.jpg")
        mask = rng.integers(0, 3, (40, 60)).astype(np.uint8)
        mask[:5] = 255
        Image.fromarray(mask).save(root / "val" / "masks" / f"p{i}.png")
    (root / "classes.txt").write_text(classes)
    return str(root)


def test_segment_writes_palette_pngs_and_eval_agrees_with_them(
    tmp_path: Any, photos: list, b0_folder: str, capsys: Any
) -> None:
    data = _photo_dataset(tmp_path / "d", photos, "road\nsidewalk\nbuilding\n")
    images = os.path.join(data, "val", "images")
    flags = ["--model", MODEL, "--weights", b0_folder, "--crop-size", "32"]
    assert main(["segment", images, *flags, "-o", str(tmp_path / "out"), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [os.path.basename(r["image"]) for r in results] == ["p0.jpg", "p1.jpg"]
    from efficientvit_jax.data.seg_classes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS

    predicted = []
    for r in results:
        png = Image.open(r["mask"])
        assert png.mode == "P" and png.size == (60, 40)  # the image's size, not the model's
        assert png.getpalette()[:6] == [*CITYSCAPES_COLORS[0], *CITYSCAPES_COLORS[1]]
        assert Image.open(r["overlay"]).size == (60, 40)
        labels = np.asarray(png)
        predicted.append(labels)
        fractions = {c["name"]: c["fraction"] for c in r["classes"]}
        assert sum(fractions.values()) == pytest.approx(1.0, abs=1e-12)
        for c in r["classes"]:
            assert c["name"] == CITYSCAPES_CLASSES[c["index"]]
            assert c["fraction"] == pytest.approx((labels == c["index"]).mean())

    out = tmp_path / "eval.json"
    assert main(["eval", "--data", data, *flags, "--json", str(out), "--no-progress"]) == 0
    got = json.loads(out.read_text())
    counts = np.zeros((19, 19), np.int64)  # recomputed from segment's PNGs and the masks
    for i, labels in enumerate(predicted):
        target = np.asarray(Image.open(os.path.join(data, "val", "masks", f"p{i}.png")))
        keep = target != 255
        np.add.at(counts, (target[keep], labels[keep]), 1)
    inter = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - inter
    present = union > 0
    assert got["count"] == 2 and got["layout"] == "generic"
    assert got["miou"] == pytest.approx((inter[present] / union[present]).mean())
    assert got["pixel_accuracy"] == pytest.approx(inter.sum() / counts.sum())
    assert list(got["per_class"])[:4] == ["road", "sidewalk", "building", "wall"]  # classes.txt
    assert got["per_class"]["road"]["union"] == union[0]
    assert got["per_class"]["bicycle"]["iou"] is None or union[18] > 0


def _error(rc: int, capsys: Any, *needles: str) -> None:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("problem", ["missing", "size", "values"])
def test_eval_refuses_bad_samples_in_one_line_before_any_work(
    tmp_path: Any, b0_folder: str, capsys: Any, problem: str
) -> None:
    data = _generic(tmp_path / "d", MASKS)
    mask = tmp_path / "d" / "val" / "masks" / "1.png"
    if problem == "missing":
        os.remove(mask)
        needles = ("error: image", "val/images/1.png has no mask (expected", "masks/1.png")
    elif problem == "size":
        Image.fromarray(np.zeros((32, 48), np.uint8)).save(mask)
        needles = ("images/1.png is 64x32 but its mask", "is 48x32")
    else:
        Image.fromarray(np.full((32, 64), 40, np.uint8)).save(mask)
        needles = ("label values out of range (40;", "19 classes")
    out = tmp_path / "r.json"
    flags = ["--model", MODEL, "--weights", b0_folder, "--json", str(out), "--no-progress"]
    _error(main(["eval", "--data", data, *flags]), capsys, *needles)
    assert not out.exists()
    # --skip-bad: the sample is left out and listed
    assert main(["eval", "--data", data, *flags, "--skip-bad", "--crop-size", "32"]) == 0
    got = json.loads(out.read_text())
    assert got["count"] == 1 and got["skipped"][0]["image"].endswith("1.png")


def test_segment_and_eval_refuse_classifiers_and_missing_weights(
    tmp_path: Any, capsys: Any
) -> None:
    data = _generic(tmp_path / "d", MASKS[:1])
    image = os.path.join(data, "val", "images", "0.png")
    out = tmp_path / "out"
    rc = main(["segment", image, "--model", "efficientvit_b0", "--weights", image, "-o", str(out)])
    _error(rc, capsys, "--model efficientvit_b0 is a classifier")
    _error(main(["segment", image, "--model", MODEL, "-o", str(out)]), capsys, "give --weights")
    assert not out.exists()
    rc = main(["eval", "--data", data, "--model", MODEL, "--weights", image, "--num-classes", "3"])
    _error(rc, capsys, "--num-classes: not for a segmentation model")


def test_a_run_segments_with_its_datasets_preprocessing() -> None:
    """``segmenter_from_run``: MIT's Cityscapes rule for a run with Cityscapes' classes, the
    whole image (sides rounded up to 32) for a run on other classes."""
    from efficientvit_jax.data.seg_classes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS
    from efficientvit_jax.segmentation import segmenter_from_run

    def run(classes: tuple) -> Any:
        model = types.SimpleNamespace(
            config=types.SimpleNamespace(num_classes=len(classes), data_format="NCHW")
        )
        return types.SimpleNamespace(model=model, variables={}, classes=classes)

    city = segmenter_from_run(run(CITYSCAPES_CLASSES))
    assert city.transform.input_size(100, 100) == (1024, 2048) and city.colors == CITYSCAPES_COLORS
    digits = segmenter_from_run(run((*"0123456789", "background")))
    assert digits.transform.input_size(100, 70) == (128, 96) and len(digits.colors) == 11
    assert digits.transform.data_format == "NCHW"
