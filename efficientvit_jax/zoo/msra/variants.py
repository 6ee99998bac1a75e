"""The registered MSRA variants, timm's ``efficientvit_m0`` ... ``efficientvit_m5``.

Their published top-1 figures are in the tag table (``data.tags``), with their sources.
"""

from __future__ import annotations

from typing import Any

from efficientvit_jax.zoo.msra.convert import msra_from_timm
from efficientvit_jax.zoo.msra.model import EfficientViTMSRA, MSRAConfig
from efficientvit_jax.zoo.registry import ModelEntry, register

_VARIANTS: dict[str, dict[str, Any]] = {
    "efficientvit_m0": dict(
        embed_dim=(64, 128, 192), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(5, 5, 5, 5)
    ),
    "efficientvit_m1": dict(
        embed_dim=(128, 144, 192), depth=(1, 2, 3), num_heads=(2, 3, 3), kernels=(7, 5, 3, 3)
    ),
    "efficientvit_m2": dict(
        embed_dim=(128, 192, 224), depth=(1, 2, 3), num_heads=(4, 3, 2), kernels=(7, 5, 3, 3)
    ),
    "efficientvit_m3": dict(
        embed_dim=(128, 240, 320), depth=(1, 2, 3), num_heads=(4, 3, 4), kernels=(5, 5, 5, 5)
    ),
    "efficientvit_m4": dict(
        embed_dim=(128, 256, 384), depth=(1, 2, 3), num_heads=(4, 4, 4), kernels=(7, 5, 3, 3)
    ),
    "efficientvit_m5": dict(
        embed_dim=(192, 288, 384), depth=(1, 3, 4), num_heads=(3, 3, 4), kernels=(7, 5, 3, 3)
    ),
}

MSRA_CONFIGS: dict[str, MSRAConfig] = {k: MSRAConfig(**v) for k, v in _VARIANTS.items()}

for _name, _cfg in MSRA_CONFIGS.items():
    register(
        ModelEntry(
            name=_name, family="msra", config=_cfg, module=EfficientViTMSRA, convert=msra_from_timm
        )
    )
