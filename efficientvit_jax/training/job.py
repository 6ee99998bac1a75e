"""A whole classifier training run on in-memory arrays: optimizer, (sharded) steps, the loop,
held-out evaluation, and the files a run leaves (``metrics.json``, ``curves.png``).

``efficientvit-jax train`` is this with the digits; any flax classifier and arrays work.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax

from efficientvit_jax.training import sharding
from efficientvit_jax.training.checkpoint import Checkpointer
from efficientvit_jax.training.data import iterate_batches, num_batches
from efficientvit_jax.training.loop import RunLog, Schedule, fit
from efficientvit_jax.training.report import plot_curves, write_json
from efficientvit_jax.training.state import TrainState, create_train_state
from efficientvit_jax.training.steps import (
    evaluate,
    make_eval_step,
    make_optimizer,
    make_train_step,
)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """The options of a run (the CLI's training flags, same names)."""

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    eval_batch_size: int = 120
    save_every: int = 100
    max_steps: int | None = None
    resume: bool = False
    no_progress: bool = False
    output: str = "runs/digits"

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def _steps(model: Any, optimizer: Any, state: TrainState, setup: Any, ls: float) -> tuple:
    """``(state, train_step)``: data-parallel (and fsdp) over the mesh when there is more than
    one device or a loss scale, else the plain jitted step."""
    from efficientvit_jax.training import precision

    step_fn = None
    if setup is not None and setup.loss_scale is not None:
        step_fn = precision.make_train_step_with_loss_scale(
            model, optimizer, label_smoothing=ls, jit=False
        )
    if setup is not None and (sharding.batch_size_per_step(setup.mesh) > 1 or step_fn):
        shardings = sharding.state_sharding(
            state, setup.mesh, fsdp=setup.fsdp, min_fsdp_size=setup.min_fsdp_size
        )
        state = sharding.shard_state(state, setup.mesh, shardings)
        return state, sharding.make_sharded_train_step(
            model, optimizer, setup.mesh, shardings, label_smoothing=ls, step_fn=step_fn
        )
    return state, make_train_step(model, optimizer, label_smoothing=ls)


def train_classifier(
    model: Any,
    data: Any,
    opts: TrainOptions,
    ckpt: Checkpointer,
    run_config: dict[str, Any],
    setup: Any = None,
    *,
    t_start: float | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``data`` (``train_images``, ``train_labels``, ``test_images``,
    ``test_labels`` arrays); returns the metrics written to ``OUTPUT/metrics.json``.

    ``setup`` is a ``distributed.Setup`` (mesh, precision) or ``None`` for one device.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    n_train = len(data.train_images)
    if setup is not None:
        sharding.check_batch_size(opts.batch_size, setup.mesh)
    spe = num_batches(n_train, opts.batch_size, remainder="drop")
    total = spe * opts.epochs
    stop = total if opts.max_steps is None else min(opts.max_steps, total)
    optimizer = make_optimizer(
        opts.learning_rate,
        total_steps=total,
        warmup_steps=opts.warmup_steps,
        weight_decay=opts.weight_decay,
    )
    if setup is not None:
        optimizer = setup.wrap_optimizer(optimizer)
    state = create_train_state(model, optimizer, opts.seed, data.train_images[: opts.batch_size])
    log = RunLog()
    if opts.resume:
        state, extra = ckpt.restore(state)  # CheckpointError (a ValueError) if missing/bad
        log = RunLog.from_extra(extra)
        from efficientvit_jax._io import check_output_writable

        check_output_writable(opts.output)
    state, train_step = _steps(model, optimizer, state, setup, opts.label_smoothing)
    eval_step = make_eval_step(model)

    def held_out(state: TrainState) -> dict[str, float]:
        batches = iterate_batches(
            data.test_images, data.test_labels, opts.eval_batch_size, shuffle=False,
            remainder="pad",
        )  # fmt: skip
        return evaluate(eval_step, state, batches)

    def epoch_batches(epoch: int, first: int) -> Any:
        return iterate_batches(
            data.train_images, data.train_labels, opts.batch_size, seed=opts.seed,
            epoch=epoch, remainder="drop", start_batch=first,
        )  # fmt: skip

    start_step = int(jax.device_get(state.step))
    if setup is not None:
        print(setup.describe(), flush=True)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    print(
        f"training {type(model).__name__} ({n_params:,} params): {n_train} train / "
        f"{len(data.test_images)} held-out images, {spe} steps/epoch, steps {start_step} -> "
        f"{stop} of {total}",
        flush=True,
    )
    schedule = Schedule(spe, opts.epochs, stop, opts.save_every, opts.batch_size)
    state = fit(
        state, train_step, epoch_batches, held_out, ckpt, schedule, log,
        progress=not opts.no_progress,
    )  # fmt: skip
    ckpt.close()
    final = held_out(state)
    step = int(jax.device_get(state.step))
    metrics = {
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "test_count": final["count"],
        "step": step,
        "total_steps": total,
        "epochs_completed": step // spe,
        "wall_time_s": time.perf_counter() - t_start,
        "steps_this_run": step - start_step,
        "backend": jax.default_backend(),
        "config": run_config,
        "history": log.history,
        "step_losses": log.step_losses,
    }
    _write_outputs(opts.output, metrics, log, final, ckpt)
    return metrics


def _write_outputs(out: str, metrics: dict, log: RunLog, final: dict, ckpt: Checkpointer) -> None:
    metrics_path, plot_path = os.path.join(out, "metrics.json"), os.path.join(out, "curves.png")
    write_json(metrics_path, metrics)
    plot_curves(plot_path, log.step_losses, log.history)
    n_ok = round(final["accuracy"] * final["count"])
    print(
        f"test accuracy: {final['accuracy']:.2%} ({n_ok}/{final['count']} held-out images) "
        f"after {metrics['step']} steps; {metrics['wall_time_s']:.1f} s in all"
    )
    ckpt_path = os.path.join(ckpt.directory, str(metrics["step"]))
    print(f"wrote {metrics_path}, {plot_path}, checkpoint {ckpt_path}")
