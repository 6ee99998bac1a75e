"""EfficientViT-SAM exported (``export.export_sam``): the encoder and the decoder, ONNX and StableHLO.

L0 with MIT's random weights and perturbed BatchNorm statistics (``tests/sam/conftest.py``),
exported once per module, both formats, the encoder at its 512-px input. Each file must equal
the JAX model within 1e-4 of its output's scale: the encoder at batch 2 (two photographs;
``batch`` is symbolic), the decoder at two prompt counts and two point counts (``prompts`` and
``points`` symbolic) with every kind of label, padding included, and mask inputs on and off.
The StableHLO files run in a fresh interpreter without this package; the two ONNX files chained
in onnxruntime, with the predictor's own pre- and postprocessing, give ``SamPredictor.predict``'s
masks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is needed")
ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is needed")
pytest.importorskip("jax2onnx", reason="the export extra (jax2onnx) is needed")
torch = pytest.importorskip("torch", reason="the model's weights are MIT's, made with torch")
pytest.importorskip(
    "efficientsam", reason="pip install --no-deps -r tests/reference-requirements.txt"
)

from efficientvit_jax import export  # noqa: E402
from efficientvit_jax.cli import main  # noqa: E402
from efficientvit_jax.sam import transforms  # noqa: E402
from efficientvit_jax.sam.predictor import MASK_THRESHOLD, _embed, prompt_tokens  # noqa: E402
from efficientvit_jax.zoo.sam import ABSENT_LABEL  # noqa: E402

from .._ort import cpu_session  # noqa: E402

pytestmark = pytest.mark.xdist_group("sam")

NAME = "efficientvit_sam_l0"
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
SHAPES = ((1, 2), (3, 5))  # (prompts, points): both symbolic dimensions take two values

# Runs in a fresh interpreter: JAX and NumPy only, never this package.
RELOAD = """
import json, sys
import jax, numpy as np
jax.config.update("jax_disable_most_optimizations", True)
load = lambda p: jax.export.deserialize(bytearray(open(p, "rb").read()))
encoder, decoder = load(sys.argv[1] + "/encoder.stablehlo"), load(sys.argv[1] + "/decoder.stablehlo")
symbolic = lambda d: not isinstance(d, int)
assert symbolic(encoder.in_avals[0].shape[0]), encoder.in_avals
assert [symbolic(d) for d in decoder.in_avals[2].shape] == [True, True], decoder.in_avals
data = np.load(sys.argv[2])
worst = {"encoder": 0.0, "decoder": 0.0}
out = np.asarray(encoder.call(data["images"]))
worst["encoder"] = float(np.abs(out - data["embeddings"]).max())
for k in range(int(data["cases"])):
    args = [data[f"{k}_{name}"] for name in sys.argv[3].split(",")]
    for i, got in enumerate(decoder.call(*args)):
        diff = np.abs(np.asarray(got) - data[f"{k}_out{i}"]).max() / np.abs(data[f"{k}_out{i}"]).max()
        worst["decoder"] = max(worst["decoder"], float(diff))
