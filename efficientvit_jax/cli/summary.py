"""``efficientvit-jax summary``: parameters per stage, FLOPs and output_size for any config."""

from __future__ import annotations

import argparse

from efficientvit_jax.cli.common import add_model_flags, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("summary", help="parameters per stage, FLOPs, output_size")
    add_model_flags(p)
    p.add_argument("--no-flops", action="store_true", help="skip compiling for the FLOP count")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from efficientvit_jax.summary import summary

    print(summary(config_from_args(args), flops=not args.no_flops).table())
    return 0
