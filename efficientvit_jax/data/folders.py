"""Image-folder trees: one subfolder per class, as torchvision's ``ImageFolder`` reads them.

Subfolders named by ImageNet synset IDs (``n01440764``, ...) take those IDs' class indices,
so an ImageNet validation tree lines up with the pretrained heads; otherwise the sorted
subfolder names are classes ``0..k-1``. Every problem is a one-line ``ValueError`` naming the
folder, raised before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from efficientvit_jax.data import imagenet

# torchvision's IMG_EXTENSIONS (datasets/folder.py), compared case-insensitively.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The files of a class-folder tree.

    Attributes:
      root: the folder.
      classes: subfolder names; ``class_indices[i]`` is the label of ``classes[i]``.
      class_indices: label of each class (ImageNet indices for synset names, else 0..k-1).
      samples: ``(path, label)`` for every image file, classes sorted, files sorted.
      imagenet: whether the subfolders are ImageNet synset IDs.
    """

    root: str
    classes: tuple[str, ...]
    class_indices: tuple[int, ...]
    samples: tuple[tuple[str, int], ...]
    imagenet: bool

    @property
    def num_classes(self) -> int:
        """Outputs a model needs for these labels (1000 for an ImageNet tree)."""
        return imagenet.NUM_CLASSES if self.imagenet else len(self.classes)

    def class_name(self, label: int) -> str:
        return self.classes[self.class_indices.index(label)]


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_below(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        dirnames.sort()
        found += [os.path.join(dirpath, f) for f in sorted(files) if is_image_file(f)]
    return found


def image_files(paths: Sequence[str]) -> list[str]:
    """Each path that is a file, and the image files in and below each folder (sorted, as
    ``is_image_file`` decides), in the order given; ``ValueError`` for a path that does not
    exist or a folder without images."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = _images_below(path)
            if not found:
                raise ValueError(
                    f"image folder {path} holds no image files ({'/'.join(IMAGE_EXTENSIONS)})"
                )
            files += found
        elif os.path.isfile(path):
            files.append(path)  # named on purpose: read whatever its extension
        else:
            raise ValueError(f"image {path}: no such file or folder")
    return files


def scan_folder(root: str | os.PathLike, *, split_hint: str | None = None) -> ImageFolder:
    """The classes and image files under ``root`` (``root/<class>/**/<image>``).

    A ``root`` holding ``train/`` and ``val/`` is a split dataset, not a class tree (read as
    one, it would be two classes named "train" and "val"): refused, with ``split_hint`` as
    the advice (default: pass ``root/val`` to eval).
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    entries = sorted(os.listdir(root))
    classes = tuple(e for e in entries if os.path.isdir(os.path.join(root, e)) and e[0] != ".")
    if not classes:
        loose = [e for e in entries if is_image_file(e)]
        what = f"{len(loose)} image file(s) but" if loose else "nothing:"
        raise ValueError(
            f"image folder {root} has {what} no class subfolders (expected {root}/<class>/<image>)"
        )
    if {"train", "val"} <= set(classes):
        hint = split_hint or f"pass {os.path.join(root, 'val')} to eval"
        raise ValueError(f"--data {root} holds train/ and val/, not class folders: {hint}")
    index = imagenet.synset_index()
    is_imagenet = all(c in index for c in classes)
    labels = tuple(index[c] for c in classes) if is_imagenet else tuple(range(len(classes)))
    samples, empty = [], []
    for c, label in zip(classes, labels, strict=True):
        files = _images_below(os.path.join(root, c))
        if not files:
            empty.append(c)
        samples += [(f, label) for f in files]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(
            f"image folder {root}: class folder(s) with no image files "
            f"({'/'.join(IMAGE_EXTENSIONS)}): {shown}"
        )
    return ImageFolder(root, classes, labels, tuple(samples), is_imagenet)


def relabel(
    folder: ImageFolder, classes: Sequence[str], *, model: str = "the model"
) -> ImageFolder:
    """``folder`` with the labels of a model trained on ``classes`` (output ``i`` is
    ``classes[i]``), matched by name: a folder may hold a subset of the classes, in any
    order; a class folder the model does not know is a one-line ``ValueError`` naming it."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in folder.classes if c not in index]
    if unknown:
        raise ValueError(
            f"--data {folder.root}: class folder(s) {', '.join(unknown)} not among the "
            f"{len(classes)} classes of {model} ({', '.join(classes[:10])}"
            f"{', ...' if len(classes) > 10 else ''})"
        )
    labels = tuple(index[c] for c in folder.classes)
    old = dict(zip(folder.class_indices, labels, strict=True))
    samples = tuple((p, old[y]) for p, y in folder.samples)
    return dataclasses.replace(folder, class_indices=labels, samples=samples, imagenet=False)
