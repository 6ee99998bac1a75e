"""Where the time goes: a jax.profiler trace of one compiled step, summed per HLO op and per module.

    python benchmarks/op_profile.py efficientvit_m0 --batch 32             # inference
    python benchmarks/op_profile.py efficientvit_b1 --batch 32 --train     # one SGD train step
    python benchmarks/op_profile.py core --batch 32 --trace-dir /tmp/tr    # keep the trace (Perfetto/TensorBoard)

The trace is XLA's own (``jax.profiler.trace``): on CPU every thunk of the compiled program records
when it starts and, for work handed to the thread pool (convolutions, large fusions), an ``end:``
marker when it finishes. The run is pinned to one core (see below), so ops run one after another and
each op's time (its own duration, or the time to its end marker) is exact; the total is printed
beside the untraced step time as a check. Ops are mapped to the Flax module that
emitted them through the ``op_name`` metadata of the optimised HLO, and grouped by the first
``--depth`` path components (``patch_embed/conv1``, ``stages_2/blocks_0``, ...).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import efficientvit_jax as ev

# Runtime bookkeeping, and control flow whose body ops are traced on their own (a while loop's
# event spans its body's: counting both would count the body twice).
_SKIP = (
    "Thunk",
    "Threadpool",
    "Slinky",
    "$",
    "Pjit",
    "ParseArguments",
    "while",
    "conditional",
    "call",
)
_META = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"", re.M)


def op_modules(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> the ``op_name`` metadata (jit(f)/Module/sub/.../primitive)."""
    return {m.group(1): m.group(2) for m in _META.finditer(hlo_text)}


def module_of(op_name: str, depth: int) -> str:
    """``jit(f)/EfficientViTMSRA/...forward_features/patch_embed/conv1/conv/conv_general_dilated``
    -> ``patch_embed/conv1`` (depth 2): drop the jit and the transformations, keep module names."""
    parts = [
        p for p in op_name.split("/") if p and not p.startswith(("jit(", "jvp(", "transpose("))
    ]
    parts = [p for p in parts if "." not in p and not p[0].isupper()]
    mods = parts[:-1] if len(parts) > 1 else parts  # the last component is the primitive
    if not mods:
        return "(other)"
    return "/".join(mods[:depth])


def op_times(xspace_path: str) -> dict[str, float]:
    """Seconds of thread time per HLO op name, summed over every XLA thread of one trace file.

    An op's time is its own event's duration; a convolution handed to the thread pool returns at
    once and records an ``end:`` marker on the same thread when it finishes, so for those the time
    runs to the marker. Events are paired in start order per thread, a repeated name (several
    traced steps) pairing with its own next marker.
    """
    data = jax.profiler.ProfileData.from_file(xspace_path)
    times: collections.Counter[str] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLA" not in line.name:
                continue
            opened: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
            for e in sorted(line.events, key=lambda e: e.start_ns):
                name = e.name
                if name.startswith(_SKIP):
                    continue
                if name.startswith("end: "):
                    pending = opened.get(name[5:])
                    if pending:
                        start, end = pending.pop(0)
                        times[name[5:]] += max(int(e.start_ns), end) - start
                else:
                    opened[name].append((int(e.start_ns), int(e.start_ns + e.duration_ns)))
            for name, pending in opened.items():
                times[name] += sum(end - start for start, end in pending)
    return {k: v / 1e9 for k, v in times.items()}


def build_step(name: str, batch: int, train: bool, size: int = 224) -> tuple[Any, tuple[Any, ...]]:
    """A jitted inference or SGD train step of a zoo model (or the core model) and its arguments."""
    if name == "core":
        model = ev.build(ev.EfficientViTConfig(image_size=size))
        x = jnp.ones((batch, 3, size, size), jnp.float32)
        classes = model.config.num_classes
    else:
        from efficientvit_jax.zoo import create_model

        model = create_model(name)
        x = jnp.ones((batch, 3, size, size), jnp.float32)
        classes = 1000
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1]))
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
    if not train:
        return jax.jit(lambda v, x: model.apply(v, x)), (variables, x)
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    opt = optax.sgd(0.01, momentum=0.9)
    y = jnp.zeros((batch,), jnp.int32)

    def loss_fn(p, rest, x, y):
        out, new = model.apply({"params": p, **rest}, x, train=True, mutable=list(rest))
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), new

    def step(p, rest, o, x, y):
        (loss, new), g = jax.value_and_grad(loss_fn, has_aux=True)(p, rest, x, y)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), new, o, loss

    del classes
    return jax.jit(step), (params, rest, opt.init(params), x, y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", help="a zoo model name (efficientvit_m0, ...) or 'core'")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224, help="image height and width")
    p.add_argument("--train", action="store_true", help="profile a train step, not inference")
    p.add_argument("--runs", type=int, default=3, help="steps traced (after one warm-up)")
    p.add_argument("--depth", type=int, default=2, help="module path components kept")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace-dir", type=Path, default=None)
    p.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    args = p.parse_args(argv)

    fn, fargs = build_step(args.model, args.batch, args.train, args.size)
    compiled = fn.lower(*fargs).compile()
    modules = op_modules(compiled.as_text())
    jax.block_until_ready(fn(*fargs))
    t = time.perf_counter()
    for _ in range(args.runs):
        jax.block_until_ready(fn(*fargs))
    wall = (time.perf_counter() - t) / args.runs
    trace_dir = args.trace_dir or Path(tempfile.mkdtemp(prefix="evit-trace-"))
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(args.runs):
            jax.block_until_ready(fn(*fargs))
    xspace = sorted(trace_dir.rglob("*.xplane.pb"))[-1]
    per_op = op_times(str(xspace))
    per_op = {k: v / args.runs for k, v in per_op.items()}
    total = sum(per_op.values())
    kind = "train step" if args.train else "inference"
    print(
        f"{args.model} {kind}, batch {args.batch}: {wall * 1e3:.1f} ms a step untraced, "
        f"{total * 1e3:.1f} ms of thread time in ops on {jax.local_devices()[0].platform} "
        f"(trace: {xspace})"
    )

    def table(title: str, counter: dict[str, float]) -> None:
        width = 90 if title.startswith("HLO op (") else 48
        print(f"\n{title:<{width}} {'ms':>8} {'share':>7}")
        for k, v in sorted(counter.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"{k[:width]:<{width}} {v * 1e3:8.2f} {v / total:7.1%}")

    by_module: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    for op, secs in per_op.items():
        by_module[module_of(modules.get(op, ""), args.depth)] += secs
        by_kind[re.sub(r"\.\d+$", "", op)] += secs
    table("module", by_module)
    table("HLO op kind", by_kind)
    table(
        "HLO op (module)",
        {f"{k} ({module_of(modules.get(k, ''), 9)})": v for k, v in per_op.items()},
    )
    return 0


if __name__ == "__main__":
    # One core, set before XLA's client starts (importing the package does not start it): its
    # thread pool follows the affinity mask, so every op then runs to completion before the next
    # and the trace's per-op times are exact and add up to the step (with two cores, work in flight
    # on the pool overlaps and the markers do not separate it). The shares carry over to the
    # multi-core run; --all-cores keeps every core.
    if "--all-cores" not in sys.argv and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    raise SystemExit(main())
