"""Multi-process start-up and the command-line flags of scaled-out training.

One Python process runs per host (per TPU VM, per GPU node, or per GPU with
``local_device_ids``); ``jax.distributed.initialize`` joins them before any other JAX call,
after which ``jax.devices()`` lists every device of every process and a mesh spans them
all. Each process then feeds its own share of every batch (``sharding.shard_batch``).

Where the coordinates come from, first match wins:

1. arguments / flags: ``--coordinator HOST:PORT --num-processes N --process-id I``;
2. environment: ``EVIT_COORDINATOR``, ``EVIT_NUM_PROCESSES``, ``EVIT_PROCESS_ID``;
3. ``--distributed`` (``auto=True``): JAX's cluster auto-detection (Cloud TPU pods, SLURM,
   Open MPI, ...), which needs no coordinates;
4. otherwise: a single process, nothing to initialise.

On CPU, collectives between processes go over gloo (JAX's default CPU collectives).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import jax
from jax.sharding import Mesh

from efficientvit_jax.training import precision as prec
from efficientvit_jax.training import sharding as sh

ENV_COORDINATOR = "EVIT_COORDINATOR"
ENV_NUM_PROCESSES = "EVIT_NUM_PROCESSES"
ENV_PROCESS_ID = "EVIT_PROCESS_ID"


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {v!r}") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    local_device_ids: list[int] | None = None,
    timeout_s: int = 300,
) -> bool:
    """Join the processes of a multi-process run; returns whether it is multi-process.

    Missing arguments are read from ``EVIT_COORDINATOR``, ``EVIT_NUM_PROCESSES`` and
    ``EVIT_PROCESS_ID``. With no coordinator anywhere, ``auto=True`` lets JAX detect the
    cluster (TPU pod, SLURM, ...); otherwise nothing is done (single process). Calling it
    again after a successful initialisation is a no-op. Must run before any computation.

    Raises:
      ValueError: a coordinator without the process count and id (or ids out of range).
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _env_int(ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(ENV_PROCESS_ID)
    if coordinator_address is None:
        if num_processes not in (None, 1):
            raise ValueError(
                f"num_processes={num_processes} needs a coordinator address "
                f"(--coordinator HOST:PORT or {ENV_COORDINATOR})"
            )
        if not auto:
            return False
        jax.distributed.initialize(
            local_device_ids=local_device_ids, initialization_timeout=timeout_s
        )
        return True
    if num_processes is None or process_id is None:
        raise ValueError(
            f"coordinator {coordinator_address!r} given, so the number of processes and this "
            f"process's id are needed too (--num-processes/--process-id or "
            f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}); got {num_processes} and {process_id}"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes, "
            f"got {num_processes} and {process_id}"
        )
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=timeout_s,
    )
    return True


def set_cpu_device_count(n: int) -> None:
    """Simulate ``n`` CPU devices in this process (testing; before any computation)."""
    if n < 1:
        raise ValueError(f"cpu device count must be >= 1, got {n}")
    jax.config.update("jax_num_cpu_devices", n)


def parse_mesh(text: str) -> dict[str, int | None]:
    """``"data=4,fsdp=2"`` -> ``{"data": 4, "fsdp": 2}``; missing axes: data all, fsdp 1."""
    out: dict[str, int | None] = {"data": None, "fsdp": 1}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in out:
            raise ValueError(f"--mesh: expected comma-separated data=N and fsdp=N, got {text!r}")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"--mesh: {name} must be an integer, got {value!r}") from None
        if n < 1:
            raise ValueError(f"--mesh: {name} must be >= 1, got {n}")
        out[name] = n
    return out


