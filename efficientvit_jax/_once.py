"""Programs that run once, compiled with less of XLA's optimisation.

At the bottom of the package (no package imports). A model's ``init`` runs once, yet
``jax.jit(model.init)`` pays XLA's full optimising compile for a program with a kernel or more
per variable (the random draws, the constant fills). ``ONCE_OPTIONS`` lowers the backend's
optimisation level from 3 to 1 and turns LLVM's expensive passes off. Measured on the 2-core
CPU, ``init`` at 224 px: M0 24.2 -> 11.9 s, B1 10.0 -> 6.6 s, the core builder 6.6 -> 4.5 s,
with every variable bit for bit the same. Level 0 (what ``JAX_DISABLE_MOST_OPTIMIZATIONS``
sets) was quicker still (M0 9.3 s) but drew different truncated normals: up to 4 ulp apart in
4% of the elements, its float arithmetic contracted differently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

ONCE_OPTIONS = {"xla_backend_optimization_level": 1, "xla_llvm_disable_expensive_passes": True}


def run_once(fn: Callable[..., Any], *args: Any) -> Any:
    """``jax.jit(fn)(*args)``, compiled with ``ONCE_OPTIONS``: for a program run once (a model's
    ``init``), the same values for less compile time. Where ``jax_disable_most_optimizations`` is
    set, the program is compiled as that flag says (level 0, already less). The persistent
    compilation cache, where one is set, serves it as any other program (the options are part
    of its key). Inside a trace (``jax.eval_shape``, ``jax.jit``), it is ``jax.jit(fn)(*args)``."""
    if any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args)):
        return jax.jit(fn)(*args)  # inside a trace (eval_shape, jit): nothing is compiled here
    lowered = jax.jit(fn).lower(*args)
    if jax.config.read("jax_disable_most_optimizations"):
        return lowered.compile()(*args)
    return lowered.compile(compiler_options=ONCE_OPTIONS)(*args)
