"""Fine-tuning EfficientViT-SAM on segmentation masks: ``finetune_sam(config, workdir)``.

What learns: the prompt encoder and the mask decoder; the image encoder is frozen by default,
so every training and held-out image is embedded once, before the first step, and the steps
run the decoder alone on the stored embeddings (what makes fine-tuning feasible on a CPU).
``train_encoder`` trains the encoder too (its BatchNorms keep their running statistics: a
few images per step would make poor batch statistics), then each step embeds its images.

Each step takes ``batch_size`` images with ``prompts_per_image`` prompts each, sampled from
their masks' instances (``training.sam_data``, ``training.sam_prompts``), decodes all four
masks of every prompt in one call and minimises SAM's loss (``training.sam_loss``) with the
package's AdamW (``training.steps.make_optimizer``: warm-up, cosine decay, clipping).

The run folder is the other runs' (``training.run``): ``config.json`` (a ``SamTuneConfig``,
``"task": "sam"``), ``run.json``, ``checkpoints/`` (``training.checkpoint``, checksummed; the
whole variables, so a run loads back alone), ``metrics.json`` (held-out mask mIoU per epoch
and of the starting weights), ``curves.png``. ``--resume`` continues it exactly, through
``training.loop.fit``. ``load_sam_run`` gives the model and variables back for
``sam.SamPredictor`` (and ``efficientvit-jax sam --checkpoint RUN``).

The held-out score is the mean IoU, over the val split's prompts (drawn from a fixed seed,
the same for every run), of the mask a user would get (for a lone point, the one of three
with the best predicted IoU) with the prompted instance, on the decoder's low-resolution grid.
One device; float32.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax.training.checkpoint import CHECKPOINTS, open_run_checkpoints
from efficientvit_jax.training.loop import RunLog
from efficientvit_jax.training.sam_config import (
    SamTuneConfig,
    load_config,
    resume_config,
    save_config,
)
from efficientvit_jax.training.sam_data import SamSplit
from efficientvit_jax.training.sam_steps import (
    LossWeights,
    SamState,
    embed_fn,
    eval_step_fn,
    optimizer,
    train_step_fn,
    trainable_names,
)
from efficientvit_jax.training.state import shapes_on_first_device

RUN_FILE = "run.json"


# --------------------------------------------------------------------------- the model


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def model_overrides(config: SamTuneConfig) -> dict[str, Any]:
    """The ``SamConfig`` fields ``config`` replaces (``architecture``, ``image_size``)."""
    from efficientvit_jax.zoo import get_config

    arch = _tuples(config.architecture)
    if isinstance(arch.get("backbone"), Mapping):  # a partial backbone: the variant's, edited
        base = get_config(config.model).backbone
        arch["backbone"] = dataclasses.replace(base, **_tuples(arch["backbone"]))
    if config.image_size is not None:
        arch["image_size"] = config.image_size
    return arch


def build_sam(config: SamTuneConfig) -> Any:
    """The ``EfficientViTSam`` of the recipe (one line for a model that is not SAM)."""
    from efficientvit_jax.zoo import create_model, registry

    entry = registry.check_task(config.model, ("sam",), "train")
    overrides = model_overrides(config)
    r = overrides.get("backbone", entry.config.backbone).reduction
    size = config.image_size
    if size is not None and size % r:
        raise ValueError(
            f"--image-size must be a multiple of {r} (the encoder's stride), got {size}"
        )
    return create_model(entry.name, **overrides)


def random_variables(model: Any, seed: int) -> dict[str, Any]:
    """Random variables of a SAM model drawn with NumPy from its variables' shapes
    (``zoo.sam.variable_shapes``: nothing compiled; ``model.init`` compiles one program per
    parameter shape, seconds for even a small model): kernels uniform in +-1/sqrt(fan-in)
    (PyTorch's default, the zoo's ``TORCH_KERNEL_INIT``), biases 0, norm scales and BatchNorm
    variances 1, embeddings and the positional-encoding matrix N(0, 1), as the initialisers
    draw them."""
    from flax import traverse_util

    from efficientvit_jax.zoo.sam import variable_shapes

    shapes = variable_shapes(model.config)
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in traverse_util.flatten_dict(shapes).items():
        name, shape = path[-1], leaf.shape
        if name == "kernel":
            bound = 1 / np.sqrt(max(int(np.prod(shape[:-1])), 1))
            value = rng.uniform(-bound, bound, shape)
        elif name in ("scale", "var"):
            value = np.ones(shape)
        elif name in ("embedding", "positional_encoding_gaussian_matrix"):
            value = rng.standard_normal(shape)
        else:  # biases, BatchNorm means
            value = np.zeros(shape)
        out[path] = value.astype(leaf.dtype)
    return traverse_util.unflatten_dict(out)


def start_variables(config: SamTuneConfig, model: Any) -> tuple[dict[str, Any], str]:
    """``(variables, where from)``: ``--weights`` (MIT's file or a convert folder),
    ``--checkpoint`` (a SAM fine-tuning run of the same model) or random from ``seed``."""
    from efficientvit_jax import zoo

    name = zoo.registry.get_entry(config.model).name
    if config.weights is not None:
        w = config.weights
        if not os.path.exists(w):
            raise ValueError(f"--weights {w}: no such file or folder")
        if os.path.isdir(w):
            return zoo.converted.load_converted_as(name, w, **model_overrides(config))[1], w
        return zoo.load_mit_weights(w, name, **model_overrides(config)), w
    if config.checkpoint is not None:
        run = load_sam_run(config.checkpoint)
        if run.model.config != model.config:
            raise ValueError(f"--checkpoint {config.checkpoint}: a run of another architecture "
                             f"({run.config.model}); this run's is {config.model}")  # fmt: skip
        return run.variables, f"{run.path} (step {run.step})"
    return random_variables(model, config.seed), "random init"


# --------------------------------------------------------------------------- loading a run


@dataclasses.dataclass(frozen=True)
class LoadedSamRun:
    """A SAM fine-tuning run's model at one step: ``SamPredictor(run.model, run.variables)``."""

    model: Any
    variables: dict[str, Any]
    config: SamTuneConfig
    step: int
    path: str


def load_sam_run(path: str | os.PathLike, *, step: int | None = None) -> LoadedSamRun:
    """The model and variables of a SAM fine-tuning run (its folder, ``checkpoints/`` or one
    step) at ``step`` (default: the newest intact checkpoint); one-line ``ValueError``s."""
    from efficientvit_jax.training.checkpoint import Checkpointer
    from efficientvit_jax.training.loaded import locate_run

    workdir, step = locate_run(path, step)
    config = load_config(workdir)
    model = build_sam(config)
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINTS), config=config.identity())
    try:
        restored = ckpt.restore(None, step, report=_warn)
    finally:
        ckpt.close()
    s = restored.state
    variables = {k: s[k] for k in ("params", "batch_stats", "constants")}
    return LoadedSamRun(model, variables, config, restored.step, workdir)


