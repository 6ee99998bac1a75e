"""Segmentation datasets on disk: Cityscapes, ADE20K and a generic image/mask layout.

``find_seg_dataset(path, split)`` detects the layout and pairs each image with its mask;
``read_mask(path, layout)`` gives a mask's train ids, ``ignore_index`` (255) where a pixel does
not count. The pairing and the label encodings are MIT's evaluation's
(``applications/efficientvit_seg/eval_efficientvit_seg_model.py``):

- ``cityscapes``: ``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
  ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``; label ids map to the 19 train ids
  (``seg_classes.CITYSCAPES_TRAIN_IDS``), every other id is ignored.
- ``ade20k``: ``images/<split>/<name>.jpg`` with ``annotations/<split>/<name>.png``; class =
  value - 1, value 0 ("other") ignored.
- ``generic``: ``<split>/images/<name>.<ext>`` with ``<split>/masks/<name>.png``, mask values
  the class indices, 255 ignored; ``classes.txt`` (line k names class k) in the split folder or
  the root, else the classes are the indices found in the masks (``"0"``, ``"1"``, ...).

Every problem is a one-line ``ValueError`` naming the file or folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
from typing import Any

import numpy as np

from efficientvit_jax.data import seg_classes
from efficientvit_jax.data.folders import IMAGE_EXTENSIONS, is_image_file

LAYOUTS = ("cityscapes", "ade20k", "generic")
IGNORE_INDEX = 255

# The evaluation split of each layout (MIT evaluates on Cityscapes' and ADE20K's validation
# sets), and the names a split goes by: ADE20K spells them out, the others abbreviate.
DEFAULT_SPLIT = {"cityscapes": "val", "ade20k": "validation", "generic": "val"}
_ALIASES = {"val": "validation", "validation": "val", "train": "training", "training": "train"}

# Masks must be lossless: a JPEG's compression changes class indices at every edge.
_MASK_EXTENSIONS = tuple(e for e in IMAGE_EXTENSIONS if e not in (".jpg", ".jpeg"))


@dataclasses.dataclass(frozen=True)
class SegDataset:
    """Image/mask pairs of one split.

    Attributes:
      images: image paths, sorted.
      masks: ``masks[i]`` is the label file of ``images[i]``.
      classes: ``classes[k]`` names class k (train id k).
      layout: ``"cityscapes"``, ``"ade20k"`` or ``"generic"`` (how ``read_mask`` decodes).
      ignore_index: the train id of pixels that count nowhere.
      root: the split folder the images came from.
      skipped: ``(image, reason)`` of images left out (``skip_missing=True``).
    """

    images: tuple[str, ...]
    masks: tuple[str, ...]
    classes: tuple[str, ...]
    layout: str
    ignore_index: int = IGNORE_INDEX
    root: str = ""
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def samples(self) -> tuple[tuple[str, str], ...]:
        """``(image, mask)`` pairs."""
        return tuple(zip(self.images, self.masks, strict=True))

    @property
    def colors(self) -> tuple[tuple[int, int, int], ...]:
        """A colour per class: the dataset's own for Cityscapes and ADE20K (MIT's tables),
        a fixed pseudo-random palette otherwise."""
        return dataset_colors(self.layout, len(self.classes))


def dataset_colors(layout: str | None, num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Class colours: Cityscapes' or ADE20K's where ``layout`` names one and the count fits,
    else a palette drawn once from a fixed seed (the same colours on every run)."""
    known = {"cityscapes": seg_classes.CITYSCAPES_COLORS, "ade20k": seg_classes.ADE20K_COLORS}
    if layout in known and len(known[layout]) == num_classes:
        return known[layout]
    rgb = np.random.default_rng(0).integers(0, 256, (num_classes, 3))
    return tuple(tuple(int(v) for v in c) for c in rgb)


def _split_dir(parent: str, split: str) -> str | None:
    for name in (split, _ALIASES.get(split)):
        if name and os.path.isdir(os.path.join(parent, name)):
            return os.path.join(parent, name)
    return None


def _isdirs(path: str, *names: str) -> bool:
    return all(os.path.isdir(os.path.join(path, n)) for n in names)


