"""``efficientvit-jax``: the command-line entry point.

Subcommands:
  train    train on scikit-learn's digits (no download); metrics, plot, checkpoints
  demo     build a model, init it, run a batch; print shapes and sizes
  summary  parameters per stage, FLOPs and output_size for any config
  convert  a timm checkpoint of a paper model -> Flax variables saved with orbax

Errors (bad flags or values, unwritable output, missing or mismatched checkpoint) print one
line on stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from efficientvit_jax.config import DATA_FORMATS, LAYOUTS, REMAT_OPTIONS, EfficientViTConfig
from efficientvit_jax.training.distributed import add_scale_flags
from efficientvit_jax.zoo.convert_cli import add_convert_args, run_convert


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.replace(",", " ").split())
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of ints, got {text!r}"
        ) from e


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Every builder option as a flag; defaults are the config's own."""
    d = EfficientViTConfig()
    g = p.add_argument_group("model (builder options)")
    g.add_argument("--image-size", type=int, default=d.image_size)
    g.add_argument("--patch-size", type=int, default=d.patch_size)
    g.add_argument("--in-channels", type=int, default=d.in_channels)
    g.add_argument("--embed-dim", type=int, default=d.embed_dim)
    g.add_argument("--depths", type=_int_list, default=d.depths, help="e.g. 1,2,3")
    g.add_argument("--num-heads", type=_int_list, default=d.num_heads, help="e.g. 4,4,4")
    g.add_argument("--mlp-ratio", type=float, default=d.mlp_ratio)
    g.add_argument("--num-classes", type=int, default=None)
    g.add_argument("--layout", choices=LAYOUTS, default=d.layout)
    g.add_argument("--data-format", choices=DATA_FORMATS, default=d.data_format)
    g.add_argument("--dtype", default="float32", help="computation dtype, e.g. bfloat16")
    g.add_argument("--drop-path-rate", type=float, default=d.drop_path_rate)
    g.add_argument(
        "--remat",
        choices=REMAT_OPTIONS,
        default=d.remat,
        help="recompute each block in the backward pass (block, or a jax.checkpoint_policies name)",
    )


