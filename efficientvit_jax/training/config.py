"""The training recipe as data: one frozen, validated dataclass tree (``TrainConfig``).

``efficientvit_jax.training.train(config, workdir)`` runs it; ``efficientvit-jax train`` only
turns its flags into it (each field's ``flag`` metadata names the flag). A run folder stores
the config as ``config.json``; ``--resume`` reads it back and ``resume_config`` compares typed
fields, so a run is continued only under the recipe that started it.

Every rule is checked in ``__post_init__`` with a one-line ``ValueError`` naming the field
(and its flag), so a bad recipe fails before any work, in Python as on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from typing import Any

from efficientvit_jax.config import REMAT_OPTIONS, EfficientViTConfig, check_option_names

CONFIG_FILE = "config.json"
# The format of config.json; a run folder without it (or of another version) is refused with
# a message saying so.
FORMAT_VERSION = 1
AUGMENT_LEVELS = ("none", "light", "strong")
PRECISIONS = ("float32", "bfloat16", "float16")
LOSS_SCALES = ("auto", "dynamic", "none")
DEFAULT_MIN_FSDP_SIZE = 2**12  # = sharding.DEFAULT_MIN_FSDP_SIZE (not imported: no jax here)


def _flag(flag: str, default: Any = None) -> Any:
    return dataclasses.field(default=default, metadata={"flag": flag})


class _Section:
    """Validation helpers shared by the sections: a failed rule names ``section.field``
    and the flag that sets it."""

    _section = ""

    def _need(self, ok: bool, name: str, rule: str) -> None:
        """``ValueError`` unless ``ok``: "--flag must be RULE, got VALUE (section.field)"; the
        flag first, as the command line says it, the field for the library's users."""
        if not ok:
            f = {x.name: x for x in dataclasses.fields(self)}[name]  # type: ignore[arg-type]
            field = f"{self._section}.{name}"
            flag = f.metadata.get("flag")
            value = getattr(self, name)
            if flag is None:
                raise ValueError(f"{field} must be {rule}, got {value!r}")
            raise ValueError(f"{flag} must be {rule}, got {value!r} ({field})")

    def _requires(self, ok: bool, name: str, other: str, why: str) -> None:
        """A rule between two fields: "--flag needs --other (why)"."""
        if not ok:
            fields = {x.name: x for x in dataclasses.fields(self)}  # type: ignore[arg-type]
            flag = fields[name].metadata.get("flag", f"{self._section}.{name}")
            raise ValueError(f"{flag} needs {other} ({why}; {self._section}.{name})")

    def _positive(self, *names: str, optional: bool = False) -> None:
        for n in names:
            v = getattr(self, n)
            if not (optional and v is None):
                self._need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, n, ">= 1")

    def _switch(self, *names: str) -> None:
        """Booleans are ``True``/``False`` (a hand-edited config.json's ``"yes"`` is refused)."""
        for n in names:
            self._need(isinstance(getattr(self, n), bool), n, "true or false")

    def _finite(self, name: str, low: float, high: float | None = None) -> None:
        v = getattr(self, name)
        ok = isinstance(v, (int, float)) and math.isfinite(v) and v >= low
        ok = ok and (high is None or v < high)
        rule = f"in [{low}, {high})" if high is not None else f"a finite number >= {low}"
        self._need(ok, name, rule)


@dataclasses.dataclass(frozen=True)
class DataOptions(_Section):
    """Where the images come from and how they are batched.

    ``folder`` is ``DIR`` with ``train/`` and ``val/`` class folders (or one tree split by
    ``val_split``); ``None`` is scikit-learn's digits (the main job).
    """

    _section = "data"
    folder: str | None = _flag("--data")
    val_split: float | None = _flag("--val-split")
    batch_size: int = _flag("--batch-size", 64)
    eval_batch_size: int = _flag("--eval-batch-size", 120)
    workers: int = _flag("--workers", 2)
    skip_bad: bool = _flag("--skip-bad", False)

    def __post_init__(self) -> None:
        self._positive("batch_size", "eval_batch_size")
        self._switch("skip_bad")
        self._need(isinstance(self.workers, int) and self.workers >= 0, "workers", ">= 0")
        if self.val_split is not None:
            v = self.val_split
            self._need(isinstance(v, (int, float)) and 0 < v < 1, "val_split", "in (0, 1)")
            self._requires(
                self.folder is not None, "val_split", "--data", "the digits job has its split"
            )