def _locate(path: str, split: str | None) -> tuple[str, str, str]:
    """``(layout, images folder, masks folder)`` of ``path`` (a root or one split folder)."""
    parent, base = os.path.split(os.path.normpath(path))
    if _isdirs(path, "leftImg8bit", "gtFine"):
        return _root_split(path, "cityscapes", "leftImg8bit", "gtFine", split)
    if base == "leftImg8bit" and _isdirs(parent, "gtFine"):
        return _root_split(parent, "cityscapes", "leftImg8bit", "gtFine", split)
    if os.path.basename(parent) == "leftImg8bit":
        return "cityscapes", path, os.path.join(os.path.dirname(parent), "gtFine", base)
    if _isdirs(path, "images", "annotations"):
        return _root_split(path, "ade20k", "images", "annotations", split)
    if os.path.basename(parent) == "images" and _isdirs(os.path.dirname(parent), "annotations"):
        return "ade20k", path, os.path.join(os.path.dirname(parent), "annotations", base)
    if _isdirs(path, "images", "masks"):
        return "generic", os.path.join(path, "images"), os.path.join(path, "masks")
    found = _split_dir(path, split or DEFAULT_SPLIT["generic"])
    if found is not None and _isdirs(found, "images", "masks"):
        return "generic", os.path.join(found, "images"), os.path.join(found, "masks")
    raise ValueError(
        f"--data {path}: not a segmentation dataset (expected Cityscapes' leftImg8bit/ and "
        "gtFine/, ADE20K's images/ and annotations/, or images/ and masks/ in it or in its "
        f"{split or 'val'}/)"
    )


def _root_split(
    root: str, layout: str, images: str, masks: str, split: str | None
) -> tuple[str, str, str]:
    """A root holding ``images/<split>`` and ``masks/<split>``; ADE20K's images folder may
    also hold the files directly (one split)."""
    split = split or DEFAULT_SPLIT[layout]
    found = _split_dir(os.path.join(root, images), split)
    if found is not None:
        return layout, found, os.path.join(root, masks, os.path.basename(found))
    if layout == "ade20k" and any(is_image_file(f) for f in os.listdir(os.path.join(root, images))):
        return layout, os.path.join(root, images), os.path.join(root, masks)
    raise ValueError(f"--data {root}: {layout} dataset without a {split} split in {images}/")


def _walk(folder: str, keep: Any) -> list[str]:
    """Files under ``folder`` that ``keep(name)`` accepts, as paths relative to it, sorted."""
    found = []
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files) if keep(f)]
    return found


def _mask_name(layout: str, image_rel: str, masks_dir: str) -> str:
    """Where MIT's evaluation looks for an image's mask (generic: the first lossless file
    with the image's stem)."""
    if layout == "cityscapes":
        return os.path.join(masks_dir, image_rel.replace("_leftImg8bit.", "_gtFine_labelIds."))
    stem = os.path.splitext(image_rel)[0]
    if layout == "ade20k":
        return os.path.join(masks_dir, stem + ".png")
    for ext in _MASK_EXTENSIONS:
        if os.path.isfile(os.path.join(masks_dir, stem + ext)):
            return os.path.join(masks_dir, stem + ext)
    return os.path.join(masks_dir, stem + ".png")


def _image_filter(layout: str) -> Any:
    if layout == "cityscapes":  # MIT takes the PNGs; Cityscapes names them *_leftImg8bit.png
        return lambda f: f.endswith("_leftImg8bit.png")
    if layout == "ade20k":  # MIT takes the JPEGs
        return lambda f: f.lower().endswith((".jpg", ".jpeg")) and not f.startswith(".")
    return is_image_file


