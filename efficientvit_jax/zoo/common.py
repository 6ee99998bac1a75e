"""Layers shared by the paper models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class TorchBatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch's semantics and Flax's variable names.

    Same variables as ``nn.BatchNorm`` (params ``scale``/``bias``, batch_stats
    ``mean``/``var``) and the same normalisation (biased batch variance), but
    the running variance is updated with the *unbiased* batch variance, as
    ``torch.nn.BatchNorm2d`` does; ``nn.BatchNorm`` uses the biased one, which
    differs by n/(n-1) and is far off on the 2x2 maps of small inputs.
    ``momentum`` is Flax's (0.9 = PyTorch's 0.1). Statistics are computed in
    float32 at least (float64 under x64), whatever ``dtype``.
    """

    use_running_average: bool = True
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axis_name: str | None = None
    scale_init: Callable = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        stat_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), stat_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), stat_dtype))
        xf = x.astype(jnp.promote_types(x.dtype, stat_dtype))
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            n = int(np.prod([x.shape[a] for a in axes]))
            mean = jnp.mean(xf, axis=axes)
            if self.axis_name is not None:
                mean = lax.pmean(mean, self.axis_name)
            # two-pass variance: E[x^2] - E[x]^2 loses digits for large means
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            if self.axis_name is not None:
                var = lax.pmean(var, self.axis_name)
                n *= lax.psum(1, self.axis_name)
            if not self.is_initializing():
                unbiased = var * (n / max(n - 1, 1))
                ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
        inv = lax.rsqrt(var + self.epsilon) * scale.astype(xf.dtype)
        y = (xf - mean) * inv + bias.astype(xf.dtype)
        return y.astype(self.dtype)