@dataclasses.dataclass(frozen=True)
class ModelOptions(_Section):
    """The model: a zoo name or timm tag (``name``), optionally started from ``weights``
    (a timm file or a ``convert`` folder), or the core builder's ``builder`` config.

    ``image_size`` ``None`` is the tag's size (224 for a bare zoo name); with ``builder`` the
    builder's own ``image_size`` counts. ``builder.num_classes`` ``None`` is the class count
    of the data.
    """

    _section = "model"
    name: str | None = _flag("--model")
    weights: str | None = _flag("--weights")
    image_size: int | None = _flag("--image-size")
    freeze_backbone: bool = _flag("--freeze-backbone", False)
    builder: EfficientViTConfig | None = None
    # --remat with --model (the builder's own is builder.remat): the MIT family's blocks,
    # recomputed in the backward pass (a Cityscapes-size crop on one device)
    remat: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.builder, Mapping):  # from JSON
            check_option_names(self.builder)  # unknown keys: ValueError, not TypeError
            object.__setattr__(self, "builder", EfficientViTConfig(**self.builder))
        self._need(self.builder is None or isinstance(self.builder, EfficientViTConfig),
                   "builder", "an EfficientViTConfig (or None)")  # fmt: skip
        self._switch("freeze_backbone")
        self._positive("image_size", optional=True)
        self._need(self.remat in REMAT_OPTIONS, "remat", f"one of {', '.join(REMAT_OPTIONS)}")
        if self.name is None:
            self._need(self.builder is not None, "builder", "a core config without --model")
            self._requires(self.weights is None, "weights", "--model (a zoo name or tag)",
                           "the core builder has no pretrained weights")  # fmt: skip
        else:
            self._need(self.builder is None, "builder", "None with --model (a zoo model)")
        self._requires(self.name is not None or self.remat == "none", "remat", "--model",
                       "the core builder's own is builder.remat")  # fmt: skip
        self._requires(not self.freeze_backbone or self.weights is not None, "freeze_backbone",
                       "--weights", "a frozen random backbone learns nothing")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class OptimOptions(_Section):
    """AdamW: peak learning rate, decoupled weight decay, label smoothing; with ``weights``
    the backbone learns at ``backbone_lr_scale`` times the head's rate."""

    _section = "optim"
    learning_rate: float = _flag("--learning-rate", 3e-3)
    weight_decay: float = _flag("--weight-decay", 0.05)
    label_smoothing: float = _flag("--label-smoothing", 0.1)
    backbone_lr_scale: float = _flag("--backbone-lr-scale", 0.1)

    def __post_init__(self) -> None:
        lr = self.learning_rate
        self._need(isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0,
                   "learning_rate", "a finite number > 0")  # fmt: skip
        self._finite("weight_decay", 0)
        self._finite("label_smoothing", 0, 1)
        self._finite("backbone_lr_scale", 0)


@dataclasses.dataclass(frozen=True)
class ScheduleOptions(_Section):
    """Linear warm-up (default 5% of all steps) then cosine decay over ``epochs``;
    ``max_steps`` stops earlier without changing the schedule."""

    _section = "schedule"
    epochs: int = _flag("--epochs", 12)
    warmup_steps: int | None = _flag("--warmup-steps")
    max_steps: int | None = _flag("--max-steps")

    def __post_init__(self) -> None:
        self._positive("epochs")
        self._positive("max_steps", optional=True)
        w = self.warmup_steps
        self._need(w is None or (isinstance(w, int) and w >= 0), "warmup_steps", ">= 0")


