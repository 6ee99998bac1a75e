"""The registered MIT variants, timm's ``efficientvit_b0`` ... ``efficientvit_l3``.

Their published top-1 figures are in the tag table (``data.tags``), with their sources.
"""

from __future__ import annotations

from efficientvit_jax.zoo.mit.convert import mit_from_timm
from efficientvit_jax.zoo.mit.model import EfficientViTMIT, MITConfig
from efficientvit_jax.zoo.registry import ModelEntry, register


def _b(
    widths: tuple[int, ...], depths: tuple[int, ...], head_dim: int, head_widths: tuple[int, int]
) -> MITConfig:
    return MITConfig(widths=widths, depths=depths, head_dim=head_dim, head_widths=head_widths)


def _l(widths: tuple[int, ...], depths: tuple[int, ...], head_widths: tuple[int, int]) -> MITConfig:
    # timm's EfficientVitLarge: ConvBlock stem, FusedMBConv stages 0-1 (expand 16 down, 4 in
    # blocks), fewer-norm MBConv stage 2 (16 / 4), attention stage 3 (24 down, 6 in blocks),
    # tanh-GELU and eps 1e-7 for every norm.
    return MITConfig(
        widths=widths,
        depths=depths,
        head_dim=32,
        head_widths=head_widths,
        stem_block="conv",
        stage_kinds=("fused", "fused", "mbconv", "attention"),
        fewer_norm=(False, False, True, True),
        down_expand=(16, 16, 16, 24),
        block_expand=(4, 4, 4, 6),
        downsample_in_depth=False,
        act="gelu_tanh",
        norm_eps=1e-7,
    )


MIT_CONFIGS: dict[str, MITConfig] = {
    "efficientvit_b0": _b((8, 16, 32, 64, 128), (1, 2, 2, 2, 2), 16, (1024, 1280)),
    "efficientvit_b1": _b((16, 32, 64, 128, 256), (1, 2, 3, 3, 4), 16, (1536, 1600)),
    "efficientvit_b2": _b((24, 48, 96, 192, 384), (1, 3, 4, 4, 6), 32, (2304, 2560)),
    "efficientvit_b3": _b((32, 64, 128, 256, 512), (1, 4, 6, 6, 9), 32, (2304, 2560)),
    "efficientvit_l1": _l((32, 64, 128, 256, 512), (1, 1, 1, 6, 6), (3072, 3200)),
    "efficientvit_l2": _l((32, 64, 128, 256, 512), (1, 2, 2, 8, 8), (3072, 3200)),
    "efficientvit_l3": _l((64, 128, 256, 512, 1024), (1, 2, 2, 8, 8), (6144, 6400)),
}

for _name, _cfg in MIT_CONFIGS.items():
    register(
        ModelEntry(
            name=_name, family="mit", config=_cfg, module=EfficientViTMIT, convert=mit_from_timm
        )
    )
