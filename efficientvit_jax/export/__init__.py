"""Export for inference without this package: ONNX (``jax2onnx``) and StableHLO (``jax.export``).

Typical use::

    from efficientvit_jax import export

    model = export.from_zoo("efficientvit_b0", "b0.safetensors")  # or from_checkpoint, from_config
    export.export_onnx(model, "b0.onnx")           # onnxruntime, TensorRT, ...
    export.export_stablehlo(model, "b0.stablehlo")  # jax.export.deserialize(...).call(x)

Both trace the portable path (``ops.portable_ops``: XLA's own conv, no CPU rewrites), fold
every BatchNorm into its conv or linear layer (``fold_batchnorm``, also usable in JAX) and
give the input a symbolic batch dimension. EfficientViT-SAM is two files, its image encoder and
its prompt decoder (``export_sam``, ``export.sam``). See docs/export.md.
"""

from efficientvit_jax.export.checkpoint import from_checkpoint
from efficientvit_jax.export.fold import FoldedModel, fold_batchnorm
from efficientvit_jax.export.onnx_export import export_onnx
from efficientvit_jax.export.prepare import FORMATS
from efficientvit_jax.export.sam import export_sam
from efficientvit_jax.export.source import Exportable, from_config, from_zoo, image_side
from efficientvit_jax.export.stablehlo import export_stablehlo


def export(model: Exportable, path: str, format: str, **options: object) -> dict[str, object]:
    """``export_onnx`` or ``export_stablehlo`` by name (``format`` in ``FORMATS``); for a
    segment-anything model ``export_sam`` into the folder ``path`` (its two files' reports,
    by file name)."""
    if format in FORMATS and hasattr(model.module, "embed_images"):
        return export_sam(
            model.module, model.variables, path, formats=(format,), name=model.name,
            image_size=image_side(model), **options,
        )  # fmt: skip
    if format == "onnx":
        return export_onnx(model, path, **options)
    if format == "stablehlo":
        return export_stablehlo(model, path, **options)
    raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")


__all__ = [
    "FORMATS",
    "Exportable",
    "FoldedModel",
    "export",
    "export_onnx",
    "export_sam",
    "export_stablehlo",
    "fold_batchnorm",
    "from_checkpoint",
    "from_config",
    "from_zoo",
]
