"""Data-parallel and FSDP training on JAX's SPMD runtime: a mesh, placements, a sharded step.

Nothing here touches the model: ``jax.jit`` partitions the ordinary train step
(``steps.make_train_step``) by itself (GSPMD) once its inputs carry ``NamedSharding``s. This
module only decides where things live:

- the mesh has two axes, ``data`` and ``fsdp`` (``make_mesh``);
- the batch is split along its leading axis over both axes together (every device gets
  ``global_batch / num_devices`` examples);
- the train state is replicated by default; with ``fsdp > 1`` each large parameter (and its
  optimizer moments) is split along its largest axis divisible by the ``fsdp`` size, so a
  device holds ``1/fsdp`` of it, and XLA inserts the all-gathers and reduce-scatters.

Typical use (one process or many; see ``distributed.initialize`` for the latter)::

    mesh = make_mesh(fsdp=2)                       # all devices: data = n / 2, fsdp = 2
    state = create_train_state(model, optimizer, seed, sample)
    state_sh = state_sharding(state, mesh)
    state = shard_state(state, mesh, state_sh)
    step = make_sharded_train_step(model, optimizer, mesh, state_sh)
    for batch in iterate_batches(...):             # this process's share of the batch
        state, metrics = step(state, batch)

No ``pmap`` and no ``with mesh:`` context: shardings are explicit arguments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from efficientvit_jax.training.state import TrainState
from efficientvit_jax.training.steps import LossFn, Metrics, make_train_step

DATA = "data"
FSDP = "fsdp"
BATCH_AXES = (DATA, FSDP)
"""The batch's leading axis is split over both mesh axes: FSDP is data parallel too."""

DEFAULT_MIN_FSDP_SIZE = 2**12
"""Leaves with fewer elements stay replicated under FSDP: splitting them saves nothing and
costs a collective each."""


