"""Every kind of trained run, back as a usable model: the digits job, the builder on a folder
of photographs (with EMA), ``efficientvit_b0`` and ``efficientvit_m0`` (frozen backbone)
fine-tuned from timm files, and a run in bfloat16 saved from a 2-device mesh; each
through ``load_run``, ``predict --checkpoint``, ``eval --checkpoint`` and ``export
--checkpoint``, compared with the checkpoint read by orbax alone, with the model in Python
and with onnxruntime.

Each run is trained once (2 steps, checkpoints 1 and 2) and shared by the module's tests.
``reference`` logits are the ``load_run`` model's own, on ``create_transform(data_config)``
of the held-out files, computed here without the CLI.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax import load_run
from efficientvit_jax.cli import main
from efficientvit_jax.data import create_transform

# The runs are module fixtures: one worker trains them once for every test here.
pytestmark = pytest.mark.xdist_group("roundtrip")

PHOTO_CLASSES = ("ant", "bee", "cat")
DIGIT_CLASSES = ("2", "5", "7")  # the held-out folder of the digits run: a subset of its 10
TINY = ["--patch-size", "4", "--embed-dim", "8", "--depths", "1,1", "--num-heads", "2,2"]
STEPS = ["--max-steps", "2", "--save-every", "1", "--no-progress"]
FOLDER = ["--batch-size", "4", "--eval-batch-size", "6", *STEPS]
ZOO_SIZE = 64  # the smallest size with a 2x2 last stage for both families


# --- the data ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory: Any, image_files: dict, make_class_tree: Any) -> Path:
    """train/ and val/ with three classes of photographs (12 train, 6 val)."""
    root = tmp_path_factory.mktemp("photos")
    kinds = sorted(image_files)
    for split, n in (("train", 4), ("val", 2)):
        make_class_tree(
            str(root / split),
            {c: [image_files[kinds[(3 * j + i) % len(kinds)]] for j in range(n)]
             for i, c in enumerate(PHOTO_CLASSES)},
        )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def digit_tree(tmp_path_factory: Any) -> Path:
    """Two digits of each of three classes as 8x8 grey PNGs in class folders."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("digit_files")
    for c in DIGIT_CLASSES:
        os.makedirs(root / c)
        for i, a in enumerate(d.images[d.target == int(c)][:2]):
            Image.fromarray(np.round(a / 16.0 * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


# --- the runs ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Trained:
    """A run trained for 2 steps (checkpoints 1 and 2) and what the tests compare with."""

    kind: str
    path: Path
    classes: tuple[str, ...]
    val: Path  # a class tree to predict and evaluate on
    loaded: Any = None  # ``load_run(path)``
    apply: Any = None  # jitted ``(variables, images) -> logits`` of the run's model
    files: list[str] = dataclasses.field(default_factory=list)  # "<class>/<file>" under val
    images: np.ndarray | None = None  # the files through the run's eval transform
    reference: np.ndarray | None = None  # the load_run model's logits on ``images``

    def logits(self, variables: Any) -> np.ndarray:
        return np.asarray(self.apply(variables, self.images))


def _finish(t: Trained) -> Trained:
    """Fill in the reference: the files, transformed, through the ``load_run`` model."""
    t.loaded = run = load_run(t.path)
    transform = create_transform(run.data_config)
    t.files = sorted(f"{c}/{f}" for c in os.listdir(t.val) for f in os.listdir(t.val / c))
    t.images = np.stack([transform(str(t.val / f)) for f in t.files])
    t.apply = jax.jit(lambda v, x: run.model.apply(v, x, train=False))
    t.reference = t.logits(run.variables)
    return t


@pytest.fixture(scope="module")
def run_digits(tmp_path_factory: Any, digit_tree: Path) -> Trained:
    out = tmp_path_factory.mktemp("digits")
    argv = ["train", "--image-size", "16", *TINY, "--batch-size", "32", "--epochs", "1"]
    assert main([*argv, *STEPS, "-o", str(out)]) == 0
    return _finish(Trained("digits", out, tuple(str(i) for i in range(10)), digit_tree))


def _folder_run(tmp_path_factory: Any, photo_tree: Path, kind: str, *flags: str) -> Path:
    out = tmp_path_factory.mktemp(kind)
    assert main(["train", "--data", str(photo_tree), *flags, *FOLDER, "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run_builder(tmp_path_factory: Any, photo_tree: Path) -> Trained:
    out = _folder_run(
        tmp_path_factory, photo_tree, "builder", "--image-size", "32", *TINY, "--ema-decay", "0.9"
    )
    return _finish(Trained("builder", out, PHOTO_CLASSES, photo_tree / "val"))


@pytest.fixture(scope="module")
def run_b0(tmp_path_factory: Any, photo_tree: Path, timm: Any, make_timm_file: Any) -> Trained:
    # a head of 5 classes, not the runs' 3
    path = tmp_path_factory.mktemp("w") / "b0.safetensors"
    weights = make_timm_file(timm, "efficientvit_b0", path, num_classes=5)
    flags = ["--model", "efficientvit_b0", "--weights", weights, "--image-size", str(ZOO_SIZE)]
    out = _folder_run(tmp_path_factory, photo_tree, "b0", *flags)
    return _finish(Trained("b0", out, PHOTO_CLASSES, photo_tree / "val"))


@pytest.fixture(scope="module")
def run_m0(tmp_path_factory: Any, photo_tree: Path, timm: Any, make_timm_file: Any) -> Trained:
    path = tmp_path_factory.mktemp("w") / "m0.safetensors"
    weights = make_timm_file(timm, "efficientvit_m0", path, num_classes=5, img_size=ZOO_SIZE)
    # frozen: the cheaper of the two to compile (m0's backward pass is the costliest here)
    flags = ["--model", "efficientvit_m0", "--weights", weights, "--freeze-backbone"]
    out = _folder_run(tmp_path_factory, photo_tree, "m0", *flags, "--image-size", str(ZOO_SIZE))
    return _finish(Trained("m0", out, PHOTO_CLASSES, photo_tree / "val"))


@pytest.fixture(scope="module")
def run_mesh_bf16(tmp_path_factory: Any, photo_tree: Path) -> Trained:
    """Trained in bfloat16 on a 2-device mesh (the arrays saved sharded over fsdp), in a
    fresh process (the CPU device count is set before JAX starts); loaded here, on one
    device, computing in float32."""
    out = tmp_path_factory.mktemp("mesh_bf16")
    cmd = [sys.executable, "-m", "efficientvit_jax.cli", "train", "--data", str(photo_tree),
           "--cpu-devices", "2", "--mesh", "data=1,fsdp=2", "--precision", "bfloat16",
           "--image-size", "32", *TINY, *FOLDER, "-o", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 devices (2 local) in 1 process(es); mesh data=1 fsdp=2; precision bfloat16" in (
        proc.stdout
    )
    return _finish(Trained("mesh_bf16", out, PHOTO_CLASSES, photo_tree / "val"))


FAST = ("digits", "builder")
KINDS = [pytest.param(k, marks=() if k in FAST else pytest.mark.slow)
         for k in ("digits", "builder", "b0", "m0", "mesh_bf16")]  # fmt: skip


@pytest.fixture
def run(request: Any) -> Trained:
    return request.getfixturevalue(f"run_{request.param}")


def _param_run(f: Any) -> Any:
    return pytest.mark.parametrize("run", KINDS, indirect=True)(f)


# --- independent reads -------------------------------------------------------------------------


def _orbax_state(path: Path, step: int) -> dict[str, Any]:
    """The checkpoint's saved state, read by orbax alone (no package code): every array as
    saved, whole on this process's first device (a mesh run saved them sharded over 2)."""
    import orbax.checkpoint as ocp

    where = path / "checkpoints" / str(step) / "state"
    checkpointer = ocp.StandardCheckpointer()
    try:
        meta = checkpointer.metadata(where)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
            tree,
            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
        )
        return checkpointer.restore(where, target)
    finally:
        checkpointer.close()


def _flat(tree: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _assert_same_arrays(got: Any, want: Any) -> None:
    """The same keys, dtypes and values, bit for bit."""
    g, w = _flat(got), _flat(want)
    assert sorted(g) == sorted(w)
    for k, v in g.items():
        assert v.dtype == w[k].dtype and v.shape == w[k].shape, k
        np.testing.assert_array_equal(v, w[k], err_msg=k)


def _saved_variables(path: Path, step: int) -> dict[str, Any]:
    state = _orbax_state(path, step)
    out = {"params": state["params"]}
    if state.get("batch_stats"):
        out["batch_stats"] = state["batch_stats"]
    return out


def _saved_ema(path: Path, step: int) -> dict[str, np.ndarray]:
    """The leaves under an ``ema`` key of the saved optimizer state, by their path below it."""
    leaves = jax.tree_util.tree_leaves_with_path(_orbax_state(path, step)["opt_state"])
    out = {}
    for p, v in leaves:
        keys = [getattr(k, "key", None) for k in p]
        if "ema" in keys:
            out[jax.tree_util.keystr(p[keys.index("ema") + 1 :])] = np.asarray(v)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _decoded(value: Any) -> Any:
    """A metadata value: JSON text (as ONNX's ``metadata_props`` and the StableHLO file's
    ``.json`` hold them), or already a JSON value."""
    return json.loads(value) if isinstance(value, str) else value


def _tolerance(ref: np.ndarray) -> float:
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


# --- load_run ----------------------------------------------------------------------------------


@_param_run
def test_load_run_equals_the_checkpoint_read_by_orbax(run: Trained) -> None:
    loaded = run.loaded  # load_run(run.path)
    assert loaded.step == 2 and loaded.path == str(run.path) and not loaded.ema
    assert loaded.classes == run.classes and loaded.num_classes == len(run.classes)
    _assert_same_arrays(loaded.variables, _saved_variables(run.path, 2))
    # Not committed to a device, as a fresh model's arrays: jit lowers the same program for
    # both (a committed argument carries a sharding annotation) and moves them where needed.
    assert not any(a.committed for a in jax.tree.leaves(loaded.variables))
    # a float32 model whatever the training precision; finite logits of the class count
    trained_in = "bfloat16" if run.kind == "mesh_bf16" else "float32"
    assert loaded.config.precision.precision == trained_in
    assert jnp.dtype(loaded.model.config.dtype) == jnp.float32
    assert run.reference.shape == (len(run.files), len(run.classes))
    assert run.reference.dtype == np.float32 and np.isfinite(run.reference).all()
    assert loaded.data_config.input_size[0] == (1 if run.kind == "digits" else 3)


def test_the_three_path_forms_and_an_older_step(run_builder: Trained) -> None:
    """The run folder (``run.loaded``), its checkpoints/ folder and a step's folder;
    ``step`` picks an older step (nothing here depends on the kind of run: on one run)."""
    run = run_builder
    for form in (run.path / "checkpoints", run.path / "checkpoints" / "2"):
        got = load_run(form)
        assert got.step == 2 and got.path == str(run.path) and got.classes == run.classes
        _assert_same_arrays(got.variables, run.loaded.variables)
    saved = _saved_variables(run.path, 1)
    for older in (load_run(run.path, step=1), load_run(run.path / "checkpoints" / "1")):
        assert older.step == 1 and older.path == str(run.path)
        _assert_same_arrays(older.variables, saved)
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(older.variables), jax.tree.leaves(run.loaded.variables), strict=True))  # fmt: skip
    with pytest.raises(ValueError, match="is step 2, --step says 1"):
        load_run(run.path / "checkpoints" / "2", step=1)
    with pytest.raises(ValueError, match="no checkpoint for step 7"):
        load_run(run.path, step=7)


@pytest.mark.slow
def test_frozen_backbone_run_changed_only_the_head(run_m0: Trained) -> None:
    a, b = _flat(load_run(run_m0.path, step=1).variables), _flat(run_m0.loaded.variables)
    changed = sorted(k for k in a if not np.array_equal(a[k], b[k]))
    # What was re-initialised only (the 5-class checkpoint's classifier, as timm leaves out):
    # the backbone's weights, the head's BatchNorm and every BatchNorm statistic kept.
    assert changed == [
        "['params']['head']['linear']['bias']",
        "['params']['head']['linear']['kernel']",
    ]


def test_ema_weights_are_the_saved_average(run_builder: Trained) -> None:
    raw, ema = load_run(run_builder.path), load_run(run_builder.path, ema=True)
    assert ema.ema and not raw.ema
    saved = _saved_ema(run_builder.path, 2)
    got = _flat(ema.variables["params"])
    assert sorted(got) == sorted(saved)
    for k, v in got.items():
        np.testing.assert_array_equal(v, saved[k], err_msg=k)
    assert any(not np.array_equal(v, _flat(raw.variables["params"])[k]) for k, v in got.items())
    _assert_same_arrays(ema.variables.get("batch_stats", {}), raw.variables.get("batch_stats", {}))


# --- predict -----------------------------------------------------------------------------------


@_param_run
def test_predict_gives_the_run_classes_and_the_model_probabilities(
    run: Trained, capsys: Any
) -> None:
    picks = [0, len(run.files) - 1]
    images = [str(run.val / run.files[i]) for i in picks]
    argv = ["predict", *images, "--checkpoint", str(run.path), "--json", "--workers", "0"]
    assert main(argv) == 0
    results = json.loads(capsys.readouterr().out)
    want = _softmax(run.reference[picks].astype(np.float64))
    assert [r["image"] for r in results] == images
    for r, p in zip(results, want, strict=True):
        top = r["top"]
        assert len(top) == min(5, len(run.classes))
        assert [t["index"] for t in top] == list(np.argsort(-p, kind="stable")[: len(top)])
        for t in top:
            assert t["label"] == run.classes[t["index"]]
            assert abs(t["probability"] - p[t["index"]]) <= 1e-5


# --- eval --------------------------------------------------------------------------------------


def _eval(run: Trained, data: Path, out: Path, *extra: str) -> int:
    argv = ["eval", "--checkpoint", str(run.path), "--data", str(data), "--json", str(out)]
    return main([*argv, "--no-progress", "--workers", "0", *extra])


def _own_metrics(run: Trained, classes: list[str]) -> tuple[float, float, int]:
    """Top-1 and mean loss of the reference logits over the files of ``classes``, each
    labelled with the run's index of its class name."""
    rows = [i for i, f in enumerate(run.files) if f.split("/")[0] in classes]
    labels = np.array([run.classes.index(run.files[i].split("/")[0]) for i in rows])
    logits = run.reference[rows].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    top1 = float(np.mean(logits.argmax(-1) == labels))
    return top1, float(-logp[np.arange(len(rows)), labels].mean()), len(rows)


@_param_run
def test_eval_equals_the_accuracy_computed_with_load_run(
    run: Trained, tmp_path: Path, capsys: Any
) -> None:
    out = tmp_path / "eval.json"
    assert _eval(run, run.val, out) == 0
    got = json.loads(out.read_text())
    top1, loss, n = _own_metrics(run, os.listdir(run.val))
    assert got["count"] == n == len(run.files)
    assert got["top1"] == pytest.approx(top1, abs=1e-12)
    assert got["loss"] == pytest.approx(loss, abs=1e-5)
    assert sorted(got["per_class"]) == sorted(os.listdir(run.val))
    assert "top-1" in capsys.readouterr().out


@pytest.mark.parametrize("run", ["digits", "builder"], indirect=True)
def test_eval_on_a_subset_of_the_classes_matches_labels_by_name(
    run: Trained, tmp_path: Path
) -> None:
    """A folder of two of the classes (the last two: other indices in the folder than in
    the run): each image is scored against its class name's index in the run."""
    keep = sorted(os.listdir(run.val))[1:]
    data = tmp_path / "subset"
    for c in keep:
        shutil.copytree(run.val / c, data / c)
    out = tmp_path / "eval.json"
    assert _eval(run, data, out) == 0
    got = json.loads(out.read_text())
    top1, loss, n = _own_metrics(run, keep)
    assert got["count"] == n and sorted(got["per_class"]) == keep
    assert got["top1"] == pytest.approx(top1, abs=1e-12)
    assert got["loss"] == pytest.approx(loss, abs=1e-5)
    for c in keep:  # reported under the class names
        c_top1, _, c_n = _own_metrics(run, [c])
        assert got["per_class"][c] == {"count": c_n, "top1": pytest.approx(c_top1, abs=1e-12)}


def test_eval_refuses_a_class_the_run_does_not_know(
    run_builder: Trained, tmp_path: Path, capsys: Any
) -> None:
    data = tmp_path / "d"
    shutil.copytree(run_builder.val / "ant", data / "ant")
    shutil.copytree(run_builder.val / "bee", data / "cow")
    out = tmp_path / "eval.json"
    assert _eval(run_builder, data, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "class folder(s) cow not among" in err, err
    assert "ant, bee, cat" in err and not out.exists()


# --- export ------------------------------------------------------------------------------------


def _onnx_run(path: Path, images: np.ndarray) -> tuple[np.ndarray, dict[str, str]]:
    onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is needed")
    pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is needed")
    from ._ort import cpu_session

    sess = cpu_session(path)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return sess.run(None, {"images": images})[0], meta


def _export(run: Trained, out: Path, fmt: str, *extra: str) -> int:
    pytest.importorskip("jax2onnx", reason="the export extra (jax2onnx) is needed")
    return main(["export", "--checkpoint", str(run.path), "--format", fmt, "-o", str(out), *extra])


@_param_run
def test_onnx_export_equals_the_load_run_model_and_describes_itself(
    run: Trained, tmp_path: Path
) -> None:
    out = tmp_path / "run.onnx"
    assert _export(run, out, "onnx") == 0
    got, meta = _onnx_run(out, run.images)
    assert got.shape == run.reference.shape
    assert np.abs(got - run.reference).max() <= _tolerance(run.reference)
    assert json.loads(meta["classes"]) == list(run.classes)
    data_config = json.loads(meta["data_config"])
    want = dataclasses.asdict(load_run(run.path).data_config)
    assert data_config["input_size"] == list(want["input_size"])
    assert data_config["mean"] == pytest.approx(want["mean"])
    assert data_config["std"] == pytest.approx(want["std"])


def test_stablehlo_export_writes_the_file_and_its_description(
    run_builder: Trained, tmp_path: Path
) -> None:
    out = tmp_path / "run.stablehlo"
    assert _export(run_builder, out, "stablehlo") == 0
    side = json.loads((tmp_path / "run.stablehlo.json").read_text())
    assert _decoded(side["classes"]) == list(run_builder.classes)
    assert _decoded(side["data_config"])["input_size"] == [3, 32, 32]
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    got = np.asarray(exported.call(run_builder.images))
    assert np.abs(got - run_builder.reference).max() <= _tolerance(run_builder.reference)


def test_ema_export_gives_the_ema_weights(run_builder: Trained, tmp_path: Path) -> None:
    out = tmp_path / "ema.onnx"
    assert _export(run_builder, out, "onnx", "--ema") == 0
    got, _ = _onnx_run(out, run_builder.images)
    want = run_builder.logits(load_run(run_builder.path, ema=True).variables)
    assert np.abs(got - want).max() <= _tolerance(want)
    # not the raw weights' outputs
    assert np.abs(got - run_builder.reference).max() > 10 * _tolerance(run_builder.reference)


# --- refusals ----------------------------------------------------------------------------------


def _command(cmd: str, run_path: Path, tmp_path: Path, files: Path, *extra: str) -> list[str]:
    """``cmd`` on ``run_path`` (predict: the first file of ``files``; eval: all of them)."""
    source = ["--checkpoint", str(run_path), *extra]
    if cmd == "predict":
        first = sorted(os.listdir(files))[0]
        return ["predict", str(files / first / sorted(os.listdir(files / first))[0]), *source]
    if cmd == "eval":
        return ["eval", "--data", str(files), "--json", str(tmp_path / "out.json"), *source]
    return ["export", "--format", "stablehlo", "-o", str(tmp_path / "out.stablehlo"), *source]


def _refused(capsys: Any, tmp_path: Path, argv: list[str], *needles: str) -> str:
    before = sorted(os.listdir(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"efficientvit-jax {argv[0]}: error:"), err
    for needle in needles:
        assert needle in err, err
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    return err


COMMANDS = ["predict", "eval", "export"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_ema_of_a_run_without_ema_is_refused(
    cmd: str, run_digits: Trained, tmp_path: Path, capsys: Any
) -> None:
    argv = _command(cmd, run_digits.path, tmp_path, run_digits.val, "--ema")
    _refused(capsys, tmp_path, argv, "kept no EMA", "--ema-decay")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_folder_that_is_not_a_run_is_refused(
    cmd: str, photo_tree: Path, tmp_path: Path, capsys: Any
) -> None:
    argv = _command(cmd, photo_tree, tmp_path, photo_tree / "val")
    _refused(capsys, tmp_path, argv, "not a run folder", str(photo_tree))


@pytest.mark.parametrize("cmd", COMMANDS)
def test_a_run_without_config_json_is_refused_as_an_old_run(
    cmd: str, run_builder: Trained, tmp_path: Path, capsys: Any
) -> None:
    old = tmp_path / "old"
    shutil.copytree(run_builder.path, old)
    os.remove(old / "config.json")
    argv = _command(cmd, old, tmp_path, run_builder.val)
    _refused(capsys, tmp_path, argv, f"{old}: no config.json", "cannot be resumed or loaded")


def test_a_damaged_newest_step_falls_back_to_the_older_one(
    run_builder: Trained, tmp_path: Path, capsys: Any
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(run_builder.path, copy)
    for root, _, files in os.walk(copy / "checkpoints" / "2" / "state"):
        for f in files:
            np.frombuffer(b"\x00bad", np.uint8).tofile(os.path.join(root, f))
    loaded = load_run(copy)
    assert loaded.step == 1
    assert "restored step 1, the newest intact checkpoint" in capsys.readouterr().err
    _assert_same_arrays(loaded.variables, _saved_variables(copy, 1))
    # predict says so on stderr, and gives step 1's probabilities
    image = str(run_builder.val / run_builder.files[0])
    assert main(["predict", image, "--checkpoint", str(copy), "--json", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    assert "efficientvit-jax: warning:" in captured.err
    assert "restored step 1, the newest intact checkpoint" in captured.err
    (result,) = json.loads(captured.out)
    want = _softmax(run_builder.logits(loaded.variables)[0].astype(np.float64))
    for t in result["top"]:
        assert abs(t["probability"] - want[t["index"]]) <= 1e-5
    # the damaged step asked for by name: refused
    out = tmp_path / "x.stablehlo"
    argv = ["export", "--format", "stablehlo", "-o", str(out), "--checkpoint", str(copy)]
    _refused(capsys, tmp_path, [*argv, "--step", "2"], "corrupt or unreadable")


# --- resumed runs ------------------------------------------------------------------------------


def _assert_resumed_as_straight(resumed: Path, straight: Path) -> None:
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (straight, resumed))
    assert b["steps_this_run"] == 1 and len(a["step_losses"]) == 2
    assert b["step_losses"] == a["step_losses"] and b["test_loss"] == a["test_loss"]
    _assert_same_arrays(_saved_variables(resumed, 2), _saved_variables(straight, 2))


@pytest.mark.slow
def test_a_resumed_fine_tuning_run_computes_no_fresh_state(
    run_m0: Trained, tmp_path: Path, monkeypatch: Any, interrupted_copy: Any
) -> None:
    """The checkpoint holds every value: a resume restores into the state's shapes alone, and
    the pretrained start (an init program and the merge of the weights) is not computed. Nor
    is the weights file read: the head (what trains at the head's rate) is the one the run
    recorded in its run.json, so the file may have moved since."""
    from efficientvit_jax.training import job, recipe

    def refuse(what: str) -> Any:
        def refused(*_: Any, **__: Any) -> None:
            raise AssertionError(f"the resumed run {what}")

        return refused

    monkeypatch.setattr(job, "create_train_state", refuse("computed a fresh train state"))
    monkeypatch.setattr(recipe, "load_pretrained_start", refuse("read the weights file"))
    resumed = interrupted_copy(run_m0.path, tmp_path / "m0", 1)  # resumed with STEPS: to 2
    # the run's 3-class classifier is what the 5-class file could not give (the head's
    # BatchNorm loaded)
    head = json.loads((resumed / "run.json").read_text())["head"]
    assert head == ["head/linear/bias", "head/linear/kernel"], head
    assert main(["train", "--resume", *STEPS, "-o", str(resumed)]) == 0
    _assert_resumed_as_straight(resumed, run_m0.path)
    assert json.loads((resumed / "run.json").read_text())["head"] == head


def test_a_run_file_without_a_recorded_head_sends_the_resume_to_the_weights(
    tmp_path: Path,
) -> None:
    """Runs written before run.json recorded the head (or from scratch) resume as they did:
    ``None`` makes ``pretrained_tuning`` read the weights file; a recorded head is taken."""
    from efficientvit_jax.training.run import _recorded_head

    run = {"classes": ["a", "b"], "data_config": {}}
    assert _recorded_head(str(tmp_path)) is None  # no run.json at all
    for head, want in ((None, None), ([], None), ("head/fc", None), ([1], None),
                       (["head/fc"], ["head/fc"])):  # fmt: skip
        info = run if head is None else {**run, "head": head}
        (tmp_path / "run.json").write_text(json.dumps(info))
        assert _recorded_head(str(tmp_path)) == want, head


@pytest.mark.slow
def test_a_run_resumed_on_its_mesh_ends_as_the_straight_run(
    run_mesh_bf16: Trained, tmp_path: Path, interrupted_copy: Any
) -> None:
    """Restored into the abstract state's shardings (its leaves split over fsdp=2), in a
    fresh process with the same 2 devices: the same step and weights as the straight run."""
    resumed = interrupted_copy(run_mesh_bf16.path, tmp_path / "mesh", 1)
    cmd = [sys.executable, "-m", "efficientvit_jax.cli", "train", "--resume",
           "--cpu-devices", "2", "--mesh", "data=1,fsdp=2", *STEPS, "-o", str(resumed)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mesh data=1 fsdp=2; precision bfloat16" in proc.stdout
    _assert_resumed_as_straight(resumed, run_mesh_bf16.path)