def _warn(message: str) -> None:
    print(f"efficientvit-jax: warning: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


@dataclasses.dataclass(frozen=True)
class SamData:
    """What the dataset decided before any training: both splits' instances."""

    train: SamSplit
    val: SamSplit
    classes: tuple[str, ...]
    layout: str
    background: int | None


def read_data(config: SamTuneConfig, model: Any) -> SamData:
    """The dataset's splits as instances (one-line errors for a bad layout, a missing or
    mis-sized mask, no instance, a batch larger than the split)."""
    from efficientvit_jax.training.sam_data import background_class, read_split
    from efficientvit_jax.training.seg_data import find_seg_splits

    splits = find_seg_splits(config.data, skip_bad=config.skip_bad)
    cfg = model.config

    def read(dataset: Any) -> SamSplit:
        return read_split(dataset, cfg.mask_size, cfg.prompt_size, config.min_mask_area,
                          config.skip_bad)  # fmt: skip

    train, val = read(splits.train), read(splits.val)
    for name, split in (("train", train), ("val", val)):
        if split.count == 0:
            raise ValueError(
                f"--data {config.data}: no instance in the {name} split's masks (objects: every "
                f"class but a first one named background, {config.min_mask_area}+ pixels)"
            )
    if config.batch_size > len(train):
        raise ValueError(f"--batch-size must be <= {len(train)} (the training images), got "
                         f"{config.batch_size}")  # fmt: skip
    classes = splits.classes
    return SamData(train, val, classes, splits.layout, background_class(classes))


@dataclasses.dataclass
class SamRunLog(RunLog):
    """``RunLog`` with the held-out metrics of the starting weights (kept across resumes)."""

    start: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_extra(self) -> dict[str, Any]:
        return {**super().to_extra(), "start": self.start}

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any]) -> SamRunLog:
        base = RunLog.from_extra(extra)
        start = dict(extra.get("start") or {})
        return cls(base.step_losses, base.step_accuracies, base.history, start)