assert "efficientvit_jax" not in sys.modules
print(json.dumps(worst))
"""


def _scaled(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over max |want|."""
    return float(np.abs(np.asarray(got) - np.asarray(want)).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def exported(l0: tuple[Any, Any], tmp_path_factory: Any) -> dict[str, Any]:
    """Both formats of L0 in one folder: ``{"dir", "info"}``."""
    out = tmp_path_factory.mktemp("sam_export") / "l0"
    info = export.export_sam(*l0, out, name=NAME)
    return {"dir": str(out), "info": info}


@pytest.fixture(scope="module")
def images(photo: np.ndarray, photos: list[np.ndarray]) -> np.ndarray:
    """The encoder's input for two photographs, ``[2, 3, 512, 512]``."""
    return np.stack([transforms.preprocess(p, 512) for p in (photo, photos[1])])


@pytest.fixture(scope="module")
def embeddings(l0: tuple[Any, Any], images: np.ndarray) -> np.ndarray:
    """JAX's embeddings of ``images``, one image at a time (the predictor's own program)."""
    return np.concatenate([np.asarray(_embed(*l0, images[i : i + 1])) for i in range(2)])


@pytest.fixture(scope="module")
def onnx_embeddings(exported: dict[str, Any], images: np.ndarray) -> np.ndarray:
    sess = cpu_session(os.path.join(exported["dir"], "encoder.onnx"))
    return sess.run(None, {"images": images})[0]


def _prompts(p: int, n: int, embeddings: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Decoder inputs for ``p`` prompts of ``n`` tokens: positive and negative points, SAM's
    pad point, box corners and absent tokens; a mask input on every other prompt."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, -1, 2, 3, ABSENT_LABEL], size=(p, n)).astype(np.float32)
    labels[:, 0] = 1  # at least one token of each prompt is there
    has_mask = (np.arange(p) % 2).astype(np.float32)
    return {
        "image_embeddings": embeddings[:1],
        "point_coords": rng.uniform(0, 1024, size=(p, n, 2)).astype(np.float32),
        "point_labels": labels,
        "mask_input": rng.normal(0, 2, size=(p, 1, 256, 256)).astype(np.float32),
        "has_mask_input": has_mask,
    }


@pytest.fixture(scope="module")
def decoded(l0: tuple[Any, Any], embeddings: np.ndarray) -> list[tuple[dict, tuple]]:
    """``(inputs, (low_res_masks, iou_predictions))`` of JAX's ``decode`` for ``SHAPES``."""
    model, variables = l0

    @jax.jit
    def decode(*inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        emb, coords, labels, mask_input, has_mask = inputs
        args = (emb, coords, labels.astype(np.int32), mask_input, has_mask, True)
        return model.apply(variables, *args, method="decode")

    cases = []
    for k, (p, n) in enumerate(SHAPES):
        inputs = _prompts(p, n, embeddings, seed=k)
        out = decode(*(inputs[name] for name in DECODER_INPUTS))
        cases.append((inputs, tuple(np.asarray(o) for o in out)))
    return cases


def test_files_name_their_inputs_and_carry_the_metadata(exported: dict[str, Any]) -> None:
    d, info = exported["dir"], exported["info"]
    assert sorted(info) == sorted(
        f"{part}.{fmt}" for part in ("encoder", "decoder") for fmt in ("onnx", "stablehlo")
    )
    assert (
        info["encoder.onnx"]["folded_batchnorms"] == info["encoder.stablehlo"]["folded_batchnorms"]
    )
    assert info["encoder.onnx"]["folded_batchnorms"] > 30  # the encoder's convs' BatchNorms
    assert "BatchNormalization" not in info["encoder.onnx"]["ops"]
    dims = {}
    for part in ("encoder", "decoder"):
        graph = onnx.load(os.path.join(d, f"{part}.onnx"), load_external_data=False)
        meta = {p.key: p.value for p in graph.metadata_props}
        assert meta["model"] == NAME and meta["part"] == part and meta["image_size"] == "512"
        assert meta["prompt_size"] == "1024" and float(meta["mask_threshold"]) == MASK_THRESHOLD
        beside = json.loads(Path(d, f"{part}.stablehlo.json").read_text())
        assert beside["model"] == NAME and beside["mask_threshold"] == MASK_THRESHOLD
        for value in (*graph.graph.input, *graph.graph.output):
            shape = value.type.tensor_type.shape.dim
            dims[value.name] = [x.dim_param or x.dim_value for x in shape]
    assert dims["images"] == ["batch", 3, 512, 512]
    assert dims["point_coords"] == ["prompts", "points", 2]
    assert dims["point_labels"] == ["prompts", "points"]
    assert dims["mask_input"] == ["prompts", 1, 256, 256] and dims["has_mask_input"] == ["prompts"]
    assert dims["image_embeddings"] == [1, 256, 64, 64]  # the decoder's input (one image)
    assert dims["low_res_masks"][1:] == [3, 256, 256] and dims["iou_predictions"][1:] == [3]


def test_encoder_onnx_equals_jax(onnx_embeddings: np.ndarray, embeddings: np.ndarray) -> None:
    assert onnx_embeddings.shape == embeddings.shape == (2, 256, 64, 64)
    diff = _scaled(onnx_embeddings, embeddings)
    print(f"encoder.onnx: max |diff| {diff:.2g} of scale {np.abs(embeddings).max():.3g}")
    assert diff <= 1e-4


def test_decoder_onnx_equals_jax(exported: dict[str, Any], decoded: list) -> None:
    sess = cpu_session(os.path.join(exported["dir"], "decoder.onnx"))
    assert [i.name for i in sess.get_inputs()] == list(DECODER_INPUTS)
    for inputs, want in decoded:
        got = sess.run(None, inputs)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            diff = _scaled(g, w)
            print(f"decoder.onnx {w.shape}: max |diff| {diff:.2g} of scale {np.abs(w).max():.3g}")
            assert diff <= 1e-4


def test_stablehlo_files_run_without_the_package(
    exported: dict[str, Any],
    images: np.ndarray,
    embeddings: np.ndarray,
    decoded: list,
    tmp_path: Any,
    uncached: dict[str, str],
) -> None:
    data: dict[str, Any] = {"images": images, "embeddings": embeddings, "cases": len(decoded)}
    for k, (inputs, outs) in enumerate(decoded):
        data.update({f"{k}_{name}": v for name, v in inputs.items()})
        data.update({f"{k}_out{i}": o for i, o in enumerate(outs)})
    np.savez(tmp_path / "io.npz", **data)
    argv = [exported["dir"], str(tmp_path / "io.npz"), ",".join(DECODER_INPUTS)]
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, *argv],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=uncached,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = json.loads(proc.stdout.splitlines()[-1])
    print(
        f"stablehlo: encoder max |diff| {worst['encoder']:.2g}, decoder {worst['decoder']:.2g} of scale"
    )
    assert worst["encoder"] <= 1e-4 * np.abs(embeddings).max() and worst["decoder"] <= 1e-4


@pytest.mark.parametrize("prompt", ["point", "points_and_box"])
def test_onnx_files_chained_give_the_predictors_masks(
    prompt: str, exported: dict[str, Any], onnx_embeddings: np.ndarray, predictor: Any
) -> None:
    """encoder.onnx (above: the photograph is the batch's first image) then decoder.onnx, the
    prompts and masks transformed as the predictor does, against ``SamPredictor.predict``."""
    points, labels = np.array([[300.0, 200.0]]), np.array([1])
    box = None
    if prompt == "points_and_box":
        points, labels = np.array([[300.0, 200.0], [101.5, 47.0]]), np.array([1, 0])
        box = np.array([80.0, 60.5, 420.0, 390.0])
    want, want_scores, _ = predictor.predict(points, labels, box)

    size = predictor.original_size
    boxes = None if box is None else box[None]
    coords, token_labels = prompt_tokens(points[None], labels[None], boxes, 1, size)
    sess = cpu_session(os.path.join(exported["dir"], "decoder.onnx"))
    low_res, scores = sess.run(None, {
        "image_embeddings": onnx_embeddings[:1], "point_coords": coords,
        "point_labels": token_labels.astype(np.float32),
        "mask_input": np.zeros((1, 1, 256, 256), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
    })  # fmt: skip
    logits = transforms.postprocess_masks(low_res, predictor.input_size, size)
    masks = np.asarray(logits)[0] > MASK_THRESHOLD
    agree = float((masks == want).mean())
    print(f"{prompt}: pixels agree {agree:.6f}, mask areas {want.mean(axis=(1, 2)).round(3)}")
    assert masks.shape == want.shape == (3, *size)
    assert 0.01 < want.mean() < 0.99  # masks, not all or nothing: the comparison means something
    assert agree >= 0.999
    assert np.abs(scores[0] - want_scores).max() <= 1e-4 * np.abs(want_scores).max()


def test_random_weights_are_the_models_own_init(l0: tuple[Any, Any]) -> None:
    """``--random-weights`` (``random_sam_variables``: ``init`` with a prompt) makes the tree
    MIT's checkpoint converts to; traced only (a real init compiles for half a minute)."""
    from efficientvit_jax.export.source import random_sam_variables

    model, variables = l0
    shapes = jax.eval_shape(lambda: random_sam_variables(model))
    want = jax.tree.map(lambda a: (a.shape, a.dtype), variables)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), shapes) == want


def _error(rc: int, capsys: Any, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    return err


def test_cli_writes_both_files_into_a_folder(mit_l0: Any, tmp_path: Any, capsys: Any) -> None:
    """``export --model efficientvit_sam_l0 --weights F --format F -o DIR``; a bad folder is
    one line before any work."""
    weights = tmp_path / "l0.pt"
    torch.save({"state_dict": mit_l0.state_dict()}, weights)  # MIT's file layout
    base = ["export", "--model", "efficientvit-sam-l0", "--weights", str(weights)]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = [*base, "--format", "onnx", "-o"]
    _error(main([*bad, str(blocker)]), capsys, "exists and is not a folder")
    _error(main([*bad, str(tmp_path / "no" / "out")]), capsys, "does not exist")
    out = tmp_path / "out"
    argv = [*base, "--format", "stablehlo", "--image-size", "64", "-o", str(out)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "images [batch, 3, 64, 64]" in lines[0], lines
    assert "point_coords [prompts, points, 2]" in lines[1], lines
    assert sorted(os.listdir(out)) == sorted(
        f"{p}.stablehlo{j}" for p in ("encoder", "decoder") for j in ("", ".json")
    )
    meta = json.loads((out / "encoder.stablehlo.json").read_text())
    assert meta["model"] == "efficientvit-sam-l0" and meta["image_size"] == 64
