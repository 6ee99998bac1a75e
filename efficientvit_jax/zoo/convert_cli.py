"""Moved: the ``convert`` command is ``efficientvit_jax.cli.convert``, the on-disk format
``efficientvit_jax.zoo.converted``. Kept so that ``convert_cli.load_converted`` still works."""

from efficientvit_jax.zoo.converted import load_converted, save_converted

__all__ = ["load_converted", "save_converted"]