def finetune_sam(
    config: SamTuneConfig, workdir: str | os.PathLike, *, resume: bool = False
) -> dict[str, Any]:
    """Run ``config`` into ``workdir`` (see the module); returns the final metrics.

    ``resume`` continues the newest intact checkpoint of ``workdir`` under its stored recipe
    (``config`` may only change operational fields and extend ``epochs``). Every check
    (recipe, dataset, masks, weights, output folder) runs before anything is written; a
    user's mistake is a one-line ``ValueError``.
    """
    from efficientvit_jax._io import check_output_folder

    t_start, workdir = time.perf_counter(), os.fspath(workdir)
    if resume:
        config = resume_config(_stored(workdir), config)
    check_output_folder(workdir)
    model = build_sam(config)
    data = read_data(config, model)
    skipped = [p for p, _ in (*data.train.skipped, *data.val.skipped)]
    if skipped:  # --skip-bad: left out, and said so
        print(f"skipped {len(skipped)} image(s) without a usable mask: {', '.join(skipped)}")
    if resume:  # the shapes alone: the checkpoint holds every value (the start's file or run
        # need not exist any more)
        from efficientvit_jax.zoo.sam import variable_shapes

        variables, start = variable_shapes(model.config), f"{workdir} (resumed)"
    else:
        variables, start = start_variables(config, model)
    ckpt = open_run_checkpoints(workdir, config.identity(), config.keep, resume=resume)
    save_config(config, workdir)
    _write_run_file(workdir, config, data)
    changed = f" ({', '.join(sorted(config.architecture))} changed)" if config.architecture else ""
    print(f"model {config.model}{changed} from {start}", flush=True)
    return _train(config, model, data, variables, ckpt, workdir, resume, t_start)


def _stored(workdir: str) -> SamTuneConfig:
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        raise ValueError(f"--resume: no checkpoint folder {os.path.join(workdir, CHECKPOINTS)}")
    return load_config(workdir)


def _write_run_file(workdir: str, config: SamTuneConfig, data: SamData) -> None:
    from efficientvit_jax._io import write_json
    from efficientvit_jax.training.sam_data import split_info

    info = {
        "task": "sam", "model": config.model, "layout": data.layout,
        "classes": list(data.classes), "background": data.background,
        "train": split_info(data.train), "val": split_info(data.val),
    }  # fmt: skip
    write_json(os.path.join(workdir, RUN_FILE), info)


def _initial_state(config: SamTuneConfig, variables: Mapping[str, Any], tx: Any) -> SamState:
    params = variables["params"]
    trained = {k: params[k] for k in trainable_names(params, config.train_encoder)}
    state = SamState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(trained),
        batch_stats=variables.get("batch_stats", {}), constants=variables.get("constants", {}),
    )  # fmt: skip
    return jax.device_put(state)  # device arrays: the train step donates them