def make_mesh(
    data: int | None = None,
    fsdp: int = 1,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A ``(data, fsdp)`` device mesh over all devices of all processes (or ``devices``).

    Args:
      data: size of the ``data`` axis; ``None`` uses every device: ``num_devices // fsdp``.
      fsdp: size of the ``fsdp`` axis (1 = parameters replicated, pure data parallel).
      devices: the devices to use (default ``jax.devices()``, global over processes).

    Raises:
      ValueError: if the sizes are not positive ints or ``data * fsdp`` does not match the
        device count (naming both numbers).
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if not isinstance(fsdp, (int, np.integer)) or fsdp < 1:
        raise ValueError(f"fsdp must be an int >= 1, got {fsdp!r}")
    if data is None:
        if n % fsdp:
            raise ValueError(f"fsdp={fsdp} does not divide the {n} available devices")
        data = n // fsdp
    if not isinstance(data, (int, np.integer)) or data < 1:
        raise ValueError(f"data must be an int >= 1, got {data!r}")
    if data * fsdp != n:
        raise ValueError(
            f"mesh data={data} x fsdp={fsdp} = {data * fsdp} devices, but {n} devices are "
            f"available; use them all (pass devices=... to use a subset)"
        )
    # Auto axes: jit propagates shardings from the inputs (GSPMD), so an unchanged,
    # sharding-unaware train step runs partitioned. (jax.make_mesh defaults to Explicit.)
    return jax.make_mesh(
        (int(data), int(fsdp)), BATCH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices
    )


def mesh_shape(mesh: Mesh) -> dict[str, int]:
    """``{"data": d, "fsdp": f}`` of a mesh made by ``make_mesh``."""
    return {name: int(mesh.shape[name]) for name in BATCH_AXES}


def batch_size_per_step(mesh: Mesh) -> int:
    """How many ways the batch is split: ``data * fsdp`` (the global batch must divide)."""
    s = mesh_shape(mesh)
    return s[DATA] * s[FSDP]


def replicated(mesh: Mesh) -> NamedSharding:
    """A copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data`` and ``fsdp``; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def fsdp_spec(
    shape: Sequence[int], fsdp: int, min_size: int = DEFAULT_MIN_FSDP_SIZE
) -> PartitionSpec:
    """Where one leaf goes under FSDP: its largest axis divisible by ``fsdp``, else replicated.

    Leaves smaller than ``min_size`` elements and scalars stay replicated. Ties go to the
    last axis (the output features of a Dense kernel).
    """
    if fsdp <= 1 or len(shape) == 0 or math.prod(shape) < min_size:
        return PartitionSpec()
    best = None
    for i, d in enumerate(shape):
        if d % fsdp == 0 and (best is None or d >= shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * best + [FSDP]))


def state_sharding(
    state: TrainState,
    mesh: Mesh,
    *,
    fsdp: bool | None = None,
    min_fsdp_size: int = DEFAULT_MIN_FSDP_SIZE,
) -> TrainState:
    """The ``NamedSharding`` of every leaf of ``state`` (same structure as ``state``).

    ``step`` and ``rng`` are always replicated. ``params`` and ``opt_state`` are replicated
    unless FSDP is on, in which case each leaf follows ``fsdp_spec`` (Adam's moments have the
    shape of their parameter, so they are split the same way; counters stay replicated).

    Args:
      state: a ``TrainState`` (arrays or ``jax.ShapeDtypeStruct``s: only shapes are read).
      mesh: a mesh from ``make_mesh``.
      fsdp: shard parameters over the ``fsdp`` axis; default: when that axis has size > 1.
      min_fsdp_size: leaves with fewer elements stay replicated.
    """
    size = mesh_shape(mesh)[FSDP]
    if fsdp is None:
        fsdp = size > 1
    rep = replicated(mesh)

    def leaf(x: Any) -> NamedSharding:
        if not fsdp:
            return rep
        return NamedSharding(mesh, fsdp_spec(np.shape(x), size, min_fsdp_size))

    return TrainState(
        step=rep,
        params=jax.tree.map(leaf, state.params),
        opt_state=jax.tree.map(leaf, state.opt_state),
        rng=rep,
        batch_stats=jax.tree.map(lambda _: rep, state.batch_stats),
    )


def _put_global(x: Any, sharding: NamedSharding) -> jax.Array | jax.ShapeDtypeStruct:
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if isinstance(x, jax.ShapeDtypeStruct):  # an abstract state (a resume's target)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
    # Through the host, piece by piece: with several processes each one holds the same full
    # value (same seed) and contributes the pieces that live on its own devices. It also
    # guarantees fresh buffers: ``jax.device_put(x, sharding, may_alias=False)`` (jax 0.10,
    # CPU) still shares device 0's buffer with ``x``, so the donating step deleted ``x``.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_state(state: TrainState, mesh: Mesh, shardings: TrainState | None = None) -> TrainState:
    """Place ``state`` on the mesh (``shardings`` default: ``state_sharding(state, mesh)``); an
    abstract state (``jax.ShapeDtypeStruct`` leaves) gets the shardings as its leaves'.

    With several processes every process must pass the same full state (e.g. created from
    the same seed, or restored from the same checkpoint).
    """
    if shardings is None:
        shardings = state_sharding(state, mesh)
    return jax.tree.map(_put_global, state, shardings)


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """Raise ``ValueError`` unless the mesh's ``data * fsdp`` devices divide ``global_batch``."""
    s = mesh_shape(mesh)
    ways = s[DATA] * s[FSDP]
    if global_batch % ways:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the {ways} devices the batch "
            f"is split over (mesh data={s[DATA]} x fsdp={s[FSDP]}); use a batch size that is a "
            f"multiple of {ways}"
        )


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays from this process's share of the batch.

    Each process passes its own ``[local_batch, ...]`` arrays (with one process: the whole
    batch); the global batch is ``local_batch * process_count``, split over the mesh's
    ``data`` and ``fsdp`` axes. Arrays that are already global ``jax.Array``s with the batch
    sharding are passed through.

    Raises:
      ValueError: if the global batch size is not divisible by ``data * fsdp``, or the
        arrays of the batch disagree on the batch size.
    """
    sharding = batch_sharding(mesh)
    sizes = {k: np.shape(v)[0] for k, v in batch.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"batch arrays disagree on the batch size: {sizes}")
    out = {}
    for k, v in batch.items():
        if isinstance(v, jax.Array) and v.sharding == sharding:
            out[k] = v
            continue
        v = np.asarray(v)
        global_shape = (v.shape[0] * jax.process_count(), *v.shape[1:])
        check_batch_size(global_shape[0], mesh)
        out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
    return out


def make_sharded_train_step(
    model: nn.Module,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    state_shardings: TrainState,
    *,
    label_smoothing: float = 0.0,
    donate: bool = True,
    step_fn: Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, Metrics]]
    | None = None,
    frozen_backbone: bool = False,
    loss_fn: LossFn | None = None,
    trainable: Any | None = None,
) -> Callable[[TrainState, Mapping[str, Any]], tuple[TrainState, Metrics]]:
    """The train step, partitioned over ``mesh``: ``(state, batch) -> (state, metrics)``.

    ``state`` must be placed with ``state_shardings`` (``shard_state``); ``batch`` is this
    process's share as numpy arrays (``shard_batch`` is applied) or already global arrays.
    The output state keeps ``state_shardings`` (pinned, so FSDP parameters stay split) and
    the metrics are replicated scalars, readable from every process.

    Args:
      model, optimizer, label_smoothing, frozen_backbone, loss_fn, trainable: as for
        ``steps.make_train_step`` (the last four only shape the default step: a ``step_fn``
        brings its own).
      mesh: a mesh from ``make_mesh``.
      state_shardings: from ``state_sharding``.
      donate: reuse the input state's buffers for the output state.
      step_fn: a different ``(state, batch) -> (state, metrics)`` step to partition (e.g.
        ``precision.make_train_step_with_loss_scale``); default ``make_train_step``.
    """
    if step_fn is None:
        step_fn = make_train_step(
            model,
            optimizer,
            label_smoothing=label_smoothing,
            donate=False,
            frozen_backbone=frozen_backbone,
            loss_fn=loss_fn,
            trainable=trainable,
        )
    rep = replicated(mesh)
    bsh = batch_sharding(mesh)
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, bsh),
        out_shardings=(state_shardings, rep),
        donate_argnums=(0,) if donate else (),
    )

    def sharded_step(state: TrainState, batch: Mapping[str, Any]) -> tuple[TrainState, Metrics]:
        return jitted(state, shard_batch(batch, mesh))

    sharded_step.jitted = jitted  # type: ignore[attr-defined]  # for .lower() / cost analysis
    return sharded_step


def to_host(tree: Any) -> Any:
    """NumPy copies of a pytree of (possibly multi-process, sharded) arrays, on every process.

    Arrays that span other processes' devices are all-gathered first (a collective: every
    process must call this together).
    """

    def get(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def per_device_batch(global_batch: int, mesh: Mesh) -> int:
    """Examples each device processes per step (checks divisibility)."""
    check_batch_size(global_batch, mesh)
    return global_batch // batch_size_per_step(mesh)
