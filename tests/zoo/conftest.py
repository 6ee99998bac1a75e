"""Shared fixtures of the model-zoo tests (``timm`` is in the top-level conftest)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest


@pytest.fixture(scope="session")
def random_variables() -> Callable[[Any, int], dict[str, Any]]:
    """``(shapes, seed) -> variables``: non-trivial random values for an ``eval_shape`` tree.

    Cheaper than ``model.init`` (nothing to compile) and, unlike it, gives
    BatchNorm non-identity statistics. Kernels are scaled by 1/sqrt(fan_in) so
    activations keep a moderate size through the network.
    """

    def make(shapes: Any, seed: int = 0) -> dict[str, Any]:
        rng = np.random.default_rng(seed)

        def one(path: Any, sds: Any) -> np.ndarray:
            leaf = path[-1].key
            shape = tuple(sds.shape)
            if leaf == "kernel":
                fan_in = int(np.prod(shape[:-1]))
                a = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
            elif leaf in ("scale", "var"):
                a = rng.uniform(0.5, 1.5, shape)
            else:  # biases and running means
                a = rng.normal(0.0, 0.1, shape)
            return a.astype(np.float32)

        return jax.tree_util.tree_map_with_path(one, shapes)

    return make
