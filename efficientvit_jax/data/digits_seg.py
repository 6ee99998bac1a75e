"""A segmentation dataset made from scikit-learn's digits: no download, real handwriting.

Each canvas is a noisy background of one random colour with one or more of the 8x8 digits
pasted on it, each scaled 3-6x (bilinear), in its own colour, at a random free position. The
mask is the digit's class where the pasted digit's ink (its 0-16 intensity, upsampled) is at
least half its full value, background (class 0) where it is below ``EDGE`` (a fifth), and 255
(ignored) on the soft edge in between, whose class a person could not tell either. Classes:
``background``, ``0`` .. ``9`` (digit d is class d + 1).

Training canvases paste only digits of the digits job's training split and validation canvases
only its held-out ones (``data.digits``: stratified, ``random_state=0``, 360 images), so
the held-out mIoU is on handwriting the model never saw.

Written in the generic layout (``train/`` and ``val/``, each ``images/`` + ``masks/`` with the
same stems, and ``classes.txt``)::

    python -m efficientvit_jax.data.digits_seg --out data/digits-seg
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from efficientvit_jax.data.digits import digit_splits

CLASSES = ("background", *(str(d) for d in range(10)))
IGNORE = 255
INK = 0.5  # ink at or above this (a fraction of full) is the digit
EDGE = 0.2  # below this it is background; in between ignored
MIN_CONTRAST = 80.0  # least difference of mean grey level between digit and background


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to generate: ``train`` and ``val`` canvases of ``canvas`` x ``canvas`` pixels,
    up to ``max_digits`` digits each, scaled ``scales[0]``..``scales[1]`` times; all drawn
    from ``seed``."""

    canvas: int = 64
    train: int = 2000
    val: int = 300
    max_digits: int = 2
    scales: tuple[float, float] = (3.0, 6.0)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canvas < 8 * self.scales[1]:
            raise ValueError(f"canvas {self.canvas} is smaller than the largest digit")
        if not (1 <= self.scales[0] <= self.scales[1]):
            raise ValueError(f"scales must be 1 <= low <= high, got {self.scales}")
        if min(self.train, self.val, self.max_digits) < 1:
            raise ValueError("train, val and max_digits must be >= 1")


@dataclasses.dataclass(frozen=True)
class Pasted:
    """One digit on a canvas: its class, the source digit's index, its box (top, left, size)."""

    digit: int
    source: int
    top: int
    left: int
    size: int


def upscale(ink: np.ndarray, size: int) -> np.ndarray:
    """An ``[8, 8]`` ink map at ``size`` x ``size``, bilinear (PIL), in [0, 1]."""
    from PIL import Image

    img = Image.fromarray(ink.astype(np.float32), mode="F")
    return np.clip(np.asarray(img.resize((size, size), Image.Resampling.BILINEAR)), 0, 1)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A background and a digit colour whose grey levels differ by ``MIN_CONTRAST``."""
    while True:
        bg, fg = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        if abs(bg.mean() - fg.mean()) >= MIN_CONTRAST:
            return bg, fg


def _place(rng: np.random.Generator, spec: Spec, boxes: list[tuple[int, int, int]]) -> tuple:
    """A random box ``(top, left, size)`` overlapping none of ``boxes``, or ``None``."""
    for _ in range(20):
        size = round(8 * rng.uniform(*spec.scales))
        top, left = (int(v) for v in rng.integers(0, spec.canvas - size + 1, 2))
        if all(
            top + size <= t or t + s <= top or left + size <= x or x + s <= left
            for t, x, s in boxes
        ):
            return top, left, size
    return None


def render_canvas(
    ink: np.ndarray, digits: np.ndarray, spec: Spec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[Pasted]]:
    """``(image uint8 [S, S, 3], mask uint8 [S, S], pasted)``: one canvas with 1 to
    ``spec.max_digits`` digits drawn from ``ink``/``digits`` (the first always fits)."""
    s = spec.canvas
    bg, fg = _colours(rng)
    image = bg + rng.normal(0, 12, (s, s, 3))
    mask = np.zeros((s, s), np.uint8)
    pasted: list[Pasted] = []
    for _ in range(int(rng.integers(1, spec.max_digits + 1))):
        box = _place(rng, spec, [(p.top, p.left, p.size) for p in pasted])
        if box is None:
            continue
        top, left, size = box
        i = int(rng.integers(len(ink)))
        a = upscale(ink[i], size)
        region = (slice(top, top + size), slice(left, left + size))
        colour = np.clip(fg + rng.normal(0, 20, 3), 0, 255)  # each digit its own shade
        image[region] = image[region] * (1 - a[..., None]) + colour * a[..., None]
        label = np.where(a >= INK, int(digits[i]) + 1, np.where(a >= EDGE, IGNORE, 0))
        mask[region] = label.astype(np.uint8)
        pasted.append(Pasted(int(digits[i]), i, top, left, size))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), mask, pasted


def write_split(folder: str, ink: np.ndarray, digits: np.ndarray, n: int, spec: Spec, key: int):
    """``n`` canvases as ``folder/images/<i>.png`` and ``folder/masks/<i>.png``; canvas ``i``
    drawn from ``(spec.seed, key, i)`` alone."""
    from PIL import Image

    for sub in ("images", "masks"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for i in range(n):
        rng = np.random.default_rng([spec.seed, key, i])
        image, mask, _ = render_canvas(ink, digits, spec, rng)
        Image.fromarray(image).save(os.path.join(folder, "images", f"{i:05d}.png"))
        Image.fromarray(mask).save(os.path.join(folder, "masks", f"{i:05d}.png"))
    _write_classes(folder)


def _write_classes(folder: str) -> None:
    with open(os.path.join(folder, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")


def generate(out: str, spec: Spec = Spec()) -> str:
    """Write the dataset into ``out`` (which must not exist; its parent must): ``train/``,
    ``val/`` and ``classes.txt``. Written into a temporary folder beside ``out`` and renamed
    when complete, so an interrupted run leaves no half dataset. Returns ``out``."""
    out = os.path.abspath(out)
    if os.path.exists(out):
        raise ValueError(f"--out {out} exists; generate into a new folder")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ValueError(f"--out {out} cannot be written: folder {parent} does not exist")
    (tr_ink, tr_y), (va_ink, va_y) = digit_splits()
    tmp = tempfile.mkdtemp(prefix=".digits-seg-", dir=parent)
    try:
        write_split(os.path.join(tmp, "train"), tr_ink, tr_y, spec.train, spec, 0)
        write_split(os.path.join(tmp, "val"), va_ink, va_y, spec.val, spec, 1)
        _write_classes(tmp)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m efficientvit_jax.data.digits_seg",
        description="write the digits segmentation dataset (generic layout)",
    )
    p.add_argument("--out", required=True, help="new folder for train/, val/ and classes.txt")
    d = Spec()
    p.add_argument("--canvas", type=int, default=d.canvas, help=f"canvas side (default {d.canvas})")
    p.add_argument("--train", type=int, default=d.train, help=f"training canvases ({d.train})")
    p.add_argument("--val", type=int, default=d.val, help=f"validation canvases ({d.val})")
    p.add_argument("--seed", type=int, default=d.seed, help="default 0")
    args = p.parse_args(argv)
    try:
        spec = Spec(canvas=args.canvas, train=args.train, val=args.val, seed=args.seed)
        out = generate(args.out, spec)
    except ValueError as e:
        print(f"digits_seg: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {spec.train} training and {spec.val} validation canvases to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
