"""Which of ``jax2onnx``'s plugins an export loads.

On its first conversion in a process, ``jax2onnx`` (0.17) imports every module under
``jax2onnx/plugins``: the plugins of jax's primitives and of flax, and those of equinox,
dm_pix and its own examples, some of which build equinox modules at import (compiling their
random initialisers). Measured on this CPU: 5.5 s to import the equinox family and 1.4 s for
the examples, against 1.2 s for jax's and 0.7 s for flax's; B0's first ONNX export in a
process took 4.75 s, and 1.6 s with the jax, flax and dm_pix families alone (imports included).

An export here traces a linen module, so its graph holds jax primitives (and what flax's
plugins rewrite): ``lean_plugins()`` imports those families only, for the block. The graphs
are the same, byte for byte (``tests/test_export.py``). On leaving the block the registry is
marked unloaded again, so that a later ``jax2onnx.to_onnx`` of the caller's own (an equinox
model, say) still imports every family first. If ``jax2onnx`` keeps its registry elsewhere,
nothing is done and it imports everything, as before.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path

FAMILIES = ("jax", "flax", "dm_pix")
_loaded = False  # the families are imported (and their folders scanned) once a process


@contextlib.contextmanager
def lean_plugins() -> Iterator[None]:
    """Within the block, ``jax2onnx`` converts with the ``FAMILIES`` of plugins loaded."""
    global _loaded
    try:
        system = importlib.import_module("jax2onnx.plugins.plugin_system")
    except ImportError:
        yield
        return
    load = getattr(system, "_import_tree", None)
    if not callable(load) or getattr(system, "_already_imported_plugins", None) is not False:
        yield  # another jax2onnx, or every family already loaded
        return
    if not _loaded:
        root = Path(system.__file__).parent
        for family in FAMILIES:
            load(root / family, f"jax2onnx.plugins.{family}")
        _loaded = True
    system._already_imported_plugins = True
    try:
        yield
    finally:
        system._already_imported_plugins = False
