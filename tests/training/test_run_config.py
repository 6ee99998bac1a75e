"""The typed training recipe (``training.config``) and ``efficientvit-jax train``'s mapping onto
it: every rule as one line naming flag and field, the JSON round trip, each flag setting exactly
its field, and ``--resume`` continuing a run only under its recipe (epochs may grow)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

from efficientvit_jax.cli import main, make_parser
from efficientvit_jax.cli.sam_train import SAM_ONLY
from efficientvit_jax.cli.train import _BUILDER, config_from_args
from efficientvit_jax.config import EfficientViTConfig
from efficientvit_jax.training import train
from efficientvit_jax.training.config import (
    CONFIG_FILE,
    DIGITS_MODEL,
    FORMAT_VERSION,
    SECTIONS,
    DataOptions,
    ModelOptions,
    TrainConfig,
    differences,
    flatten,
    load_config,
    save_config,
)

ZOO = "efficientvit_m0"  # any name: the config does not look models up
DIGITS = TrainConfig()
FOLDER_ZOO = TrainConfig(data=DataOptions(folder="d"), model=ModelOptions(name=ZOO))
BASES = {"digits": DIGITS, "zoo": FOLDER_ZOO}
BASE_ARGS = {"digits": [], "zoo": ["--data", "d", "--model", ZOO]}


def _parse(argv: list[str]) -> Any:
    return make_parser().parse_args(argv)


def _config(*argv: str) -> TrainConfig:
    return config_from_args(_parse(["train", *argv]))


def _train_parser() -> Any:
    p = make_parser()
    (sub,) = [a for a in p._actions if isinstance(getattr(a, "choices", None), dict)]
    return sub.choices["train"]


def _flags() -> dict[str, str]:
    """``"section.field"`` -> its flag, from the ``flag`` metadata."""
    out = {"seed": "--seed"}
    for name, section in SECTIONS.items():
        for f in dataclasses.fields(section):
            if "flag" in f.metadata:
                out[f"{name}.{f.name}"] = f.metadata["flag"]
    return out


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg, repr(msg)
    return msg


# 1. The rules of every section ------------------------------------------------------------

# (field path, bad value, fragment of the rule, base config). The message must be
# "--flag must be RULE, got VALUE (section.field)".
RULES = [
    ("data.batch_size", 0, ">= 1", "digits"),
    ("data.batch_size", "64", ">= 1", "digits"),
    ("data.batch_size", True, ">= 1", "digits"),
    ("data.eval_batch_size", 0, ">= 1", "digits"),
    ("data.workers", -1, ">= 0", "digits"),
    ("data.workers", 1.5, ">= 0", "digits"),
    ("data.val_split", 1.0, "in (0, 1)", "zoo"),
    ("data.val_split", 0.0, "in (0, 1)", "zoo"),
    ("data.val_split", "0.2", "in (0, 1)", "zoo"),
    ("model.image_size", 0, ">= 1", "zoo"),
    ("model.image_size", 224.0, ">= 1", "zoo"),
    ("optim.learning_rate", 0.0, "a finite number > 0", "digits"),
    ("optim.learning_rate", -1e-3, "a finite number > 0", "digits"),
    ("optim.learning_rate", math.nan, "a finite number > 0", "digits"),
    ("optim.learning_rate", math.inf, "a finite number > 0", "digits"),
    ("optim.learning_rate", "3e-3", "a finite number > 0", "digits"),
    ("optim.weight_decay", -0.1, "a finite number >= 0", "digits"),
    ("optim.weight_decay", math.inf, "a finite number >= 0", "digits"),
    ("optim.label_smoothing", 1.0, "in [0, 1)", "digits"),
    ("optim.label_smoothing", -0.1, "in [0, 1)", "digits"),
    ("optim.backbone_lr_scale", -1.0, "a finite number >= 0", "digits"),
    ("schedule.epochs", 0, ">= 1", "digits"),
    ("schedule.epochs", 2.0, ">= 1", "digits"),
    ("schedule.max_steps", 0, ">= 1", "digits"),
    ("schedule.warmup_steps", -1, ">= 0", "digits"),
    ("schedule.warmup_steps", 2.5, ">= 0", "digits"),
    ("augment.level", "heavy", "one of none, light, strong", "digits"),
    ("augment.scale_range", (2.0, 1.0), "LOW,HIGH with 0 < LOW <= HIGH", "digits"),
    ("augment.scale_range", (0.0, 1.0), "LOW,HIGH with 0 < LOW <= HIGH", "digits"),
    ("ema.decay", 1.0, "in [0, 1)", "digits"),
    ("ema.decay", -0.5, "in [0, 1)", "digits"),
    ("ema.decay", math.nan, "in [0, 1)", "digits"),
    ("precision.precision", "float64", "one of float32, bfloat16, float16", "digits"),
    ("precision.loss_scale", "static", "one of auto, dynamic, none", "digits"),
    ("precision.loss_scale_init", 0.5, "a finite number >= 1", "digits"),
    ("precision.loss_scale_init", math.inf, "a finite number >= 1", "digits"),
    ("precision.loss_scale_interval", 0, ">= 1", "digits"),
    ("mesh.min_fsdp_size", -1, ">= 0", "digits"),
    ("mesh.cpu_devices", 0, ">= 1", "digits"),
    ("mesh.num_processes", 0, ">= 1", "digits"),
    ("mesh.process_id", -1, ">= 0", "digits"),
    ("output.save_every", 0, ">= 1", "digits"),
    ("output.keep", 0, ">= 1", "digits"),
    ("seed", -1, "an int >= 0", "digits"),  # NumPy's shuffling takes no negative seed
    ("seed", "0", "an int >= 0", "digits"),
    ("data.skip_bad", "yes", "true or false", "digits"),  # a hand-edited config.json
    ("model.freeze_backbone", 1, "true or false", "zoo"),
    ("mesh.distributed", None, "true or false", "digits"),
]


@pytest.mark.parametrize(("path", "bad", "rule", "base"), RULES)
def test_section_rule_is_one_line_naming_flag_and_field(path, bad, rule, base):
    flag = _flags()[path]
    with pytest.raises(ValueError) as e:
        BASES[base].with_values({path: bad})
    msg = _one_line(e)
    assert msg == f"{flag} must be {rule}, got {bad!r} ({path})"


def test_every_validated_field_has_a_rule_in_the_table():
    """A new flag-carrying field with a rule gets a row (fields without one are listed)."""
    unchecked = {"data.folder", "model.name", "model.weights", "mesh.mesh", "mesh.coordinator"}
    assert set(_flags()) - unchecked == {p for p, *_ in RULES}


def _parses(path: str, bad: Any) -> bool:
    """Whether ``bad`` is a value the flag of ``path`` parses (an int flag, an int value)."""
    flag = _flags()[path]
    (action,) = [a for a in _train_parser()._actions if flag in a.option_strings]
    return action.type in (int, float) and type(bad) is action.type


@pytest.mark.parametrize(("path", "bad", "rule", "base"), [r for r in RULES if _parses(*r[:2])])
def test_the_command_line_says_the_same_line(path, bad, rule, base, tmp_path, capsys):
    """Rules a flag's type can express: exit 2, the config's line on stderr, nothing written."""
    flag = _flags()[path]
    out = tmp_path / "out"
    rc = main(["train", *BASE_ARGS[base], flag, str(bad), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err == f"efficientvit-jax train: error: {flag} must be {rule}, got {bad!r} ({path})\n"
    assert not out.exists()


def test_fields_without_a_flag_name_the_field():
    with pytest.raises(ValueError) as e:
        ModelOptions()
    assert _one_line(e) == "model.builder must be a core config without --model, got None"
    with pytest.raises(ValueError) as e:
        ModelOptions(name=ZOO, builder=DIGITS_MODEL)
    assert _one_line(e).startswith(
        "model.builder must be None with --model (a zoo model), got EfficientViTConfig("
    )


@pytest.mark.parametrize("bad", [1.0, True, None])
def test_seed_is_an_int(bad):
    """(A negative seed, in RULES, used to be accepted here and to fail in the first epoch,
    in NumPy's ``default_rng``, after config.json and run.json were written.)"""
    with pytest.raises(ValueError) as e:
        TrainConfig(seed=bad)
    assert _one_line(e) == f"--seed must be an int >= 0, got {bad!r} (seed)"


def test_sections_must_be_their_types():
    with pytest.raises(ValueError) as e:
        TrainConfig(optim={"learning_rate": 1.0})
    assert _one_line(e).startswith("optim must be a OptimOptions, got {")


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_progress_is_a_bool(bad):
    """The one switch without a flag of its own (--no-progress sets it)."""
    with pytest.raises(ValueError) as e:
        DIGITS.with_values({"output.progress": bad})
    assert _one_line(e) == f"output.progress must be true or false, got {bad!r}"


CROSS = [
    # (make the config, the one-line message's fragments)
    (lambda: ModelOptions(weights="w", builder=DIGITS_MODEL),
     ("--weights needs --model", "model.weights")),
    (lambda: ModelOptions(name=ZOO, freeze_backbone=True),
     ("--freeze-backbone needs --weights", "model.freeze_backbone")),
    (lambda: DataOptions(val_split=0.2), ("--val-split needs --data", "data.val_split")),
    (lambda: TrainConfig(model=ModelOptions(name=ZOO)),
     ("--model needs --data", "model.name needs data.folder")),
    (lambda: DIGITS.with_values({"model.builder.in_channels": 3}),
     ("--in-channels must be 1 for the digits", "got 3 (model.builder.in_channels)")),
    (lambda: DIGITS.with_values({"model.builder.num_classes": 7}),
     ("--num-classes must be 10 for the digits", "got 7 (model.builder.num_classes)")),
    (lambda: TrainConfig(data=DataOptions(folder="d"),
                         model=ModelOptions(builder=EfficientViTConfig(in_channels=2))),
     ("--in-channels must be 1 (grey) or 3 (RGB) for image folders",
      "got 2 (model.builder.in_channels)")),
]  # fmt: skip


@pytest.mark.parametrize(("make", "fragments"), CROSS)
def test_cross_field_rules(make, fragments):
    with pytest.raises(ValueError) as e:
        make()
    msg = _one_line(e)
    assert all(f in msg for f in fragments), msg


def test_digits_take_num_classes_10_or_none():
    assert DIGITS.with_values({"model.builder.num_classes": None}).model.builder.num_classes is None
    assert DIGITS.with_values({"model.builder.num_classes": 10}) == DIGITS


CLI_CROSS = [
    (["--weights", "w"], "--weights needs --data"),
    (["--val-split", "0.2"], "--val-split needs --data"),
    (["--model", ZOO], "--model needs --data"),
    (["--in-channels", "3"], "--in-channels must be 1 for the digits"),
    (["--num-classes", "7"], "--num-classes must be 10 for the digits"),
    (["--data", "d", "--weights", "w"], "--weights needs --model"),
    (["--data", "d", "--model", ZOO, "--freeze-backbone"], "--freeze-backbone needs --weights"),
    (["--data", "d", "--in-channels", "4"], "--in-channels must be 1 (grey) or 3 (RGB) for image"),
    (["--data", "d", "--num-classes", "5"], "--num-classes: a folder run has one output"),
]


@pytest.mark.parametrize(("argv", "fragment"), CLI_CROSS)
def test_cross_field_rules_on_the_command_line(argv, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["train", *argv, "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and fragment in err, err
    assert not out.exists()


# 2. JSON ---------------------------------------------------------------------------------

BUILDER = EfficientViTConfig(
    image_size=64, patch_size=8, in_channels=3, embed_dim=16, depths=(2, 1, 3),
    num_heads=(2, 4, 8), mlp_ratio=2.5, layout="edifice", data_format="NHWC",
    dtype="bfloat16", drop_path_rate=0.2, remat="block",
)  # fmt: skip
ROUND_TRIP = {
    "digits": DIGITS,
    "folder_zoo": TrainConfig(
        data=DataOptions(folder="/data/flowers", val_split=0.25, batch_size=16, workers=4,
                         skip_bad=True),
        model=ModelOptions(name="efficientvit_b0.r224_in1k", weights="b0.safetensors",
                           image_size=160, freeze_backbone=True),
    ).with_values({
        "optim.backbone_lr_scale": 0.0, "augment.level": "strong", "ema.decay": 0.999,
        "precision.precision": "float16", "precision.loss_scale": "dynamic",
        "schedule.warmup_steps": 0, "schedule.max_steps": 7, "seed": 3,
        "mesh.mesh": "data=2,fsdp=1", "mesh.cpu_devices": 2, "output.progress": False,
    }),
    "folder_builder": TrainConfig(
        data=DataOptions(folder="imgs"), model=ModelOptions(builder=BUILDER)
    ).with_values({"model.builder.num_classes": 5, "optim.learning_rate": 1e-4}),
}  # fmt: skip


def _json(c: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(c.to_dict()))


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_json_round_trip(name, tmp_path):
    c = ROUND_TRIP[name]
    d = _json(c)
    assert d["format"] == FORMAT_VERSION and set(d) == {"format", "seed", *SECTIONS}
    back = TrainConfig.from_dict(d)
    assert back == c and flatten(back) == flatten(c) and not differences(c, back, ignore=set())
    save_config(c, str(tmp_path))
    assert load_config(str(tmp_path)) == c
    assert json.loads((tmp_path / CONFIG_FILE).read_text()) == d


def test_builder_round_trip_keeps_its_types():
    b = TrainConfig.from_dict(_json(ROUND_TRIP["folder_builder"])).model.builder
    assert b == BUILDER.replace(num_classes=5)
    assert b.depths == (2, 1, 3) and str(b.dtype) == "bfloat16" and b.remat == "block"
    assert _json(ROUND_TRIP["folder_builder"])["model"]["builder"]["dtype"] == "bfloat16"


def _edit(path: str, value: Any) -> dict[str, Any]:
    d = _json(DIGITS)
    *head, last = path.split(".")
    node = d
    for k in head:
        node = node[k]
    node[last] = value
    return d


REFUSED_JSON = [
    (lambda: {**_json(DIGITS), "extra": 1}, "unknown config keys: extra"),
    (lambda: _edit("optim.momentum", 0.9), "unknown keys in config section optim: momentum"),
    (lambda: _edit("model.builder.depth", 2), "'depth'"),
    (lambda: _edit("format", FORMAT_VERSION + 1), f"config format {FORMAT_VERSION + 1}"),
    (lambda: {k: v for k, v in _json(DIGITS).items() if k != "format"}, "config format None"),
    (lambda: _edit("data", [64]), "config section data must be a mapping"),
    (lambda: _edit("model.builder", "tiny"), "model.builder"),
    (lambda: _edit("model.builder.embed_dim", 0), "'embed_dim' = 0"),
    (lambda: _edit("schedule.epochs", "12"), "--epochs must be >= 1, got '12'"),
    (lambda: _edit("data.skip_bad", "no"), "(data.skip_bad)"),
]


@pytest.mark.parametrize(("make", "fragment"), REFUSED_JSON)
def test_json_refusals_are_one_line(make, fragment, tmp_path):
    d = make()
    with pytest.raises(ValueError) as e:
        TrainConfig.from_dict(d)
    assert fragment in _one_line(e)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(d))
    with pytest.raises(ValueError) as e:
        load_config(str(tmp_path))
    msg = _one_line(e)
    assert msg.startswith(str(tmp_path / CONFIG_FILE)) and fragment in msg


def test_load_config_refuses_a_folder_without_one(tmp_path):
    with pytest.raises(ValueError) as e:
        load_config(str(tmp_path))
    assert f"no {CONFIG_FILE}" in _one_line(e)
    (tmp_path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError) as e:
        load_config(str(tmp_path))
    assert "unreadable run config" in _one_line(e)


def test_with_values_refuses_unknown_paths():
    for path in ("seeds", "optim.momentum", "optimizer.lr", "model.builder.depth"):
        with pytest.raises(ValueError) as e:
            DIGITS.with_values({path: 1})
        _one_line(e)


# 3. The command line -> the config -------------------------------------------------------

# SAM fine-tuning's own flags set a SamTuneConfig (tests/sam/test_sam_finetune.py)
EXCLUDED = {"help", "output", "resume", "no_progress", "preset", *_BUILDER, *SAM_ONLY}
DATA = ["--data", "d"]
WEIGHTS = ["--data", "d", "--model", ZOO, "--weights", "w.safetensors"]
# argparse dest -> (base flags, the flag and its value, the field, its value in the config)
FLAG_CASES: dict[str, tuple[list[str], list[str], str, Any]] = {
    "epochs": ([], ["--epochs", "3"], "schedule.epochs", 3),
    "batch_size": ([], ["--batch-size", "32"], "data.batch_size", 32),
    "learning_rate": ([], ["--learning-rate", "0.01"], "optim.learning_rate", 0.01),
    "warmup_steps": ([], ["--warmup-steps", "7"], "schedule.warmup_steps", 7),
    "weight_decay": ([], ["--weight-decay", "0.01"], "optim.weight_decay", 0.01),
    "label_smoothing": ([], ["--label-smoothing", "0"], "optim.label_smoothing", 0.0),
    "seed": ([], ["--seed", "5"], "seed", 5),
    "eval_batch_size": ([], ["--eval-batch-size", "30"], "data.eval_batch_size", 30),
    "save_every": ([], ["--save-every", "10"], "output.save_every", 10),
    "keep": ([], ["--keep", "1"], "output.keep", 1),
    "max_steps": ([], ["--max-steps", "3"], "schedule.max_steps", 3),
    "data": ([], ["--data", "d"], "data.folder", "d"),
    "val_split": (DATA, ["--val-split", "0.2"], "data.val_split", 0.2),
    "model": (DATA, ["--model", ZOO], "model.name", ZOO),
    "weights": ([*DATA, "--model", ZOO], ["--weights", "w.safetensors"], "model.weights",
                "w.safetensors"),
    "freeze_backbone": (WEIGHTS, ["--freeze-backbone"], "model.freeze_backbone", True),
    "backbone_lr_scale": (WEIGHTS, ["--backbone-lr-scale", "0.5"], "optim.backbone_lr_scale",
                          0.5),
    "augment": (DATA, ["--augment", "strong"], "augment.level", "strong"),
    "scale_range": (DATA, ["--scale-range", "0.75,1.5"], "augment.scale_range", (0.75, 1.5)),
    "ema_decay": ([], ["--ema-decay", "0.99"], "ema.decay", 0.99),
    "workers": (DATA, ["--workers", "4"], "data.workers", 4),
    "skip_bad": (DATA, ["--skip-bad"], "data.skip_bad", True),
    "coordinator": ([], ["--coordinator", "host:1234"], "mesh.coordinator", "host:1234"),
    "num_processes": ([], ["--num-processes", "2"], "mesh.num_processes", 2),
    "process_id": ([], ["--process-id", "1"], "mesh.process_id", 1),
    "distributed": ([], ["--distributed"], "mesh.distributed", True),
    "cpu_devices": ([], ["--cpu-devices", "4"], "mesh.cpu_devices", 4),
    "mesh": ([], ["--mesh", "data=2,fsdp=2"], "mesh.mesh", "data=2,fsdp=2"),
    "min_fsdp_size": ([], ["--min-fsdp-size", "0"], "mesh.min_fsdp_size", 0),
    "precision": ([], ["--precision", "bfloat16"], "precision.precision", "bfloat16"),
    "loss_scale": ([], ["--loss-scale", "dynamic"], "precision.loss_scale", "dynamic"),
    "loss_scale_init": ([], ["--loss-scale-init", "1024"], "precision.loss_scale_init", 1024.0),
    "loss_scale_interval": ([], ["--loss-scale-interval", "10"],
                            "precision.loss_scale_interval", 10),
}  # fmt: skip


def _changed(a: TrainConfig, b: TrainConfig) -> set[str]:
    return {d.split(":", 1)[0] for d in differences(a, b, ignore=frozenset())}


def test_every_flag_of_train_is_in_the_table():
    dests = {a.dest for a in _train_parser()._actions} - EXCLUDED
    assert dests == set(FLAG_CASES)
    # ... and every flag the config names is one of train's (the metadata says the truth).
    options = {s for a in _train_parser()._actions for s in a.option_strings}
    assert set(_flags().values()) <= options


@pytest.mark.parametrize("dest", list(FLAG_CASES))
def test_each_flag_changes_exactly_its_field(dest):
    base_argv, flag, path, value = FLAG_CASES[dest]
    base, new = _config(*base_argv), _config(*base_argv, *flag)
    changed = _changed(base, new)
    builder_changes = {p for p in changed if p.startswith("model.builder")}
    if dest == "data":  # a folder run from scratch: the builder's own defaults, RGB, 224 px
        digits_vs_core = {
            f"model.builder.{f.name}" for f in dataclasses.fields(EfficientViTConfig)
            if getattr(DIGITS_MODEL, f.name) != getattr(EfficientViTConfig(in_channels=3), f.name)
        }  # fmt: skip
        assert builder_changes == digits_vs_core and "model.builder.image_size" in digits_vs_core
    elif dest == "model":  # a zoo model: no builder
        assert builder_changes and new.model.builder is None and base.model.builder is not None
    else:
        assert not builder_changes
    assert changed - builder_changes == {path}
    assert flatten(new)[path] == value and type(flatten(new)[path]) is type(value)


def test_lr_is_learning_rate():
    assert _config("--lr", "0.01") == _config("--learning-rate", "0.01")


def test_no_progress_is_output_progress():
    assert _changed(DIGITS, _config("--no-progress")) == {"output.progress"}
    assert _config("--no-progress").output.progress is False


BUILDER_VALUES = {
    "image_size": "64", "patch_size": "8", "embed_dim": "32", "depths": "1,1,1",
    "num_heads": "2,2,2", "mlp_ratio": "2.0", "layout": "edifice", "data_format": "NHWC",
    "dtype": "bfloat16", "drop_path_rate": "0.2", "remat": "block",
}  # fmt: skip


@pytest.mark.parametrize("dest", list(BUILDER_VALUES))
def test_builder_flags_set_the_builder(dest):
    """On the digits (and a folder run from scratch) each builder flag is its builder field;
    --in-channels and --num-classes are fixed there (the cross-field rules)."""
    flag = "--" + dest.replace("_", "-")
    for base_argv, base in (([], DIGITS_MODEL), (DATA, EfficientViTConfig(in_channels=3))):
        new = _config(*base_argv, flag, BUILDER_VALUES[dest])
        expected = getattr(_parse(["summary", flag, BUILDER_VALUES[dest]]), dest)
        assert new.model.builder == base.replace(**{dest: expected})
        assert _changed(_config(*base_argv), new) == {f"model.builder.{dest}"}


def test_builder_table_is_the_builder_flags():
    assert set(BUILDER_VALUES) | {"in_channels", "num_classes"} == set(_BUILDER)


def test_image_size_with_a_zoo_model_is_the_model_field(capsys):
    c = _config("--data", "d", "--model", ZOO, "--image-size", "160")
    assert c.model.image_size == 160 and c.model.builder is None
    assert "note" not in capsys.readouterr().out
    c2 = _config("--data", "d", "--model", ZOO, "--embed-dim", "32")
    assert c2 == _config("--data", "d", "--model", ZOO)
    assert "--embed-dim are core-builder options, unused by --model" in capsys.readouterr().out


def test_data_alone_is_the_core_builder_at_224():
    c = _config("--data", "D")
    assert c.model.builder == EfficientViTConfig(in_channels=3)
    assert c.model.builder.image_size == 224 and c.model.name is None
    assert c.data.folder == "D" and c.augment.level == "light" and not c.is_digits
    assert c == TrainConfig(data=DataOptions(folder="D"),
                            model=ModelOptions(builder=EfficientViTConfig(in_channels=3)))  # fmt: skip
    assert _config("--data", "D", "--image-size", "96").model.builder.image_size == 96


# 5. The README's main command ------------------------------------------------------------


def test_the_readme_command_is_the_default_config():
    assert _config() == TrainConfig() == DIGITS
    assert DIGITS.is_digits and DIGITS.model.builder == DIGITS_MODEL


def test_output_is_not_a_field():
    assert _config("-o", "elsewhere") == TrainConfig()


# 4. Resume and the library call ----------------------------------------------------------

TINY = [
    "--image-size", "16", "--patch-size", "4", "--embed-dim", "8", "--depths", "1,1",
    "--num-heads", "2,2", "--batch-size", "64", "--epochs", "1", "--max-steps", "3",
    "--no-progress",
]  # fmt: skip
TINY_VALUES = {
    "model.builder.image_size": 16, "model.builder.patch_size": 4, "model.builder.embed_dim": 8,
    "model.builder.depths": (1, 1), "model.builder.num_heads": (2, 2), "data.batch_size": 64,
    "schedule.epochs": 1, "schedule.max_steps": 3, "output.progress": False,
}  # fmt: skip


def _snapshot(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for d, dirs, files in os.walk(root):
        for n in dirs:
            out[os.path.relpath(os.path.join(d, n), root) + "/"] = None
        for n in files:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = Path(p).read_bytes()
    return out


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """The tiny digits job through the CLI: 3 steps of a 1-epoch schedule. What it wrote is
    read now (the resume test extends the run in place)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return out, metrics, load_config(str(out))


def test_the_flags_are_the_library_config():
    assert _config(*TINY) == TrainConfig().with_values(TINY_VALUES)


def test_library_call_equals_the_command_line(digits_run, tmp_path):
    _, cli_metrics, cli_config = digits_run
    config = TrainConfig().with_values(TINY_VALUES)
    assert config == cli_config
    metrics = train(config, tmp_path / "lib")
    assert len(cli_metrics["step_losses"]) == 3
    assert metrics["step_losses"] == cli_metrics["step_losses"]  # bit-equal floats
    assert (
        json.loads((tmp_path / "lib" / "metrics.json").read_text())["step_losses"]
        == (cli_metrics["step_losses"])
    )
    assert load_config(str(tmp_path / "lib")) == cli_config


def test_resume_extends_the_schedule_and_refuses_other_recipes(digits_run, capsys):
    out, first, stored = digits_run
    spe = first["total_steps"]  # 1 epoch
    assert first["step"] == 3 and stored.schedule.epochs == 1 and stored.schedule.max_steps == 3
    capsys.readouterr()

    # Growing the schedule: allowed, said, and run to the end (--max-steps is not carried over).
    assert main(["train", "-o", str(out), "--resume", "--epochs", "2"]) == 0
    said = capsys.readouterr().out
    assert "extending the run from 1 to 2 epochs" in said
    assert f"steps 3 -> {2 * spe} of {2 * spe}" in said
    m = json.loads((out / "metrics.json").read_text())
    assert m["step"] == m["total_steps"] == 2 * spe and m["epochs_completed"] == 2
    assert m["steps_this_run"] == 2 * spe - 3
    assert m["step_losses"][:3] == first["step_losses"] and len(m["step_losses"]) == 2 * spe
    now = load_config(str(out))
    assert now.schedule.epochs == 2 and now.schedule.max_steps is None
    assert json.loads((out / CONFIG_FILE).read_text())["schedule"]["epochs"] == 2
    assert now == stored.with_values({"schedule.epochs": 2, "schedule.max_steps": None})
    assert now.output.progress is False  # the stored operational fields stay

    # Refusals: one line, exit 2, not a byte written.
    before = _snapshot(out)
    for argv, fragments in (
        (["--epochs", "1"], ("schedule.epochs: 2 -> 1", "extended, not shortened")),
        (["--learning-rate", "0.5"], ("optim.learning_rate: 0.003 -> 0.5",)),
        (["--embed-dim", "16"], ("model.builder.embed_dim: 8 -> 16",)),
    ):
        rc = main(["train", "-o", str(out), "--resume", *argv])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1, err
        assert err.startswith("efficientvit-jax train: error: --resume: the run was started "
                              "with another recipe")  # fmt: skip
        assert all(f in err for f in fragments), err
        assert _snapshot(out) == before


def test_resume_without_a_run_is_one_line(tmp_path, capsys):
    out = tmp_path / "none"
    assert main(["train", "-o", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume: no checkpoint folder" in err
    assert not out.exists()
