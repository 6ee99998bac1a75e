"""Shared test helpers.

Compilation dominates the cost of tests on CPU, and ``init`` is the worst of
it (one threefry program per parameter shape). Tests that need *some*
parameters, not the initialisers' own, fill the abstract tree from NumPy.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# XLA's optimisation passes double the compile time of the small programs the
# tests build, and change nothing the tests assert (every comparison has a
# tolerance). EVIT_TEST_FULL_OPT=1 runs the suite with them on.
if os.environ.get("EVIT_TEST_FULL_OPT") != "1":
    jax.config.update("jax_disable_most_optimizations", True)


def _random_variables(model, x, seed=0, scale=0.3):
    """Variables of ``model`` for input ``x``, drawn with NumPy instead of the initialisers.

    Shapes come from ``jax.eval_shape`` (no compilation). LayerNorm-like
    ``scale`` leaves are drawn around 1 so the model stays well conditioned.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(x.shape, x.dtype))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']") or name.endswith("['var']"):
            arr = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 10
            arr = rng.normal(0, scale / np.sqrt(max(fan_in, 1)) * 3, leaf.shape)
        return jnp.asarray(arr, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="session")
def random_variables():
    """The function ``random_variables(model, x, seed=0)`` (see ``_random_variables``)."""
    return _random_variables


@pytest.fixture(scope="session")
def timm():
    """The ``timm`` module, torch limited to 2 threads; skips (never passes) without torch/timm."""
    torch = pytest.importorskip("torch", reason="torch is needed to compare with timm")
    timm = pytest.importorskip("timm", reason="timm is needed to compare with its models")
    torch.set_num_threads(2)
    return timm
