"""The MIT EfficientViT family (Cai et al., ICCV 2023, arXiv 2205.14756), as timm 1.0 defines it.

``model`` holds the config (``MITConfig``) and the modules (``EfficientViTMIT``), ``convert``
the key rules of timm's checkpoints (``mit_from_timm``), ``variants`` the registered
B0-B3 and L1-L3 (``MIT_CONFIGS``); importing this package registers them. Every name
``efficientvit_jax.zoo.mit`` had as a module is here.
"""

from efficientvit_jax.zoo.base import TORCH_KERNEL_INIT, ConvBNAct, TorchBatchNorm
from efficientvit_jax.zoo.mit.convert import MIT_RULES, mit_from_timm, timm_key
from efficientvit_jax.zoo.mit.model import (
    ActName,
    Aggregation,
    ClassifierHead,
    ConvBlock,
    ConvNormAct,
    DepthwiseConv,
    Downsample,
    DSConv,
    EfficientViTBlock,
    EfficientViTMIT,
    FusedMBConv,
    GroupedPointwise,
    LiteMLA,
    MBConv,
    MITConfig,
    Residual,
    Stage,
    StageKind,
    Stem,
    group_major,
    relu_linear_attention,
    variable_shapes,
)
from efficientvit_jax.zoo.mit.variants import MIT_CONFIGS

__all__ = [
    "MIT_CONFIGS",
    "MIT_RULES",
    "TORCH_KERNEL_INIT",
    "ActName",
    "Aggregation",
    "ClassifierHead",
    "ConvBNAct",
    "ConvBlock",
    "ConvNormAct",
    "DSConv",
    "DepthwiseConv",
    "Downsample",
    "EfficientViTBlock",
    "EfficientViTMIT",
    "FusedMBConv",
    "GroupedPointwise",
    "LiteMLA",
    "MBConv",
    "MITConfig",
    "Residual",
    "Stage",
    "StageKind",
    "Stem",
    "TorchBatchNorm",
    "group_major",
    "mit_from_timm",
    "relu_linear_attention",
    "timm_key",
    "variable_shapes",
]
