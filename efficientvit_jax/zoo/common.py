"""Moved: the layers shared by the zoo families are in ``efficientvit_jax.zoo.base``. Kept so
that ``from efficientvit_jax.zoo.common import TorchBatchNorm`` still works."""

from efficientvit_jax.zoo.base import TorchBatchNorm

__all__ = ["TorchBatchNorm"]
