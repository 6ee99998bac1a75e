"""Constant-time answers to three look-ups that ``jax2onnx`` (0.17) makes by scanning the graph.

While lowering, ``jax2onnx`` asks after each equation whether its outputs are already in the
graph (``output_binding._value_is_graph_connected``: every input, initializer and node output
compared in turn); its optimiser asks for a value's producer in a snapshot list of the nodes
(``optimizer_graph_utils._producer_node``: a set of the snapshot's ids built afresh on each
call). Both are linear in the graph, called about once per node: quadratic. Measured on this
machine: 44% of an MSRA M5 export (30 of 68 s), the larger part of an MIT L3 one.

``quicker_lookups()`` answers the common case of each from the IR's own back-pointers and
leaves every other case to ``jax2onnx``'s function, so the graph written is the same (the
export tests compare the files byte for byte with and without it):

- a value whose producer node belongs to the builder's graph is connected (``Node.graph`` is
  the graph a node is in; the original would find that node among the outputs it scans);
- a value whose producer is in the snapshot is produced by it (the original's first branch),
  with the snapshot's id set built once per snapshot (the optimiser's snapshots are fresh
  ``list(graph)`` copies, never changed in place; a snapshot of another length rebuilds it);
- a value with no producer (a graph input, an initializer: every Add's bias) is looked up by
  name in an index of the snapshot's outputs built with the id set, where the original scans
  every node's outputs (measured: 11 of L3's 38 s of ONNX export went to these scans).

A third scan is its clean-up of orphan Transposes (``ir_optimizations._has_named_consumer``:
whether any node but the Transpose takes its output, by name, every node's inputs compared in
turn, once per Transpose): answered from an index of the snapshot's input names, built once per
snapshot with the same name function (measured: asked for every output of M5's written graph,
2,230 nodes, 1.09 s against 0.005 s).

If ``jax2onnx`` moves these functions, nothing is patched and the export is as slow as before.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Sequence
from typing import Any

_PRODUCER_USERS = (  # the modules that import ``_producer_node`` by name
    "jax2onnx.converter.optimizer_graph_utils",
    "jax2onnx.converter.ir_optimizations",
    "jax2onnx.converter.conv_transpose_bias_folding",
)


def _connected(original: Any) -> Any:
    def connected(ctx: Any, value: Any) -> bool:
        producer = getattr(value, "producer", None)
        node = producer() if callable(producer) else None
        graph = getattr(ctx.builder, "nodes", None)
        if node is not None and graph is not None and getattr(node, "graph", None) is graph:
            return True
        return original(ctx, value)

    return connected


class _Snapshot:
    """The ids of a snapshot's nodes and, per output name, the first node giving it."""

    def __init__(self, nodes: Sequence[Any]) -> None:
        self.nodes, self.length = nodes, len(nodes)
        self.ids = {id(n) for n in nodes}
        self.by_name: dict[str, Any] = {}
        for n in nodes:
            for out in n.outputs:
                if out is not None and out.name:
                    self.by_name.setdefault(out.name, n)


def _producer(original: Any) -> Any:
    held: list[_Snapshot] = []

    def producer_node(nodes: Sequence[Any], value: Any) -> Any:
        producer = getattr(value, "producer", None)
        if not callable(producer):  # a name: the original's scan
            return original(nodes, value)
        if not held or held[0].nodes is not nodes or held[0].length != len(nodes):
            held[:] = [_Snapshot(nodes)]
        snap, node = held[0], producer()
        if node is not None:
            return node if id(node) in snap.ids else original(nodes, value)
        # No producer: a graph input or an initializer, which no node's output *is*; the
        # original then returns the first node with an output of the same name (none, in a
        # valid graph), found here in the index instead of by a scan.
        name = getattr(value, "name", None) or None
        found = snap.by_name.get(name) if name else None
        if found is None:
            return None
        return (
            found
            if any(o is not None and o.name == name for o in found.outputs)
            else original(nodes, value)
        )

    return producer_node


def _named_consumer(name_of: Any, inputs_of: Any) -> Any:
    held: list[tuple[Sequence[Any], int, dict[str, list[Any]]]] = []

    def has_named_consumer(nodes: Sequence[Any], *, producer: Any, output_name: str) -> bool:
        if not held or held[0][0] is not nodes or held[0][1] != len(nodes):
            consumers: dict[str, list[Any]] = {}
            for node in nodes:
                for value in inputs_of(node):
                    name = name_of(value)
                    if name is not None:
                        consumers.setdefault(name, []).append(node)
            held[:] = [(nodes, len(nodes), consumers)]
        return any(node is not producer for node in held[0][2].get(output_name, ()))

    return has_named_consumer


@contextlib.contextmanager
def quicker_lookups() -> Iterator[None]:
    """Within the block, ``jax2onnx``'s three linear look-ups answer at once."""
    patches: list[tuple[Any, str, Any]] = []
    try:
        binding = importlib.import_module("jax2onnx.converter.output_binding")
        utils = importlib.import_module("jax2onnx.converter.optimizer_graph_utils")
        users = [importlib.import_module(m) for m in _PRODUCER_USERS]
    except ImportError:
        yield
        return
    if hasattr(binding, "_value_is_graph_connected"):
        original = binding._value_is_graph_connected
        patches.append((binding, "_value_is_graph_connected", _connected(original)))
    if hasattr(utils, "_producer_node"):
        fast = _producer(utils._producer_node)
        patches += [(m, "_producer_node", fast) for m in users if hasattr(m, "_producer_node")]
    cleanup = importlib.import_module("jax2onnx.converter.ir_optimizations")
    if all(hasattr(cleanup, f) for f in ("_has_named_consumer", "_v_name", "_node_inputs")):
        fast = _named_consumer(cleanup._v_name, cleanup._node_inputs)
        patches.append((cleanup, "_has_named_consumer", fast))
    saved = [(m, name, getattr(m, name)) for m, name, _ in patches]
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
