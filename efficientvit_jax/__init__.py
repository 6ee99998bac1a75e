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
    "create_model",
    "from_axon_params",
    "linear_attention",
    "list_models",
    "load_mit_weights",
    "load_pretrained",
    "load_run",
    "load_timm_weights",
    "output_size",
]
__version__ = "0.1.0"

# The model zoo on first use: importing it registers every family and costs time that a
# user of the core model alone should not pay at ``import efficientvit_jax``.
_ZOO = ("create_model", "list_models", "load_mit_weights", "load_pretrained", "load_timm_weights")


def __getattr__(name: str):
    if name == "load_run":  # orbax and the training modules: not for the core model's users
        from efficientvit_jax.training.loaded import load_run

        return load_run
    if name in _ZOO:
        import efficientvit_jax.zoo as zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'efficientvit_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_ZOO, "load_run"])