def _abstract_state(config: SamTuneConfig, shapes: Mapping[str, Any], tx: Any) -> SamState:
    """``_initial_state``'s shapes on this process's first device, nothing computed: what a
    resume restores into (as ``training.abstract_train_state`` for the other tasks)."""
    return shapes_on_first_device(lambda v: _initial_state(config, v, tx), shapes)


def embed_images(model: Any, variables: Any, paths: tuple[str, ...], chunk: int) -> np.ndarray:
    """Embeddings of image files, ``chunk`` at a time (the last chunk padded: one program)."""
    from efficientvit_jax.training.sam_data import load_inputs

    fn, cfg, out = embed_fn(model), model.config, []
    for s in range(0, len(paths), chunk):
        part = list(paths[s : s + chunk])
        x = load_inputs(part + part[-1:] * (chunk - len(part)), cfg.image_size, cfg.data_format)
        out.append(np.asarray(fn(variables, x))[: len(part)])
    return np.concatenate(out)


def _features(config: SamTuneConfig, model: Any, state: SamState, data: SamData) -> tuple:
    """``(train features(rows), held-out features(rows))``: stored embeddings (a frozen
    encoder: computed here, once) or the images, read for each batch."""
    from efficientvit_jax.training.sam_data import load_inputs

    cfg = model.config
    if config.train_encoder:

        def images(split: SamSplit) -> Any:
            return lambda rows: load_inputs([split.paths[i] for i in rows], cfg.image_size,
                                            cfg.data_format)  # fmt: skip

        return images(data.train), images(data.val)
    t0 = time.perf_counter()
    chunk = config.eval_batch_size
    train = embed_images(model, state.variables, data.train.paths, chunk)
    val = embed_images(model, state.variables, data.val.paths, chunk)
    print(f"embedded {len(train)} training and {len(val)} held-out images once (the encoder "
          f"is frozen) in {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    return (lambda rows: train[rows]), (lambda rows: val[rows])


def _evaluator(model: Any, config: SamTuneConfig, weights: LossWeights, data: SamData,
               features: Any, spec: Any) -> Any:  # fmt: skip
    """``state -> held-out metrics``: ``loss`` (per prompt), ``accuracy`` (pixels of the
    masks), ``miou`` (mean IoU of the masks a user gets), ``count`` (prompts)."""
    from efficientvit_jax.training.sam_data import held_out_batches

    step = eval_step_fn(model, config.train_encoder, weights)
    held = held_out_batches(data.val, spec, config.eval_batch_size)

    def evaluate(state: SamState) -> dict[str, Any]:
        sums: dict[str, float] = {}
        for b in held:
            batch = {k: v for k, v in b.items() if k != "rows"}
            m = jax.device_get(step(state.variables, {**batch, "features": features(b["rows"])}))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        n = max(sums["count"], 1.0)
        return {"loss": sums["loss_sum"] / n, "accuracy": sums["correct"] / max(sums["pixels"], 1.0),
                "miou": sums["iou_sum"] / n, "count": int(sums["count"])}  # fmt: skip

    return evaluate


def _train(config: SamTuneConfig, model: Any, data: SamData, variables: Any, ckpt: Any,
           workdir: str, resume: bool, t_start: float) -> dict[str, Any]:  # fmt: skip
    from efficientvit_jax.training.loop import Schedule, fit
    from efficientvit_jax.training.sam_data import train_batches
    from efficientvit_jax.training.sam_prompts import PromptSpec

    spe = len(data.train) // config.batch_size
    total = spe * config.epochs
    stop = total if config.max_steps is None else min(config.max_steps, total)
    tx = optimizer(config.learning_rate, total, config.warmup_steps, config.weight_decay)
    log = SamRunLog()
    if resume:  # falls back past damaged checkpoints, saying so
        state, extra = ckpt.restore(_abstract_state(config, variables, tx), report=_warn)
        log = SamRunLog.from_extra(extra)
    else:
        state = _initial_state(config, variables, tx)
    spec = PromptSpec(config.prompts_per_image, config.max_points, config.box_prob,
                      config.negative_prob, model.config.prompt_size)  # fmt: skip
    weights = LossWeights(config.focal_weight, config.dice_weight, config.iou_weight)
    train_features, val_features = _features(config, model, state, data)
    evaluate = _evaluator(model, config, weights, data, val_features, spec)
    if not log.start:
        log.start = evaluate(state)
        print(f"held-out mask mIoU of the starting weights: {log.start['miou']:.2%}", flush=True)
    start_step = int(jax.device_get(state.step))
    _announce(config, state, data, spe, start_step, stop, total)
    batches = train_batches(data.train, spec, train_features, config.batch_size, config.seed)
    step_fn = train_step_fn(model, config.train_encoder, weights, tx)
    schedule = Schedule(spe, config.epochs, stop, config.save_every, config.batch_size)
    state = fit(state, step_fn, batches, evaluate, ckpt, schedule, log, progress=config.progress)
    ckpt.close()
    final = evaluate(state)
    return _finish(config, state, data, log, final, workdir, total, start_step, t_start)


def _announce(config: SamTuneConfig, state: SamState, data: SamData, spe: int, start: int,
              stop: int, total: int) -> None:  # fmt: skip
    names = trainable_names(state.params, config.train_encoder)
    count = {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in state.params.items()}
    trained = sum(count[k] for k in names)
    print(
        f"training {' + '.join(names)} ({trained:,} of {sum(count.values()):,} params): "
        f"{len(data.train)} train / {len(data.val)} held-out images ({data.train.count} / "
        f"{data.val.count} instances), {config.prompts_per_image} prompts per image, {spe} "
        f"steps/epoch, steps {start} -> {stop} of {total}",
        flush=True,
    )


def _finish(config: SamTuneConfig, state: SamState, data: SamData, log: SamRunLog,
            final: dict, workdir: str, total: int, start_step: int, t_start: float) -> dict:  # fmt: skip
    """``metrics.json`` and ``curves.png``, the result in one line; returns the metrics."""
    from efficientvit_jax._io import write_json
    from efficientvit_jax.training.report import plot_curves
    from efficientvit_jax.training.sam_data import split_info

    step = int(jax.device_get(state.step))
    spe = len(data.train) // config.batch_size
    metrics = {
        **{f"test_{k}": v for k, v in final.items()},
        **{f"start_{k}": v for k, v in log.start.items()},
        "step": step, "total_steps": total, "epochs_completed": step // spe,
        "wall_time_s": time.perf_counter() - t_start, "steps_this_run": step - start_step,
        "backend": jax.default_backend(), "config": config.to_dict(),
        "trained": list(trainable_names(state.params, config.train_encoder)),
        "data": {"train": split_info(data.train), "val": split_info(data.val)},
        "history": log.history, "step_losses": log.step_losses,
    }  # fmt: skip
    metrics_path, plot_path = (
        os.path.join(workdir, "metrics.json"),
        os.path.join(workdir, "curves.png"),
    )
    write_json(metrics_path, metrics)
    plot_curves(plot_path, log.step_losses, log.history)
    print(f"held-out mask mIoU: {final['miou']:.2%} (starting weights {log.start['miou']:.2%}), "
          f"pixel accuracy {final['accuracy']:.2%} ({final['count']} prompts on {len(data.val)} "
          f"images) after {step} steps; {metrics['wall_time_s']:.1f} s in all")  # fmt: skip
    print(
        f"wrote {metrics_path}, {plot_path}, checkpoint {os.path.join(workdir, CHECKPOINTS, str(step))}"
    )
    return metrics


__all__ = [
    "LoadedSamRun",
    "SamData",
    "SamRunLog",
    "build_sam",
    "embed_images",
    "finetune_sam",
    "load_sam_run",
    "model_overrides",
    "random_variables",
    "read_data",
    "start_variables",
]
