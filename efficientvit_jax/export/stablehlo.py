"""StableHLO export through ``jax.export``: one file, symbolic batch (and, for a segmentation
model, symbolic height and width, any multiples of 32), no package needed to run.

Read it back in any process with JAX (not this package)::

    exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
    logits = exported.call(images)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax

from efficientvit_jax._io import atomic_write, write_json
from efficientvit_jax.export.prepare import (
    check_output_file,
    inference_function,
    input_spec,
    side_multiple,
)
from efficientvit_jax.export.source import Exportable
from efficientvit_jax.ops import portable_ops


def to_exported(
    model: Exportable, *, fold: bool = True, platforms: Sequence[str] | None = None
) -> tuple[jax.export.Exported, int]:
    """``(jax.export.Exported, folded BatchNorms)`` of the portable path, for ``platforms``
    (default: the current backend; e.g. ``("cpu", "cuda")`` for a file that runs on both)."""
    forward, folded = inference_function(model, fold=fold)
    with portable_ops():
        spec = input_spec(model, side_multiple=side_multiple(model))
        exported = jax.export.export(jax.jit(forward), platforms=platforms)(spec)
    return exported, folded


def export_stablehlo(
    model: Exportable,
    path: str | os.PathLike,
    *,
    fold: bool = True,
    platforms: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``model`` to ``path`` as a serialized ``jax.export.Exported``; returns what was done."""
    path = check_output_file(path)
    t0 = time.perf_counter()
    exported, folded = to_exported(model, fold=fold, platforms=platforms)
    size = write_exported(exported, path, model.metadata)
    return dict(
        path=path, format="stablehlo", seconds=time.perf_counter() - t0, bytes=size,
        folded_batchnorms=folded, platforms=list(exported.platforms),
    )  # fmt: skip


def write_exported(exported: jax.export.Exported, path: str, metadata: dict[str, str]) -> int:
    """Serialize ``exported`` to ``path`` atomically, ``metadata`` (if any) to ``path.json``
    beside it (a serialized ``Exported`` has no free-form fields); returns the file's bytes."""
    data = exported.serialize()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)
    if metadata:
        write_json(path + ".json", {k: _json_value(v) for k, v in metadata.items()})
    return len(data)


def _json_value(text: str) -> object:
    """A metadata value as the JSON it holds (ONNX metadata are strings; a JSON file need
    not nest JSON in strings), else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text