@dataclasses.dataclass(frozen=True)
class AugmentOptions(_Section):
    """Training augmentation of folder runs: ``none`` (the eval transform), ``light``,
    ``strong`` (the recipe of the paper that trained the model). Segmentation runs
    (``data.seg_augment``): ``none`` the centre crop, ``light`` random scale (``scale_range``
    times the evaluation size), crop and flip, ``strong`` also photometric jitter."""

    _section = "augment"
    level: str = _flag("--augment", "light")
    scale_range: tuple[float, float] = _flag("--scale-range", (0.5, 2.0))

    def __post_init__(self) -> None:
        self._need(self.level in AUGMENT_LEVELS, "level", f"one of {', '.join(AUGMENT_LEVELS)}")
        r = self.scale_range
        if isinstance(r, list):  # from JSON
            object.__setattr__(self, "scale_range", r := tuple(r))
        ok = isinstance(r, tuple) and len(r) == 2
        ok = ok and all(isinstance(v, (int, float)) and math.isfinite(v) for v in r)
        self._need(ok and 0 < r[0] <= r[1], "scale_range", "LOW,HIGH with 0 < LOW <= HIGH")


@dataclasses.dataclass(frozen=True)
class EMAOptions(_Section):
    """An exponential moving average of the weights, kept beside them (``None``: none)."""

    _section = "ema"
    decay: float | None = _flag("--ema-decay")

    def __post_init__(self) -> None:
        if self.decay is not None:
            self._finite("decay", 0, 1)


