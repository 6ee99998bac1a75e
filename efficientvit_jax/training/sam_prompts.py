"""Prompts for fine-tuning SAM, sampled from segmentation masks: pure NumPy, no model.

A segmentation mask (class indices, ``255`` ignored) becomes *instances*: the connected
components (8-connected) of every object class (``components``; the background class, where
the dataset has one, is no object). ``Instances`` keeps them at the image's own size, with
their tight boxes and their map sampled on the decoder's low-resolution grid (the loss's
targets). ``sample_prompts`` draws a fixed number of prompts per image, each for one
instance: either its box, with SAM's training noise on every coordinate (uniform, up to 10%
of the box's side along that axis, at most 20 pixels of SAM's 1024 frame), or 1 to
``max_points`` positive points inside it, sometimes with one negative point outside. The
coordinates are in the prompt frame the model reads (``sam.transforms.apply_coords``, as
``SamPredictor`` transforms a user's), and every prompt has the same token count (SAM's pad
point after points, ``ABSENT_LABEL`` fill), so that batches have static shapes.

Sampling is a pure function of its generator: the training batches seed it with
``(seed, epoch, image index)`` (``prompt_rng``), so a resumed run draws what the straight run
drew; the held-out prompts come from one fixed seed (``EVAL_SEED``), whatever the run's.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from efficientvit_jax.sam.transforms import apply_coords, preprocess_shape
from efficientvit_jax.zoo.sam.model import ABSENT_LABEL

IGNORED = -1  # an instance map's value where the mask is ignored (255) or outside the image
EVAL_SEED = 0  # the held-out prompts' seed: the same for every run, so runs compare
BOX_NOISE = 0.1  # SAM's box noise: a tenth of the box's side ...
BOX_NOISE_MAX = 20.0  # ... at most 20 pixels of SAM's 1024-pixel prompt frame
SAM_FRAME = 1024


def _runs(row: np.ndarray, objects: np.ndarray) -> list[tuple[int, int, int]]:
    """``(start, stop, class)`` of the runs of equal object classes in one mask row."""
    edges = np.flatnonzero(np.diff(row)) + 1
    starts, stops = np.r_[0, edges], np.r_[edges, len(row)]
    return [
        (int(s), int(e), int(row[s])) for s, e in zip(starts, stops, strict=True) if objects[row[s]]
    ]


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving: the trees stay shallow
        i = parent[i]
    return i


def components(labels: np.ndarray, objects: np.ndarray, min_area: int = 1) -> np.ndarray:
    """Instance map of a class mask: 8-connected components of the classes that
    ``objects`` (a boolean table indexed by class) marks, numbered 1.. in raster order of
    their first pixel; 0 elsewhere. Components under ``min_area`` pixels are 0 too.

    Union-find over row runs (no SciPy): a run joins the runs of the row above with its
    class that it touches, diagonals included.
    """
    h, w = labels.shape
    rows = [_runs(labels[y], objects) for y in range(h)]
    flat = [(y, *run) for y, runs in enumerate(rows) for run in runs]
    parent = list(range(len(flat)))
    first, above = 0, []  # index of the row's first run; the previous row's runs
    for y in range(h):
        here = list(range(first, first + len(rows[y])))
        j = 0
        for i in here:
            _, s, e, c = flat[i]
            while j < len(above) and flat[above[j]][2] < s:  # ends before s - 1: no contact
                j += 1
            k = j
            while k < len(above) and flat[above[k]][1] <= e:  # starts by e: touches
                if flat[above[k]][3] == c:
                    parent[_find(parent, i)] = _find(parent, above[k])
                k += 1
        above, first = here, first + len(here)
    out = np.zeros((h, w), np.int32)
    ids: dict[int, int] = {}
    for i, (y, s, e, _) in enumerate(flat):
        out[y, s:e] = ids.setdefault(_find(parent, i), len(ids) + 1)
    if min_area > 1 and ids:
        area = np.bincount(out.ravel(), minlength=len(ids) + 1)
        keep = area >= min_area
        keep[0] = True
        relabel = np.where(keep, np.cumsum(keep) - 1, 0)
        out = relabel[out].astype(np.int32)
    return out


def object_table(num_classes: int, background: int | None, ignore_index: int = 255) -> np.ndarray:
    """``[256]`` bool (or more for 16-bit masks): which class values are objects."""
    table = np.zeros(max(256, num_classes), bool)
    table[:num_classes] = True
    if background is not None:
        table[background] = False
    table[ignore_index] = False
    return table


@dataclasses.dataclass(frozen=True)
class Instances:
    """One image's instances.

    Attributes:
      size: ``(H, W)`` of the image.
      map: ``[H, W]`` instance ids (1..n), 0 no instance, ``IGNORED`` ignored pixels.
      boxes: ``[n, 4]`` tight boxes ``(x0, y0, x1, y1)``, inclusive pixel indices.
      grid: ``[m, m]`` the map sampled at the centres of the decoder's low-resolution cells
        (nearest pixel), ``IGNORED`` also on the padding past the image.
    """

    size: tuple[int, int]
    map: np.ndarray
    boxes: np.ndarray
    grid: np.ndarray

    @property
    def count(self) -> int:
        return len(self.boxes)


def grid_map(instance_map: np.ndarray, mask_size: int, prompt_size: int) -> np.ndarray:
    """``instance_map`` on the ``mask_size`` grid that covers the prompt frame: each cell the
    pixel under its centre; cells past the resized image (SAM's padding) ``IGNORED``."""
    h, w = instance_map.shape
    nh, nw = preprocess_shape(h, w, prompt_size)
    centres = (np.arange(mask_size) + 0.5) * (prompt_size / mask_size)  # prompt-frame pixels
    ys = np.floor(centres * (h / nh)).astype(np.int64)
    xs = np.floor(centres * (w / nw)).astype(np.int64)
    inside_y, inside_x = centres < nh, centres < nw
    grid = instance_map[np.minimum(ys, h - 1)[:, None], np.minimum(xs, w - 1)[None, :]]
    return np.where(inside_y[:, None] & inside_x[None, :], grid, IGNORED).astype(np.int32)


def find_instances(
    labels: np.ndarray, objects: np.ndarray, mask_size: int, prompt_size: int, min_area: int = 1,
    ignore_index: int = 255,
) -> Instances:  # fmt: skip
    """The ``Instances`` of a class mask ``[H, W]`` (see ``components`` and ``grid_map``)."""
    inst = components(labels, objects, min_area)
    inst[labels == ignore_index] = IGNORED
    n = int(inst.max(initial=0))
    boxes = np.zeros((n, 4), np.int64)
    for k in range(1, n + 1):
        ys, xs = np.nonzero(inst == k)
        boxes[k - 1] = xs.min(), ys.min(), xs.max(), ys.max()
    grid = grid_map(inst, mask_size, prompt_size)
    return Instances(tuple(labels.shape), inst, boxes, grid)


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """How prompts are drawn: ``per_image`` of them per image, a box with probability
    ``box_prob`` (else points: 1 to ``max_points`` positive ones, and with probability
    ``negative_prob`` one negative more), in a ``prompt_size`` frame."""

    per_image: int = 4
    max_points: int = 3
    box_prob: float = 0.5
    negative_prob: float = 0.5
    prompt_size: int = SAM_FRAME

    @property
    def tokens(self) -> int:
        """Tokens per prompt: the most points, a negative one, SAM's pad point."""
        return self.max_points + 2


def prompt_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of image ``index``'s training prompts in ``epoch``."""
    return np.random.default_rng([seed, epoch, index])


def eval_rng(index: int) -> np.random.Generator:
    """The generator of image ``index``'s held-out prompts (``EVAL_SEED``)."""
    return np.random.default_rng([EVAL_SEED, index])


def noisy_box(box: np.ndarray, size: tuple[int, int], spec: PromptSpec, rng) -> np.ndarray:
    """A tight box (inclusive pixels) in the prompt frame, each coordinate moved uniformly
    by up to ``BOX_NOISE`` of the box's side on its axis (at most ``BOX_NOISE_MAX`` pixels of
    SAM's frame), kept inside the resized image."""
    corners = apply_coords(np.asarray(box, np.float64).reshape(2, 2), size, spec.prompt_size)
    side = corners[1] - corners[0]  # (width, height)
    bound = np.minimum(BOX_NOISE * side, BOX_NOISE_MAX * spec.prompt_size / SAM_FRAME)
    noisy = corners + rng.uniform(-1, 1, (2, 2)) * bound
    nh, nw = preprocess_shape(*size, spec.prompt_size)
    return np.clip(noisy, 0, [nw, nh]).reshape(4)


def _points(inst: Instances, k: int, spec: PromptSpec, rng) -> tuple[np.ndarray, np.ndarray]:
    """Positive points in instance ``k``, maybe a negative one off it (original pixels)."""
    inside = np.flatnonzero(inst.map.ravel() == k)
    n_pos = int(rng.integers(1, spec.max_points + 1))
    picked = inside[rng.choice(len(inside), size=n_pos, replace=len(inside) < n_pos)]
    labels = [1] * n_pos
    if rng.random() < spec.negative_prob:
        outside = np.flatnonzero((inst.map.ravel() != k) & (inst.map.ravel() != IGNORED))
        if len(outside):
            picked = np.r_[picked, outside[rng.integers(len(outside))]]
            labels.append(0)
    w = inst.size[1]
    return np.stack([picked % w, picked // w], axis=1).astype(np.float64), np.array(labels)


def sample_prompts(inst: Instances, spec: PromptSpec, rng: np.random.Generator) -> dict:
    """``spec.per_image`` prompts of one image: ``coords [K, T, 2]`` float32 (prompt frame),
    ``labels [K, T]`` int32, ``target [K]`` the instance id (0: none, the image has no
    instance), ``multi [K]`` (a lone positive point: SAM's three masks, the best one
    trained), ``weight [K]`` (0 for no instance). The instances are taken in a random order,
    again from the start when there are fewer than ``K``."""
    k, t = spec.per_image, spec.tokens
    out = {
        "coords": np.zeros((k, t, 2), np.float32),
        "labels": np.full((k, t), ABSENT_LABEL, np.int32),
        "target": np.zeros(k, np.int32),
        "multi": np.zeros(k, bool),
        "weight": np.zeros(k, np.float32),
    }
    if inst.count == 0:
        return out
    order = rng.permutation(inst.count)
    for j in range(k):
        i = int(order[j % inst.count])
        out["target"][j], out["weight"][j] = i + 1, 1.0
        if rng.random() < spec.box_prob:
            out["coords"][j, :2] = noisy_box(inst.boxes[i], inst.size, spec, rng).reshape(2, 2)
            out["labels"][j, :2] = (2, 3)
            continue
        xy, labels = _points(inst, i + 1, spec, rng)
        n = len(labels)
        out["coords"][j, :n] = apply_coords(xy, inst.size, spec.prompt_size)
        out["labels"][j, :n] = labels
        out["labels"][j, n] = -1  # SAM's pad point after points without a box, at (0, 0)
        out["multi"][j] = n == 1
    return out


__all__ = [
    "EVAL_SEED",
    "IGNORED",
    "Instances",
    "PromptSpec",
    "components",
    "eval_rng",
    "find_instances",
    "grid_map",
    "noisy_box",
    "object_table",
    "prompt_rng",
    "sample_prompts",
]
