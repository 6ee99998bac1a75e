"""``train(config, workdir)``: a ``TrainConfig`` run end to end, like flax's
``train_and_evaluate``. The digits job, folder training (from scratch or fine-tuned, any
zoo family) and segmentation (an ``efficientvit_seg_*`` model on a segmentation dataset:
``training.seg``, ``training.seg_data``) are the same call; ``efficientvit-jax train`` only
builds the config.

A run folder holds ``config.json`` (the recipe), ``run.json`` (what the data decided: the
class names and the evaluation data config; for segmentation also the task, the layout and
the ignore index), ``checkpoints/``, ``metrics.json``, ``curves.png`` (and a segmentation
run's ``predictions.png``); ``efficientvit_jax.load_run`` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from efficientvit_jax.training.checkpoint import CHECKPOINTS, open_run_checkpoints
from efficientvit_jax.training.config import (
    OPERATIONAL,
    TrainConfig,
    flatten,
    load_config,
    resume_config,
    save_config,
)

RUN_FILE = "run.json"
DIGIT_CLASSES = tuple(str(i) for i in range(10))


@dataclasses.dataclass(frozen=True)
class _Data:
    """What the data of a run decided before the model exists."""

    classes: tuple[str, ...]
    splits: Any = None  # folders: ``training.folders.Splits``
    digits: Any = None  # digits: ``training.digits.Split``
    seg: Any = None  # segmentation: ``training.seg_data.SegSplits``


def train(config: TrainConfig, workdir: str | os.PathLike, *, resume: bool = False) -> dict:
    """Run ``config``, writing into ``workdir``; returns the final metrics.

    With ``resume`` the newest intact checkpoint in ``workdir/checkpoints`` is continued, and
    ``config`` must be the stored recipe up to operational fields (``resume_config``; the
    epochs may grow). Without it, a ``workdir`` that already holds checkpoints is refused.
    Every check (config, data layout, weights file, output folder) runs before anything is
    written; a user's mistake is a one-line ``ValueError``.
    """
    from efficientvit_jax._io import check_output_folder
    from efficientvit_jax.training import distributed, recipe, sharding
    from efficientvit_jax.training.job import train_classifier

    t_start, workdir = time.perf_counter(), os.fspath(workdir)
    config, note = _resumed(config, workdir) if resume else (config, None)
    check_output_folder(workdir)  # before any work, writing nothing: a bad --output fails now
    # Joins the processes of a multi-process run: each then decodes only its rows of every
    # batch (``_source``), all take part in every step, evaluation and checkpoint, and
    # process 0 alone prints and writes the run's files.
    setup = distributed.setup_from_options(config.mesh, config.precision)
    main = setup.process_index == 0
    if note and main:
        print(note, flush=True)
    sharding.check_batch_size(config.data.batch_size, setup.mesh)
    data = _read_data(config)
    dtypes = setup.model_options if setup.precision != "float32" else {}
    model = recipe.build_model(config, len(data.classes), dtypes)
    stats = (data.digits.mean, data.digits.std) if data.digits is not None else None
    eval_data = recipe.data_config(config, model, stats)
    # A fresh run reads --weights; a resumed one, the head its run.json recorded (no file).
    head = _recorded_head(workdir) if resume else None
    tuning = recipe.pretrained_tuning(config, model, len(data.classes), head=head)
    source, skipped = _source(config, data, eval_data, setup)
    task = _task(config, model, data, source)
    if main:
        print(recipe.describe_model(config, model), flush=True)
    ckpt = open_run_checkpoints(workdir, identity(config), config.output.keep, resume=resume)
    if main:
        save_config(config, workdir)
        _write_run_file(workdir, data, eval_data, tuning.head)
    info = {**config.to_dict(), "classes": list(data.classes)}
    metrics = train_classifier(
        model, source, config, ckpt, workdir, setup, tuning=tuning, task=task, resume=resume,
        run_info=info, t_start=t_start,
    )  # fmt: skip
    _report_skipped(skipped(), setup)
    return metrics


def _report_skipped(skipped: list[tuple[str, str]], setup: Any) -> None:
    """Each process read its own files, so each names the unreadable ones it met."""
    files = list(dict.fromkeys(p for p, _ in skipped))  # once each, first seen first
    if files:
        who = f"process {setup.process_index}: " if setup.process_count > 1 else ""
        print(f"{who}skipped {len(files)} unreadable file(s): {', '.join(files)}")


def stored_config(workdir: str | os.PathLike) -> TrainConfig:
    """The recipe of the run in ``workdir``, to resume it (one line if there is none)."""
    workdir = os.fspath(workdir)
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        raise ValueError(f"--resume: no checkpoint folder {os.path.join(workdir, CHECKPOINTS)}")
    return load_config(workdir)


def _resumed(config: TrainConfig, workdir: str) -> tuple[TrainConfig, str | None]:
    """``config`` checked against the stored recipe, and a note on how an extended schedule
    goes on (printed once the process that prints is known)."""
    stored = stored_config(workdir)
    config = resume_config(stored, config)
    old, new = stored.schedule.epochs, config.schedule.epochs
    if new <= old:
        return config, None
    return config, (
        f"extending the run from {old} to {new} epochs: the warm-up is kept and the "
        f"cosine decay is stretched over {new} epochs from the step reached"
    )


def _read_data(config: TrainConfig) -> _Data:
    """The digits, or the folder tree's splits (one-line errors for bad layouts)."""
    if config.is_digits:
        from efficientvit_jax.training.digits import load_digits_split

        b = config.model.builder
        digits = load_digits_split(b.image_size, b.data_format)
        n = len(digits.train_images)
        if config.data.batch_size > n:
            raise ValueError(
                f"--batch-size must be <= {n} (the training images), got "
                f"{config.data.batch_size} (data.batch_size)"
            )
        return _Data(DIGIT_CLASSES, digits=digits)
    from efficientvit_jax.training import recipe

    if recipe.is_segmentation(config):
        return _Data(*_read_seg_data(config))
    from efficientvit_jax.training.folders import find_splits

    splits = find_splits(config.data.folder, config.data.val_split)
    return _Data(tuple(splits.classes), splits=splits)


