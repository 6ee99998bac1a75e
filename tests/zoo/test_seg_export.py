"""EfficientViT-Seg exported to ONNX (run by onnxruntime) and StableHLO, against the JAX model.

Each file has a symbolic batch: the ONNX file is run at batch 1 and 3, the StableHLO file at
batch 1; the outputs (stride-8 logits) must be within 1e-4 of the output scale of
``model.apply`` on the unfolded variables. The input is non-square, 64x128, the smallest
multiple of 32 with a non-square map at every stride. The StableHLO file's height and width
are symbolic too (multiples of 32): it also runs at batch 2 and 96x64, a size it was not
exported at.

The suite exports two variants that hold every kind of node the 11 have: B0 on Cityscapes (the
B backbone, MBConv head blocks, the final 1x1 conv) and L1 on Cityscapes (the L backbone,
FusedMBConv head blocks, no final conv); the other nine are the same graphs with other widths
and depths, and cost 7 minutes of CPU more on 2 cores: ``EVIT_TEST_SEG_EXPORTS=all`` runs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is needed")
pytest.importorskip("jax2onnx", reason="the export extra (jax2onnx) is needed")

from efficientvit_jax import export
from efficientvit_jax.export.source import Exportable
from efficientvit_jax.zoo import create_model
from efficientvit_jax.zoo.seg import SEG_HEADS, seg_name

from .._ort import cpu_session

NAMES = [seg_name(b, d) for b, d in SEG_HEADS]
ALWAYS = {"efficientvit_seg_b0_cityscapes", "efficientvit_seg_l1_cityscapes"}
LARGE = {n for n in NAMES if "_b0_" not in n}
ALL = os.environ.get("EVIT_TEST_SEG_EXPORTS") == "all"
SHAPE = (3, 64, 128)
OTHER = (3, 96, 64)  # another size for the StableHLO file (symbolic height and width)


def _onnx_outputs(path: str, *xs: np.ndarray) -> list[np.ndarray]:
    sess = cpu_session(path)
    return [sess.run(None, {"images": x})[0] for x in xs]


@pytest.mark.parametrize("name", [n for n in NAMES if ALL or n in ALWAYS])
def test_exports_equal_the_jax_model(
    name: str, random_variables: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if name in LARGE:  # its file's programs hold 40M weights as constants: not cached
        request.getfixturevalue("uncached")
    model = create_model(name)
    x1 = jax.ShapeDtypeStruct((1, *SHAPE), jnp.float32)
    variables = random_variables(jax.eval_shape(model.init, jax.random.key(0), x1), 0)
    x = np.random.default_rng(1).normal(size=(4, *SHAPE)).astype(np.float32)
    y = np.asarray(jax.jit(model.apply)(variables, x))  # batch 1 and 3 in one program
    assert y.shape == (4, model.config.num_classes, SHAPE[1] // 8, SHAPE[2] // 8)
    tolerance = 1e-4 * max(1.0, float(np.abs(y).max()))
    source = Exportable(model, variables, SHAPE, jnp.float32, name)

    info = export.export_onnx(source, tmp_path / f"{name}.onnx")
    assert info["folded_batchnorms"] > 0 and "BatchNormalization" not in info["ops"]
    hlo = export.export_stablehlo(source, tmp_path / f"{name}.stablehlo")
    with open(hlo["path"], "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    # ONNX at batch 1 and 3; the StableHLO file at batch 1 here and at batch 2 of another size
    # below (each batch size is one compile of the file, L1's about 10 s).
    outputs = {
        info["path"]: _onnx_outputs(info["path"], x[:1], x[1:]),
        hlo["path"]: [np.asarray(exported.call(x[:1]))],
    }
    for path, outs in outputs.items():
        refs = (y[:1], y[1:])[: len(outs)]
        assert [o.shape for o in outs] == [r.shape for r in refs], path
        worst = max(float(np.abs(o - r).max()) for o, r in zip(outs, refs, strict=True))
        print(f"{Path(path).name}: max |diff| {worst:.3g} (scale {np.abs(y).max():.3g})")
        assert worst <= tolerance, (path, worst, tolerance)
    assert [str(d) for d in exported.in_avals[0].shape] == ["batch", "3", "32*h", "32*w"]
    z = np.random.default_rng(2).normal(size=(2, *OTHER)).astype(np.float32)
    want = np.asarray(jax.jit(model.apply)(variables, z))
    got = np.asarray(exported.call(z))
    assert got.shape == want.shape == (2, model.config.num_classes, 12, 8)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
