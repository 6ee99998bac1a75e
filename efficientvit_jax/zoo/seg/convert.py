"""MIT's EfficientViT-Seg checkpoints to Flax variables, and seg models started from timm backbones.

MIT's state dicts name the modules of its own code (``efficientvit/models/efficientvit``), not
timm's port: ``backbone.input_stem.op_list.0.conv.weight`` (B) or ``backbone.stages.0...`` (L,
whose stem is stage 0), ``backbone.stages.2.op_list.1.context_module.main.qkv.conv.weight``,
``head.input_ops.0.op_list.0.conv.weight`` (the stride-32 input: MIT lists the head's inputs
coarsest first), ``head.middle.op_list.0.main...``, ``head.output_ops.0.op_list.1.conv.weight``.
``mit_key`` derives each from the Flax path by a short table of patterns; ``seg_from_mit``
converts a whole state dict and names every tensor that does not fit at once.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax.zoo.convert import (
    ConversionReport,
    StateDict,
    conv_kernel,
    load_state_dict,
    to_numpy,
)
from efficientvit_jax.zoo.seg.model import EfficientViTSeg, SegConfig, SegHead

Rule = tuple[str, str | Callable[[re.Match[str]], str]]

# Backbones: MIT's B models keep the stem apart (``input_stem``) and number the four stages
# from 0; its L models make the stem stage 0 and number the others from 1.
_B_BACKBONE: tuple[Rule, ...] = (
    (r"^stem/in_conv/", "input_stem.op_list.0."),
    (r"^stem/res(\d+)/", lambda m: f"input_stem.op_list.{int(m[1]) + 1}."),
    (r"^stages_(\d+)/blocks_(\d+)/", r"stages.\1.op_list.\2."),
)
_L_BACKBONE: tuple[Rule, ...] = (
    (r"^stem/in_conv/", "stages.0.op_list.0."),
    (r"^stem/res(\d+)/", lambda m: f"stages.0.op_list.{int(m[1]) + 1}."),
    (r"^stages_(\d+)/blocks_(\d+)/", lambda m: f"stages.{int(m[1]) + 1}.op_list.{m[2]}."),
)
# Inside blocks: an EfficientViT block's two residuals hold their module as ``main``; LiteMLA's
# aggregation is a Sequential of the depthwise and the grouped pointwise conv.
_BLOCK: tuple[Rule, ...] = (
    (r"(context_module|local_module)/", r"\1.main."),
    (r"aggreg_(\d+)/dw/", r"aggreg.\1.0."),
    (r"aggreg_(\d+)/pw/", r"aggreg.\1.1."),
)
# The head: the stride-8 input needs no upsampling, so MIT's OpSequential is absent there.
_HEAD: tuple[Rule, ...] = (
    (r"^inputs_32/", "input_ops.0.op_list.0."),
    (r"^inputs_16/", "input_ops.1.op_list.0."),
    (r"^inputs_8/", "input_ops.2."),
    (r"^middle_(\d+)/", r"middle.op_list.\1."),
    (r"^final_expand/", "output_ops.0.op_list.0."),
)
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


def _apply(rules: tuple[Rule, ...], path: str) -> str:
    for pattern, replacement in rules:
        path = re.sub(pattern, replacement, path, count=1)
    return path


def mit_key(flax_path: str, config: SegConfig) -> str:
    """MIT's state-dict key of a Flax variable path such as ``head/inputs_8/norm/scale``."""
    top, *mods, leaf = flax_path.split("/")
    path = "/".join(mods) + "/"
    if top == "backbone":
        large = config.backbone.stem_block == "conv"  # MIT's EfficientViTLargeBackbone
        path = _apply(_BLOCK, _apply(_L_BACKBONE if large else _B_BACKBONE, path))
    elif path == "classifier/":
        # OpSequential drops the absent final_expand conv: the classifier moves up to index 0
        path = f"output_ops.0.op_list.{0 if config.final_expand is None else 1}.conv."
    else:
        path = _apply(_HEAD, path)
    return f"{top}." + path.replace("/", ".") + _LEAF_NAMES.get(leaf, leaf)


@functools.lru_cache(maxsize=32)
def _shapes(config: SegConfig) -> dict[str, Any]:
    c = config.in_channels
    x = jax.ShapeDtypeStruct((1, 32, 32, c), jnp.dtype(config.dtype))
    return jax.eval_shape(EfficientViTSeg(config).init, jax.random.key(0), x)


def variable_shapes(config: SegConfig) -> dict[str, Any]:
    """Shapes of the model's variables (``jax.eval_shape``; cached, tracing a large variant
    takes seconds). The layout changes no variable, so both share one trace."""
    return _shapes(dataclasses.replace(config, data_format="NHWC"))


def _fill(shapes: Any, take: Callable[[str, tuple[int, ...]], np.ndarray]) -> dict[str, Any]:
    """A tree of ``shapes``' structure whose leaves are ``take("a/b/leaf", shape)``."""
    tree: dict[str, Any] = {}
    for path, sds in jax.tree_util.tree_flatten_with_path(shapes)[0]:
        names = [p.key for p in path]
        node = tree
        for n in names[:-1]:
            node = node.setdefault(n, {})
        node[names[-1]] = take("/".join(names), tuple(sds.shape))
    return tree


def seg_from_mit(state_dict: Mapping[str, Any], config: SegConfig) -> dict[str, Any]:
    """Flax variables ``{"params", "batch_stats"}`` from an MIT EfficientViT-Seg state dict.

    Every Flax variable is looked up by ``mit_key`` (conv kernels ``[O, I, kh, kw] ->
    [kh, kw, I, O]``). Missing, unexpected and mis-shaped tensors are all collected and raised
    in one ``ConversionError`` (a ``ValueError``): a checkpoint of another variant names them.
    """
    sd = {k: to_numpy(v) for k, v in state_dict.items()}
    report = ConversionReport(sd, "MIT EfficientViT-Seg checkpoint")
    shapes = variable_shapes(config)
    out = {}
    for col, dtype in (("params", config.param_dtype), ("batch_stats", np.float32)):

        def take(path: str, shape: tuple[int, ...], col: str = col, dtype: Any = dtype) -> Any:
            kernel = path.endswith("/kernel") and len(shape) == 4
            arr = report.take(
                mit_key(path, config), shape, conv_kernel if kernel else None, jnp.dtype(dtype)
            )
            return jnp.asarray(arr)

        out[col] = _fill(shapes.get(col, {}), take)
    report.finish()
    return out


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
    return jax.jit(SegHead(config).init)(jax.random.key(seed), feats)


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
        lambda a: jnp.asarray(a, config.param_dtype), variables["params"]
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