def find_seg_dataset(
    path: str | os.PathLike, split: str | None = None, *, skip_missing: bool = False
) -> SegDataset:
    """The image/mask pairs of ``path``: a dataset root (then its ``split``, by default the
    validation split: Cityscapes ``val``, ADE20K ``validation``, generic ``val/``; ``train``
    and ``training``, ``val`` and ``validation`` name the same split) or one split folder
    (used as it is, whatever ``split``).

    An image without its mask is a ``ValueError`` naming both, or with ``skip_missing`` left
    out and listed in ``skipped``. Mask contents are not read here, except for a generic
    dataset without ``classes.txt`` (its classes are the indices found in its masks).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isdir(path):
        raise ValueError(f"--data {path}: no such folder")
    layout, images_dir, masks_dir = _locate(path, split)
    if not os.path.isdir(images_dir):
        raise ValueError(f"--data {path}: no image folder {images_dir}")
    rel = _walk(images_dir, _image_filter(layout))
    if not rel:
        raise ValueError(f"--data {path}: no images in {images_dir}")
    images, masks, skipped = [], [], []
    for r in rel:
        image, mask = os.path.join(images_dir, r), _mask_name(layout, r, masks_dir)
        if os.path.isfile(mask):
            images.append(image)
            masks.append(mask)
        elif skip_missing:
            skipped.append((image, f"no mask {mask}"))
        else:
            raise ValueError(f"image {image} has no mask (expected {mask})")
    if not images:
        raise ValueError(f"--data {path}: no image of {images_dir} has its mask")
    classes = _classes(layout, os.path.dirname(images_dir), masks)
    return SegDataset(
        tuple(images), tuple(masks), classes, layout, IGNORE_INDEX, images_dir, tuple(skipped)
    )


def _classes(layout: str, split_dir: str, masks: list[str]) -> tuple[str, ...]:
    if layout == "cityscapes":
        return seg_classes.CITYSCAPES_CLASSES
    if layout == "ade20k":
        return seg_classes.ADE20K_CLASSES
    for folder in (split_dir, os.path.dirname(split_dir)):
        listed = os.path.join(folder, "classes.txt")
        if os.path.isfile(listed):
            return read_classes(listed)
    # No names: the indices found, over every split beside this one so that train and val
    # agree on the class count (a class absent from val still has its output).
    root = os.path.dirname(split_dir)
    siblings = [
        os.path.join(root, d, "masks")
        for d in sorted(os.listdir(root))
        if _isdirs(os.path.join(root, d), "images", "masks")
    ]
    if os.path.join(split_dir, "masks") in siblings:
        masks = [os.path.join(m, r) for m in siblings for r in _walk(m, is_image_file)]
    top = max(found_labels(masks, "generic"), default=-1)
    if top < 0:
        raise ValueError(f"{split_dir}: the masks hold no labelled pixel (all {IGNORE_INDEX})")
    return tuple(str(k) for k in range(top + 1))


def read_classes(path: str) -> tuple[str, ...]:
    """Class names of a ``classes.txt``, line k naming class k (trailing blank lines
    dropped); a blank line inside or a duplicate name is a ``ValueError``."""
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f.read().rstrip().splitlines()]
    if not names or "" in names:
        raise ValueError(f"{path}: one class name a line, no blank lines")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: class name(s) listed twice: {', '.join(dup)}")
    if len(names) > IGNORE_INDEX:
        raise ValueError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX} (255 = ignore)")
    return tuple(names)


def found_labels(masks: list[str], layout: str, *, workers: int = 4) -> set[int]:
    """Train ids present in ``masks`` (``ignore_index`` left out), decoded in threads."""
    found: set[int] = set()
    with cf.ThreadPoolExecutor(max(workers, 1)) as pool:
        for values in pool.map(lambda m: np.unique(read_mask(m, layout)), masks):
            found.update(int(v) for v in values if v != IGNORE_INDEX)
    return found


def _cityscapes_table() -> np.ndarray:
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for label_id, train_id in seg_classes.CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return table


_CITYSCAPES_TABLE = _cityscapes_table()


def read_mask(path: str, layout: str, num_classes: int | None = None) -> np.ndarray:
    """A mask file as ``[H, W]`` train ids (uint8; int32 for a 16-bit generic mask holding
    values over 255), ``IGNORE_INDEX`` (255) where pixels do not count.

    ``cityscapes``: label id -> train id, ids without one ignored; ``ade20k``: value - 1, value
    0 ignored; ``generic``: the values as they are. Values outside the layout's range (a
    Cityscapes id over 33, a class >= ``num_classes`` (Cityscapes 19, ADE20K 150, generic:
    this argument, unchecked when ``None``) other than 255) are a ``ValueError`` naming the
    file, as is a mask that is not one channel or cannot be read.
    """
    raw = _read_raw(path)
    if layout == "cityscapes":
        top = int(raw.max(initial=0))
        if top >= seg_classes.CITYSCAPES_NUM_IDS:
            raise ValueError(
                f"mask {path}: label values out of range (label id {top}; Cityscapes' ids "
                f"are 0..{seg_classes.CITYSCAPES_NUM_IDS - 1})"
            )
        return _CITYSCAPES_TABLE[raw]
    if layout == "ade20k":
        top = len(seg_classes.ADE20K_CLASSES)  # values 0..150: "other", then the 150 classes
        values = np.unique(raw[raw > top])
        if values.size:
            raise ValueError(
                f"mask {path}: label values out of range ({_listed(values)}; ADE20K's are 0..{top})"
            )
        labels = raw.astype(np.int32) - 1
        labels[labels < 0] = IGNORE_INDEX  # value 0 ("other"): MIT's -1, its ignore index
    elif layout == "generic":
        labels = raw
    else:
        raise ValueError(f"unknown segmentation layout {layout!r}; known: {', '.join(LAYOUTS)}")
    labels = labels.astype(np.uint8) if labels.max(initial=0) <= 255 else labels.astype(np.int32)
    if num_classes is not None:
        check_labels(labels, num_classes, path)
    return labels


def check_labels(labels: np.ndarray, num_classes: int, path: str) -> None:
    """``ValueError`` naming ``path`` if a label is neither a class below ``num_classes``
    nor ``IGNORE_INDEX``."""
    bad = (labels >= num_classes) & (labels != IGNORE_INDEX)
    if bad.any():
        raise ValueError(
            f"mask {path}: label values out of range ({_listed(np.unique(labels[bad]))}; "
            f"{num_classes} classes, {IGNORE_INDEX} ignored)"
        )


def _listed(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:5])
    return shown + (", ..." if len(values) > 5 else "")


def _read_raw(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(
                    f"mask {path}: {im.mode} image; a mask is one channel of class indices "
                    "(L, P or 16-bit)"
                )
            arr = np.asarray(im)  # a palette (P) image's array is its indices, not colours
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot read mask {path}: {' '.join(str(e).split())}") from e
    if arr.min(initial=0) < 0:
        raise ValueError(f"mask {path}: negative label values")
    return arr


def check_seg_dataset(
    dataset: SegDataset, num_classes: int | None = None, *, workers: int = 4
) -> list[tuple[str, str]]:
    """``(image, problem)`` of every sample that cannot be scored, found before any work:
    an image and mask of different sizes, label values out of range (``read_mask`` with
    ``num_classes``), an unreadable mask or image header. Masks are decoded (their values are
    the point), images only opened (their size is in the header), in ``workers`` threads."""
    from PIL import Image

    def problem(sample: tuple[str, str]) -> str | None:
        image, mask = sample
        try:
            labels = read_mask(mask, dataset.layout, num_classes)
            with Image.open(image) as im:
                width, height = im.size
        except ValueError as e:
            return str(e)
        except (OSError, SyntaxError) as e:
            return f"cannot read image {image}: {' '.join(str(e).split())}"
        if labels.shape != (height, width):
            return (
                f"image {image} is {width}x{height} but its mask {mask} is "
                f"{labels.shape[1]}x{labels.shape[0]} (width x height)"
            )
        return None

    with cf.ThreadPoolExecutor(max(workers, 1)) as pool:
        found = list(pool.map(problem, dataset.samples))
    return [(s[0], p) for s, p in zip(dataset.samples, found, strict=True) if p is not None]


def without(dataset: SegDataset, bad: list[tuple[str, str]]) -> SegDataset:
    """``dataset`` less the images listed in ``bad``, which join its ``skipped``."""
    drop = {image for image, _ in bad}
    keep = [(i, m) for i, m in dataset.samples if i not in drop]
    return dataclasses.replace(
        dataset,
        images=tuple(i for i, _ in keep),
        masks=tuple(m for _, m in keep),
        skipped=dataset.skipped + tuple(bad),
    )
