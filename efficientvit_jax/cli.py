"""``efficientvit-jax``: the command-line entry point.

Subcommands:
  demo     build a model, init it, run a batch; print shapes and sizes
  summary  parameters per stage, FLOPs and output_size for any config
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from efficientvit_jax.config import DATA_FORMATS, LAYOUTS, EfficientViTConfig


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


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="efficientvit-jax", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build, init and run the model on a random batch")
    add_model_flags(demo)
    demo.add_argument("--batch", type=int, default=2)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)
    summ = sub.add_parser("summary", help="parameters per stage, FLOPs, output_size")
    add_model_flags(summ)
    summ.add_argument("--no-flops", action="store_true", help="skip compiling for the FLOP count")
    summ.set_defaults(func=cmd_summary)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if getattr(args, "batch", 1) < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    try:
        return args.func(args)
    except ValueError as e:
        print(f"efficientvit-jax: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
