"""The recipe of a SAM fine-tuning run as data: one frozen, validated dataclass
(``SamTuneConfig``), stored in the run folder as ``config.json`` with ``"task": "sam"``.

A segment-anything model learns from prompts, not classes, so its recipe is not a
``TrainConfig``: the options it shares with the other runs keep their flags (``--data``,
``--model``, ``--weights``, ``--epochs``, ``--batch-size``, ...), and its own are the prompts'
and the loss's. Every rule is checked in ``__post_init__`` with a one-line ``ValueError``
naming the flag, before any work. No JAX here: the CLI validates a recipe cheaply.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from efficientvit_jax.training.config import check_continues

CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
TASK = "sam"
DEFAULT_MODEL = "efficientvit_sam_l0"
# What a resume may change: how far and how often, not what is computed.
OPERATIONAL = frozenset({"max_steps", "save_every", "keep", "progress"})


def _flag(flag: str, default: Any = None) -> Any:
    return dataclasses.field(default=default, metadata={"flag": flag})


@dataclasses.dataclass(frozen=True)
class SamTuneConfig:
    """A SAM fine-tuning recipe (``training.sam.finetune_sam`` runs it).

    Attributes:
      data: a segmentation dataset root with train and val splits (the generic layout:
        ``train/`` and ``val/``, each ``images/`` + ``masks/``; Cityscapes and ADE20K too).
      model: a registered SAM variant (``efficientvit_sam_l0`` ..).
      weights: MIT's checkpoint file (``.pt``, ``.safetensors``) or a ``convert`` folder to
        start from; checkpoint: a SAM fine-tuning run to start from; neither: random
        initialisation from ``seed`` (tests, or a model trained from nothing).
      image_size: the encoder's input side (``None``: the variant's, 512 for L, 1024 for XL).
      architecture: ``SamConfig`` fields replaced (a small model for tests; the backbone's
        as a mapping of ``MITConfig`` fields under ``"backbone"``).
      train_encoder: also train the image encoder (its BatchNorms keep their statistics);
        default: only the prompt encoder and mask decoder, the embeddings computed once.
      prompts_per_image, max_points, box_prob, negative_prob: the prompts
        (``training.sam_prompts.PromptSpec``); min_mask_area: instances smaller than this
        (pixels of the image) are not prompted.
      focal_weight, dice_weight, iou_weight: the loss's terms (SAM: 20, 1, 1).
      batch_size: images per step (each with ``prompts_per_image`` prompts);
        eval_batch_size: held-out images per call.
      epochs, learning_rate, weight_decay, warmup_steps, max_steps: AdamW with warm-up
        and cosine decay (``training.steps.make_optimizer``).
      save_every, keep, progress: checkpoints and the progress bar.
      skip_bad: leave out images without their mask or unreadable (listed).
      seed: initialisation (random start), the batch order and the training prompts.
    """

    data: str | None = _flag("--data")
    model: str = _flag("--model", DEFAULT_MODEL)
    weights: str | None = _flag("--weights")
    checkpoint: str | None = _flag("--checkpoint")
    image_size: int | None = _flag("--image-size")
    architecture: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_encoder: bool = _flag("--train-encoder", False)
    prompts_per_image: int = _flag("--prompts-per-image", 4)
    max_points: int = _flag("--max-points", 3)
    box_prob: float = _flag("--box-prob", 0.5)
    negative_prob: float = _flag("--negative-prob", 0.5)
    min_mask_area: int = _flag("--min-mask-area", 16)
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    batch_size: int = _flag("--batch-size", 4)
    eval_batch_size: int = _flag("--eval-batch-size", 8)
    epochs: int = _flag("--epochs", 8)
    learning_rate: float = _flag("--learning-rate", 1e-4)
    weight_decay: float = _flag("--weight-decay", 0.1)
    warmup_steps: int | None = _flag("--warmup-steps")
    max_steps: int | None = _flag("--max-steps")
    save_every: int = _flag("--save-every", 100)
    keep: int = _flag("--keep", 3)
    progress: bool = True
    skip_bad: bool = _flag("--skip-bad", False)
    seed: int = _flag("--seed", 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "architecture", dict(self.architecture or {}))
        self._need(isinstance(self.data, str) and self.data != "", "data", "a dataset folder")
        self._need(isinstance(self.model, str) and self.model != "", "model", "a SAM variant")
        self._requires_one_start()
        for name in ("prompts_per_image", "max_points", "min_mask_area", "batch_size",
                     "eval_batch_size", "epochs", "save_every", "keep"):  # fmt: skip
            self._int(name, 1)
        for name in ("image_size", "max_steps"):
            if getattr(self, name) is not None:
                self._int(name, 1)
        if self.warmup_steps is not None:
            self._int("warmup_steps", 0)
        self._int("seed", 0)
        for name in ("box_prob", "negative_prob"):
            v = getattr(self, name)
            self._need(_number(v) and 0 <= v <= 1, name, "in [0, 1]")
        for name in ("focal_weight", "dice_weight", "iou_weight", "weight_decay"):
            v = getattr(self, name)
            self._need(_number(v) and v >= 0, name, "a finite number >= 0")
        lr = self.learning_rate
        self._need(_number(lr) and lr > 0, "learning_rate", "a finite number > 0")
        for name in ("train_encoder", "progress", "skip_bad"):
            self._need(isinstance(getattr(self, name), bool), name, "true or false")

    def _need(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            f = {x.name: x for x in dataclasses.fields(self)}[name]
            flag = f.metadata.get("flag")
            where = f"{flag} must be" if flag else f"{name} must be"
            suffix = f" ({name})" if flag else ""
            raise ValueError(f"{where} {rule}, got {getattr(self, name)!r}{suffix}")

    def _int(self, name: str, low: int) -> None:
        v = getattr(self, name)
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= low
        self._need(ok, name, f"an int >= {low}")

    def _requires_one_start(self) -> None:
        if self.weights is not None and self.checkpoint is not None:
            raise ValueError("--weights and --checkpoint: give one start (a checkpoint file, or "
                             "a SAM fine-tuning run), not both")  # fmt: skip

    def replace(self, **fields: Any) -> SamTuneConfig:
        return dataclasses.replace(self, **fields)

    def to_dict(self) -> dict[str, Any]:
        from efficientvit_jax.training.checkpoint import config_to_dict

        return {"format": FORMAT_VERSION, "task": TASK, **config_to_dict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamTuneConfig:
        """The config ``to_dict`` wrote; unknown keys and bad values are ``ValueError``."""
        d = dict(d)
        version, task = d.pop("format", None), d.pop("task", None)
        if version != FORMAT_VERSION or task != TASK:
            raise ValueError(f"not a SAM fine-tuning config (format {version!r}, task {task!r}; "
                             f"expected {FORMAT_VERSION}, {TASK!r})")  # fmt: skip
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint must have been saved under to be resumed: the recipe without its
        operational fields and its length (a resume may extend it)."""
        d = self.to_dict()
        return {k: v for k, v in d.items() if k not in OPERATIONAL and k != "epochs"}


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_sam_run(workdir: str | os.PathLike) -> bool:
    """Whether ``workdir`` holds a SAM fine-tuning run's ``config.json``."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("task") == TASK


def save_config(config: SamTuneConfig, workdir: str) -> str:
    from efficientvit_jax._io import write_json

    path = os.path.join(workdir, CONFIG_FILE)
    write_json(path, config.to_dict())
    return path


def load_config(workdir: str | os.PathLike) -> SamTuneConfig:
    """``workdir/config.json`` of a SAM fine-tuning run (one-line ``ValueError`` otherwise)."""
    path = os.path.join(os.fspath(workdir), CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{os.fspath(workdir)}: no {CONFIG_FILE}: not a run folder")
    try:
        with open(path) as f:
            return SamTuneConfig.from_dict(json.load(f))
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: unreadable run config ({e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def resume_config(stored: SamTuneConfig, new: SamTuneConfig) -> SamTuneConfig:
    """``new`` when it continues ``stored``'s run (the same recipe up to operational fields,
    ``epochs`` equal or larger); one line naming every difference otherwise."""
    a, b = stored.to_dict(), new.to_dict()
    diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
             if k not in OPERATIONAL | {"epochs"} and a.get(k) != b.get(k)]  # fmt: skip
    check_continues(diffs, "epochs", stored.epochs, new.epochs)
    return new


__all__ = [
    "DEFAULT_MODEL",
    "SamTuneConfig",
    "is_sam_run",
    "load_config",
    "resume_config",
    "save_config",
]
