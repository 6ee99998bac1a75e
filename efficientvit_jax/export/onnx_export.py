"""ONNX export through ``jax2onnx``: the portable path traced, then cleaned and checked.

The graph ``jax2onnx`` writes has a Transpose pair around every conv (the model is NHWC
inside, ONNX's Conv is NCHW) and the shape arithmetic of the symbolic batch. onnxruntime's
basic graph optimisations (constant folding, transposes pushed through elementwise ops and
cancelled, bias adds fused into the convs) run once here and the result is what is written:
standard ONNX ops only (no onnxruntime domain), checked by ``onnx.checker``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp

from efficientvit_jax._io import atomic_write
from efficientvit_jax.export.lookups import quicker_lookups
from efficientvit_jax.export.plugins import lean_plugins
from efficientvit_jax.export.prepare import check_output_file, inference_function, input_spec
from efficientvit_jax.export.source import Exportable
from efficientvit_jax.ops import portable_ops

# Opset 18: every op used here, and what TensorRT 8.6+ and onnxruntime 1.14+ read.
DEFAULT_OPSET = 18


@contextlib.contextmanager
def conversion() -> Iterator[None]:
    """What every ``jax2onnx`` conversion here runs under (a model's, SAM's parts): the portable
    path, the quicker graph look-ups and the lean plugins, ``onnx_ir``'s warnings quieted."""
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # one warning per constant shape
    with portable_ops(), quicker_lookups(), lean_plugins():
        yield


def to_onnx_model(
    model: Exportable, *, fold: bool = True, opset: int = DEFAULT_OPSET, batch: str = "batch"
) -> tuple[Any, int]:
    """``(onnx.ModelProto, folded BatchNorms)``, as ``jax2onnx`` traces the portable path."""
    from jax2onnx import to_onnx

    forward, folded = inference_function(model, fold=fold)
    output = "logits" if _has_classifier(model.module) else "features"
    with conversion():
        proto = to_onnx(
            forward,
            [input_spec(model, batch)],
            model_name=model.name.replace(".", "_"),
            opset=opset,
            input_names=["images"],
            output_names=[output],
        )
    return proto, folded


def _has_classifier(module: Any) -> bool:
    n = getattr(getattr(module, "config", None), "num_classes", None)
    return bool(n)


def optimize(proto: Any) -> Any:
    """onnxruntime's basic (provider-independent) optimisations, applied once, offline."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = out
        ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(out)
    # onnxruntime declares its own domains; keep the ones the graph uses.
    used = {n.domain for n in optimized.graph.node} | {""}
    keep = [o for o in optimized.opset_import if o.domain in used]
    del optimized.opset_import[:]
    optimized.opset_import.extend(keep)
    optimized.producer_name, optimized.producer_version = (
        proto.producer_name,
        proto.producer_version,
    )
    return optimized


def export_onnx(
    model: Exportable,
    path: str | os.PathLike,
    *,
    fold: bool = True,
    optimize_graph: bool = True,
    opset: int = DEFAULT_OPSET,
) -> dict[str, Any]:
    """Write ``model`` to ``path`` as one ONNX file; returns what was done.

    The input ``images`` has the model's layout and a symbolic batch dimension ``batch``;
    the output is ``logits`` (or ``features`` for a model without classifier). Nothing is
    left at ``path`` if anything fails.
    """
    path = check_output_file(path)
    t0 = time.perf_counter()
    proto, folded = to_onnx_model(model, fold=fold, opset=opset)
    checked = finish(
        proto, model.metadata, optimize_graph and jnp.dtype(model.dtype) == jnp.float32
    )
    info = write_onnx(checked, path)
    return dict(
        path=path, format="onnx", seconds=time.perf_counter() - t0, bytes=info["bytes"],
        folded_batchnorms=folded, nodes=info["nodes"], ops=info["ops"],
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Checked:
    """A finished graph and its serialized bytes, which ``onnx.checker`` passed and which are
    what is written: a large model's serialization takes seconds (L3's gigabyte about 2 s),
    so it is done once."""

    proto: Any
    data: bytes


def finish(proto: Any, metadata: dict[str, str], optimize_graph: bool) -> Checked:
    """The graph as written: optimised (``optimize``; float32 graphs only: onnxruntime's CPU
    provider has no float16 kernels and would cast them to float32), ``metadata`` in its
    ``metadata_props``, checked by ``onnx.checker``."""
    import onnx

    if optimize_graph:
        proto = optimize(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    onnx.checker.check_model(data, full_check=True)
    return Checked(proto, data)


def write_onnx(checked: Checked, path: str) -> dict[str, Any]:
    """Write the checked graph to ``path`` atomically; ``{bytes, nodes, ops}`` (ops: count by
    type)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(checked.data)

    atomic_write(path, write)
    ops: dict[str, int] = {}
    for n in checked.proto.graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return dict(bytes=len(checked.data), nodes=len(checked.proto.graph.node), ops=ops)
