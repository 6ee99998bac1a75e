"""Pretrained tags: timm's names for the published weights and the data config of each.

``efficientvit_b1.r288_in1k`` is the architecture ``efficientvit_b1`` with weights trained
and evaluated at 288 px on ImageNet-1k. The values are timm 1.0's ``pretrained_cfg`` of each
tag (``timm/models/efficientvit_mit.py`` and ``efficientvit_msra.py``, ``default_cfgs``),
written out as data; a test compares them with timm's. The published top-1 figures live here
and nowhere else, each with its source (the zoo's ``ModelEntry.top1`` is the default tag's).
This module imports nothing of the package, so the model registry can read it without a cycle.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm.data.IMAGENET_DEFAULT_MEAN
IMAGENET_STD = (0.229, 0.224, 0.225)  # timm.data.IMAGENET_DEFAULT_STD

_MIT_EVAL = (
    "mit-han-lab/efficientvit assets/eval_efficientvit_cls_model.sh, --model {}-r{} --image_size "
    "{} (the MIT repository's own eval and preprocessing; crop ratio: {})"
)
_MSRA_ZOO = "microsoft/Cream EfficientViT/classification/README.md (model zoo, 224 px)"


@dataclasses.dataclass(frozen=True)
class PretrainedTag:
    """One set of published weights and how its images must be prepared.

    Attributes:
      model: the architecture's name, e.g. ``"efficientvit_b1"``.
      tag: the weights' tag, e.g. ``"r288_in1k"``.
      input_size: ``(channels, height, width)`` the weights were evaluated at.
      crop_pct: the centre crop's share of the resized image (timm's ``crop_pct``).
      interpolation: PIL resampling of the resize (``"bicubic"`` for every tag here).
      mean, std: per-channel normalisation of ``[0, 1]`` pixels.
      num_classes: classifier outputs (1000: ImageNet-1k).
      crop_mode: timm's ``crop_mode`` (``"center"``).
      top1: published ImageNet-1k top-1 (%), or ``None`` where no source gives one.
      top1_source: where ``top1`` is quoted from.
      hf_hub_id: the Hugging Face Hub repository of the weights (``None``: none published).
      hf_hub_filename: the file in that repository (timm's ``model.safetensors``).
    """

    model: str
    tag: str
    input_size: tuple[int, int, int]
    crop_pct: float
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    crop_mode: str = "center"
    top1: float | None = None
    top1_source: str | None = None
    hf_hub_id: str | None = None
    hf_hub_filename: str = "model.safetensors"

    @property
    def name(self) -> str:
        """``"model.tag"``, the name ``create_model`` and the CLI take."""
        return f"{self.model}.{self.tag}"

    @property
    def image_size(self) -> int:
        return self.input_size[1]


def _mit(model: str, res: int, crop_pct: float, top1: float | None, crop_ratio: str = "1.0"):
    # timm's crop_pct (0.95 at 224 px for B0-B3) is what this package reproduces; the
    # MIT script passes --crop_ratio 1.0 for B2, B3 and L, and nothing (its default) for B1.
    src = None
    if top1 is not None:
        src = _MIT_EVAL.format(model.replace("_", "-"), res, res, crop_ratio)
    tag = f"r{res}_in1k"
    return PretrainedTag(
        model, tag, (3, res, res), crop_pct, top1=top1, top1_source=src, hf_hub_id=_timm(model, tag)
    )


def _msra(model: str, top1: float) -> PretrainedTag:
    return PretrainedTag(
        model, "r224_in1k", (3, 224, 224), 0.875, top1=top1, top1_source=_MSRA_ZOO,
        hf_hub_id=_timm(model, "r224_in1k"),
    )  # fmt: skip


def _timm(model: str, tag: str) -> str:
    # timm publishes every tag as its own repository holding ``model.safetensors``
    # (``pretrained_cfg.hf_hub_id``, e.g. ``timm/efficientvit_b1.r288_in1k``).
    return f"timm/{model}.{tag}"


# MIT's own checkpoints on the Hub, for the issues that will read them (their conversion is
# not written yet, so no tag points at them): segmentation ``efficientvit_seg_<variant>_
# <dataset>.pt``, SAM ``efficientvit_sam_<variant>.pt``, classification.
MIT_HUB = {
    "seg": ("han-cai/efficientvit-seg", "efficientvit_seg_{variant}_{dataset}.pt"),
    "sam": ("mit-han-lab/efficientvit-sam", "efficientvit_sam_{variant}.pt"),
    "cls": ("han-cai/efficientvit-cls", None),
}


# In timm's order: a bare model name means its first tag, as in timm.
_ALL = (
    # B0's weights have no published top-1 in the MIT eval script.
    _mit("efficientvit_b0", 224, 0.95, None),
    _mit("efficientvit_b1", 224, 0.95, 79.390, "default"),
    _mit("efficientvit_b1", 256, 1.0, 79.918, "default"),
    _mit("efficientvit_b1", 288, 1.0, 80.410, "default"),
    _mit("efficientvit_b2", 224, 0.95, 82.100),
    _mit("efficientvit_b2", 256, 1.0, 82.698),
    _mit("efficientvit_b2", 288, 1.0, 83.086),
    _mit("efficientvit_b3", 224, 0.95, 83.468),
    _mit("efficientvit_b3", 256, 1.0, 83.806),
    _mit("efficientvit_b3", 288, 1.0, 84.150),
    _mit("efficientvit_l1", 224, 1.0, 84.484),
    _mit("efficientvit_l2", 224, 1.0, 85.050),
    _mit("efficientvit_l2", 256, 1.0, 85.366),
    _mit("efficientvit_l2", 288, 1.0, 85.630),
    _mit("efficientvit_l2", 384, 1.0, 85.978),
    _mit("efficientvit_l3", 224, 1.0, 85.814),
    _mit("efficientvit_l3", 256, 1.0, 85.938),
    _mit("efficientvit_l3", 320, 1.0, 86.230),
    _mit("efficientvit_l3", 384, 1.0, 86.408),
    _msra("efficientvit_m0", 63.2),
    _msra("efficientvit_m1", 68.4),
    _msra("efficientvit_m2", 70.8),
    _msra("efficientvit_m3", 73.4),
    _msra("efficientvit_m4", 74.3),
    _msra("efficientvit_m5", 77.1),
)
TAGS: dict[str, PretrainedTag] = {t.name: t for t in _ALL}


def split_name(name: str) -> tuple[str, str | None]:
    """``"efficientvit_b1.r288_in1k"`` -> ``("efficientvit_b1", "r288_in1k")``; a bare name
    gives ``(name, None)``."""
    model, _, tag = name.partition(".")
    return model, (tag or None)


def tagged_models() -> list[str]:
    """The architectures that have tags, in timm's order."""
    return list(dict.fromkeys(t.model for t in _ALL))


def list_tags(pattern: str = "*") -> list[str]:
    """Pretrained tags matching a shell-style pattern, in timm's order."""
    return [n for n in TAGS if fnmatch.fnmatch(n, pattern)]


def get_tag(name: str) -> PretrainedTag:
    """The tag ``name`` names; a bare model name means its first tag.

    An unknown tag raises ``ValueError`` listing the model's tags (or all of them).
    """
    model, tag = split_name(name)
    if tag is None:
        for t in _ALL:
            if t.model == model:
                return t
    elif name in TAGS:
        return TAGS[name]
    own = [n for n in TAGS if n.startswith(model + ".")]
    if not own:
        raise unknown_model(name)
    raise ValueError(f"unknown pretrained tag {name!r}; known: {', '.join(own)}")


def unknown_model(name: str, models: Iterable[str] | None = None) -> ValueError:
    """The error of every command and function for a name that is neither a zoo model nor a
    pretrained tag: both lists, so that each says the same. ``models``: the zoo's names
    (the registry passes its own; by default the architectures that have tags)."""
    if models is None:
        models = tagged_models()
    return ValueError(
        f"unknown model {split_name(name)[0]!r}; zoo models: {', '.join(sorted(models))}; "
        f"pretrained tags: {', '.join(TAGS)}"
    )
