"""``efficientvit-jax demo``: build a model, init it, run a random batch; print shapes and sizes."""

from __future__ import annotations

import argparse
import time

from efficientvit_jax.cli.common import add_model_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build, init and run the model on a random batch")
    add_model_flags(p)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    import jax
    import jax.numpy as jnp

    from efficientvit_jax._once import run_once
    from efficientvit_jax.model import EfficientViT

    cfg = config_from_args(args)
    model = EfficientViT(cfg)
    s, c = cfg.image_size, cfg.in_channels
    shape = (args.batch, c, s, s) if cfg.data_format == "NCHW" else (args.batch, s, s, c)
    images = jax.random.uniform(jax.random.key(args.seed), shape)
    t0 = time.perf_counter()
    variables = run_once(model.init, jax.random.key(args.seed), images)
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
