"""EfficientViT in JAX/Flax: Edifice's builder, O(n) linear attention, and the paper models."""

from efficientvit_jax.attention import CascadedGroupAttention, linear_attention
from efficientvit_jax.config import EfficientViTConfig, output_size
from efficientvit_jax.edifice import from_axon_params
from efficientvit_jax.model import EfficientViT, build

__all__ = [
    "CascadedGroupAttention",
    "EfficientViT",
    "EfficientViTConfig",
    "build",
    "from_axon_params",
    "linear_attention",
    "output_size",
]
__version__ = "0.1.0"
