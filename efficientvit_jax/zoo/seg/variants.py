"""The 11 EfficientViT-Seg models MIT publishes, registered as ``efficientvit_seg_<b>_<dataset>``.

Heads as MIT's ``efficientvit_seg_{b0..l2}(dataset)`` build them; backbones as timm's
``efficientvit_{b0..l2}`` (MIT's code, ported) with MIT's LiteMLA epsilon; mIoU as MIT prints
it for its released checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from efficientvit_jax.data.tags import MIT_HUB
from efficientvit_jax.zoo import mit  # noqa: F401  (registers the backbones' variants)
from efficientvit_jax.zoo.registry import ModelEntry, get_config, register
from efficientvit_jax.zoo.seg.convert import seg_from_mit
from efficientvit_jax.zoo.seg.model import MIT_ATTN_EPS, EfficientViTSeg, SegConfig

# MIT's heads (``efficientvit_seg_{b0..l2}``): ``SegConfig(backbone, **SEG_HEADS[(b, dataset)])``
# (every field given: SegConfig's defaults are B0's head).
SEG_HEADS: dict[tuple[str, str], dict[str, Any]] = {
    ("efficientvit_b0", "cityscapes"): dict(
        num_classes=19, head_width=32, head_depth=1, final_expand=4
    ),
    ("efficientvit_b1", "cityscapes"): dict(
        num_classes=19, head_width=64, head_depth=3, final_expand=4
    ),
    ("efficientvit_b1", "ade20k"): dict(
        num_classes=150, head_width=64, head_depth=3, final_expand=None
    ),
    ("efficientvit_b2", "cityscapes"): dict(
        num_classes=19, head_width=96, head_depth=3, final_expand=4
    ),
    ("efficientvit_b2", "ade20k"): dict(
        num_classes=150, head_width=96, head_depth=3, final_expand=None
    ),
    ("efficientvit_b3", "cityscapes"): dict(
        num_classes=19, head_width=128, head_depth=3, final_expand=4
    ),
    ("efficientvit_b3", "ade20k"): dict(
        num_classes=150, head_width=128, head_depth=3, final_expand=None
    ),
    ("efficientvit_l1", "cityscapes"): dict(
        num_classes=19,
        head_width=256,
        head_depth=3,
        expand_ratio=1,
        middle_op="fused",
        final_expand=None,
    ),
    ("efficientvit_l1", "ade20k"): dict(
        num_classes=150, head_width=128, head_depth=3, middle_op="fused", final_expand=8
    ),
    ("efficientvit_l2", "cityscapes"): dict(
        num_classes=19,
        head_width=256,
        head_depth=5,
        expand_ratio=1,
        middle_op="fused",
        final_expand=None,
    ),
    ("efficientvit_l2", "ade20k"): dict(
        num_classes=150, head_width=128, head_depth=3, middle_op="fused", final_expand=8
    ),
}
# mIoU (%) of MIT's released checkpoints: Cityscapes val at 1024x2048, ADE20K val with the
# shorter side at 512.
MIOU_SOURCE = "mit-han-lab/efficientvit assets/eval_efficientvit_seg_model.sh"
MIOU: dict[tuple[str, str], float] = {
    ("efficientvit_b0", "cityscapes"): 75.653,
    ("efficientvit_b1", "cityscapes"): 80.547,
    ("efficientvit_b2", "cityscapes"): 82.073,
    ("efficientvit_b3", "cityscapes"): 83.016,
    ("efficientvit_l1", "cityscapes"): 82.716,
    ("efficientvit_l2", "cityscapes"): 83.228,
    ("efficientvit_b1", "ade20k"): 42.840,
    ("efficientvit_b2", "ade20k"): 45.941,
    ("efficientvit_b3", "ade20k"): 49.013,
    ("efficientvit_l1", "ade20k"): 49.191,
    ("efficientvit_l2", "ade20k"): 50.702,
}


def seg_name(backbone: str, dataset: str) -> str:
    """``("efficientvit_b0", "cityscapes")`` -> ``"efficientvit_seg_b0_cityscapes"``."""
    return backbone.replace("efficientvit_", "efficientvit_seg_") + f"_{dataset}"


def seg_config(backbone: str, dataset: str) -> SegConfig:
    """The published variant's config: timm's backbone config with MIT's attention epsilon."""
    bcfg = dataclasses.replace(get_config(backbone), attn_eps=MIT_ATTN_EPS)
    return SegConfig(bcfg, **SEG_HEADS[(backbone, dataset)])


_HUB_REPO, _HUB_FILE = MIT_HUB["seg"]  # where MIT publishes the checkpoints (data, in data.tags)
for _backbone, _dataset in SEG_HEADS:
    register(
        ModelEntry(
            name=seg_name(_backbone, _dataset),
            family="mit",
            config=seg_config(_backbone, _dataset),
            module=EfficientViTSeg,
            # MIT's checkpoints are the family's only published format: both loaders read them
            convert=seg_from_mit,
            mit_convert=seg_from_mit,
            task="segmentation",
            dataset=_dataset,
            miou=MIOU[(_backbone, _dataset)],
            miou_source=MIOU_SOURCE,
            backbone=_backbone,
            hf_hub_id=_HUB_REPO,
            hf_hub_filename=_HUB_FILE.format(variant=_backbone.split("_")[-1], dataset=_dataset),
        )
    )