def _read_seg_data(config: TrainConfig) -> tuple[tuple[str, ...], None, None, Any]:
    """A segmentation dataset's splits, after the rules only segmentation has."""
    from efficientvit_jax.training import recipe
    from efficientvit_jax.training.seg_data import find_seg_splits

    if config.data.val_split is not None:
        raise ValueError(
            "--val-split: a segmentation dataset brings its own val split (data.val_split)"
        )
    size = recipe.resolved_image_size(config)
    if size % 32:
        raise ValueError(f"--image-size must be a multiple of 32 for a segmentation model (its "
                         f"stride-32 stage), got {size} (model.image_size)")  # fmt: skip
    splits = find_seg_splits(config.data.folder, skip_bad=config.data.skip_bad)
    return splits.classes, None, None, splits


def _source(config: TrainConfig, data: _Data, eval_data: Any, setup: Any) -> tuple[Any, Any]:
    """``(Source, skipped())``: the batches of the run, and the unreadable files so far."""
    from efficientvit_jax.data import create_transform
    from efficientvit_jax.training import recipe
    from efficientvit_jax.training.job import array_source, eval_batch_size

    d = config.data
    share = {"process_index": setup.process_index, "process_count": setup.process_count}
    eval_bs = eval_batch_size(d.eval_batch_size, setup)
    if data.digits is not None:
        return array_source(data.digits, d.batch_size, eval_bs, config.seed, **share), list
    if data.seg is not None:
        return _seg_source(config, data, eval_data.data_format, eval_bs, share)
    from efficientvit_jax.training.folders import folder_source

    k = len(data.classes)
    augment, mix = recipe.augmenter(config.augment.level, eval_data, k, config.model.name)
    source, pipe = folder_source(
        data.splits, augment, create_transform(eval_data), batch_size=d.batch_size,
        eval_batch_size=eval_bs, seed=config.seed, workers=d.workers, mix=mix,
        skip_bad=d.skip_bad, **share,
    )  # fmt: skip
    return source, lambda: list(pipe.skipped)


