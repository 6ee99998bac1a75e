"""MIT's EfficientViT-SAM checkpoints to Flax variables: the key rules.

MIT's state dicts name the modules of its code: ``image_encoder.backbone.stages.0.op_list.0``
(the stem: MIT's large backbones make it stage 0 and number the others from 1),
``image_encoder.neck.input_ops.0.op_list.0`` (the coarsest input first),
``image_encoder.neck.middle.op_list.{j}.main``, ``image_encoder.neck.output_ops.0.op_list.0``,
and Meta's ``prompt_encoder.*`` / ``mask_decoder.*`` (``nn.Sequential`` and ``nn.ModuleList``
indices where the Flax modules are ``name_{i}``). ``sam_rules`` derives each key from the Flax
path; ``sam_from_mit`` converts a whole state dict through ``convert_state_dict``, naming every
tensor that does not fit at once. Kernels: conv ``[O, I, kh, kw] -> [kh, kw, I, O]``; Linear
transposed; ConvTranspose2d ``[I, O, kh, kw] -> [kh, kw, O, I]``, the same transpose, which is
the layout of ``nn.ConvTranspose(transpose_kernel=True)`` (PyTorch's semantics, no flip).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from efficientvit_jax import ops
from efficientvit_jax.zoo.convert import TORCH_LEAF_NAMES, KeyRules, convert_state_dict
from efficientvit_jax.zoo.sam.model import EfficientViTSam, SamConfig

# Inside the backbone's blocks: an EfficientViT block's two residuals hold their module as
# ``main``; LiteMLA's aggregation is a Sequential of the depthwise and the grouped 1x1 conv.
_BLOCK: tuple[tuple[str, str], ...] = (
    (r"(context_module|local_module)/", r"\1.main."),
    (r"aggreg_(\d+)/dw/", r"aggreg.\1.0."),
    (r"aggreg_(\d+)/pw/", r"aggreg.\1.1."),
)
# Meta's modules: ModuleList / Sequential indices.
_DECODER: tuple[tuple[str, str], ...] = (
    (
        r"(point_embeddings|mask_downscaling|layers|output_upscaling|output_hypernetworks_mlps)_(\d+)/",
        r"\1.\2.",
    ),
)


def _encoder_rules(config: SamConfig) -> tuple[tuple[str, str], ...]:
    # Regex replacements cannot add: every index MIT shifts by one gets its own rule.
    bcfg = config.backbone
    enc = "image_encoder/backbone"
    rules = [(rf"^{enc}/stem/in_conv/", "image_encoder.backbone.stages.0.op_list.0.")]
    rules += [
        (rf"^{enc}/stem/res{i}/", f"image_encoder.backbone.stages.0.op_list.{i + 1}.")
        for i in range(bcfg.depths[0])
    ]
    rules += [
        (rf"^{enc}/stages_{s}/blocks_(\d+)/", rf"image_encoder.backbone.stages.{s + 1}.op_list.\1.")
        for s in range(len(bcfg.depths) - 1)
    ]
    coarsest_first = sorted(config.neck_strides, reverse=True)
    rules += [
        (rf"^image_encoder/neck/inputs_{s}/", f"image_encoder.neck.input_ops.{j}.op_list.0.")
        for j, s in enumerate(coarsest_first)
    ]
    rules += [
        (r"^image_encoder/neck/middle_(\d+)/", r"image_encoder.neck.middle.op_list.\1."),
        (r"^image_encoder/neck/output/", "image_encoder.neck.output_ops.0.op_list.0.conv."),
    ]
    return tuple(rules)


@functools.lru_cache(maxsize=32)
def sam_rules(config: SamConfig) -> KeyRules:
    """The ``KeyRules`` of ``config``'s MIT checkpoints (the stem's depth, the number of stages
    and the neck's inputs set the encoder's indices)."""
    return KeyRules(
        what="MIT EfficientViT-SAM checkpoint",
        modules=(*_encoder_rules(config), *_BLOCK, *_DECODER),
        leaves={**TORCH_LEAF_NAMES, "embedding": "weight"},  # nn.Embedding tables
        collections=("params", "batch_stats", "constants"),
    )


def mit_key(flax_path: str, config: SamConfig) -> str:
    """MIT's state-dict key of a Flax variable path such as ``mask_decoder/iou_token/embedding``
    (its collection left out)."""
    return sam_rules(config).key(flax_path.split("/"))


def init_inputs(config: SamConfig) -> tuple[jax.ShapeDtypeStruct, ...]:
    """``init``'s arguments after the key, in the config's layout: one image at the smallest
    side (the variables do not depend on it), one prompt of one point, a mask input and its
    flag."""
    m, c = config.mask_size, config.in_channels
    side = config.backbone.reduction
    nchw = config.data_format == "NCHW"
    return (
        jax.ShapeDtypeStruct((1, c, side, side) if nchw else (1, side, side, c), config.dtype),
        jax.ShapeDtypeStruct((1, 1, 2), jnp.float32),
        jax.ShapeDtypeStruct((1, 1), jnp.int32),
        jax.ShapeDtypeStruct((1, 1, m, m) if nchw else (1, m, m, 1), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.float32),
    )


@functools.lru_cache(maxsize=16)
def _shapes(config: SamConfig) -> dict[str, Any]:
    model = EfficientViTSam(config)
    return ops.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *init_inputs(config))


def variable_shapes(config: SamConfig) -> dict[str, Any]:
    """Shapes of ``EfficientViTSam(config)``'s variables (``jax.eval_shape``: nothing computed;
    cached, tracing an XL variant takes seconds). The layout changes no variable, so both
    share one trace. Treat the result as read-only."""
    return _shapes(dataclasses.replace(config, data_format="NHWC"))


def sam_from_mit(state_dict: Mapping[str, Any], config: SamConfig) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats", "constants"}`` from an MIT EfficientViT-SAM
    state dict (``model.state_dict()`` of ``create_efficientvit_sam_model``, or MIT's
    released ``.pt`` file read by ``load_state_dict``).

    Every Flax variable is looked up by ``mit_key`` and transformed to Flax's layout.
    Missing, unexpected and mis-shaped tensors are all collected and raised in one
    ``ConversionError`` (a ``ValueError``): a checkpoint of another variant names them.
    """
    return convert_state_dict(state_dict, variable_shapes(config), sam_rules(config))
