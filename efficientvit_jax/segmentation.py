"""Segmentation models at work: label maps of images, and mIoU over a dataset, as MIT's
evaluation computes them.

``load_segmenter(model, weights)`` (or ``segmenter_from_run(run)``) gives a ``Segmenter``: the
model jitted, its evaluation transform (``data.seg_transform``), its classes and colours.
``segment_files`` writes each image's label map (a palette PNG at the image's size) and an
overlay; ``evaluate_segmentation`` accumulates the confusion matrix over a ``SegDataset`` and
summarises it as MIT's ``SegIOU`` does (``metrics.iou_summary``).

MIT's steps, kept: the image resized by the dataset's rule (``mit_eval_transform``), the
stride-8 logits resized to the label's (the image's) size with PyTorch's bicubic
(``zoo.seg.resize_logits``: MIT's ``resize`` helper defaults to bicubic, so its evaluation is
bicubic, not bilinear), the argmax, the labels never resized.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax.data import seg_classes
from efficientvit_jax.data.seg_transform import SegEvalTransform, mit_eval_transform
from efficientvit_jax.data.segmentation import SegDataset, dataset_colors
from efficientvit_jax.metrics import confusion_counts, iou_summary


@dataclasses.dataclass
class Segmenter:
    """A segmentation model, its variables, its input transform, class names and colours.

    Calls are jitted once per input shape (and output size); batches of ``batch_size``
    images of one shape are padded to it so that a dataset of one image size compiles once.
    """

    model: Any
    variables: dict[str, Any]
    transform: SegEvalTransform
    classes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    batch_size: int = 1

    def __post_init__(self) -> None:
        from efficientvit_jax.zoo.seg import resize_logits

        fmt = self.model.config.data_format
        k = self.num_classes

        def labels(variables: Any, images: jax.Array, size: tuple[int, int]) -> jax.Array:
            logits = self.model.apply(variables, images, train=False).astype(jnp.float32)
            logits = resize_logits(logits, size, data_format=fmt)
            return jnp.argmax(logits, axis=1 if fmt == "NCHW" else -1).astype(jnp.int32)

        def counts(variables: Any, images: jax.Array, target: jax.Array) -> jax.Array:
            return confusion_counts(labels(variables, images, target.shape[1:3]), target, k)

        self._labels = jax.jit(labels, static_argnums=2)
        self._counts = jax.jit(counts)

    @property
    def num_classes(self) -> int:
        return int(self.model.config.num_classes)

    def _padded(self, images: list[np.ndarray]) -> np.ndarray:
        batch = np.stack(images)
        pad = self.batch_size - len(images)
        return np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])

    def label_maps(self, images: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
        """``[n, height, width]`` int32 classes of ``n <= batch_size`` transformed images of
        one shape, the logits resized to ``size`` = ``(height, width)``."""
        out = self._labels(self.variables, self._padded(images), tuple(size))
        return np.asarray(out)[: len(images)]

    def confusion(self, images: list[np.ndarray], targets: list[np.ndarray]) -> jax.Array:
        """The ``[K, K]`` confusion counts of ``n <= batch_size`` transformed images of one
        shape against their labels (of one shape), as a device array not yet read back, so
        that the host prepares the next batch meanwhile. Padding counts nowhere (label -1,
        out of range whatever the class count)."""
        target = np.full((self.batch_size, *targets[0].shape), -1, np.int32)
        target[: len(targets)] = np.stack(targets)
        return self._counts(self.variables, self._padded(images), target)


_KNOWN_CLASSES = {
    "cityscapes": seg_classes.CITYSCAPES_CLASSES,
    "ade20k": seg_classes.ADE20K_CLASSES,
}


def dataset_classes(dataset: str | None, num_classes: int) -> tuple[tuple[str, ...], str | None]:
    """``(class names, layout)`` of a model trained on ``dataset``: Cityscapes' or ADE20K's
    names where the count fits, else the indices as text (layout ``None``)."""
    names = _KNOWN_CLASSES.get(dataset or "")
    if names is not None and len(names) == num_classes:
        return names, dataset
    return tuple(str(k) for k in range(num_classes)), None


def load_segmenter(
    name: str,
    weights: str | os.PathLike | None,
    *,
    batch_size: int = 1,
    crop_size: int | None = None,
) -> Segmenter:
    """A ``Segmenter`` of zoo segmentation model ``name`` (``efficientvit_seg_b0_cityscapes`` or
    MIT's ``efficientvit-seg-b0-cityscapes``) with ``weights``: one of MIT's checkpoint files
    (``.pt``, ``.safetensors``; ``zoo.load_mit_weights``) or a folder ``efficientvit-jax
    convert`` wrote; ``None``: MIT's published checkpoint, from the Hugging Face Hub's cache
    (downloaded into it on first use). Preprocessing (``mit_eval_transform``, with MIT's ``crop_size``), classes
    and colours: those of the model's dataset, as MIT's evaluation has them. One-line ``ValueError`` for a classifier's name, missing or
    mismatching weights."""
    from efficientvit_jax import zoo

    entry = zoo.get_entry(name)
    if entry.task != "segmentation":
        seg = ", ".join(zoo.list_models("efficientvit_seg_*"))
        raise ValueError(f"--model {name} is a classifier, not a segmentation model ({seg})")
    name = entry.name  # MIT's hyphenated spelling -> the registered name (no tags to keep)
    if weights is None:  # MIT's published checkpoint, through the Hub's cache
        weights = zoo.fetch_pretrained(name)
    weights = os.fspath(weights)
    if not os.path.exists(weights):
        raise ValueError(f"--weights {weights}: no such file or folder")
    if os.path.isdir(weights):
        model, variables = zoo.converted.load_converted_as(name, weights)
    else:
        model, variables = zoo.create_model(name), zoo.load_mit_weights(weights, name)
    classes, layout = dataset_classes(entry.dataset, model.config.num_classes)
    transform = mit_eval_transform(entry.dataset or "", model.config.data_format, crop_size)
    colors = dataset_colors(layout, len(classes))
    return Segmenter(model, variables, transform, classes, colors, batch_size)


def segmenter_from_run(run: Any, *, batch_size: int = 1, crop_size: int | None = None) -> Segmenter:
    """A ``Segmenter`` of a trained run (``load_run``): its model, weights and class names.
    Preprocessing: as the run's held-out evaluation, ``mit_eval_transform`` of the dataset
    layout its ``run.json`` names (by default: the layout whose classes the run has): MIT's
    rules for Cityscapes and ADE20K, else the whole image with its sides rounded up to
    multiples of 32, or its shorter side at ``crop_size`` where given."""
    fmt = run.model.config.data_format
    layout = _run_layout(run)
    transform = mit_eval_transform(layout or "", fmt, crop_size)
    colors = dataset_colors(layout, len(run.classes))
    return Segmenter(run.model, run.variables, transform, tuple(run.classes), colors, batch_size)


def _run_layout(run: Any) -> str | None:
    path = getattr(run, "path", None)
    if path is not None:
        from efficientvit_jax.training.run import read_run_file

        layout = read_run_file(path).get("layout")
        if layout is not None:
            return layout
    return next((d for d, names in _KNOWN_CLASSES.items() if tuple(run.classes) == names), None)


def is_segmentation_run(path: str | os.PathLike) -> bool:
    """Whether the ``train`` run at ``path`` trained a segmentation model (its ``run.json``
    says so, or its ``config.json`` names one), read without restoring any weights."""
    from efficientvit_jax import zoo
    from efficientvit_jax.training.config import load_config
    from efficientvit_jax.training.loaded import locate_run
    from efficientvit_jax.training.run import read_run_file

    workdir = locate_run(path)[0]
    if read_run_file(workdir).get("task") == "segmentation":
        return True
    name = load_config(workdir).model.name
    return name is not None and zoo.get_entry(name).task == "segmentation"


def ordered_map(
    fn: Callable[[Any], Any], items: Sequence[Any], *, workers: int = 2, skip_bad: bool = False
) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in order, computed ``workers`` threads ahead (PIL and NumPy
    release the GIL while they decode and resize). With ``skip_bad``, an item whose ``fn``
    raises ``ValueError`` comes as ``(item, the error)``; without, the error is raised."""

    def call(item: Any) -> Any:
        try:
            return fn(item)
        except ValueError as e:
            if not skip_bad:
                raise
            return e

    if workers == 0:
        yield from ((item, call(item)) for item in items)
        return
    ahead = 2 * workers  # bounded: a few decoded images at a time, whatever the dataset's size
    with cf.ThreadPoolExecutor(workers, thread_name_prefix="evit-seg") as pool:
        pending: list = []
        it = iter(items)
        try:
            for item in it:
                pending.append((item, pool.submit(call, item)))
                if len(pending) > ahead:
                    done, fut = pending.pop(0)
                    yield done, fut.result()
            for done, fut in pending:
                yield done, fut.result()
        finally:
            for _, fut in pending:  # stopped early (error, break): drop what is queued
                fut.cancel()


def same_shape_groups(
    pairs: Iterable[tuple[Any, tuple[np.ndarray, ...]]], size: int
) -> Iterator[list[tuple[Any, tuple[np.ndarray, ...]]]]:
    """Consecutive ``(item, arrays)`` pairs in lists of at most ``size`` whose arrays have
    the same shapes (a batch the model runs at once)."""
    group: list = []
    for pair in pairs:
        shapes = [a.shape for a in pair[1]]
        if group and (len(group) == size or shapes != [a.shape for a in group[0][1]]):
            yield group
            group = []
        group.append(pair)
    if group:
        yield group


def evaluate_segmentation(
    segmenter: Segmenter,
    dataset: SegDataset,
    *,
    workers: int = 2,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of ``segmenter`` on ``dataset``, as MIT's
    evaluation computes them (see the module and ``metrics.iou_summary``).

    Check the dataset first (``data.segmentation.check_seg_dataset``): here an unreadable
    image raises its ``ValueError``, or with ``skip_bad`` is left out and listed. The device
    scores one batch while threads decode the next; ``progress(n)`` gets each batch's count.
    """
    from efficientvit_jax.data.segmentation import read_mask

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        return segmenter.transform(dataset.images[i]), read_mask(dataset.masks[i], dataset.layout)

    k = segmenter.num_classes
    totals, skipped, count = np.zeros((k, k), np.int64), list(dataset.skipped), 0
    t0 = time.perf_counter()
    loaded = ordered_map(load, range(len(dataset.images)), workers=workers, skip_bad=skip_bad)
    good = _good_only(loaded, lambda i, e: skipped.append((dataset.images[i], str(e))))
    inflight = None
    for group in same_shape_groups(good, segmenter.batch_size):
        out = segmenter.confusion([x for _, (x, _) in group], [y for _, (_, y) in group])
        if inflight is not None:
            totals += np.asarray(inflight[0])  # read one batch late: the device keeps busy
            _tick(progress, inflight[1])
        inflight = (out, len(group))
        count += len(group)
    if inflight is not None:
        totals += np.asarray(inflight[0])
        _tick(progress, inflight[1])
    wall = time.perf_counter() - t0
    return {
        **iou_summary(totals),
        "confusion": totals,
        "count": count,
        "images_per_second": count / wall if wall > 0 else 0.0,
        "skipped": skipped,
    }


def _good_only(pairs: Iterable[tuple[Any, Any]], skip: Callable[[Any, Any], None]) -> Iterator:
    for item, result in pairs:
        if isinstance(result, ValueError):
            skip(item, result)
        else:
            yield item, result


def _tick(progress: Callable[[int], None] | None, n: int) -> None:
    if progress is not None:
        progress(n)


def palette_png(labels: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> Any:
    """A PIL palette ("P") image of a label map: pixel values are the classes, shown in
    ``colors`` (at most 256 classes)."""
    from PIL import Image

    if len(colors) > 256:
        raise ValueError(f"a palette PNG holds at most 256 classes, not {len(colors)}")
    image = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    flat = [v for c in colors for v in c]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return image


def overlay(
    image: np.ndarray, labels: np.ndarray, colors: Sequence[tuple[int, int, int]], opacity=0.5
) -> np.ndarray:
    """The class colours over the uint8 image, as MIT's ``get_canvas``: ``colour * opacity +
    image * (1 - opacity)``, truncated to uint8."""
    painted = np.asarray(colors, np.uint8)[labels]
    return np.asarray(painted * opacity + image * (1 - opacity), dtype=np.uint8)


def class_fractions(labels: np.ndarray, classes: Sequence[str]) -> list[dict[str, Any]]:
    """``{"index", "name", "fraction"}`` of each class present in a label map, largest
    first; the fractions sum to 1."""
    counts = np.bincount(np.asarray(labels).ravel(), minlength=len(classes))
    order = np.argsort(-counts, kind="stable")
    total = counts.sum()
    return [
        {"index": int(c), "name": classes[c], "fraction": float(counts[c] / total)}
        for c in order
        if counts[c] > 0
    ]


def output_names(paths: Sequence[str]) -> list[str]:
    """Each image's output stem (its file name less the extension); ``ValueError`` when two
    images share one (their files would overwrite each other)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    seen: dict[str, str] = {}
    for path, stem in zip(paths, stems, strict=True):
        if stem in seen:
            raise ValueError(f"images {seen[stem]} and {path} would both write {stem}.png")
        seen[stem] = path
    return stems


def segment_files(
    segmenter: Segmenter, paths: Sequence[str], output: str, *, workers: int = 2
) -> list[dict[str, Any]]:
    """Segment image files: ``output/<stem>.png`` (the label map at the image's size, a
    palette PNG in the classes' colours) and ``output/<stem>_overlay.jpg``; returns, per
    image, ``{"image", "mask", "overlay", "classes": class_fractions(...)}``."""
    from efficientvit_jax.data.image import load_image

    stems = dict(zip(paths, output_names(paths), strict=True))
    os.makedirs(output, exist_ok=True)

    def load(path: str) -> tuple[np.ndarray, np.ndarray]:
        image = np.asarray(load_image(path))
        return image, segmenter.transform(image)

    results = []
    for group in same_shape_groups(ordered_map(load, paths, workers=workers), segmenter.batch_size):
        size = group[0][1][0].shape[:2]
        maps = segmenter.label_maps([x for _, (_, x) in group], size)
        for (path, (image, _)), labels in zip(group, maps, strict=True):
            mask = os.path.join(output, stems[path] + ".png")
            over = os.path.join(output, stems[path] + "_overlay.jpg")
            palette_png(labels, segmenter.colors).save(mask)
            from PIL import Image

            Image.fromarray(overlay(image, labels, segmenter.colors)).save(over, quality=90)
            fractions = class_fractions(labels, segmenter.classes)
            results.append({"image": path, "mask": mask, "overlay": over, "classes": fractions})
    return results


def report_classes(segmenter: Segmenter, dataset: SegDataset, what: str) -> tuple[str, ...]:
    """The names of the model's outputs for a report on ``dataset``: the dataset's own where
    it names them (Cityscapes, ADE20K, a ``classes.txt``), the model's otherwise. A dataset
    naming more classes than the model has outputs, or a Cityscapes or ADE20K dataset with
    another count, is a ``ValueError`` naming ``what``. (Unnamed classes are checked per mask,
    as label values out of range.)"""
    k, n = segmenter.num_classes, dataset.num_classes
    if dataset.classes == tuple(str(i) for i in range(n)):  # generic without classes.txt
        return segmenter.classes
    if n > k or (dataset.layout != "generic" and n != k):
        raise ValueError(
            f"{what} is a {dataset.layout} dataset of {n} classes; the model has {k} outputs"
        )
    return dataset.classes + segmenter.classes[n:]
