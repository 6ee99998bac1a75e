"""EfficientViT-SAM in bfloat16 and float16: the numerically delicate parts stay float32, the
outputs stay finite on images of extreme contrast and close to the float32 model's.

L0 with MIT's random weights converted (BatchNorm statistics and every norm's affine perturbed:
``tests/sam/conftest.py``) at a small size, as ``tests/zoo/test_sam_parity.py`` runs it: a
192-px encoder input and a 16x16 embedding (64x64 masks) instead of 512 px and 64x64; every
module runs, on fewer pixels (bfloat16 convolutions are slow on CPU). Three images in one batch:

- a 1-px checkerboard of 0/255 pixels (144 x 192 through the predictor's preprocessing:
  normalised, zero-padded at the bottom, so the pad edge is in it too);
- a map at +-1e4 after normalisation (top half +, bottom half -): far beyond any photo's
  [-2.2, 2.7], and 6x below float16's largest value, so the input itself is representable;
- the sample photograph (``photo``), for the ordinary case.

Four single-point prompts per image (SAM's pad point appended), three masks each.

What stays float32 by construction (``zoo/sam/model.py``'s ``layer_norm``;
``attention.linear_attention``; the decoder's ``Attention`` softmax and ``MaskDecoder``'s
outputs) is checked on the traced programs: every reduction, division, reciprocal square root
and exponential of the bf16 and fp16 programs runs in float32 (LayerNorm and LayerNorm2d
statistics, LiteMLA's key sums and normaliser, the softmax), there are at least two float32
sums per LayerNorm, and ``decode`` returns float32.

Measured against float32, worst of the three images (random weights give mask logits of scale
~0.3, so many pixels sit near the threshold):

========  ================  ==============  ========  ============
dtype     embedding diff /  logit diff /    IoU diff  mask signs
          max |embedding|   max |logit|               agreeing
========  ================  ==============  ========  ============
bfloat16  1.1e-2            1.9e-2          2.3e-3    99.60%
float16   1.6e-3            2.4e-3          2.4e-4    99.92%
========  ================  ==============  ========  ============

At the published size (512 px, 64x64 embedding; checkerboard and +-30 halves, once): bfloat16
9e-3, 1.8e-2, 1.8e-3, 99.68%; float16 1.5e-3, 2.7e-3, 2.7e-4, 99.96%. All three dtypes stay
finite with the halves at +-3, 30, ..., 3e4 (at 256 px, once). Tolerances asked (2.5x to 20x
the measured): ``TOLERANCES``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

pytest.importorskip(
    "efficientsam", reason="pip install --no-deps -r tests/reference-requirements.txt"
)

from efficientvit_jax.sam import transforms
from efficientvit_jax.zoo import create_model

pytestmark = pytest.mark.xdist_group("sam")

L0 = "efficientvit_sam_l0"
SIDE = 192  # the encoder's input (L0's own is 512: the same program on 4x the pixels)
EMBED = 16  # the embedding's side (64 in the published models), as tests/zoo/test_sam_parity.py
LARGE = 1e4  # the +-map's value after normalisation
PROMPTS_PER_IMAGE = 4
IMAGES = ("checkerboard", "+-1e4 halves", "photo")


class Tolerance(NamedTuple):
    embedding: float  # max |diff| / max |float32 embedding|
    logits: float  # max |diff| / max |float32 logits|
    iou: float  # max |diff| of the IoU predictions
    signs: float  # least fraction of mask pixels whose sign agrees


TOLERANCES = {
    "bfloat16": Tolerance(embedding=3e-2, logits=6e-2, iou=2e-2, signs=0.99),
    "float16": Tolerance(embedding=5e-3, logits=1e-2, iou=5e-3, signs=0.998),
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# what must never run in the low precision (its LayerNorms, attention sums and softmax)
FLOAT32_ONLY = {"reduce_sum", "reduce_max", "reduce_min", "div", "rsqrt", "sqrt", "exp", "log"}


def _images(photo: np.ndarray) -> np.ndarray:
    """``[3, 3, SIDE, SIDE]``: checkerboard, +-LARGE halves, photograph, as the encoder takes
    them (the predictor's ``transforms.preprocess``)."""
    board = (np.indices((SIDE * 3 // 4, SIDE)).sum(0) % 2 * 255).astype(np.uint8)
    board = np.repeat(board[..., None], 3, axis=2)
    halves = np.full((3, SIDE, SIDE), LARGE, np.float32)
    halves[:, SIDE // 2 :] = -LARGE
    return np.stack(
        [
            transforms.preprocess(board, SIDE, "NCHW"),
            halves,
            transforms.preprocess(photo, SIDE, "NCHW"),
        ]
    )


def _prompts(n_images: int) -> tuple[np.ndarray, ...]:
    """``PROMPTS_PER_IMAGE`` one-point prompts per image (prompt frame), SAM's pad appended."""
    p = n_images * PROMPTS_PER_IMAGE
    points = np.random.default_rng(0).uniform(0, 1024, (p, 1, 2))
    coords = np.concatenate([points, np.zeros((p, 1, 2))], axis=1).astype(np.float32)
    labels = np.tile(np.array([[1, -1]], np.int32), (p, 1))
    return (
        coords,
        labels,
        np.zeros((p, 1, 4 * EMBED, 4 * EMBED), np.float32),
        np.zeros(p, np.float32),
    )


@pytest.fixture(scope="module")
def outputs(l0: tuple[Any, dict[str, Any]], photo: np.ndarray) -> dict[str, tuple[np.ndarray, ...]]:
    """``{dtype: (embeddings, low-res logits, iou)}`` as float32 NumPy arrays."""
    _, variables = l0
    images = _images(photo)
    prompts = _prompts(len(images))
    out = {}
    for name, dtype in DTYPES.items():
        model = create_model(L0, dtype=dtype, image_size=SIDE, embed_size=EMBED)

        @jax.jit
        def run(variables, images, prompts, model=model):
            emb = model.apply(variables, images, method="embed_images")
            per_prompt = jnp.repeat(emb, PROMPTS_PER_IMAGE, axis=0)
            logits, iou = model.apply(variables, per_prompt, *prompts, True, method="decode")
            return emb, logits, iou

        emb, logits, iou = run(variables, images, prompts)
        assert emb.dtype == dtype and logits.dtype == iou.dtype == jnp.float32, name
        out[name] = tuple(np.asarray(a, np.float32) for a in (emb, logits, iou))
    return out


def _errors(outputs: dict, dtype: str, image: int) -> Tolerance:
    """``dtype``'s distance to float32 on image ``image`` and its prompts, as ``Tolerance``."""
    rows = slice(image * PROMPTS_PER_IMAGE, (image + 1) * PROMPTS_PER_IMAGE)
    (emb, logits, iou), (ref_emb, ref_logits, ref_iou) = outputs[dtype], outputs["float32"]
    emb, ref_emb = emb[image], ref_emb[image]
    logits, ref_logits = logits[rows], ref_logits[rows]
    return Tolerance(
        embedding=float(np.abs(emb - ref_emb).max() / np.abs(ref_emb).max()),
        logits=float(np.abs(logits - ref_logits).max() / np.abs(ref_logits).max()),
        iou=float(np.abs(iou[rows] - ref_iou[rows]).max()),
        signs=float(((logits > 0) == (ref_logits > 0)).mean()),
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_outputs_finite_and_close_to_float32(outputs: dict, dtype: str) -> None:
    for what, a in zip(("embeddings", "logits", "iou"), outputs[dtype], strict=True):
        assert np.isfinite(a).all(), f"{dtype} {what} not finite"
    tol = TOLERANCES[dtype]
    for i, image in enumerate(IMAGES):
        err = _errors(outputs, dtype, i)
        assert err.embedding <= tol.embedding and err.logits <= tol.logits, (dtype, image, err)
        assert err.iou <= tol.iou and err.signs >= tol.signs, (dtype, image, err)


def _primitives(jaxpr: Any, out: list) -> list:
    """``(primitive name, input dtypes)`` of every equation, nested programs included."""
    for eqn in jaxpr.eqns:
        out.append((eqn.primitive.name, {str(v.aval.dtype) for v in eqn.invars}))
        for param in eqn.params.values():
            for sub in param if isinstance(param, list | tuple) else [param]:
                if isinstance(sub, jax_core.ClosedJaxpr):
                    _primitives(sub.jaxpr, out)
                elif isinstance(sub, jax_core.Jaxpr):
                    _primitives(sub, out)
    return out


def _layer_norms(variables: Any, owner: str) -> int:
    """LayerNorms (and LayerNorm2d) of ``owner``: modules with a ``scale`` param and no
    BatchNorm running statistics (``batch_stats``)."""
    keystr = jax.tree_util.keystr
    stats = variables.get("batch_stats", {}).get(owner, {})
    with_stats = {keystr(path[:-1]) for path, _ in jax.tree_util.tree_leaves_with_path(stats)}
    return sum(
        1
        for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"][owner])
        if path[-1].key == "scale" and keystr(path[:-1]) not in with_stats
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_norms_and_attention_sums_run_in_float32(dtype: str) -> None:
    model = create_model(L0, dtype=DTYPES[dtype], image_size=SIDE, embed_size=EMBED)
    images = jax.ShapeDtypeStruct((1, 3, SIDE, SIDE), jnp.float32)
    prompts = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in _prompts(1)]
    variables = jax.eval_shape(model.init, jax.random.key(0), images, *prompts)
    emb = jax.ShapeDtypeStruct((1, 256, EMBED, EMBED), DTYPES[dtype])
    cases = {
        "embed_images": ((images,), ("image_encoder",)),
        "decode": ((emb, *prompts), ("prompt_encoder", "mask_decoder")),
    }
    for method, (args, owners) in cases.items():
        program = jax.make_jaxpr(lambda v, *a, m=method: model.apply(v, *a, method=m))
        closed = program(variables, *args)
        eqns = _primitives(closed.jaxpr, [])
        low = sorted({name for name, dts in eqns if name in FLOAT32_ONLY and dts != {"float32"}})
        assert not low, f"{dtype} {method}: {low} not in float32"
        assert {str(v.aval.dtype) for v in closed.jaxpr.outvars} == (
            {dtype} if method == "embed_images" else {"float32"}
        )
        # every LayerNorm's mean and variance among the float32 reductions
        norms = sum(_layer_norms(variables, o) for o in owners)
        sums = sum(1 for name, _ in eqns if name == "reduce_sum")
        assert norms > 0 and sums >= 2 * norms, (method, norms, sums)
