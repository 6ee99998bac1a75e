"""Host arrays into JAX arrays without compiling anything.

At the bottom of the package (no package imports). Outside a trace, ``jnp.asarray`` of a NumPy
array dispatches a primitive (``stage``; ``convert_element_type`` when given a dtype), and JAX
compiles one small program for every new shape and dtype: measured 18 ms each on the 2-core CPU
(200 shapes: 3.7 s), where ``jax.device_put`` took 0.03 s for all 200. A checkpoint's conversion,
a fine-tuning merge or an export's folded weights meet hundreds of leaf shapes.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def device_array(a: Any, dtype: Any = None) -> jax.Array:
    """``a`` (a NumPy array, a scalar, a JAX array) as a JAX array of ``dtype`` (default: its
    own), placed as ``jnp.asarray`` places it (the default device, not committed). Host data is
    cast by NumPy (bfloat16 included, rounding to nearest even as XLA does); a JAX array (or a
    tracer) is cast by JAX, and returned as it is when its dtype is already ``dtype``."""
    if isinstance(a, jax.Array):
        return a if dtype is None or a.dtype == np.dtype(dtype) else a.astype(dtype)
    return jax.device_put(np.asarray(a, dtype))