def add_scale_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the flags of multi-device / multi-host / mixed-precision training to ``parser``."""
    g = parser.add_argument_group("scaling out")
    g.add_argument(
        "--coordinator",
        default=None,
        help=f"HOST:PORT of process 0, for multi-process runs (or ${ENV_COORDINATOR})",
    )
    g.add_argument(
        "--num-processes",
        type=int,
        default=None,
        help=f"processes in all (or ${ENV_NUM_PROCESSES})",
    )
    g.add_argument(
        "--process-id", type=int, default=None, help=f"this process, 0-based (or ${ENV_PROCESS_ID})"
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="multi-process with JAX's cluster auto-detection (Cloud TPU pods, SLURM)",
    )
    g.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="simulate this many CPU devices per process (testing on a CPU-only machine)",
    )
    g.add_argument(
        "--mesh",
        default="",
        help="device mesh, e.g. data=4,fsdp=2 (default: data over all devices, fsdp=1)",
    )
    g.add_argument(
        "--min-fsdp-size",
        type=int,
        default=sh.DEFAULT_MIN_FSDP_SIZE,
        help="with fsdp > 1, parameters with fewer elements stay replicated",
    )
    g.add_argument(
        "--precision",
        choices=prec.PRECISIONS,
        default="float32",
        help="compute dtype; parameters, attention sums and the loss stay float32",
    )
    g.add_argument(
        "--loss-scale",
        choices=("auto", "dynamic", "none"),
        default="auto",
        help="dynamic loss scaling; auto = dynamic for float16 only",
    )
    g.add_argument("--loss-scale-init", type=float, default=2.0**15, help="initial loss scale")
    g.add_argument(
        "--loss-scale-interval",
        type=int,
        default=2000,
        help="finite steps in a row before the loss scale doubles",
    )
    return parser


@dataclasses.dataclass(frozen=True)
class ScaleSetup:
    """What ``setup_from_args`` decided.

    Attributes:
      mesh: the ``(data, fsdp)`` mesh over all devices of all processes.
      fsdp: whether parameters are sharded (the ``fsdp`` axis has size > 1).
      min_fsdp_size: see ``sharding.state_sharding``.
      precision: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
      model_options: ``dtype``/``param_dtype`` to pass to ``build``.
      loss_scale: keyword arguments for ``precision.dynamic_loss_scale``, or ``None``.
      multiprocess: whether ``jax.distributed`` joined several processes.
      process_index, process_count: this process and their number.
    """

    mesh: Mesh
    fsdp: bool
    min_fsdp_size: int
    precision: str
    model_options: dict[str, Any]
    loss_scale: dict[str, Any] | None
    multiprocess: bool
    process_index: int
    process_count: int

    def wrap_optimizer(self, optimizer: Any) -> Any:
        """``optimizer``, wrapped in ``dynamic_loss_scale`` when loss scaling is on."""
        if self.loss_scale is None:
            return optimizer
        return prec.dynamic_loss_scale(optimizer, **self.loss_scale)

    def describe(self) -> str:
        """One line for the log."""
        s = sh.mesh_shape(self.mesh)
        return (
            f"{jax.device_count()} devices ({jax.local_device_count()} local) in "
            f"{self.process_count} process(es); mesh data={s['data']} fsdp={s['fsdp']}; "
            f"precision {self.precision}" + ("; dynamic loss scaling" if self.loss_scale else "")
        )


def setup_from_args(args: argparse.Namespace) -> ScaleSetup:
    """``setup_from_options`` of the ``add_scale_flags`` flags."""
    from efficientvit_jax.training.config import MeshOptions, PrecisionOptions

    mesh = MeshOptions(
        mesh=args.mesh or "", min_fsdp_size=args.min_fsdp_size, cpu_devices=args.cpu_devices,
        coordinator=args.coordinator, num_processes=args.num_processes,
        process_id=args.process_id, distributed=args.distributed,
    )  # fmt: skip
    precision = PrecisionOptions(
        precision=args.precision, loss_scale=args.loss_scale,
        loss_scale_init=args.loss_scale_init, loss_scale_interval=args.loss_scale_interval,
    )  # fmt: skip
    return setup_from_options(mesh, precision)


def setup_from_options(mesh_options: Any, precision_options: Any) -> ScaleSetup:
    """Initialise JAX from a run config's ``mesh`` and ``precision`` sections
    (``training.config.MeshOptions``, ``PrecisionOptions``); call before any computation.

    Order matters: the CPU device count and ``jax.distributed`` must both be set before
    JAX starts its backends, and the mesh needs the devices of every process.
    """
    m, p = mesh_options, precision_options
    if m.cpu_devices is not None:
        set_cpu_device_count(m.cpu_devices)
    multi = initialize(m.coordinator, m.num_processes, m.process_id, auto=m.distributed)
    shape = parse_mesh(m.mesh or "")
    mesh = sh.make_mesh(data=shape["data"], fsdp=shape["fsdp"] or 1)
    loss_scale = p.loss_scale
    if loss_scale == "auto":
        loss_scale = "dynamic" if p.precision == "float16" else "none"
    return ScaleSetup(
        mesh=mesh,
        fsdp=sh.mesh_shape(mesh)["fsdp"] > 1,
        min_fsdp_size=m.min_fsdp_size,
        precision=p.precision,
        model_options=prec.dtype_options(p.precision),
        loss_scale=(
            {"init_scale": p.loss_scale_init, "growth_interval": p.loss_scale_interval}
            if loss_scale == "dynamic"
            else None
        ),
        multiprocess=multi,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
