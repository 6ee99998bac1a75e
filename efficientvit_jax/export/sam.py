"""EfficientViT-SAM exported as two files: the image encoder and the prompt decoder.

``export_sam(model, variables, out_dir)`` writes ``encoder.onnx`` and ``decoder.onnx`` (and/or
``encoder.stablehlo`` and ``decoder.stablehlo``), as Meta's SAM splits its ONNX export: the
encoder runs once per image, the decoder once per prompt batch against that embedding.

- **encoder**: ``images [batch, 3, S, S]`` (normalised and padded as ``sam.transforms.preprocess``
  makes them; S = the config's ``image_size`` unless given) -> ``image_embeddings [batch, 256,
  64, 64]``. ``batch`` is symbolic; BatchNorms folded as ``export_onnx`` folds them.
- **decoder**: ``image_embeddings [1, 256, 64, 64]`` (one image), ``point_coords [prompts,
  points, 2]`` (x, y in the 1024 prompt frame: ``sam.transforms.apply_coords``), ``point_labels
  [prompts, points]`` (float32, Meta's ONNX convention: 1, 0, -1 pad, 2 and 3 box corners, -2
  absent: ``zoo.sam.ABSENT_LABEL``), ``mask_input [prompts, 1, 256, 256]``, ``has_mask_input
  [prompts]`` -> ``low_res_masks [prompts, M, 256, 256]`` (logits) and ``iou_predictions
  [prompts, M]``; M = 3 (``multimask_output``, the default) or 1. ``prompts`` and ``points`` are
  symbolic. The masks stay at low resolution: the caller upscales them
  (``sam.transforms.postprocess_masks``; Meta's file does it inside, from ``orig_im_size``).

NHWC models take and give channels-last maps instead. Each file carries the model's name, its
``image_size``, ``prompt_size``, ``mask_threshold`` and the pixel statistics (ONNX
``metadata_props``; StableHLO: ``<file>.json`` beside it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax._arrays import device_array
from efficientvit_jax._io import check_output_folder, check_output_writable
from efficientvit_jax.export.fold import fold_batchnorm
from efficientvit_jax.export.onnx_export import DEFAULT_OPSET, conversion, finish, write_onnx
from efficientvit_jax.export.prepare import FORMATS
from efficientvit_jax.export.source import image_shape, to_float
from efficientvit_jax.export.stablehlo import write_exported
from efficientvit_jax.ops import portable_ops
from efficientvit_jax.sam import transforms
from efficientvit_jax.sam.predictor import MASK_THRESHOLD

ENCODER_INPUTS = ("images",)
ENCODER_OUTPUTS = ("image_embeddings",)
DECODER_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
)
DECODER_OUTPUTS = ("low_res_masks", "iou_predictions")
SUFFIX = {"onnx": ".onnx", "stablehlo": ".stablehlo"}


@dataclasses.dataclass(frozen=True)
class SamPart:
    """One file's function: ``forward(*inputs)`` with the variables closed over, the inputs'
    ``specs`` (symbolic dimensions where they may vary), their names and the outputs'."""

    name: str  # "encoder" or "decoder"
    forward: Callable[..., Any]
    specs: tuple[jax.ShapeDtypeStruct, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    folded: int
    metadata: dict[str, str]


def _collections(variables: Any, keep: tuple[str, ...]) -> dict[str, Any]:
    """Each collection of ``variables`` with only the submodules named in ``keep``."""
    out = {}
    for collection, tree in variables.items():
        sub = {k: v for k, v in tree.items() if k in keep}
        if sub:
            out[collection] = sub
    return out


def _compute_params(variables: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """``params`` in the compute dtype where it is narrower than float32 (as
    ``export_onnx``); the rest (``constants``: SAM's positional encoding) as it is."""
    if jnp.dtype(dtype).itemsize < 4:
        return {**variables, "params": to_float(variables["params"], dtype)}
    return jax.tree.map(device_array, variables)


def encoder_part(
    model: Any, variables: Any, *, image_size: int | None = None, fold: bool = True
) -> SamPart:
    """``images -> image_embeddings`` with a symbolic ``batch``, BatchNorms folded (``fold``)."""
    cfg = model.config
    shape = image_shape(cfg, image_size)
    dtype = jnp.dtype(cfg.dtype)
    module, encoder_vars, folded = model, _collections(variables, ("image_encoder",)), 0
    if fold:
        example = jax.ShapeDtypeStruct((1, *shape), dtype)
        module, encoder_vars = fold_batchnorm(model, encoder_vars, example, method="embed_images")
        folded = len(module.folded)
    encoder_vars = _compute_params(encoder_vars, dtype)

    def forward(images: jax.Array) -> jax.Array:
        return module.apply(encoder_vars, images, method="embed_images")

    dims = ", ".join(str(d) for d in shape)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"batch, {dims}"), dtype)
    return SamPart(
        "encoder", forward, (spec,), ENCODER_INPUTS, ENCODER_OUTPUTS, folded, {"part": "encoder"}
    )