def config_from_args(args: argparse.Namespace) -> EfficientViTConfig:
    """The config the model flags describe (validated: bad values raise ``ValueError``)."""
    return EfficientViTConfig(
        image_size=args.image_size,
        patch_size=args.patch_size,
        in_channels=args.in_channels,
        embed_dim=args.embed_dim,
        depths=args.depths,
        num_heads=args.num_heads,
        mlp_ratio=args.mlp_ratio,
        num_classes=args.num_classes,
        layout=args.layout,
        data_format=args.data_format,
        dtype=args.dtype,
        drop_path_rate=args.drop_path_rate,
        remat=args.remat,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from efficientvit_jax.model import EfficientViT

    cfg = config_from_args(args)
    model = EfficientViT(cfg)
    s = cfg.image_size
    shape = (
        (args.batch, cfg.in_channels, s, s)
        if cfg.data_format == "NCHW"
        else (args.batch, s, s, cfg.in_channels)
    )
    images = jax.random.uniform(jax.random.key(args.seed), shape)
    t0 = time.perf_counter()
    variables = jax.jit(model.init)(jax.random.key(args.seed), images)
    out = jax.block_until_ready(jax.jit(model.apply)(variables, images))
    dt = time.perf_counter() - t0
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    print(f"config:        {cfg}")
    print(f"input shape:   {shape}")
    print(f"output shape:  {tuple(out.shape)}")
    print(f"output_size:   {cfg.output_size}")
    print(f"parameters:    {n_params:,}")
    print(f"finite:        {bool(jnp.isfinite(out).all())}")
    print(f"init+apply:    {dt:.2f} s (including compilation), backend {jax.default_backend()}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from efficientvit_jax.summary import summary

    print(summary(config_from_args(args), flops=not args.no_flops).table())
    return 0


# Defaults of `train`: the default architecture (depths 1,2,3, heads 4,4,4, mlp_ratio 4)
# scaled down to 1,797 tiny images. The 8x8 digits are upsampled to 32x32 and cut into 4x4
# patches, so the token grids are 8x8 -> 4x4 -> 2x2, the same shrinking as 224/16 on
# ImageNet; embed_dim 16 (widths 16, 32, 64) trains in about a minute on 2 CPU cores and
# generalises better here than wider models, with drop path and label smoothing 0.1.
TRAIN_MODEL_DEFAULTS = dict(
    image_size=32, patch_size=4, in_channels=1, embed_dim=16, num_classes=10, drop_path_rate=0.1
)
TRAIN_DEFAULTS = dict(
    epochs=12,
    batch_size=64,
    learning_rate=3e-3,
    warmup_steps=None,
    weight_decay=0.05,
    label_smoothing=0.1,
    seed=0,
    output="runs/digits",
    save_every=100,
    keep=3,
    eval_batch_size=120,
)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The training options of `train` (the model's are ``add_model_flags``)."""
    d = TRAIN_DEFAULTS
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--batch-size", type=int, default=d["batch_size"])
    g.add_argument(
        "--learning-rate",
        "--lr",
        type=float,
        default=d["learning_rate"],
        help="peak AdamW learning rate (after warm-up, then cosine decay)",
    )
    g.add_argument(
        "--warmup-steps",
        type=int,
        default=d["warmup_steps"],
        help="linear warm-up steps (default: 5%% of all steps)",
    )
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--label-smoothing", type=float, default=d["label_smoothing"])
    g.add_argument(
        "--seed",
        type=int,
        default=d["seed"],
        help="init, shuffling and drop path (the held-out split is fixed)",
    )
    g.add_argument("--eval-batch-size", type=int, default=d["eval_batch_size"])
    g = p.add_argument_group("output and checkpoints")
    g.add_argument(
        "--output",
        "-o",
        default=d["output"],
        help="folder for metrics.json, curves.png and checkpoints/",
    )
    g.add_argument(
        "--save-every",
        type=int,
        default=d["save_every"],
        help="checkpoint every this many steps (and always at the end)",
    )
    g.add_argument("--keep", type=int, default=d["keep"], help="checkpoints to keep")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in OUTPUT/checkpoints",
    )
    g.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps in all (the schedule still spans --epochs)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check_train_args(args: argparse.Namespace) -> None:
    def need(ok: bool, flag: str, rule: str, value: Any) -> None:
        if not ok:
            raise ValueError(f"{flag} must be {rule}, got {value}")

    need(args.epochs >= 1, "--epochs", ">= 1", args.epochs)
    need(args.batch_size >= 1, "--batch-size", ">= 1", args.batch_size)
    need(args.eval_batch_size >= 1, "--eval-batch-size", ">= 1", args.eval_batch_size)
    lr = args.learning_rate
    need(math.isfinite(lr) and lr > 0, "--learning-rate", "a finite number > 0", lr)
    if args.warmup_steps is not None:
        need(args.warmup_steps >= 0, "--warmup-steps", ">= 0", args.warmup_steps)
    wd = args.weight_decay
    need(math.isfinite(wd) and wd >= 0, "--weight-decay", "a finite number >= 0", wd)
    ls = args.label_smoothing
    need(0 <= ls < 1, "--label-smoothing", "in [0, 1)", ls)
    need(args.save_every >= 1, "--save-every", ">= 1", args.save_every)
    need(args.keep >= 1, "--keep", ">= 1", args.keep)
    if args.max_steps is not None:
        need(args.max_steps >= 1, "--max-steps", ">= 1", args.max_steps)
    need(args.in_channels == 1, "--in-channels", "1 for the digits (grey images)", args.in_channels)
    need(args.num_classes == 10, "--num-classes", "10 for the digits", args.num_classes)


def _check_output_writable(path: str) -> None:
    """Create ``path`` if needed and prove it writable with a probe file; on failure remove
    what was created and raise ``ValueError``. (Checked before any training, so a bad
    folder costs nothing; permission bits alone are not trusted, root ignores them.)"""
    created = []
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        created.append(parent)
        parent = os.path.dirname(parent)
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise OSError(f"{path} exists and is not a folder")
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        for d in created:  # innermost first
            shutil.rmtree(d, ignore_errors=True)
        reason = e.strerror or str(e)
        raise ValueError(f"output folder {path!r} cannot be written: {reason}") from e


def _atomic_write(path: str, write: Any) -> None:
    """``write(tmp_path)`` then rename: readers never see a half-written file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _plot(path: str, step_losses: list[float], history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(range(1, len(step_losses) + 1), step_losses, lw=0.8, label="train (per step)")
    if history:
        ax1.plot(
            [h["step"] for h in history],
            [h["test_loss"] for h in history],
            "o-",
            label="held-out (per epoch)",
        )
        ax2.plot(
            [h["epoch"] for h in history],
            [h["train_accuracy"] for h in history],
            "o-",
            label="train",
        )
        ax2.plot(
            [h["epoch"] for h in history],
            [h["test_accuracy"] for h in history],
            "o-",
            label="held-out",
        )
    ax1.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # no epoch finished: nothing to label
            ax.legend()
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the digits; write metrics.json, curves.png and checkpoints under --output."""
    t_start = time.perf_counter()
    _check_train_args(args)
    cfg = config_from_args(args)  # validates the model options (ValueError)

    from efficientvit_jax.training import distributed, precision, sharding

    # Devices, jax.distributed and the mesh before any computation.
    setup = distributed.setup_from_args(args)
    if setup.multiprocess:
        raise ValueError(
            "multi-process training is not wired into `efficientvit-jax train`; use the "
            "library (README, 'Scaling out') with one process per host"
        )
    if setup.precision != "float32":
        cfg = cfg.replace(**setup.model_options)
    n_devices = sharding.batch_size_per_step(setup.mesh)

    import jax
    import numpy as np
    from tqdm import tqdm

    from efficientvit_jax.model import EfficientViT
    from efficientvit_jax.training import (
        Checkpointer,
        config_to_dict,
        create_train_state,
        evaluate,
        iterate_batches,
        make_eval_step,
        make_optimizer,
        make_train_step,
        num_batches,
    )
    from efficientvit_jax.training.digits import load_digits_split

    data = load_digits_split(cfg.image_size, cfg.data_format)
    n_train = len(data.train_images)
    if args.batch_size > n_train:
        raise ValueError(
            f"--batch-size must be <= {n_train} (the training images), got {args.batch_size}"
        )
    sharding.check_batch_size(args.batch_size, setup.mesh)
    spe = num_batches(n_train, args.batch_size, remainder="drop")
    total_steps = spe * args.epochs
    stop = total_steps if args.max_steps is None else min(args.max_steps, total_steps)
    # What identifies the run: a checkpoint is resumed only under the same values.
    run_config = {
        "model": config_to_dict(cfg),
        "train": {
            "dataset": "sklearn-digits",
            **{
                k: getattr(args, k)
                for k in (
                    "epochs",
                    "batch_size",
                    "learning_rate",
                    "warmup_steps",
                    "weight_decay",
                    "label_smoothing",
                    "seed",
                )
            },
        },
    }

    out = args.output
    ckpt_dir = os.path.join(out, "checkpoints")
    if args.resume:
        if not os.path.isdir(ckpt_dir):
            raise ValueError(f"--resume: no checkpoint folder {ckpt_dir}")
    else:
        _check_output_writable(out)
    ckpt = Checkpointer(ckpt_dir, config=run_config, max_to_keep=args.keep)
    if not args.resume and ckpt.latest_step() is not None:
        raise ValueError(
            f"{ckpt_dir} already holds checkpoints (latest step {ckpt.latest_step()}); "
            "pass --resume to continue, or choose another --output"
        )

    model = EfficientViT(cfg)
    optimizer = setup.wrap_optimizer(
        make_optimizer(
            args.learning_rate,
            total_steps=total_steps,
            warmup_steps=args.warmup_steps,
            weight_decay=args.weight_decay,
        )
    )
    state = create_train_state(model, optimizer, args.seed, data.train_images[: args.batch_size])
    step_losses: list[float] = []
    step_accs: list[float] = []
    history: list[dict[str, Any]] = []
    if args.resume:
        state, extra = ckpt.restore(state)  # CheckpointError (a ValueError) if missing/bad
        step_losses = list(extra.get("step_losses", []))
        step_accs = list(extra.get("step_accuracies", []))
        history = list(extra.get("history", []))
        _check_output_writable(out)
    step_fn = None
    if setup.loss_scale is not None:
        step_fn = precision.make_train_step_with_loss_scale(
            model, optimizer, label_smoothing=args.label_smoothing, jit=False
        )
    if n_devices > 1 or step_fn is not None:
        # Data-parallel (and fsdp) over the mesh: the same step, partitioned by jit.
        shardings = sharding.state_sharding(
            state, setup.mesh, fsdp=setup.fsdp, min_fsdp_size=setup.min_fsdp_size
        )
        state = sharding.shard_state(state, setup.mesh, shardings)
        train_step = sharding.make_sharded_train_step(
            model,
            optimizer,
            setup.mesh,
            shardings,
            label_smoothing=args.label_smoothing,
            step_fn=step_fn,
        )
    else:
        train_step = make_train_step(model, optimizer, label_smoothing=args.label_smoothing)
    eval_step = make_eval_step(model)

    def held_out() -> dict[str, float]:
        return evaluate(
            eval_step,
            state,
            iterate_batches(
                data.test_images,
                data.test_labels,
                args.eval_batch_size,
                shuffle=False,
                remainder="pad",
            ),
        )

    def extra() -> dict[str, Any]:
        return {"step_losses": step_losses, "step_accuracies": step_accs, "history": history}

    step = int(jax.device_get(state.step))
    start_step = step
    print(setup.describe(), flush=True)
    print(
        f"training {cfg.layout} EfficientViT ({sum(x.size for x in jax.tree.leaves(state.params)):,} "
        f"params) on digits: {n_train} train / {len(data.test_images)} held-out images, "
        f"{spe} steps/epoch, steps {step} -> {stop} of {total_steps}",
        flush=True,
    )
    bar = tqdm(
        total=stop,
        initial=step,
        unit="step",
        disable=args.no_progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    t_first = None  # throughput excludes the first step (compilation)
    while step < stop:
        epoch, first = divmod(step, spe)
        bar.set_description(f"epoch {epoch + 1}/{args.epochs}")
        for batch in iterate_batches(
            data.train_images,
            data.train_labels,
            args.batch_size,
            seed=args.seed,
            epoch=epoch,
            remainder="drop",
            start_batch=first,
        ):
            state, m = train_step(state, batch)
            m = jax.device_get(m)
            step += 1
            step_losses.append(float(m["loss"]))
            step_accs.append(float(m["accuracy"]))
            if t_first is None:
                t_first, s_first = time.perf_counter(), step
            elapsed = time.perf_counter() - t_first
            rate = (step - s_first) * args.batch_size / elapsed if elapsed > 0 else 0.0
            bar.set_postfix(loss=f"{step_losses[-1]:.4f}", img_s=f"{rate:.0f}")
            bar.update(1)
            if step % spe == 0:  # epoch done: evaluate before a save, so the save has it
                ev = held_out()
                e = step // spe
                history.append(
                    {
                        "epoch": e,
                        "step": step,
                        "train_loss": float(np.mean(step_losses[(e - 1) * spe : e * spe])),
                        "train_accuracy": float(np.mean(step_accs[(e - 1) * spe : e * spe])),
                        "test_loss": ev["loss"],
                        "test_accuracy": ev["accuracy"],
                    }
                )
                bar.write(
                    f"epoch {e}: train loss {history[-1]['train_loss']:.4f}, held-out "
                    f"loss {ev['loss']:.4f}, accuracy {ev['accuracy']:.2%}"
                )
            if step % args.save_every == 0 or step == stop:
                ckpt.save(state, extra=extra())
            if step >= stop:
                break
    bar.close()
    if ckpt.latest_step() != step:  # e.g. resumed at the very end
        ckpt.save(state, extra=extra())
    ckpt.close()
    final = held_out()
    wall = time.perf_counter() - t_start
    metrics = {
        "test_accuracy": final["accuracy"],
        "test_loss": final["loss"],
        "test_count": final["count"],
        "step": step,
        "total_steps": total_steps,
        "epochs_completed": step // spe,
        "wall_time_s": wall,
        "steps_this_run": step - start_step,
        "backend": jax.default_backend(),
        "config": run_config,
        "history": history,
        "step_losses": step_losses,
    }
    metrics_path = os.path.join(out, "metrics.json")
    plot_path = os.path.join(out, "curves.png")

    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=1)

    _atomic_write(metrics_path, dump)
    _plot(plot_path, step_losses, history)
    n_ok = round(final["accuracy"] * final["count"])
    print(
        f"test accuracy: {final['accuracy']:.2%} ({n_ok}/{final['count']} held-out images) "
        f"after {step} steps; {wall:.1f} s in all"
    )
    print(f"wrote {metrics_path}, {plot_path}, checkpoint {os.path.join(ckpt_dir, str(step))}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="efficientvit-jax", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train", help="train on scikit-learn's digits; metrics, plot, checkpoints"
    )
    add_model_flags(train)
    train.set_defaults(**TRAIN_MODEL_DEFAULTS)
    add_train_flags(train)
    add_scale_flags(train)
    train.set_defaults(func=cmd_train)
    demo = sub.add_parser("demo", help="build, init and run the model on a random batch")
    add_model_flags(demo)
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    summ = sub.add_parser("summary", help="parameters per stage, FLOPs, output_size")
    add_model_flags(summ)
    summ.add_argument("--no-flops", action="store_true", help="skip compiling for the FLOP count")
    summ.set_defaults(func=cmd_summary)
    conv = sub.add_parser("convert", help="a timm checkpoint -> Flax variables saved with orbax")
    add_convert_args(conv)
    conv.set_defaults(func=run_convert)
    return p


_EXTRAS = {
    "tqdm": "train",
    "sklearn": "train",
    "matplotlib": "train",
    "orbax": "train",
    "safetensors": "zoo",
    "torch": "timm",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch", 1) < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        # One line: config and checkpoint messages are single sentences already.
        print(f"efficientvit-jax: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        # train and convert need optional dependencies; say which extra brings them.
        extra = _EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"efficientvit-jax: error: `{args.command}` needs {e.name}: "
            f"pip install 'efficientvit-jax[{extra}]'",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
