"""Images to model inputs, equal to timm's evaluation transform.

``resolve_data_config("efficientvit_b1.r288_in1k")`` gives the tag's data config and
``create_transform(config)`` a callable from a file path, a PIL image or a uint8 array to the
float32 input of the model. The steps are timm's ``transforms_imagenet_eval`` with
torchvision's PIL semantics, written with PIL and NumPy: the shorter side resized to
``floor(size / crop_pct)`` with PIL's own resampling (so the pixels are PIL's, not an
approximation), a centre crop (zero-padded where the image is smaller), ``/ 255``, then
``(x - mean) / std``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from efficientvit_jax.data.image import (  # also reachable as data.transforms.*
    INTERPOLATIONS,
    center_crop,
    load_image,
    normalize,
    resampling,
    resize_shorter,
)
from efficientvit_jax.data.tags import get_tag

CROP_MODES = ("center", "squash")
DATA_FORMATS = ("NCHW", "NHWC")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How images are prepared for a model (timm's ``data_config`` keys, plus the layout).

    ``to_dict()`` gives timm's dict (``input_size``, ``interpolation``, ``mean``, ``std``,
    ``crop_pct``, ``crop_mode``).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    crop_mode: str = "center"
    data_format: str = "NCHW"

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.input_size)
        object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        _check(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("data_format")
        return d

    @property
    def image_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]


def _check(c: DataConfig) -> None:
    def need(ok: bool, field: str, rule: str, value: Any) -> None:
        if not ok:
            raise ValueError(f"data config {field} must be {rule}, got {value!r}")

    need(
        len(c.input_size) == 3 and min(c.input_size) >= 1,
        "input_size",
        "(C, H, W) >= 1",
        c.input_size,
    )
    # 1 channel: grey models (the digits job); images are read as luminance.
    need(c.input_size[0] in (1, 3), "input_size", "1 (grey) or 3 (RGB) channels", c.input_size)
    need(
        c.interpolation in INTERPOLATIONS,
        "interpolation",
        f"one of {INTERPOLATIONS}",
        c.interpolation,
    )
    need(c.crop_mode in CROP_MODES, "crop_mode", f"one of {CROP_MODES}", c.crop_mode)
    need(c.data_format in DATA_FORMATS, "data_format", f"one of {DATA_FORMATS}", c.data_format)
    need(math.isfinite(c.crop_pct) and c.crop_pct > 0, "crop_pct", "a number > 0", c.crop_pct)
    n = c.input_size[0]
    need(len(c.mean) == n and len(c.std) == n, "mean/std", f"{n} values each", (c.mean, c.std))
    need(all(s > 0 for s in c.std), "std", "> 0", c.std)
    if c.crop_mode == "center":
        need(
            c.input_size[1] == c.input_size[2],
            "input_size",
            "square for crop_mode 'center'",
            c.input_size,
        )


def resolve_data_config(name_or_tag: str, **overrides: Any) -> DataConfig:
    """The data config of a pretrained tag (a bare model name means its first tag).

    Overrides replace fields: ``input_size`` (an int, ``(H, W)`` or ``(C, H, W)``),
    ``crop_pct``, ``interpolation``, ``mean``, ``std``, ``crop_mode``, ``data_format``.
    """
    t = get_tag(name_or_tag)
    base = DataConfig(t.input_size, t.interpolation, t.mean, t.std, t.crop_pct, t.crop_mode)
    fields = {f.name for f in dataclasses.fields(DataConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown data config option(s) {unknown}; options: {sorted(fields)}")
    if "input_size" in overrides:
        s = overrides["input_size"]
        s = (s, s) if isinstance(s, int) else tuple(s)
        overrides["input_size"] = s if len(s) == 3 else (3, *s)
    return dataclasses.replace(base, **overrides)


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """``source -> float32`` model input (``[C, H, W]`` or ``[H, W, C]``); see the module."""

    config: DataConfig

    def resize_and_crop(self, img: Any) -> np.ndarray:
        """The uint8 ``[H, W, 3]`` crop, before normalisation."""
        c = self.config
        h, w = c.image_size
        if c.crop_mode == "squash":
            size = (math.floor(w / c.crop_pct), math.floor(h / c.crop_pct))
            if img.size != size:
                img = img.resize(size, resampling(c.interpolation))
        else:
            img = resize_shorter(img, math.floor(h / c.crop_pct), c.interpolation)
        arr = np.asarray(img)
        return center_crop(arr[..., None] if arr.ndim == 2 else arr, h, w)

    def __call__(self, source: Any) -> np.ndarray:
        img = load_image(source)
        if self.config.input_size[0] == 1:
            img = img.convert("L")  # PIL's ITU-R 601 luma
        x = normalize(self.resize_and_crop(img), self.config.mean, self.config.std)
        return np.ascontiguousarray(
            x.transpose(2, 0, 1) if self.config.data_format == "NCHW" else x
        )


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """``(source, rng) -> float32`` model input: a training augmentation (``data.augment``)
    in the config's layout. Batch mixing (``strong``'s mixup/cutmix) is ``augment.mix``."""

    config: DataConfig
    augment: Any

    def __call__(self, source: Any, rng: np.random.Generator) -> np.ndarray:
        x = self.augment(load_image(source), rng)
        return np.ascontiguousarray(
            x.transpose(2, 0, 1) if self.config.data_format == "NCHW" else x
        )


def create_transform(config: DataConfig, train: bool = False, **train_options: Any) -> Callable:
    """The transform of ``config``: evaluation (resize, centre crop, normalise) by default;
    ``train=True`` gives a ``TrainTransform`` of ``data.augment.build_augment``
    (``level="light"`` by default; ``"strong"`` takes ``num_classes`` and ``recipe``)."""
    if not train:
        if train_options:
            raise ValueError(f"options {sorted(train_options)} apply to train=True only")
        return EvalTransform(config)
    from efficientvit_jax.data.augment import build_augment_from_config

    level = train_options.pop("level", "light")
    return TrainTransform(config, build_augment_from_config(level, config, **train_options))
