"""A whole training run: optimizer, (sharded) steps, the loop, held-out evaluation (raw and
EMA weights), and the files a run leaves (``metrics.json``, ``curves.png``).

The data comes as a ``Source``: in-memory arrays (``array_source``: the digits job), image
folders (``training.folders``) or segmentation datasets (``training.seg_data``). What is
learned and how it is scored is a ``Task``: classification by default (any flax classifier
works), segmentation from ``training.seg``; both run through the same step and loop.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding

from efficientvit_jax.training import sharding
from efficientvit_jax.training.checkpoint import Checkpointer
from efficientvit_jax.training.config import TrainConfig
from efficientvit_jax.training.data import iterate_batches, num_batches
from efficientvit_jax.training.ema import ema_params, with_ema
from efficientvit_jax.training.loop import EpochBatches, RunLog, Schedule, fit
from efficientvit_jax.training.report import plot_curves, write_json
from efficientvit_jax.training.state import TrainState, abstract_train_state, create_train_state
from efficientvit_jax.training.steps import (
    LossFn,
    classification_loss,
    evaluate,
    make_eval_step,
    make_optimizer,
    make_train_step,
)


@dataclasses.dataclass(frozen=True)
class Source:
    """Training data: ``epoch_batches(epoch, first_batch)`` gives an epoch's batches from a
    position; ``held_out(batches_fn)`` is called with nothing and returns the held-out
    batches (an iterable, made anew for each evaluation)."""

    steps_per_epoch: int
    epoch_batches: EpochBatches
    held_out: Callable[[], Any]
    sample_images: np.ndarray
    n_train: int
    n_held_out: int


def array_source(
    data: Any, batch_size: int, eval_batch_size: int, seed: int, process_index: int = 0,
    process_count: int = 1,
) -> Source:  # fmt: skip
    """A ``Source`` over arrays ``train_images``, ``train_labels``, ``test_images``,
    ``test_labels`` (the digits job's): shuffled from ``(seed, epoch)``, last batch dropped.

    The sizes are global; with several processes each one yields its own rows of every
    global batch (``process_rows``), so together they feed the batches one process would.
    """

    def epoch_batches(epoch: int, first: int) -> Any:
        batches = iterate_batches(
            data.train_images, data.train_labels, batch_size, seed=seed, epoch=epoch,
            remainder="drop", start_batch=first,
        )  # fmt: skip
        return (process_rows(b, process_index, process_count) for b in batches)

    def held_out() -> Any:
        batches = iterate_batches(
            data.test_images, data.test_labels, eval_batch_size, shuffle=False, remainder="pad"
        )
        return (process_rows(b, process_index, process_count) for b in batches)

    n = len(data.train_images)
    spe = num_batches(n, batch_size, remainder="drop")
    sample = data.train_images[: batch_size // process_count]
    return Source(spe, epoch_batches, held_out, sample, n, len(data.test_images))


def process_rows(batch: dict[str, np.ndarray], index: int, count: int) -> dict[str, np.ndarray]:
    """Process ``index``'s share of a global batch: the ``index``-th of ``count`` equal
    blocks of rows (the order in which ``sharding.shard_batch`` puts the shares together)."""
    if count == 1:
        return batch
    per = len(batch["labels"]) // count
    return {k: v[index * per : (index + 1) * per] for k, v in batch.items()}


def eval_batch_size(requested: int, setup: Any) -> int:
    """``requested`` rounded up to a multiple of the devices a batch is split over: held-out
    batches go through the mesh like training ones (the filler is masked, so no metric
    changes)."""
    ways = 1 if setup is None else sharding.batch_size_per_step(setup.mesh)
    return -(-requested // ways) * ways


@dataclasses.dataclass(frozen=True)
class Tuning:
    """How a run starts and what it trains (fine-tuning); the defaults train everything from
    scratch with one optimizer.

    Attributes:
      optimizer: ``(schedule_steps) -> optax transformation`` replacing the default AdamW.
      init: ``(init_key, sample_images) -> variables`` in place of ``model.init``: where
        the run starts (pretrained variables, ``finetune.init_from_pretrained``).
      frozen_backbone: run the model in evaluation mode in the train step (linear probe).
      trainable: ``params -> pytree of bools`` (of the started params): the leaves the train step
        differentiates (``steps.make_train_step``'s ``trainable``); ``None``: all of them.
      head: the parameter paths (leaves or modules, ``"head/fc"``) that did not come from the
        pretrained weights and train at the head's rate; a run records them in ``run.json``, so
        that its resume needs no weights file (``recipe.pretrained_tuning``'s ``head``).
    """

    optimizer: Callable[[int], optax.GradientTransformation] | None = None
    init: Callable[[jax.Array, Any], Any] | None = None
    frozen_backbone: bool = False
    trainable: Callable[[Any], Any] | None = None
    head: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Task:
    """What a run learns and how it is scored; the defaults are classification.

    Attributes:
      loss_fn: the train step's ``steps.LossFn``; ``None``: the classifier's cross-entropy
        with ``optim.label_smoothing``.
      make_eval_step: ``model -> (state, batch) -> sums`` for the held-out batches.
      evaluate: ``(eval_step, state, batches) -> metrics`` (``loss``, ``accuracy``, the
        ``score``, ``count``).
      score: the metric that picks the best weights (raw or EMA) and leads the final line.
      finish: ``(state, workdir, main) -> None`` after the final evaluation, on every process
        (more outputs, e.g. ``training.seg.predictions_plot``).
    """

    loss_fn: LossFn | None = None
    make_eval_step: Callable[[Any], Callable] = make_eval_step
    evaluate: Callable[..., dict[str, Any]] = evaluate
    score: str = "accuracy"
    finish: Callable[[TrainState, str, bool], None] | None = None


CLASSIFICATION = Task()


def _steps(
    model: Any, optimizer: Any, state: TrainState, setup: Any, loss: LossFn | None, tuning: Tuning
):
    """``(state, train_step)``: partitioned over the mesh when there is more than one device
    or a loss scale, else the plain jitted step; one step body (``steps.make_train_step``)
    with ``loss`` in every case (``None``: the classifier's, without smoothing)."""
    from efficientvit_jax.training import precision

    trainable = None if tuning.trainable is None else tuning.trainable(state.params)
    how = dict(frozen_backbone=tuning.frozen_backbone, loss_fn=loss, trainable=trainable)
    step_fn = None
    if setup is not None and setup.loss_scale is not None:
        step_fn = precision.make_train_step_with_loss_scale(model, optimizer, jit=False, **how)
    if setup is not None and (sharding.batch_size_per_step(setup.mesh) > 1 or step_fn):
        shardings = sharding.state_sharding(
            state, setup.mesh, fsdp=setup.fsdp, min_fsdp_size=setup.min_fsdp_size
        )
        state = sharding.shard_state(state, setup.mesh, shardings)
        return state, sharding.make_sharded_train_step(
            model, optimizer, setup.mesh, shardings, step_fn=step_fn, **how
        )
    return state, make_train_step(model, optimizer, **how)


def _held_out_fn(model: Any, source: Source, state: TrainState, task: Task) -> Callable[..., dict]:
    """Held-out metrics of the raw weights and, where the optimizer keeps one, of the EMA.

    Where ``state`` lives on a mesh (``_steps`` sharded it), the held-out batches are split
    over it like training ones, each process feeding its share (``Source.held_out`` yields
    it): the step's sums then cover the global batch and come back replicated, the same
    numbers on every process.
    """
    eval_step = task.make_eval_step(model)
    placed = getattr(state.step, "sharding", None)
    if isinstance(placed, NamedSharding):
        eval_step = _sharded_eval_step(eval_step, placed.mesh)

    def held_out(state: TrainState) -> dict[str, float]:
        out = task.evaluate(eval_step, state, source.held_out())
        ema = ema_params(state.opt_state)
        if ema is not None:
            e = task.evaluate(eval_step, state.replace(params=ema), source.held_out())
            out.update({f"ema_{k}": v for k, v in e.items() if k != "count"})
        return out

    return held_out


def _sharded_eval_step(eval_step: Callable, mesh: Any) -> Callable:
    jitted = jax.jit(eval_step, out_shardings=sharding.replicated(mesh))

    def step(state: TrainState, batch: Any) -> Any:
        return jitted(state, sharding.shard_batch(batch, mesh))

    return step


def train_classifier(
    model: Any,
    source: Source,
    config: TrainConfig,
    ckpt: Checkpointer,
    workdir: str,
    setup: Any = None,
    *,
    tuning: Tuning = Tuning(),
    task: Task = CLASSIFICATION,
    resume: bool = False,
    run_info: dict[str, Any] | None = None,
    t_start: float | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``source`` as ``config`` says; returns the metrics written to
    ``workdir/metrics.json`` (``run_info`` is stored in them as ``config``).

    ``setup`` is a ``distributed.ScaleSetup`` (mesh, precision) or ``None`` for one device;
    ``task`` what is learned and scored (classification unless said otherwise).
    """
    t_start = time.perf_counter() if t_start is None else t_start
    batch_size = config.data.batch_size
    if setup is not None:
        sharding.check_batch_size(batch_size, setup.mesh)
    spe, epochs = source.steps_per_epoch, config.schedule.epochs
    total = spe * epochs
    max_steps = config.schedule.max_steps
    stop = total if max_steps is None else min(max_steps, total)
    optimizer, state = _start(model, source, config, setup, tuning, total, resume=resume)
    loss = task.loss_fn or classification_loss(config.optim.label_smoothing)
    state, train_step = _steps(model, optimizer, state, setup, loss, tuning)
    # Restored after sharding, into the sharded state: each process reads its own pieces.
    state, log = _restore(ckpt, state) if resume else (state, RunLog())
    held_out = _held_out_fn(model, source, state, task)
    start_step = int(jax.device_get(state.step))
    main = jax.process_index() == 0  # prints and files: one process speaks for the run
    if main:
        _announce(model, state, source, setup, start_step, stop, total)
    schedule = Schedule(spe, epochs, stop, config.output.save_every, batch_size)
    state = fit(
        state, train_step, source.epoch_batches, held_out, ckpt, schedule, log,
        progress=config.output.progress,
    )  # fmt: skip
    ckpt.close()
    final = held_out(state)
    step = int(jax.device_get(state.step))
    metrics = {
        **{f"test_{k}": v for k, v in final.items()}, "step": step, "total_steps": total,
        "epochs_completed": step // spe, "wall_time_s": time.perf_counter() - t_start,
        "steps_this_run": step - start_step, "backend": jax.default_backend(),
        "config": run_info if run_info is not None else config.to_dict(),
        "history": log.history, "step_losses": log.step_losses,
    }  # fmt: skip
    if f"ema_{task.score}" in final:
        metrics["best"] = "ema" if final[f"ema_{task.score}"] > final[task.score] else "raw"
    if task.finish is not None:  # on every process: it may gather a sharded state
        task.finish(state, workdir, main)
    if main:  # every process computed the same metrics; checkpoints were saved by all
        _write_outputs(workdir, metrics, log, final, ckpt, task.score)
    return metrics


def _announce(
    model: Any, state: TrainState, source: Source, setup: Any, start: int, stop: int, total: int
) -> None:
    if setup is not None:
        print(setup.describe(), flush=True)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(
        f"training {type(model).__name__} ({n_params:,} params): {source.n_train} train / "
        f"{source.n_held_out} held-out images, {source.steps_per_epoch} steps/epoch, steps "
        f"{start} -> {stop} of {total}",
        flush=True,
    )


def _start(
    model: Any,
    source: Source,
    config: TrainConfig,
    setup: Any,
    tuning: Tuning,
    total: int,
    *,
    resume: bool = False,
) -> tuple[optax.GradientTransformation, TrainState]:
    """The optimizer and the fresh state (``tuning.init``: e.g. pretrained weights loaded): the
    same on every process, from the same seed and files. With ``resume`` the state is its
    shapes alone (``abstract_train_state``): the checkpoint supplies every value."""
    optimizer = (tuning.optimizer or _default_optimizer(config))(total)
    if config.ema.decay is not None:
        optimizer = with_ema(optimizer, config.ema.decay)
    if setup is not None:
        optimizer = setup.wrap_optimizer(optimizer)
    if resume:
        return optimizer, abstract_train_state(model, optimizer, source.sample_images)
    state = create_train_state(
        model, optimizer, config.seed, source.sample_images, init=tuning.init
    )
    return optimizer, state


def _restore(ckpt: Checkpointer, state: TrainState) -> tuple[TrainState, RunLog]:
    """The newest intact checkpoint, restored into ``state``'s shapes and placement."""
    # Falls back past damaged checkpoints, saying so; CheckpointError if none is intact.
    state, extra = ckpt.restore(state, report=_warn)
    return state, RunLog.from_extra(extra)


def _warn(message: str) -> None:
    print(f"efficientvit-jax: warning: {message}", file=sys.stderr, flush=True)


def _default_optimizer(config: TrainConfig) -> Callable[[int], optax.GradientTransformation]:
    def make(total: int) -> optax.GradientTransformation:
        return make_optimizer(
            config.optim.learning_rate, total_steps=total,
            warmup_steps=config.schedule.warmup_steps, weight_decay=config.optim.weight_decay,
        )  # fmt: skip

    return make


def _write_outputs(
    out: str, metrics: dict, log: RunLog, final: dict, ckpt: Checkpointer, score: str
) -> None:
    metrics_path, plot_path = os.path.join(out, "metrics.json"), os.path.join(out, "curves.png")
    write_json(metrics_path, metrics)
    plot_curves(plot_path, log.step_losses, log.history)
    print(f"{_final_line(final, score, metrics.get('best'))} after {metrics['step']} steps; "
          f"{metrics['wall_time_s']:.1f} s in all")  # fmt: skip
    ckpt_path = os.path.join(ckpt.directory, str(metrics["step"]))
    print(f"wrote {metrics_path}, {plot_path}, checkpoint {ckpt_path}")


def _final_line(final: dict, score: str, best: str | None) -> str:
    """The run's result in words: accuracy with the count right, or mIoU and pixel accuracy."""
    if score == "miou":
        line = (f"held-out mIoU: {final['miou']:.2%}, pixel accuracy {final['accuracy']:.2%} "
                f"({final['count']} images)")  # fmt: skip
    else:
        n_ok = round(final["accuracy"] * final["count"])
        line = f"test accuracy: {final['accuracy']:.2%} ({n_ok}/{final['count']} held-out images)"
    if f"ema_{score}" in final:
        line += f", EMA weights {final[f'ema_{score}']:.2%} (best: {best})"
    return line
