"""The published EfficientViT models with timm's names and weights.

Importing this package registers every family. ``create_model``,
``list_models``, ``load_timm_weights`` and ``load_pretrained`` (a model's published weights,
from the Hugging Face Hub: ``zoo.hub``) are the entry points; ``load_mit_weights`` reads MIT's
own checkpoints of the segmentation models (``zoo.seg``) and of the segment-anything models
(``zoo.sam``).
"""

import efficientvit_jax.zoo.sam  # registers the segment-anything variants
import efficientvit_jax.zoo.seg  # noqa: F401  (registers the segmentation variants)
from efficientvit_jax.zoo import mit, msra  # noqa: F401  (importing registers the variants)
from efficientvit_jax.zoo.converted import is_converted, load_converted, save_converted
from efficientvit_jax.zoo.registry import (
    ModelEntry,
    create_model,
    fetch_pretrained,
    get_config,
    get_entry,
    list_models,
    load_mit_weights,
    load_pretrained,
    load_timm_backbone,
    load_timm_weights,
    pretrained_file,
)
from efficientvit_jax.zoo.seg import seg_from_timm_backbone

__all__ = [
    "ModelEntry",
    "create_model",
    "fetch_pretrained",
    "get_config",
    "get_entry",
    "is_converted",
    "list_models",
    "load_converted",
    "load_mit_weights",
    "load_pretrained",
    "load_timm_backbone",
    "load_timm_weights",
    "pretrained_file",
    "save_converted",
    "seg_from_timm_backbone",
]
