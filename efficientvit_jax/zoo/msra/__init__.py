"""The MSRA EfficientViT family (Liu et al., CVPR 2023, arXiv 2305.07027), as timm 1.0 defines it.

``model`` holds the config (``MSRAConfig``) and the modules (``EfficientViTMSRA``),
``convert`` the key rules of timm's checkpoints (``msra_from_timm``), ``variants`` the
registered M0-M5 (``MSRA_CONFIGS``); importing this package registers them. Every name
``efficientvit_jax.zoo.msra`` had as a module is here; the modules renamed apart from the
core's and MIT's keep their old names as aliases (``CascadedGroupAttention`` is
``WindowedCascadedAttention``, ``PatchMerging`` is ``SEPatchMerging``, ``EfficientViTBlock``
is ``SandwichBlock``).
"""

from efficientvit_jax.zoo.base import TorchBatchNorm
from efficientvit_jax.zoo.msra.convert import MSRA_RULES, msra_from_timm, timm_key
from efficientvit_jax.zoo.msra.model import (
    PATCH_SIZE,
    CascadedGroupAttention,
    ConvMlp,
    ConvNorm,
    EfficientViTBlock,
    EfficientViTMSRA,
    EfficientViTStage,
    LocalWindowAttention,
    MSRAConfig,
    NormLinear,
    PatchEmbedding,
    PatchMerging,
    SandwichBlock,
    SEPatchMerging,
    SqueezeExcite,
    Subsample,
    WindowedCascadedAttention,
    attention_bias_index,
    channels_first,
    variable_shapes,
)
from efficientvit_jax.zoo.msra.variants import MSRA_CONFIGS

__all__ = [
    "MSRA_CONFIGS",
    "MSRA_RULES",
    "PATCH_SIZE",
    "CascadedGroupAttention",
    "ConvMlp",
    "ConvNorm",
    "EfficientViTBlock",
    "EfficientViTMSRA",
    "EfficientViTStage",
    "LocalWindowAttention",
    "MSRAConfig",
    "NormLinear",
    "PatchEmbedding",
    "PatchMerging",
    "SEPatchMerging",
    "SandwichBlock",
    "SqueezeExcite",
    "Subsample",
    "TorchBatchNorm",
    "WindowedCascadedAttention",
    "attention_bias_index",
    "channels_first",
    "msra_from_timm",
    "timm_key",
    "variable_shapes",
]
