"""Shared setup of the subprocess workers (sharding and distributed tests).

Workers are started as scripts so that each gets its own XLA device count; this module
sits next to them and is imported from the script's directory. It must not import jax at
module level before the worker has configured the device count.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# A tiny two-stage model: compile time dominates on CPU. drop_path_rate > 0 so that the
# per-example randomness must also agree between the sharded and the single-device step.
TINY = dict(
    image_size=16,
    patch_size=4,
    in_channels=1,
    embed_dim=8,
    depths=(1, 1),
    num_heads=(2, 2),
    num_classes=10,
    drop_path_rate=0.2,
)
GLOBAL_BATCH = 16
STEPS = 2
# Small enough that the tiny model's kernels are split, large enough that biases are not:
# both branches of the FSDP placement are exercised.
MIN_FSDP_SIZE = 64


def configure(num_cpu_devices: int) -> None:
    """Device count and fast compilation; call before any jax computation."""
    import jax

    jax.config.update("jax_num_cpu_devices", num_cpu_devices)
    # The test suite disables XLA's optimisation passes for speed (tests/conftest.py);
    # subprocesses do not inherit that, so do the same here.
    jax.config.update("jax_disable_most_optimizations", True)


def setup() -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(model, optimizer, state, global_batch)``, identical in every process."""
    import jax.numpy as jnp
    import numpy as np

    import efficientvit_jax as ev
    from efficientvit_jax.training import create_train_state, make_optimizer

    model = ev.build(**TINY)
    # No warm-up: with the default warm-up the first learning rate is 0 and the
    # parameters would not move at all, which would make the comparison vacuous.
    optimizer = make_optimizer(1e-2, total_steps=10, warmup_steps=0)
    state = create_train_state(model, optimizer, 0, jnp.zeros((GLOBAL_BATCH, 1, 16, 16)))
    rng = np.random.default_rng(0)
    batch = {
        "images": rng.normal(size=(GLOBAL_BATCH, 1, 16, 16)).astype(np.float32),
        "labels": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32),
    }
    return model, optimizer, state, batch


def max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference over all leaves of two pytrees of the same structure."""
    import jax
    import numpy as np

    diffs = jax.tree.leaves(
        jax.tree.map(
            lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0)), a, b
        )
    )
    return max(diffs)


def report(result: dict[str, Any]) -> None:
    """Print the result as the last stdout line (the test parses it)."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
