"""The five EfficientViT-SAM models MIT publishes, registered as ``efficientvit_sam_<variant>``.

As MIT's ``efficientvit_sam_{l0..xl1}`` build them: L0-L2 on MIT's large backbones (a 512-px
encoder input), XL0 and XL1 on five-stage backbones (FusedMBConv stages, ``att@3`` attention
stages; a 1024-px input), every norm at epsilon 1e-6 (MIT's zoo: ``set_norm_eps``), LiteMLA at
MIT's 1e-15.
"""

from __future__ import annotations

import dataclasses

from efficientvit_jax.data.tags import MIT_HUB
from efficientvit_jax.zoo.registry import ModelEntry, register
from efficientvit_jax.zoo.sam.convert import sam_from_mit
from efficientvit_jax.zoo.sam.model import SAM_L0_BACKBONE, EfficientViTSam, SamConfig


def _large(depths: tuple[int, ...], neck_depth: int) -> SamConfig:
    # MIT's efficientvit_backbone_l{0,1,2}: the L0 backbone's blocks at other depths; the neck
    # takes strides 8-32, FusedMBConv blocks at expand 1.
    backbone = dataclasses.replace(SAM_L0_BACKBONE, depths=depths)
    return SamConfig(backbone=backbone, neck_depth=neck_depth, neck_expand=1, image_size=512)


def _xlarge(depths: tuple[int, ...], neck_depth: int) -> SamConfig:
    # MIT's XL backbones: block_list ["res", "fmb", "fmb", "fmb", "att@3", "att@3"], expand
    # [1, 4, 4, 4, 4, 6] (x4 in each stage's downsampling block), fewer_norm only in the
    # attention stages; the neck takes strides 16-64, FusedMBConv blocks at expand 4.
    backbone = dataclasses.replace(
        SAM_L0_BACKBONE,
        widths=(32, 64, 128, 256, 512, 1024),
        depths=depths,
        stage_kinds=("fused", "fused", "fused", "attention", "attention"),
        fewer_norm=(False, False, False, True, True),
        down_expand=(16, 16, 16, 16, 24),
        block_expand=(4, 4, 4, 4, 6),
        attn_scales=(3,),
        image_size=1024,
    )
    return SamConfig(
        backbone=backbone,
        neck_strides=(16, 32, 64),
        neck_depth=neck_depth,
        neck_expand=4,
        image_size=1024,
    )


SAM_CONFIGS: dict[str, SamConfig] = {
    "efficientvit_sam_l0": _large((1, 1, 1, 4, 4), 4),
    "efficientvit_sam_l1": _large((1, 1, 1, 6, 6), 8),
    "efficientvit_sam_l2": _large((1, 2, 2, 8, 8), 12),
    "efficientvit_sam_xl0": _xlarge((0, 1, 1, 2, 3, 3), 6),
    "efficientvit_sam_xl1": _xlarge((1, 2, 2, 4, 6, 6), 12),
}

_HUB_REPO, _HUB_FILE = MIT_HUB["sam"]  # where MIT publishes the checkpoints (data, in data.tags)
for _name, _cfg in SAM_CONFIGS.items():
    register(
        ModelEntry(
            name=_name,
            family="mit",
            config=_cfg,
            module=EfficientViTSam,
            # MIT's checkpoints are the family's only published format: both loaders read them
            convert=sam_from_mit,
            mit_convert=sam_from_mit,
            task="sam",
            hf_hub_id=_HUB_REPO,
            hf_hub_filename=_HUB_FILE.format(variant=_name.rsplit("_", 1)[1]),
        )
    )
