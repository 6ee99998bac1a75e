"""Fine-tuning SAM end to end on a small model and the digits canvases (``data.digits_seg``).

Two runs of the tiny model below (a 64-px encoder input, a 16x16 embedding, a 64x64 mask grid
that is the canvas's own), shared by the module's tests:

- ``scratch``: the whole model from random weights (``train_encoder``: a random encoder's
  features do not show the digits, so a frozen one leaves the decoder nothing to learn from;
  measured: the decoder alone collapses to empty masks), whose held-out mask mIoU must rise
  well above the random start's;
- ``tuned``: the default, the prompt encoder and mask decoder alone on embeddings computed
  once, started from ``scratch`` (``--checkpoint RUN``); a copy of it cut back to a middle
  checkpoint and resumed through ``efficientvit-jax train --resume`` must end with its bits,
  and it loads back into ``SamPredictor`` and ``efficientvit-jax sam --checkpoint``.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from PIL import Image

from efficientvit_jax.cli import main
from efficientvit_jax.data import digits_seg
from efficientvit_jax.training import sam as sam_training
from efficientvit_jax.training.sam import finetune_sam, load_sam_run
from efficientvit_jax.training.sam_config import SamTuneConfig

pytestmark = pytest.mark.xdist_group("sam_finetune")

# A small EfficientViT-SAM: L0's block kinds at a few channels, the decoder at 32 channels.
TINY = {
    "backbone": {"widths": [8, 8, 16, 16, 32], "depths": [1, 0, 0, 0, 1], "head_dim": 8},
    "neck_strides": [4, 8, 16],
    "neck_width": 16,
    "neck_depth": 1,
    "embed_dim": 32,
    "embed_size": 16,
    "prompt_size": 64,
    "mask_in_chans": 4,
    "decoder_depth": 1,
    "decoder_heads": 2,
    "decoder_mlp_dim": 64,
    "iou_head_hidden": 32,
}
STEPS_PER_EPOCH = 12  # 48 training canvases, 4 per step


@pytest.fixture(scope="module")
def data(tmp_path_factory: Any) -> str:
    spec = digits_seg.Spec(canvas=64, train=48, val=8, scales=(3.0, 6.0))
    return digits_seg.generate(str(tmp_path_factory.mktemp("sam") / "data"), spec)


def _config(data: str, **options: Any) -> SamTuneConfig:
    base = dict(
        data=data, architecture=TINY, image_size=64, batch_size=4, eval_batch_size=8,
        weight_decay=0.01, prompts_per_image=4, progress=False,
    )  # fmt: skip
    return SamTuneConfig(**{**base, **options})


@pytest.fixture(scope="module")
def scratch(data: str, tmp_path_factory: Any) -> Path:
    run = tmp_path_factory.mktemp("runs") / "scratch"
    config = _config(data, train_encoder=True, epochs=6, learning_rate=1e-2, save_every=1000)
    finetune_sam(config, run)
    return run


@pytest.fixture(scope="module")
def tuned(data: str, scratch: Path, interrupted_copy: Any) -> tuple[Path, Path]:
    """The decoder fine-tuned from ``scratch`` straight (2 epochs, checkpoints at steps 16
    and 24), and a copy cut back to step 16 (as a Ctrl-C there leaves it) then resumed."""
    straight, resumed = scratch.parent / "tuned", scratch.parent / "resumed"
    # through the command: --checkpoint alone names the model (the run's, its architecture)
    argv = ["train", "--checkpoint", str(scratch), "--data", data, "--epochs", "2",
            "--learning-rate", "1e-3", "--weight-decay", "0.01", "--batch-size", "4",
            "--eval-batch-size", "8", "--save-every", "16", "--no-progress", "-o", str(straight)]  # fmt: skip
    assert main(argv) == 0
    interrupted_copy(straight, resumed, 16)
    # The checkpoint holds every value: the resume restores into the state's shapes, with no
    # random template drawn and no start read.
    with pytest.MonkeyPatch.context() as patch:
        for name in ("random_variables", "start_variables"):
            patch.setattr(sam_training, name, _refuse)
        assert main(["train", "--resume", "--no-progress", "-o", str(resumed)]) == 0
    return straight, resumed


def _refuse(*_: Any, **__: Any) -> None:
    raise AssertionError("the resumed run computed its starting variables")


def tree_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of two pytrees (structure, dtypes, every value)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)
    )


def _metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text())


def test_fine_tuning_improves_the_held_out_mask_iou(scratch: Path) -> None:
    m = _metrics(scratch)
    assert m["step"] == 6 * STEPS_PER_EPOCH and len(m["history"]) == 6
    assert m["trained"] == ["image_encoder", "mask_decoder", "prompt_encoder"]
    # measured on the 2-core machine: 0.08 -> 0.39
    assert m["test_miou"] > m["start_miou"] + 0.15, (m["start_miou"], m["test_miou"])
    assert {"config.json", "run.json", "curves.png", "checkpoints"} <= {
        p.name for p in scratch.iterdir()
    }


def test_the_decoder_fine_tunes_from_a_run_and_resumes_bit_exactly(
    scratch: Path, tuned: tuple[Path, Path]
) -> None:
    m, a, b = _metrics(scratch), *(_metrics(r) for r in tuned)
    assert a["trained"] == ["prompt_encoder", "mask_decoder"]
    # the same weights scored on stored embeddings instead of in-step ones
    assert abs(a["start_miou"] - m["test_miou"]) < 0.01
    assert a["test_miou"] > m["start_miou"] + 0.15, a["test_miou"]
    assert len(a["step_losses"]) == 24 and a["step_losses"] == b["step_losses"]
    assert b["steps_this_run"] == 8 and a["steps_this_run"] == 24
    for k in ("test_loss", "test_miou", "test_accuracy", "start_miou", "history"):
        assert a[k] == b[k], k
    assert tree_equal(load_sam_run(tuned[0]).variables, load_sam_run(tuned[1]).variables)


def test_the_run_loads_into_the_predictor_and_the_sam_command(
    tuned: tuple[Path, Path], data: str, tmp_path: Path
) -> None:
    from efficientvit_jax.sam import SamPredictor
    from efficientvit_jax.training.sam_steps import embed_fn

    run = load_sam_run(tuned[0])
    assert run.step == 24 and run.model.config.prompt_size == 64
    image_path = Path(data) / "val" / "images" / "00000.png"
    image = np.asarray(Image.open(image_path).convert("RGB"))
    truth = np.asarray(Image.open(Path(data) / "val" / "masks" / "00000.png"))
    ys, xs = np.nonzero((truth > 0) & (truth < 255))
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])  # every digit of the canvas
    predictor = SamPredictor(run.model, run.variables)
    predictor.set_image(image)
    masks, _, low_res = predictor.predict(box=box, multimask_output=False)
    # the trained variables' own decoder on the same prompt
    emb = embed_fn(run.model)(run.variables, predictor_input(image, run.model))
    corners = box.reshape(1, 2, 2).astype(np.float32)  # a 64-px canvas in a 64 frame: as is
    decode = jax.jit(functools.partial(run.model.apply, method="decode", multimask_output=False))
    direct, _ = decode(run.variables, emb, corners, np.array([[2, 3]]),
                       np.zeros((1, 1, 64, 64), np.float32), np.zeros(1, np.float32))  # fmt: skip
    np.testing.assert_allclose(low_res, np.asarray(direct)[0], atol=1e-5, rtol=1e-5)
    inst = (truth > 0) & (truth < 255)
    iou = (masks[0] & inst).sum() / (masks[0] | inst).sum()
    assert iou > 0.3, iou  # the digits, roughly: a random decoder's mask is not
    out = tmp_path / "masks"
    argv = ["sam", str(image_path), "--checkpoint", str(tuned[0]), "--box",
            ",".join(str(v) for v in box), "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    written = np.asarray(Image.open(out / "00000_mask0.png")) > 0
    np.testing.assert_array_equal(written, masks[0])


def predictor_input(image: np.ndarray, model: Any) -> np.ndarray:
    from efficientvit_jax.sam.transforms import preprocess

    return preprocess(image, model.config.image_size, model.config.data_format)[None]


def _error(code: int, capsys: Any) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("efficientvit-jax train: error: "), err
    return err


def test_a_bad_layout_or_a_missing_mask_is_one_line(data: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    flat = tmp_path / "flat"  # one split's images/ + masks/, not a dataset root
    shutil.copytree(Path(data) / "val", flat)
    err = _error(main(["train", "--model", "efficientvit_sam_l0", "--data", str(flat),
                       "-o", str(out)]), capsys)  # fmt: skip
    assert "training needs the dataset's root" in err
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    (broken / "train" / "masks" / "00003.png").unlink()
    err = _error(main(["train", "--model", "efficientvit_sam_l0", "--data", str(broken),
                       "-o", str(out)]), capsys)  # fmt: skip
    assert "00003.png has no mask" in err
    Image.new("L", (32, 64)).save(broken / "train" / "masks" / "00003.png")  # a narrow mask
    err = _error(main(["train", "--model", "efficientvit_sam_l0", "--data", str(broken),
                       "-o", str(out)]), capsys)  # fmt: skip
    assert "is 64x64 but its mask" in err and "00003.png is 32x64" in err
    from efficientvit_jax.data.segmentation import find_seg_dataset
    from efficientvit_jax.training.sam_data import read_split

    split = read_split(find_seg_dataset(str(broken), "train"), 64, 64, 16, skip_bad=True)
    assert len(split) == 47 and [Path(p).name for p, _ in split.skipped] == ["00003.png"]
    err = _error(main(["train", "--model", "efficientvit_sam_l0", "--data", str(broken),
                       "--augment", "light", "-o", str(out)]), capsys)  # fmt: skip
    assert "--augment: not an option of SAM fine-tuning" in err
    err = _error(main(["train", "--data", data, "--train-encoder", "-o", str(out)]), capsys)
    assert "--train-encoder: an option of SAM fine-tuning" in err
    assert not out.exists()


# argparse dest -> (the flag and its value, the SamTuneConfig field's value)
FLAG_CASES: dict[str, tuple[list[str], Any]] = {
    "weights": (["--weights", "w.pt"], "w.pt"),
    "image_size": (["--image-size", "256"], 256),
    "epochs": (["--epochs", "3"], 3),
    "batch_size": (["--batch-size", "2"], 2),
    "learning_rate": (["--learning-rate", "0.01"], 0.01),
    "warmup_steps": (["--warmup-steps", "0"], 0),
    "weight_decay": (["--weight-decay", "0"], 0.0),
    "seed": (["--seed", "3"], 3),
    "eval_batch_size": (["--eval-batch-size", "2"], 2),
    "save_every": (["--save-every", "5"], 5),
    "keep": (["--keep", "1"], 1),
    "max_steps": (["--max-steps", "9"], 9),
    "skip_bad": (["--skip-bad"], True),
    "train_encoder": (["--train-encoder"], True),
    "prompts_per_image": (["--prompts-per-image", "2"], 2),
    "max_points": (["--max-points", "1"], 1),
    "box_prob": (["--box-prob", "0.25"], 0.25),
    "negative_prob": (["--negative-prob", "0"], 0.0),
    "min_mask_area": (["--min-mask-area", "4"], 4),
}


def _sam_config(*argv: str) -> SamTuneConfig:
    from efficientvit_jax.cli import make_parser, sam_train

    args = make_parser().parse_args(
        ["train", "--model", "efficientvit_sam_l0", "--data", "d", *argv]
    )
    assert sam_train.wants_sam(args)
    return sam_train.config_from_args(args)


def test_every_sam_flag_is_in_the_table() -> None:
    from efficientvit_jax.cli.sam_train import SAM_ONLY, SHARED

    assert set(FLAG_CASES) == (set(SAM_ONLY) | set(SHARED)) - {"checkpoint", "data", "model"}


@pytest.mark.parametrize("dest", list(FLAG_CASES))
def test_each_sam_flag_sets_exactly_its_field(dest: str) -> None:
    flag, value = FLAG_CASES[dest]
    base, new = _sam_config().to_dict(), _sam_config(*flag).to_dict()
    assert {k for k in base if base[k] != new[k]} == {dest}
    assert new[dest] == value and type(new[dest]) is type(value)


def test_weights_start_from_an_mit_checkpoint_file(tmp_path: Path) -> None:
    """``--weights FILE``: MIT's state dict (here the small model's random variables written
    with MIT's names and layouts) loads through ``load_mit_weights`` with the architecture."""
    from flax import traverse_util
    from safetensors.numpy import save_file

    from efficientvit_jax.training.sam import build_sam, random_variables, start_variables
    from efficientvit_jax.zoo.sam.convert import mit_key

    config = _config("unused", architecture=TINY)
    model = build_sam(config)
    variables = random_variables(model, 1)
    sd = {}
    for path, leaf in traverse_util.flatten_dict(variables).items():
        value = np.asarray(leaf)
        if path[-1] == "kernel":  # Flax's layouts back to PyTorch's
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        sd[mit_key("/".join(path[1:]), model.config)] = np.ascontiguousarray(value)
    save_file(sd, str(tmp_path / "small.safetensors"))
    loaded, where = start_variables(
        config.replace(weights=str(tmp_path / "small.safetensors")), model
    )
    assert where.endswith("small.safetensors") and tree_equal(loaded, variables)