def _seg_source(config: TrainConfig, data: _Data, fmt: str, eval_bs: int, share: dict) -> tuple:
    """A segmentation run's ``(Source, skipped())``: held-out images in the model's layout."""
    from efficientvit_jax.data.seg_transform import mit_eval_transform
    from efficientvit_jax.training import recipe
    from efficientvit_jax.training.seg_data import seg_source

    d = config.data
    return seg_source(
        data.seg, recipe.seg_augmenter(config, data.seg.layout),
        mit_eval_transform(data.seg.layout, fmt), batch_size=d.batch_size,
        eval_batch_size=eval_bs, seed=config.seed, workers=d.workers, skip_bad=d.skip_bad,
        **share,
    )  # fmt: skip


PREDICTIONS_SHOWN = 4  # held-out images in a segmentation run's predictions.png


def _task(config: TrainConfig, model: Any, data: _Data, source: Any) -> Any:
    """Classification, or segmentation with its loss, mIoU and predictions plot."""
    from efficientvit_jax.training.job import CLASSIFICATION

    if data.seg is None:
        return CLASSIFICATION
    from efficientvit_jax.data.segmentation import dataset_colors
    from efficientvit_jax.training.seg import predictions_plot, segmentation_task

    k, seg = len(data.classes), data.seg
    plot = predictions_plot(
        model, lambda: source.held_out.samples(PREDICTIONS_SHOWN), data.classes,
        dataset_colors(seg.layout, k),
    )  # fmt: skip
    return segmentation_task(
        model, k, label_smoothing=config.optim.label_smoothing,
        ignore_index=seg.train.ignore_index, finish=plot,
    )  # fmt: skip


def identity(config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must have been saved under to be resumed: the recipe without its
    operational fields and its length (which a resume may extend)."""
    return {
        k: v for k, v in flatten(config).items()
        if k not in OPERATIONAL and k != "schedule.epochs"
    }  # fmt: skip


def _write_run_file(workdir: str, data: _Data, eval_data: Any, head: tuple[str, ...]) -> None:
    from efficientvit_jax._io import write_json
    from efficientvit_jax.training.checkpoint import config_to_dict

    info = {"classes": list(data.classes), "data_config": config_to_dict(eval_data)}
    if head:  # a fine-tuning run: what did not come from --weights (``Tuning.head``)
        info["head"] = list(head)
    if data.seg is not None:  # what segment and eval need beyond the classes
        from efficientvit_jax.training.seg_data import seg_run_info

        info.update(seg_run_info(data.seg))
    write_json(os.path.join(workdir, RUN_FILE), info)


def _recorded_head(workdir: str) -> list[str] | None:
    """The head a fine-tuning run recorded in its ``run.json``; ``None`` where there is none
    (a run from scratch, or one written before runs recorded it: the weights file tells)."""
    try:
        head = read_run_file(workdir).get("head")
    except ValueError:
        return None
    if isinstance(head, list) and head and all(isinstance(h, str) for h in head):
        return head
    return None


def read_run_file(workdir: str) -> dict[str, Any]:
    """``run.json`` of a run folder: ``classes`` and ``data_config`` (a segmentation run:
    also ``task``, ``layout`` and ``ignore_index``)."""
    path = os.path.join(workdir, RUN_FILE)
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable ({e}); the run did not get to start") from None
    if not isinstance(info, dict) or not {"classes", "data_config"} <= set(info):
        raise ValueError(f"{path}: not a run file (needs classes and data_config)")
    return info


__all__ = ["read_run_file", "stored_config", "train"]
