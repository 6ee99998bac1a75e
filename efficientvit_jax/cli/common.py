"""Flags and helpers the commands share: the builder's options as flags."""

from __future__ import annotations

import argparse

from efficientvit_jax.config import DATA_FORMATS, LAYOUTS, REMAT_OPTIONS, EfficientViTConfig


def int_list(text: str) -> tuple[int, ...]:
    """``"1,2,3"`` (or spaces) -> ``(1, 2, 3)``, for argparse."""
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
    g.add_argument("--depths", type=int_list, default=d.depths, help="e.g. 1,2,3")
    g.add_argument("--num-heads", type=int_list, default=d.num_heads, help="e.g. 4,4,4")
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
