"""MIT's EfficientViT-Seg checkpoints to Flax variables, and seg models started from timm backbones.

MIT's state dicts name the modules of its own code (``efficientvit/models/efficientvit``), not
timm's port: ``backbone.input_stem.op_list.0.conv.weight`` (B) or ``backbone.stages.0...`` (L,
whose stem is stage 0), ``backbone.stages.2.op_list.1.context_module.main.qkv.conv.weight``,
``head.input_ops.0.op_list.0.conv.weight`` (the stride-32 input: MIT lists the head's inputs
coarsest first), ``head.middle.op_list.0.main...``, ``head.output_ops.0.op_list.1.conv.weight``.
``mit_key`` derives each from the Flax path by the family's ``KeyRules`` (``seg_rules``, one
table per config: B and L backbones number their stages apart); ``seg_from_mit`` converts a
whole state dict through ``convert_state_dict``, naming every tensor that does not fit at once.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from efficientvit_jax._arrays import device_array
from efficientvit_jax._once import run_once
from efficientvit_jax.zoo import base
from efficientvit_jax.zoo.convert import (
    KeyRules,
    StateDict,
    conv_kernel,
    convert_state_dict,
    load_state_dict,
)
from efficientvit_jax.zoo.seg.model import EfficientViTSeg, SegConfig, SegHead

# Inside blocks: an EfficientViT block's two residuals hold their module as ``main``; LiteMLA's
# aggregation is a Sequential of the depthwise and the grouped pointwise conv.
_BLOCK: tuple[tuple[str, str], ...] = (
    (r"(context_module|local_module)/", r"\1.main."),
    (r"aggreg_(\d+)/dw/", r"aggreg.\1.0."),
    (r"aggreg_(\d+)/pw/", r"aggreg.\1.1."),
)
# The head: the stride-8 input needs no upsampling, so MIT's OpSequential is absent there.
_HEAD: tuple[tuple[str, str], ...] = (
    (r"^head/inputs_32/", "head.input_ops.0.op_list.0."),
    (r"^head/inputs_16/", "head.input_ops.1.op_list.0."),
    (r"^head/inputs_8/", "head.input_ops.2."),
    (r"^head/middle_(\d+)/", r"head.middle.op_list.\1."),
    (r"^head/final_expand/", "head.output_ops.0.op_list.0."),
)


def _backbone_rules(config: SegConfig) -> tuple[tuple[str, str], ...]:
    # MIT's B models keep the stem apart (``input_stem``) and number the four stages from 0;
    # its L models (EfficientViTLargeBackbone) make the stem stage 0 and number the others
    # from 1. Regex replacements cannot add, so every shifted index gets its own rule.
    bcfg = config.backbone
    large = bcfg.stem_block == "conv"
    stem, shift = ("stages.0", 1) if large else ("input_stem", 0)
    rules = [(r"^backbone/stem/in_conv/", f"backbone.{stem}.op_list.0.")]
    rules += [
        (rf"^backbone/stem/res{i}/", f"backbone.{stem}.op_list.{i + 1}.")
        for i in range(bcfg.depths[0])
    ]
    rules += [
        (rf"^backbone/stages_{s}/blocks_(\d+)/", rf"backbone.stages.{s + shift}.op_list.\1.")
        for s in range(len(bcfg.depths) - 1)
    ]
    return tuple(rules)


@functools.lru_cache(maxsize=32)
def seg_rules(config: SegConfig) -> KeyRules:
    """The ``KeyRules`` of ``config``'s MIT checkpoints: B and L backbones number their stem
    and stages differently, and the classifier's index follows ``final_expand``."""
    # OpSequential drops the absent final_expand conv: the classifier moves up to index 0
    classifier = 0 if config.final_expand is None else 1
    return KeyRules(
        what="MIT EfficientViT-Seg checkpoint",
        modules=(
            *_backbone_rules(config),
            *_BLOCK,
            *_HEAD,
            (r"^head/classifier/", f"head.output_ops.0.op_list.{classifier}.conv."),
        ),
        # MIT's seg models are all convolutions: no Linear layer to transpose
        layouts={("kernel", 4): conv_kernel},
    )


