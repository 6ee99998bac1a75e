"""Training augmentations on the host (NumPy and PIL), per image in the loader's workers.

Every random choice comes from an explicit ``np.random.Generator``: the same generator
state gives the same output, so ``image_rng(seed, epoch, index)`` makes an epoch's images
a function of ``(seed, epoch)`` whatever the number of workers. The operations follow
timm's definitions (``timm.data``: ``RandomResizedCropAndInterpolation``,
``auto_augment.rand_augment_transform``, ``RandomErasing``, ``Mixup``), written here
anew, without torch and without Python's global ``random``.

Three levels, as ``efficientvit-jax train --augment`` names them (``build_augment``):

- ``none``: resize the shorter side to ``size / crop_pct`` and crop the centre (timm's
  eval transform);
- ``light``: random resized crop and horizontal flip;
- ``strong``: a paper's ImageNet recipe (``RECIPES``; every value quoted with its source):
  random resized crop, flip, RandAugment, random erasing, and mixup/cutmix with label
  smoothing on the batch (``TrainAugment.mix``).

Images go in as PIL images (any mode; converted to RGB) and come out as float32 HxWxC
arrays normalised with the model's mean and std.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from efficientvit_jax.data.image import center_crop, normalize, resampling, resize_shorter

Interpolation = str | Sequence[str]

# timm's "random" interpolation draws one of these two per image.
_TIMM_RANDOM = ("bilinear", "bicubic")


def image_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for image ``index`` of ``epoch``: independent of the worker that
    decodes it and of the order in which images are processed."""
    return np.random.default_rng([seed, epoch, index, 0])


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator for batch ``batch`` of ``epoch`` (mixup/cutmix); its stream is
    distinct from every ``image_rng`` (last entropy word 1, not 0)."""
    return np.random.default_rng([seed, epoch, batch, 1])


def resample(interpolation: Interpolation, rng: np.random.Generator | None = None) -> int:
    """The PIL filter for a name, or for one drawn from a sequence of names (``"random"``
    is timm's bilinear-or-bicubic)."""
    if isinstance(interpolation, str) and interpolation == "random":
        interpolation = _TIMM_RANDOM
    if not isinstance(interpolation, str):
        if rng is None:
            raise ValueError("a random interpolation needs a generator")
        interpolation = interpolation[int(rng.integers(len(interpolation)))]
    return resampling(interpolation)


# ------------------------------------------------------------------- geometry, pixels


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop covering a ``scale`` fraction of the image with
    aspect ratio (w/h) in ``ratio``, as timm's ``RandomResizedCropAndInterpolation``: ten
    tries (area uniform, aspect log-uniform), then the centre crop of the whole image
    clamped to ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(
    img: Image.Image,
    size: tuple[int, int],
    rng: np.random.Generator,
    interpolation: Interpolation = "bicubic",
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """A random crop (``random_resized_crop_box``) resized to ``size`` = (height, width)."""
    top, left, h, w = random_resized_crop_box(img.width, img.height, rng, scale, ratio)
    # Crop, then resize (torchvision's resized_crop): resize(box=...) would let the filter
    # read pixels outside the box.
    crop = img.crop((left, top, left + w, top + h))
    return crop.resize((size[1], size[0]), resample(interpolation, rng))


def horizontal_flip(img: Image.Image, rng: np.random.Generator, p: float = 0.5) -> Image.Image:
    """Mirror left-right with probability ``p``."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < p else img


def resize_center_crop(
    img: Image.Image, size: tuple[int, int], crop_pct: float, interpolation: str = "bicubic"
) -> Image.Image:
    """timm's eval transform for a square ``size``: shorter side to
    ``floor(size / crop_pct)`` (the longer side in proportion, truncated as torchvision
    does), then the centre ``size`` crop. (For a non-square size timm matches the shorter
    side of the ratio instead; the shorter image side is used here.)"""
    img = resize_shorter(img, math.floor(min(size) / crop_pct), interpolation)
    return Image.fromarray(center_crop(np.asarray(img), *size))


def to_normalized(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """float32 HxWxC: pixels / 255, minus ``mean``, over ``std`` (per channel)."""
    pixels = np.asarray(img)
    return normalize(pixels[:, :, None] if pixels.ndim == 2 else pixels, mean, std)


def random_erasing(
    x: np.ndarray,
    rng: np.random.Generator,
    p: float = 0.25,
    mode: str = "pixel",
    area: tuple[float, float] = (0.02, 1 / 3),
    min_aspect: float = 0.3,
    count: int = 1,
) -> np.ndarray:
    """timm's ``RandomErasing`` on a normalised HxWxC array (a copy is returned).

    With probability ``p``, ``count`` rectangles (each of ``area`` fraction / count,
    aspect log-uniform in [min_aspect, 1/min_aspect], ten tries each) are filled with
    standard normal noise per pixel and channel (``"pixel"``), per channel (``"rand"``),
    or zeros (``"const"``): noise on the normalised scale, like the images' own values.
    """
    if mode not in ("pixel", "rand", "const"):
        raise ValueError(f"random erasing mode must be pixel, rand or const, got {mode!r}")
    if rng.random() >= p:
        return x
    x = x.copy()
    height, width, chans = x.shape
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(count):
        for _ in range(10):
            target = rng.uniform(*area) * height * width / count
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(target * aspect))
            w = round(math.sqrt(target / aspect))
            if w < width and h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                shape = {"pixel": (h, w, chans), "rand": (1, 1, chans)}.get(mode)
                fill = 0.0 if shape is None else rng.standard_normal(shape, np.float32)
                x[top : top + h, left : left + w] = fill
                break
    return x


# ----------------------------------------------------------------------- RandAugment

_LEVEL_DENOM = 10.0  # timm: magnitude M of "rand-mM" is a level out of 10


def _affine(img: Image.Image, matrix: tuple[float, ...], ctx: dict[str, Any]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, **ctx)


def _solarize_add(img: Image.Image, add: int) -> Image.Image:
    lut = [min(255, i + add) if i < 128 else i for i in range(256)]
    return img.point(lut * len(img.getbands()))


def _posterize(img: Image.Image, bits: int) -> Image.Image:
    if bits >= 8:
        return img
    if bits <= 0:
        # PosterizeIncreasing at M >= 10 keeps no bit: black, as ImageOps.posterize gave
        # before Pillow started refusing bits=0 (timm's own op raises there now).
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits)


def _enhance(kind: type) -> Callable[[Image.Image, float, dict[str, Any]], Image.Image]:
    return lambda img, f, ctx: kind(img).enhance(f)


# name -> (operation(img, argument, ctx), level(magnitude) -> argument, signed).
# The levels are timm's ``LEVEL_TO_ARG`` (auto_augment.py); "signed" ops negate their
# argument with probability 1/2. ctx carries the resampling filter and the fill colour.
RAND_AUGMENT_OPS: dict[str, tuple[Callable[..., Image.Image], Callable[[float], Any], bool]] = {
    "AutoContrast": (lambda img, _, ctx: ImageOps.autocontrast(img), lambda m: None, False),
    "Equalize": (lambda img, _, ctx: ImageOps.equalize(img), lambda m: None, False),
    "Invert": (lambda img, _, ctx: ImageOps.invert(img), lambda m: None, False),
    "Rotate": (lambda img, deg, ctx: img.rotate(deg, **ctx), lambda m: m / 10 * 30.0, True),
    "Posterize": (lambda img, b, ctx: _posterize(img, b), lambda m: int(m / 10 * 4), False),
    "PosterizeIncreasing": (
        lambda img, b, ctx: _posterize(img, b),
        lambda m: 4 - int(m / 10 * 4),
        False,
    ),
    "Solarize": (
        lambda img, t, ctx: ImageOps.solarize(img, t),
        lambda m: min(256, int(m / 10 * 256)),
        False,
    ),
    "SolarizeIncreasing": (
        lambda img, t, ctx: ImageOps.solarize(img, t),
        lambda m: 256 - min(256, int(m / 10 * 256)),
        False,
    ),
    "SolarizeAdd": (
        lambda img, a, ctx: _solarize_add(img, a),
        lambda m: min(128, int(m / 10 * 110)),
        False,
    ),
    "ShearX": (
        lambda img, f, ctx: _affine(img, (1, f, 0, 0, 1, 0), ctx),
        lambda m: m / 10 * 0.3,
        True,
    ),
    "ShearY": (
        lambda img, f, ctx: _affine(img, (1, 0, 0, f, 1, 0), ctx),
        lambda m: m / 10 * 0.3,
        True,
    ),
    "TranslateXRel": (
        lambda img, pct, ctx: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0), ctx),
        lambda m: m / 10 * 0.45,
        True,
    ),
    "TranslateYRel": (
        lambda img, pct, ctx: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]), ctx),
        lambda m: m / 10 * 0.45,
        True,
    ),
}
for _name, _kind in [
    ("Color", ImageEnhance.Color),
    ("Contrast", ImageEnhance.Contrast),
    ("Brightness", ImageEnhance.Brightness),
    ("Sharpness", ImageEnhance.Sharpness),
]:
    # Plain: factor in [0.1, 1.9] rising with M (M=5 is no change). Increasing: the
    # distance from 1 (no change) rises with M, either way.
    RAND_AUGMENT_OPS[_name] = (_enhance(_kind), lambda m: m / 10 * 1.8 + 0.1, False)
    RAND_AUGMENT_OPS[f"{_name}Increasing"] = (_enhance(_kind), lambda m: m / 10 * 0.9, True)

# timm's ``_RAND_TRANSFORMS`` and ``_RAND_INCREASING_TRANSFORMS`` ("inc1"), in its order.
RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)  # fmt: skip
RAND_INCREASING_TRANSFORMS = tuple(
    f"{n}Increasing" if n in ("Posterize", "Solarize", "Color", "Contrast", "Brightness",
                              "Sharpness") else n
    for n in RAND_TRANSFORMS
)  # fmt: skip


def apply_op(
    img: Image.Image,
    name: str,
    magnitude: float,
    *,
    negate: bool = False,
    interpolation: str = "bicubic",
    fill: tuple[int, ...] = (128, 128, 128),
) -> Image.Image:
    """One RandAugment operation at ``magnitude`` (0..10), its random parts given:
    ``negate`` flips the direction of the signed ones (rotate, shear, translate, and the
    increasing enhancements, which then weaken instead of strengthen)."""
    op, level, signed = RAND_AUGMENT_OPS[name]
    arg = level(magnitude)
    if signed and negate:
        arg = -arg
    if name.endswith("Increasing") and name[: -len("Increasing")] in (
        "Color", "Contrast", "Brightness", "Sharpness",
    ):  # fmt: skip
        arg = max(0.1, 1.0 + arg)  # timm keeps the factor >= 0.1
    ctx = {"resample": resample(interpolation), "fillcolor": fill}
    return op(img, arg, ctx)


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """timm's RandAugment options (``parse_rand_augment("rand-m9-mstd0.5-inc1")``).

    Attributes:
      magnitude: M, the level out of 10 of every operation.
      num_layers: N, operations drawn (with replacement) per image.
      prob: probability that each drawn operation is applied.
      magnitude_std: per application, M is drawn from N(M, std) (``inf``: uniform in
        [0, M]) and clipped to [0, magnitude_max].
      magnitude_max: upper clip of the drawn magnitude.
      increasing: timm's "inc1" set, whose every op grows stronger with M.
    """

    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = _LEVEL_DENOM
    increasing: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        return RAND_INCREASING_TRANSFORMS if self.increasing else RAND_TRANSFORMS


def parse_rand_augment(spec: str) -> RandAugmentConfig:
    """timm's config string: ``rand`` then ``-``-separated ``m`` (magnitude), ``n``
    (layers), ``p`` (prob), ``mstd`` (> 100 means uniform), ``mmax``, ``inc``."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec must start with 'rand', got {spec!r}")
    values: dict[str, Any] = {}
    keys = {"m": "magnitude", "n": "num_layers", "p": "prob", "mstd": "magnitude_std"}
    keys |= {"mmax": "magnitude_max", "inc": "increasing"}
    for part in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(\d.*)", part)
        if m is None or m.group(1) not in keys:
            raise ValueError(f"unknown RandAugment option {part!r} in {spec!r}")
        key, val = keys[m.group(1)], float(m.group(2))
        if key == "magnitude_std" and val > 100:
            val = math.inf
        values[key] = int(val) if key == "num_layers" else bool(val) if key == "increasing" else val
    return RandAugmentConfig(**values)


def rand_augment(
    img: Image.Image,
    rng: np.random.Generator,
    config: RandAugmentConfig,
    *,
    interpolation: str = "bicubic",
    fill: tuple[int, ...] = (128, 128, 128),
) -> Image.Image:
    """RandAugment as timm's ``RandAugment``/``AugmentOp``: ``num_layers`` ops drawn with
    replacement; each applied with ``prob``, at a magnitude drawn around M, in a random
    direction where the op has one."""
    ops = config.ops
    for i in rng.integers(len(ops), size=config.num_layers):
        if config.prob < 1.0 and rng.random() >= config.prob:
            continue
        m = config.magnitude
        if config.magnitude_std == math.inf:
            m = rng.uniform(0, m)
        elif config.magnitude_std > 0:
            m = rng.normal(m, config.magnitude_std)
        m = min(max(m, 0.0), config.magnitude_max)
        negate = bool(rng.random() < 0.5)
        img = apply_op(img, ops[i], m, negate=negate, interpolation=interpolation, fill=fill)
    return img


# ----------------------------------------------------------------- mixup and cutmix


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """float32 (N, num_classes): ``1 - smoothing + smoothing/K`` on the label,
    ``smoothing/K`` elsewhere (rows sum to 1)."""
    off = smoothing / num_classes
    out = np.full((len(labels), num_classes), off, np.float32)
    out[np.arange(len(labels)), np.asarray(labels)] = 1.0 - smoothing + off
    return out


@dataclasses.dataclass(frozen=True)
class Mixup:
    """timm's ``Mixup`` in its per-batch mode, on NHWC arrays.

    Each batch, with probability ``prob``: cutmix (if both are enabled, with probability
    ``switch_prob``) or mixup, with ``lam ~ Beta(alpha, alpha)``; image ``i`` is mixed
    with image ``N-1-i`` (the batch reversed) and its target becomes
    ``lam * smooth(y_i) + (1 - lam) * smooth(y_{N-1-i})``. For cutmix a box of area
    fraction ``1 - lam`` (centre uniform, clipped at the borders) is pasted, and lam is
    corrected to the area actually pasted.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("mixup and cutmix alphas must be >= 0")

    def params(self, rng: np.random.Generator) -> tuple[float, bool]:
        """``(lam, use_cutmix)`` for one batch (``lam == 1``: no mixing)."""
        on = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        if not on or rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cut = bool(rng.random() < self.switch_prob)
        else:
            cut = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if cut else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), cut

    def __call__(
        self, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mixed float32 images (N, H, W, C) and soft float32 targets (N, num_classes)."""
        lam, cut = self.params(rng)
        images = np.array(images, np.float32)  # a copy: the loader may reuse its buffer
        flipped = images[::-1]
        if cut and lam < 1.0:
            top, bottom, left, right = cutmix_box(images.shape[1], images.shape[2], lam, rng)
            images[:, top:bottom, left:right] = flipped[:, top:bottom, left:right].copy()
            lam = 1.0 - (bottom - top) * (right - left) / (images.shape[1] * images.shape[2])
        elif lam < 1.0:
            images = lam * images + (1.0 - lam) * flipped
        y = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        return images.astype(np.float32), (lam * y + (1.0 - lam) * y[::-1]).astype(np.float32)


def cutmix_box(
    height: int, width: int, lam: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of timm's ``rand_bbox``: sides ``sqrt(1 - lam)`` of
    the image's, centre uniform over the image, clipped to it."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, height)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, width)
    return int(top), int(bottom), int(left), int(right)


# -------------------------------------------------------------------- the recipes

# The MIT recipe's draw list (every filter, in the recipe's order), not a table of names
# (that is data.image.INTERPOLATIONS): a draw picks by position, so the order fixes the images.
_MIT_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The augmentation part of a training recipe (``strong``).

    Attributes:
      rand_augment: timm RandAugment spec, or ``None``.
      train_interpolation: the random resized crop's filter (a name, or names to draw
        from per image); ``None``: the model's data config's.
      re_prob, re_mode: random erasing probability and fill (``pixel``/``rand``/``const``).
      mixup_alpha, cutmix_alpha, mix_prob, switch_prob, label_smoothing: ``Mixup``'s.
      hflip: horizontal flip probability.
      scale, ratio: the random resized crop's area fraction and aspect ranges.
    """

    rand_augment: str | None
    train_interpolation: Interpolation | None
    re_prob: float
    re_mode: str
    mixup_alpha: float
    cutmix_alpha: float
    mix_prob: float
    switch_prob: float
    label_smoothing: float
    hflip: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


def _mit(randaug_n: int, randaug_m: int, alpha: float, erase: float) -> Recipe:
    """mit-han-lab/efficientvit: configs/cls/imagenet/default.yaml overlaid by the model's
    yaml, as built by efficientvit/clscore/data_provider/imagenet.py (train transform) and
    efficientvit/clscore/trainer/cls_trainer.py (mixup)."""
    return Recipe(
        # apps/data_provider/augment/color_aug.py RandAug: f"rand-n{n}-m{m}-mstd{mstd}-inc{inc}"
        # with mstd default 1.0, inc default 1 (translate 0.45, the timm default).
        rand_augment=f"rand-n{randaug_n}-m{randaug_m}-mstd1.0-inc1",
        # default.yaml rrc_config.train_interpolate: random; random_resolution/controller.py
        # get_interpolate("random") draws one of these six per image.
        train_interpolation=_MIT_INTERPOLATIONS,
        # imagenet.py: timm RandomErasing(p, device="cpu"), whose default mode is "const".
        re_prob=erase,
        re_mode="const",
        # run_config.mixup_config.op: [[mixup, alpha, 1.0], [cutmix, alpha, 1.0]]: the
        # third number is the weight of a per-batch choice (cls_trainer.py before_step),
        # so each batch is mixed, by one or the other with equal chance; lam ~ Beta(a, a).
        mixup_alpha=alpha,
        cutmix_alpha=alpha,
        mix_prob=1.0,
        switch_prob=0.5,
        # default.yaml run_config.label_smooth: 0.1, applied before mixing.
        label_smoothing=0.1,
        # imagenet.py: MyRandomResizedCrop (torchvision's scale/ratio defaults) then
        # transforms.RandomHorizontalFlip() (p=0.5).
    )


# Every value with its source. MSRA: microsoft/Cream EfficientViT/classification/main.py
# get_args_parser() defaults (--aa rand-m9-mstd0.5-inc1, --train-interpolation bicubic,
# --reprob 0.25, --remode pixel, --recount 1, --mixup 0.8, --cutmix 1.0, --mixup-prob 1.0,
# --mixup-switch-prob 0.5, --mixup-mode batch, --smoothing 0.1), passed to timm's
# create_transform in data/datasets.py build_transform (hflip 0.5, RRC scale (0.08, 1)
# and ratio (3/4, 4/3) by timm's defaults; its --color-jitter 0.4 is unused: timm applies
# color jitter only without auto-augment) and Mixup in main.py (the DeiT recipe).
# MIT: see _mit; default.yaml: randaug n1 m3, mixup/cutmix alpha 0.1, no erasing (b1.yaml
# and b2.yaml change none of these; there is no b0.yaml, so b0 takes default.yaml);
# b3.yaml: randaug n2 m6, alpha 0.3; l1.yaml: n2 m5, erase p 0.2, alpha 0.2; l2.yaml: n2 m5,
# erase 0.2, alpha 0.4; l3.yaml: n2 m6, erase 0.2, alpha 0.6.
RECIPES: dict[str, Recipe] = {
    "msra": Recipe(
        rand_augment="rand-m9-mstd0.5-inc1",
        train_interpolation="bicubic",
        re_prob=0.25,
        re_mode="pixel",
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        mix_prob=1.0,
        switch_prob=0.5,
        label_smoothing=0.1,
    ),
    "mit_default": _mit(1, 3, 0.1, 0.0),
    "mit_b3": _mit(2, 6, 0.3, 0.0),
    "mit_l1": _mit(2, 5, 0.2, 0.2),
    "mit_l2": _mit(2, 5, 0.4, 0.2),
    "mit_l3": _mit(2, 6, 0.6, 0.2),
}


def recipe_for_model(name: str) -> str:
    """The ``RECIPES`` key of the paper that trained ``name`` (a zoo name or tag):
    EfficientViT-M (MSRA) -> ``msra``; MIT's B/L by their yaml; anything else ``msra``
    (the DeiT recipe, the common default for ViTs trained from scratch)."""
    m = re.match(r"efficientvit_([bml])(\d)", name.split(".")[0])
    if m is None or m.group(1) == "m":
        return "msra"
    key = f"mit_{m.group(1)}{m.group(2)}"
    return key if key in RECIPES else "mit_default"


# --------------------------------------------------------------------- the levels

LEVELS = ("none", "light", "strong")


@dataclasses.dataclass(frozen=True)
class TrainAugment:
    """A level's per-image transform (``__call__``) and, for ``strong``, its batch mixing.

    Attributes:
      level: ``none``, ``light`` or ``strong``.
      size: output (height, width).
      mix: ``Mixup`` for the batch (``strong`` only; it also turns labels into soft
        targets); ``None``: integer labels stay as they are.
    """

    level: str
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: Interpolation
    crop_pct: float
    recipe: Recipe | None = None
    mix: Mixup | None = None

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        """One image -> float32 HxWxC, normalised (C: one channel for a grey config, whose
        ``mean`` has one value: the image is read as luminance, as the evaluation transform
        reads it, and augmented as an RGB image of three equal channels)."""
        grey = len(self.mean) == 1
        if grey:
            img = img.convert("L").convert("RGB")
        elif img.mode != "RGB":
            img = img.convert("RGB")
        if self.level == "none":
            interp = self.interpolation if isinstance(self.interpolation, str) else "bicubic"
            img = resize_center_crop(img, self.size, self.crop_pct, interp)
            return to_normalized(img.convert("L") if grey else img, self.mean, self.std)
        r = self.recipe or Recipe(None, None, 0.0, "pixel", 0.0, 0.0, 0.0, 0.5, 0.0)
        interp = r.train_interpolation or self.interpolation
        img = random_resized_crop(img, self.size, rng, interp, r.scale, r.ratio)
        img = horizontal_flip(img, rng, r.hflip)
        if r.rand_augment:
            # timm's hparams for ImageNet training (transforms_factory.py): fill with the
            # mean colour, and the train interpolation unless it is random (then bicubic).
            fill = tuple(min(255, round(255 * m)) for m in self.mean) * (3 if grey else 1)
            ra_interp = interp if isinstance(interp, str) and interp != "random" else "bicubic"
            cfg = parse_rand_augment(r.rand_augment)
            img = rand_augment(img, rng, cfg, interpolation=ra_interp, fill=fill)
        # equal channels: PIL's luma gives their value back exactly
        x = to_normalized(img.convert("L") if grey else img, self.mean, self.std)
        if r.re_prob > 0:
            x = random_erasing(x, rng, r.re_prob, r.re_mode)
        return x


def build_augment(
    level: str,
    *,
    input_size: Sequence[int],
    interpolation: str = "bicubic",
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    crop_pct: float = 0.875,
    num_classes: int | None = None,
    recipe: str | Recipe = "msra",
) -> TrainAugment:
    """The ``--augment`` level for a model's data config values.

    Args:
      level: ``none`` (resize + centre crop), ``light`` (random resized crop + flip) or
        ``strong`` (``recipe``: RandAugment, random erasing, mixup/cutmix + smoothing).
      input_size: (C, H, W) as in timm's data config.
      interpolation, mean, std, crop_pct: the data config's.
      num_classes: needed for ``strong`` (soft targets).
      recipe: a ``RECIPES`` key (see ``recipe_for_model``) or a ``Recipe``.
    """
    if level not in LEVELS:
        raise ValueError(f"--augment must be one of {', '.join(LEVELS)}, got {level!r}")
    size = (int(input_size[-2]), int(input_size[-1]))
    common = dict(level=level, size=size, mean=tuple(mean), std=tuple(std))
    common |= dict(interpolation=interpolation, crop_pct=float(crop_pct))
    if level != "strong":
        return TrainAugment(**common)
    r = RECIPES[recipe] if isinstance(recipe, str) else recipe
    if num_classes is None or num_classes < 1:
        raise ValueError("--augment strong needs the number of classes (soft targets)")
    mix = Mixup(
        num_classes, r.mixup_alpha, r.cutmix_alpha, r.mix_prob, r.switch_prob, r.label_smoothing
    )
    return TrainAugment(**common, recipe=r, mix=mix)


def build_augment_from_config(
    level: str, data_config: Mapping[str, Any] | Any, **kwargs: Any
) -> TrainAugment:
    """``build_augment`` with ``input_size``, ``interpolation``, ``mean``, ``std`` and
    ``crop_pct`` read from a timm-style dict or an object with those attributes."""
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct")
    if isinstance(data_config, Mapping):
        values = {k: data_config[k] for k in keys if k in data_config}
    else:
        values = {k: getattr(data_config, k) for k in keys if hasattr(data_config, k)}
    return build_augment(level, **values, **kwargs)