@dataclasses.dataclass(frozen=True)
class PrecisionOptions(_Section):
    """Compute dtype (parameters, attention sums and the loss stay float32) and dynamic loss
    scaling (``auto``: on for float16 only)."""

    _section = "precision"
    precision: str = _flag("--precision", "float32")
    loss_scale: str = _flag("--loss-scale", "auto")
    loss_scale_init: float = _flag("--loss-scale-init", 2.0**15)
    loss_scale_interval: int = _flag("--loss-scale-interval", 2000)

    def __post_init__(self) -> None:
        self._need(self.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
        self._need(self.loss_scale in LOSS_SCALES, "loss_scale", f"one of {', '.join(LOSS_SCALES)}")
        self._finite("loss_scale_init", 1)
        self._positive("loss_scale_interval")


@dataclasses.dataclass(frozen=True)
class MeshOptions(_Section):
    """Devices and processes (docs/scaling.md): the ``data``/``fsdp`` mesh, simulated CPU
    devices, and the coordinates of a multi-process run."""

    _section = "mesh"
    mesh: str = _flag("--mesh", "")
    min_fsdp_size: int = _flag("--min-fsdp-size", DEFAULT_MIN_FSDP_SIZE)
    cpu_devices: int | None = _flag("--cpu-devices")
    coordinator: str | None = _flag("--coordinator")
    num_processes: int | None = _flag("--num-processes")
    process_id: int | None = _flag("--process-id")
    distributed: bool = _flag("--distributed", False)

    def __post_init__(self) -> None:
        self._positive("cpu_devices", "num_processes", optional=True)
        self._switch("distributed")
        m = self.min_fsdp_size
        self._need(isinstance(m, int) and m >= 0, "min_fsdp_size", ">= 0")
        p = self.process_id
        self._need(p is None or (isinstance(p, int) and p >= 0), "process_id", ">= 0")


@dataclasses.dataclass(frozen=True)
class OutputOptions(_Section):
    """Checkpoints every ``save_every`` steps (and at the end), ``keep`` of them, and the
    progress bar."""

    _section = "output"
    save_every: int = _flag("--save-every", 100)
    keep: int = _flag("--keep", 3)
    progress: bool = True

    def __post_init__(self) -> None:
        self._positive("save_every", "keep")
        self._switch("progress")


SECTIONS: dict[str, type] = {
    "data": DataOptions,
    "model": ModelOptions,
    "optim": OptimOptions,
    "schedule": ScheduleOptions,
    "augment": AugmentOptions,
    "ema": EMAOptions,
    "precision": PrecisionOptions,
    "mesh": MeshOptions,
    "output": OutputOptions,
}
# Fields that do not change what a run computes: a resume may change them freely.
OPERATIONAL = frozenset(
    {"data.workers", "schedule.max_steps", "output.save_every", "output.keep",
     "output.progress"} | {f"mesh.{f.name}" for f in dataclasses.fields(MeshOptions)}
)  # fmt: skip


# The main job's model: the default architecture (depths 1,2,3, heads 4,4,4, mlp_ratio 4)
# scaled down to 1,797 tiny images. The 8x8 digits are upsampled to 32x32 and cut into 4x4
# patches, so the token grids are 8x8 -> 4x4 -> 2x2, the same shrinking as 224/16 on
# ImageNet; embed_dim 16 (widths 16, 32, 64) trains in about a minute on 2 CPU cores and
# generalises better here than wider models, with drop path and label smoothing 0.1.
DIGITS_MODEL = EfficientViTConfig(
    image_size=32, patch_size=4, in_channels=1, embed_dim=16, num_classes=10,
    drop_path_rate=0.1,
)  # fmt: skip


# Segmentation runs: what differs from the classifiers' defaults (``efficientvit-jax train``
# starts a segmentation model's run from these; ``TrainConfig(...).with_values(SEG_DEFAULTS)``
# in Python). Batches of 8 crops (mmsegmentation's 8 GPUs x 1-2 at 512-1024 px), held-out
# images 2 at a time (a Cityscapes image is 1024x2048), no label smoothing (segmentation
# recipes have none), the whole augmentation recipe with its photometric jitter.
SEG_DEFAULTS = {
    "data.batch_size": 8,
    "data.eval_batch_size": 2,
    "optim.label_smoothing": 0.0,
    "augment.level": "strong",
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training recipe; the defaults are the main job (the digits). ``seed`` drives
    initialisation, shuffling, augmentation and drop path (the digits' held-out split is
    fixed). ``data.folder`` set: training on image folders, the model a zoo name or tag
    (``model.name``) or the core builder (``model.builder``, with ``num_classes`` ``None``:
    the data's class count)."""

    data: DataOptions = DataOptions()
    model: ModelOptions = ModelOptions(builder=DIGITS_MODEL)
    optim: OptimOptions = OptimOptions()
    schedule: ScheduleOptions = ScheduleOptions()
    augment: AugmentOptions = AugmentOptions()
    ema: EMAOptions = EMAOptions()
    precision: PrecisionOptions = PrecisionOptions()
    mesh: MeshOptions = MeshOptions()
    output: OutputOptions = OutputOptions()
    seed: int = 0

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        seed = self.seed  # NumPy's default_rng (the shuffling) takes no negative seed
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"--seed must be an int >= 0, got {seed!r} (seed)")
        if self.data.folder is None:
            self._check_digits()
        elif self.model.builder is not None and self.model.builder.in_channels not in (1, 3):
            raise ValueError(f"--in-channels must be 1 (grey) or 3 (RGB) for image folders, got "
                             f"{self.model.builder.in_channels} (model.builder.in_channels)")  # fmt: skip

    def _check_digits(self) -> None:
        """The digits job: the core builder on grey 10-class images, nothing of folders."""
        m = self.model
        if m.name is not None:
            raise ValueError("--model needs --data (the digits job trains the core builder; "
                             "model.name needs data.folder)")  # fmt: skip
        b = m.builder
        if b.in_channels != 1:
            raise ValueError(f"--in-channels must be 1 for the digits (grey images), got "
                             f"{b.in_channels} (model.builder.in_channels)")  # fmt: skip
        if b.num_classes not in (None, 10):
            raise ValueError(f"--num-classes must be 10 for the digits, got {b.num_classes} "
                             "(model.builder.num_classes)")  # fmt: skip

    @property
    def is_digits(self) -> bool:
        return self.data.folder is None

    def replace(self, **sections: Any) -> TrainConfig:
        return dataclasses.replace(self, **sections)

    def with_values(self, values: Mapping[str, Any]) -> TrainConfig:
        """A copy with ``{"section.field": value}`` set (``"model.builder.embed_dim"`` too)."""
        grouped: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for path, v in values.items():
            head, _, rest = path.partition(".")
            if rest:
                grouped.setdefault(head, {})[rest] = v
            else:
                top[path] = v
        for name, fields in grouped.items():
            if name not in SECTIONS:
                raise ValueError(f"unknown config section {name!r} (known: {', '.join(SECTIONS)})")
            top[name] = _replace_section(getattr(self, name), fields)
        unknown = set(top) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown config field(s) {', '.join(sorted(unknown))} (known: "
                             f"{', '.join(f.name for f in dataclasses.fields(self))})")  # fmt: skip
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        from efficientvit_jax.training.checkpoint import config_to_dict

        return {"format": FORMAT_VERSION, **config_to_dict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """The config ``to_dict`` wrote; unknown keys and bad values are ``ValueError``."""
        d = dict(d)
        version = d.pop("format", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"config format {version!r} is not {FORMAT_VERSION} (another "
                             "efficientvit-jax version wrote it)")  # fmt: skip
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        kw: dict[str, Any] = {k: v for k, v in d.items() if k not in SECTIONS}
        for name, section in SECTIONS.items():
            if name in d:
                kw[name] = _section_from_dict(section, name, d[name])
        return cls(**kw)


# The digits segmentation job (docs/segmentation-training.md): MIT's smallest segmentation
# model, EfficientViT-Seg B0 (its Cityscapes head, 11 classes here), on the 64x64 canvases of
# ``data.digits_seg``, whole canvases, no augmentation: the generator already draws each
# digit's scale (3-6x) and position, and a flip would turn a 2 or a 7 into a glyph no
# digit has (measured: with the flip and a 0.75-1.25 scale, at batches of 32, 52% mIoU after
# 12 epochs; without them, at 16, 80% after epoch 10 of 16). Batches of 16: more steps in the
# 6 minutes. This recipe: 75.5% held-out mIoU in 5.5 minutes on 2 CPU cores.
DIGITS_SEG_MODEL = "efficientvit_seg_b0_cityscapes"


def digits_seg_config(folder: str) -> TrainConfig:
    """The recipe of ``efficientvit-jax train --preset digits-seg`` on the dataset that
    ``data.digits_seg.generate`` wrote into ``folder``."""
    return TrainConfig(
        data=DataOptions(folder=folder, batch_size=16, eval_batch_size=60),
        model=ModelOptions(name=DIGITS_SEG_MODEL, image_size=64),
        optim=OptimOptions(learning_rate=4e-3, weight_decay=0.05, label_smoothing=0.0),
        schedule=ScheduleOptions(epochs=8),
        augment=AugmentOptions(level="none"),
    )


PRESETS = {"digits-seg": digits_seg_config}


def _section_from_dict(section: type, name: str, d: Any) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"config section {name} must be a mapping, got {d!r}")
    known = {f.name for f in dataclasses.fields(section)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in config section {name}: {', '.join(sorted(unknown))}")
    return section(**d)


def _replace_section(section: Any, fields: Mapping[str, Any]) -> Any:
    own: dict[str, Any] = {}
    builder: dict[str, Any] = {}
    for k, v in fields.items():
        if k.startswith("builder."):
            builder[k.removeprefix("builder.")] = v
        else:
            own[k] = v
    known = {f.name for f in dataclasses.fields(section)}
    if set(own) - known:
        raise ValueError(f"unknown field(s) {', '.join(sorted(set(own) - known))} of "
                         f"{section._section}")  # fmt: skip
    if builder:
        base = own.get("builder", section.builder) or EfficientViTConfig()
        own["builder"] = base.replace(**builder)
    return dataclasses.replace(section, **own)


def flatten(config: TrainConfig) -> dict[str, Any]:
    """``{"section.field": value}`` of every leaf (builder fields as ``model.builder.x``)."""
    out: dict[str, Any] = {"seed": config.seed}
    for name in SECTIONS:
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            v = getattr(section, f.name)
            if isinstance(v, EfficientViTConfig):
                for g in dataclasses.fields(v):
                    out[f"{name}.{f.name}.{g.name}"] = str(getattr(v, g.name)) if g.name in (
                        "dtype", "param_dtype") else getattr(v, g.name)  # fmt: skip
            else:
                out[f"{name}.{f.name}"] = v
    return out


def differences(old: TrainConfig, new: TrainConfig, *, ignore: frozenset = OPERATIONAL) -> list:
    """``"field: old -> new"`` for every field that differs, ``ignore``'d fields aside."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]  # fmt: skip


def resume_config(stored: TrainConfig, new: TrainConfig) -> TrainConfig:
    """``new`` when it continues ``stored``'s run: the same recipe up to operational fields,
    and ``schedule.epochs`` equal or larger (the cosine decay is then stretched over the new
    length from the step reached). ``ValueError`` naming every differing field otherwise."""
    diffs = differences(stored, new, ignore=OPERATIONAL | {"schedule.epochs"})
    check_continues(diffs, "schedule.epochs", stored.schedule.epochs, new.schedule.epochs)
    return new


def check_continues(
    diffs: list[str], epochs_field: str, stored_epochs: int, new_epochs: int
) -> None:
    """Refuse a ``--resume`` in one line naming every recipe difference in ``diffs`` and a
    shortened run (``new_epochs`` below ``stored_epochs``, named ``epochs_field``); any run
    folder's config (``TrainConfig``, the SAM fine-tuning's ``SamTuneConfig``) resumes so."""
    if new_epochs < stored_epochs:
        diffs = [f"{epochs_field}: {stored_epochs} -> {new_epochs} "
                 "(a run can be extended, not shortened)", *diffs]  # fmt: skip
    if diffs:
        raise ValueError("--resume: the run was started with another recipe; differs in "
                         + "; ".join(diffs))  # fmt: skip


def save_config(config: TrainConfig, workdir: str) -> str:
    """Write ``workdir/config.json`` atomically; returns its path."""
    from efficientvit_jax._io import write_json

    path = os.path.join(workdir, CONFIG_FILE)
    write_json(path, config.to_dict())
    return path


def load_config(workdir: str) -> TrainConfig:
    """``workdir/config.json`` as a ``TrainConfig`` (one-line ``ValueError`` if missing,
    unreadable, or written by another format)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"{workdir}: no {CONFIG_FILE}: not a run folder, or a run written before run folders "
            "stored their recipe (efficientvit-jax 0.1), which cannot be resumed or loaded by "
            "name: retrain it, or read its checkpoint's 'state' item with orbax"
        )
    try:
        with open(path) as f:
            stored = json.load(f)
        if isinstance(stored, dict) and stored.get("task") == "sam":  # training.sam_config's
            raise _SamRunError(
                f"{workdir} is a SAM fine-tuning run: load it with training.sam.load_sam_run "
                f"(`efficientvit-jax sam --checkpoint {workdir}`)"
            )
        return TrainConfig.from_dict(stored)
    except _SamRunError as e:
        raise ValueError(str(e)) from None
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"{path}: unreadable run config ({e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


class _SamRunError(Exception):
    """A SAM fine-tuning run's folder where a ``TrainConfig`` run was expected."""


__all__ = [
    "PRESETS",
    "SEG_DEFAULTS",
    "AugmentOptions",
    "DataOptions",
    "EMAOptions",
    "MeshOptions",
    "ModelOptions",
    "OptimOptions",
    "OutputOptions",
    "PrecisionOptions",
    "ScheduleOptions",
    "TrainConfig",
    "differences",
    "digits_seg_config",
    "load_config",
    "resume_config",
    "save_config",
]