def mit_key(flax_path: str, config: SegConfig) -> str:
    """MIT's state-dict key of a Flax variable path such as ``head/inputs_8/norm/scale``."""
    return seg_rules(config).key(flax_path.split("/"))


def variable_shapes(config: SegConfig) -> dict[str, Any]:
    """Shapes of the model's variables (``zoo.base.variable_shapes``: cached, tracing a large
    variant takes seconds). The layout changes no variable, so both share one trace."""
    return base.variable_shapes(EfficientViTSeg, dataclasses.replace(config, data_format="NHWC"))


def seg_from_mit(state_dict: Mapping[str, Any], config: SegConfig) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats"}`` from an MIT EfficientViT-Seg state dict.

    Every Flax variable is looked up by ``mit_key`` (conv kernels ``[O, I, kh, kw] ->
    [kh, kw, I, O]``). Missing, unexpected and mis-shaped tensors are all collected and raised
    in one ``ConversionError`` (a ``ValueError``): a checkpoint of another variant names them.
    """
    return convert_state_dict(state_dict, variable_shapes(config), seg_rules(config))


class BackboneStart(NamedTuple):
    """A seg model's variables with the backbone from a timm classification checkpoint.

    Attributes:
      variables: ``{"params", "batch_stats"}`` of the whole seg model.
      loaded: Flax paths (``params/backbone/...``) whose values came from the checkpoint.
      new: Flax paths initialised afresh (the segmentation head).
      dropped: checkpoint tensors left out (timm's classifier head).
    """

    variables: dict[str, Any]
    loaded: list[str]
    new: list[str]
    dropped: list[str]


def _paths(tree: Any, prefix: str) -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return sorted(prefix + "/".join(p.key for p in path) for path, _ in leaves)


def _init_head(config: SegConfig, seed: int) -> dict[str, Any]:
    # The head alone, on stride-8/16/32 maps of a 32x32 image: a small program to compile,
    # where initialising the whole model would trace and compile the backbone too.
    widths = config.backbone.widths[2:]
    feats = [jnp.zeros((1, 4 // 2**i, 4 // 2**i, w), config.dtype) for i, w in enumerate(widths)]
    return run_once(SegHead(config).init, jax.random.key(seed), feats)


def seg_from_timm_backbone(
    source: str | StateDict, name: str, *, seed: int = 0, **overrides: Any
) -> BackboneStart:
    """Seg model ``name`` started from a timm checkpoint of its backbone (fine-tuning).

    ``source``: a timm classification checkpoint of the backbone's variant (``efficientvit_b1``
    for ``efficientvit_seg_b1_*``; ``.safetensors``, a PyTorch zip file or a state dict), its
    classifier of any size. The backbone's variables come from it; the head is initialised
    with ``seed`` as ``create_model(name).init`` would. A checkpoint of another variant raises
    the ``ConversionError`` naming every mismatching tensor. ``overrides``: config fields
    (``num_classes=...``, ...).
    """
    from efficientvit_jax.zoo.registry import get_config, get_entry, load_timm_backbone

    entry = get_entry(name)
    if entry.backbone is None:
        raise ValueError(f"{entry.name} is not a segmentation model with a timm backbone")
    config = get_config(name, **overrides)
    sd = load_state_dict(source)
    timm_vars, _ = load_timm_backbone(sd, entry.backbone)
    head = _init_head(config, seed)
    variables = {}
    for col in ("params", "batch_stats"):
        backbone = {k: v for k, v in timm_vars[col].items() if k != "head"}
        variables[col] = {"backbone": backbone, "head": head[col]}
    variables["params"] = jax.tree.map(
        lambda a: device_array(a, config.param_dtype), variables["params"]
    )
    loaded = [
        p
        for col in ("params", "batch_stats")
        for p in _paths(variables[col]["backbone"], f"{col}/backbone/")
    ]
    new = [p for col in ("params", "batch_stats") for p in _paths(head[col], f"{col}/head/")]
    dropped = sorted(
        k for k in sd if k.startswith("head.") and not k.endswith("num_batches_tracked")
    )
    return BackboneStart(variables, loaded, new, dropped)
