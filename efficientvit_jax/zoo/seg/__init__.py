"""EfficientViT-Seg: MIT's segmentation models, its checkpoints, and the logits' resize.

``create_model("efficientvit_seg_b0_cityscapes")`` (or MIT's name,
``"efficientvit-seg-b0-cityscapes"``) builds one of the 11 published variants;
``load_mit_weights(path, name)`` reads MIT's released checkpoint files;
``seg_from_timm_backbone`` starts a model from a timm classification checkpoint of its
backbone; ``resize_logits`` brings the stride-8 logits to the label's size as MIT's evaluation
does.
"""

from efficientvit_jax.zoo.seg import variants  # noqa: F401  (importing registers the variants)
from efficientvit_jax.zoo.seg.convert import (
    BackboneStart,
    mit_key,
    seg_from_mit,
    seg_from_timm_backbone,
    variable_shapes,
)
from efficientvit_jax.zoo.seg.model import (
    OUTPUT_STRIDE,
    EfficientViTSeg,
    SegConfig,
    SegHead,
    resize_logits,
)
from efficientvit_jax.zoo.seg.resize import interpolate
from efficientvit_jax.zoo.seg.variants import MIOU, SEG_HEADS, seg_config, seg_name

__all__ = [
    "MIOU",
    "OUTPUT_STRIDE",
    "SEG_HEADS",
    "BackboneStart",
    "EfficientViTSeg",
    "SegConfig",
    "SegHead",
    "interpolate",
    "mit_key",
    "resize_logits",
    "seg_config",
    "seg_from_mit",
    "seg_from_timm_backbone",
    "seg_name",
    "variable_shapes",
]