def decoder_part(model: Any, variables: Any, *, multimask_output: bool = True) -> SamPart:
    """The prompt encoder and mask decoder (``decode``) of one image's embedding, with
    symbolic ``prompts`` and ``points``; the labels come in as float32 (Meta's ONNX inputs)."""
    cfg = model.config
    dtype = jnp.dtype(cfg.dtype)
    decoder_vars = _compute_params(
        _collections(variables, ("prompt_encoder", "mask_decoder")), dtype
    )

    def forward(*inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        embeddings, coords, labels, mask_input, has_mask_input = inputs
        labels = labels.astype(jnp.int32)  # -2 .. 3, exact in float32
        return model.apply(
            decoder_vars, embeddings, coords, labels, mask_input, has_mask_input,
            multimask_output, method="decode",
        )  # fmt: skip

    p, n = jax.export.symbolic_shape("prompts, points")
    s, c, m = cfg.embed_size, cfg.embed_dim, cfg.mask_size
    nchw = cfg.data_format == "NCHW"
    f32 = jnp.float32
    specs = (
        jax.ShapeDtypeStruct((1, c, s, s) if nchw else (1, s, s, c), dtype),
        jax.ShapeDtypeStruct((p, n, 2), f32),
        jax.ShapeDtypeStruct((p, n), f32),
        jax.ShapeDtypeStruct((p, 1, m, m) if nchw else (p, m, m, 1), f32),
        jax.ShapeDtypeStruct((p,), f32),
    )
    metadata = {"part": "decoder", "multimask_output": json.dumps(bool(multimask_output))}
    return SamPart("decoder", forward, specs, DECODER_INPUTS, DECODER_OUTPUTS, 0, metadata)


def sam_metadata(model: Any, name: str, image_size: int | None = None) -> dict[str, str]:
    """What both files carry (strings; numbers and lists as JSON): ``image_size`` is the
    encoder's input side (default: the config's)."""
    cfg = model.config
    return {
        "model": name,
        "image_size": str(image_size or cfg.image_size),
        "prompt_size": str(cfg.prompt_size),
        "embed_size": str(cfg.embed_size),
        "mask_size": str(cfg.mask_size),
        "mask_threshold": json.dumps(MASK_THRESHOLD),
        "data_format": cfg.data_format,
        "pixel_mean": json.dumps(list(transforms.PIXEL_MEAN)),
        "pixel_std": json.dumps(list(transforms.PIXEL_STD)),
    }


def describe(part: SamPart) -> dict[str, str]:
    """``{input name: "[dims] dtype"}``, symbolic dimensions by name."""
    return {
        n: f"[{', '.join(str(d) for d in spec.shape)}] {jnp.dtype(spec.dtype).name}"
        for n, spec in zip(part.input_names, part.specs, strict=True)
    }


# --------------------------------------------------------------------------- ONNX


def _conv_transpose(self: nn.ConvTranspose, inputs: jax.Array) -> jax.Array:
    """``nn.ConvTranspose.__call__`` for an ONNX trace: ``lax.conv_transpose`` on the layer's
    parameters (``jax2onnx`` writes it as ONNX ``ConvTranspose``)."""
    if self.mask is not None or self.padding == "CIRCULAR":
        raise NotImplementedError("ONNX export: ConvTranspose with a mask or CIRCULAR padding")
    params = self.scope.variables()["params"]
    kernel, bias = params["kernel"], params.get("bias") if self.use_bias else None
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    n = kernel.ndim - 2
    size = (self.kernel_size,) * n if isinstance(self.kernel_size, int) else self.kernel_size
    strides = (self.strides,) * n if isinstance(self.strides, int) else self.strides or (1,) * n
    dilation = self.kernel_dilation or 1
    dilation = (dilation,) * n if isinstance(dilation, int) else dilation
    padding = nn.linear.canonicalize_padding(self.padding, len(size))
    y = jax.lax.conv_transpose(
        inputs, kernel, strides, padding, rhs_dilation=dilation,
        transpose_kernel=self.transpose_kernel, precision=self.precision,
    )  # fmt: skip
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


# JAX's own ``jnp.concatenate``, taken when this module is imported (outside any conversion).
_JNP_CONCATENATE = jnp.concatenate


def _concatenate(arrays: Sequence[Any], axis: int | None = 0, **kwargs: Any) -> jax.Array:
    """``jnp.concatenate`` for an ONNX trace: JAX's own, never along axis 0 (an extra leading
    axis instead, dropped after)."""
    arrays = [jnp.asarray(a) for a in arrays]
    if axis is None or arrays[0].ndim == 0:
        return _JNP_CONCATENATE(arrays, axis, **kwargs)
    axis = axis % arrays[0].ndim
    return _JNP_CONCATENATE([a[None] for a in arrays], axis + 1, **kwargs)[0]


@contextlib.contextmanager
def _jax2onnx_workarounds() -> Iterator[None]:
    """Inside a ``jax2onnx`` (0.17) trace, two of its replacements undone for the traced call:

    - ``nn.ConvTranspose.__call__``: its own refuses ``transpose_kernel=True`` (SAM's upscaling:
      PyTorch's kernel layout), and Flax's reads the input's channels with ``jnp.shape``,
      which the trace makes a traced value; ``_conv_transpose`` instead.
    - ``jnp.concatenate``: its own gives ``concatenate([x [P, 5, C], y [P, points, C]], 1)``
      the shape ``[P, 5, C]`` (the first operand's), so every reshape after the decoder's
      token concatenation was wrong for a symbolic ``points``; and a concatenation along axis
      0 tags its result with its static length, which a later broadcast to a symbolic leading
      dimension takes for that dimension (the decoder's 5 output tokens broadcast over
      ``prompts`` came out ``[5, 5, C]``). ``_concatenate`` instead: JAX's own
      (``lax.concatenate``, whose shapes it gets right), never along axis 0.

    Both are put back as they were when the call returns or fails.
    """
    if "jax2onnx" in getattr(_JNP_CONCATENATE, "__module__", ""):
        raise RuntimeError("efficientvit_jax.export.sam was imported during a jax2onnx trace")
    saved = nn.ConvTranspose.__dict__["__call__"], jnp.concatenate
    nn.ConvTranspose.__call__ = _conv_transpose
    jnp.concatenate = _concatenate
    try:
        yield
    finally:
        nn.ConvTranspose.__call__, jnp.concatenate = saved


def to_onnx_proto(part: SamPart, name: str, opset: int = DEFAULT_OPSET) -> Any:
    """The ``onnx.ModelProto`` ``jax2onnx`` traces from ``part`` (portable path)."""
    from jax2onnx import to_onnx

    def forward(*inputs: jax.Array) -> Any:
        with _jax2onnx_workarounds():
            return part.forward(*inputs)

    with conversion():
        return to_onnx(
            forward,
            list(part.specs),
            model_name=f"{name}_{part.name}".replace(".", "_").replace("-", "_"),
            opset=opset,
            input_names=list(part.input_names),
            output_names=list(part.output_names),
        )


def to_exported(part: SamPart, platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """``part`` as a ``jax.export.Exported`` (portable path; ``platforms``: default this
    backend)."""
    with portable_ops():
        return jax.export.export(jax.jit(part.forward), platforms=platforms)(*part.specs)


# --------------------------------------------------------------------------- both files


def export_sam(
    model: Any,
    variables: Any,
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = FORMATS,
    name: str = "efficientvit_sam",
    image_size: int | None = None,
    fold: bool = True,
    multimask_output: bool = True,
    opset: int = DEFAULT_OPSET,
    optimize_graph: bool = True,
    platforms: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Write ``encoder`` and ``decoder`` files of an ``EfficientViTSam`` into ``out_dir``.

    Args:
      model, variables: the model (``zoo.create_model("efficientvit_sam_l0")``) and its
        eval-mode variables.
      out_dir: the folder (created if missing; its parent must exist).
      formats: ``"onnx"`` and/or ``"stablehlo"``.
      name: the model's name in the files' metadata.
      image_size: the encoder's input side (default: the config's ``image_size``).
      fold: fold the encoder's BatchNorms; multimask_output: the decoder's three masks (True,
        SAM's default for one click) or its single mask.
      opset, optimize_graph: ONNX; platforms: StableHLO (default: this backend).

    Returns:
      ``{file name: {path, format, seconds, bytes, inputs, ...}}``, one entry per file. Every
      file is traced (and checked) before any is written; each is written atomically.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be among {', '.join(FORMATS)}, got {list(formats)}")
    r = model.config.backbone.reduction
    if image_size is not None and (image_size < r or image_size % r):
        raise ValueError(f"image_size must be a multiple of {r}, got {image_size}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    check_output_folder(out_dir)  # before any work; created once every file is ready
    common = sam_metadata(model, name, image_size)
    parts = (
        encoder_part(model, variables, image_size=image_size, fold=fold),
        decoder_part(model, variables, multimask_output=multimask_output),
    )
    optimize_graph = optimize_graph and jnp.dtype(model.config.dtype) == jnp.float32
    onnx_options = {"opset": opset, "optimize_graph": optimize_graph}
    ready = [
        _trace(part, fmt, {**common, **part.metadata}, name, platforms, **onnx_options)
        for fmt in formats
        for part in parts
    ]
    return _write_all(ready, out_dir)


def _write_all(ready: list[tuple], out_dir: str) -> dict[str, dict[str, Any]]:
    """Write the traced files of ``ready`` (``_trace``'s tuples) into ``out_dir``, created
    now; each file's report with its trace and write time together."""
    check_output_writable(out_dir)
    written = {}
    for file_name, fmt, part, seconds, write in ready:
        t0 = time.perf_counter()
        path = os.path.join(out_dir, file_name)
        info = write(path)
        info.update(path=path, format=fmt, seconds=seconds + time.perf_counter() - t0)
        info.update(folded_batchnorms=part.folded, inputs=describe(part))
        written[file_name] = info
    return written


def _trace(
    part: SamPart,
    fmt: str,
    metadata: dict[str, str],
    name: str,
    platforms: Sequence[str] | None,
    *,
    opset: int,
    optimize_graph: bool,
) -> tuple[str, str, SamPart, float, Callable[[str], dict[str, Any]]]:
    """``(file name, format, part, seconds, write(path) -> report)``: ``part`` traced (and
    for ONNX optimised and checked) in ``fmt``, not written yet."""
    t0 = time.perf_counter()
    if fmt == "onnx":
        checked = finish(to_onnx_proto(part, name, opset), metadata, optimize_graph)
        write = functools.partial(write_onnx, checked)
    else:
        write = functools.partial(_write_exported, to_exported(part, platforms), metadata)
    return part.name + SUFFIX[fmt], fmt, part, time.perf_counter() - t0, write


def _write_exported(
    exported: jax.export.Exported, metadata: dict[str, str], path: str
) -> dict[str, Any]:
    size = write_exported(exported, path, metadata)
    return {"bytes": size, "platforms": list(exported.platforms)}
