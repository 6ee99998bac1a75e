"""The function export traces: the portable path, BatchNorms folded, parameters in the
compute dtype, and the output file checked before any work and written atomically."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp

from efficientvit_jax._arrays import device_array
from efficientvit_jax._io import check_output_writable, require_parent
from efficientvit_jax.export.fold import fold_batchnorm
from efficientvit_jax.export.source import Exportable, to_float

FORMATS = ("onnx", "stablehlo")


def check_output_file(path: str | os.PathLike, flag: str = "--output") -> str:
    """The absolute path, once its folder is proven to exist and be writable (``ValueError``
    naming ``flag`` otherwise; no folder is created)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder; give a file name")
    require_parent(path, flag)
    try:
        check_output_writable(os.path.dirname(path), flag)  # it exists: only the probe
    except ValueError as e:
        why = getattr(e.__cause__, "strerror", None) or e  # the OS's reason, if there is one
        raise ValueError(f"{flag} {path} cannot be written: {why}") from e
    return path


def inference_function(model: Exportable, *, fold: bool = True) -> tuple[Callable, int]:
    """``(images -> outputs, number of folded BatchNorms)``, the variables closed over.

    With ``fold`` every BatchNorm that can is merged into its conv or linear layer; then the
    parameters are cast to the compute dtype (a float16 file stores float16 weights; the
    model still does its attention sums and division in float32).
    """
    module, variables = model.module, model.variables
    if hasattr(module, "embed_images"):  # EfficientViT-SAM: two files, not one
        raise ValueError(f"{model.name} is a segment-anything model: export it with export_sam")
    folded = 0
    if fold:
        if "folded" not in model._derived:
            example = jax.ShapeDtypeStruct((1, *model.image_shape), model.dtype)
            model._derived["folded"] = fold_batchnorm(module, variables, example)
        module, variables = model._derived["folded"]
        folded = len(module.folded)
    dtype = jnp.dtype(model.dtype)
    if dtype.itemsize < 4:
        variables = {**variables, "params": to_float(variables["params"], dtype)}
    else:
        variables = jax.tree.map(device_array, variables)

    def forward(images: jax.Array) -> jax.Array:
        return module.apply(variables, images)

    return forward, folded


def input_spec(
    model: Exportable, batch: str = "batch", side_multiple: int | None = None
) -> jax.ShapeDtypeStruct:
    """The input with a symbolic batch dimension named ``batch``; with ``side_multiple``
    also a symbolic height ``m*h`` and width ``m*w`` (any multiples of ``m``)."""
    shape = [str(d) for d in model.image_shape]
    if side_multiple:
        h, w = (1, 2) if getattr(model.module.config, "data_format", "NCHW") == "NCHW" else (0, 1)
        shape[h], shape[w] = f"{side_multiple}*h", f"{side_multiple}*w"
    dims = ", ".join(shape)
    return jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"{batch}, {dims}"), model.dtype)


def side_multiple(model: Exportable) -> int | None:
    """What an image side of ``model`` may be a multiple of in a StableHLO file: a
    segmentation model's (its backbone's reduction, 32) takes any such height and width;
    ``None`` for the others (a classifier's file is for its image size: MSRA's windows and
    the models' trained resolution fix it)."""
    from efficientvit_jax.zoo.seg.model import EfficientViTSeg

    return (
        model.module.config.backbone.reduction
        if isinstance(model.module, EfficientViTSeg)
        else None
    )
