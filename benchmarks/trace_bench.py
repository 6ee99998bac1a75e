"""Tracing time of a model's programs, with the package's two trace-time paths on and off.

    python benchmarks/trace_bench.py --models efficientvit_m3,efficientvit_b1 --size 64 --repeat 3

Per model: ``jax.make_jaxpr`` of the forward pass (``model.apply``), the forward and gradient
lowered (``jax.jit(jax.grad(...)).lower``), and the variables' shapes (``eval_shape`` of
``init``). Each setting runs in a fresh process: ``first`` is the first trace there, ``again``
the best of ``--repeat`` more of the same shapes in new functions (what a process that traces a
model again pays: a training run's evaluation, a test suite). The settings:

- ``now``: the package as it is (``_linen.FastParams``' shape check, the shifted depthwise
  conv traced once per shape, ``ops.eval_shape`` for the variables);
- ``flax_param``: Flax's own ``Module.param`` (one ``eval_shape`` of each parameter's
  initializer at every trace of ``apply``);
- ``inline_kernel``: the shifted depthwise conv's custom-gradient kernel and its parts (forward,
  backward) called directly, traced anew at every call, and ``jax.eval_shape`` for the
  variables;
- ``before``: both, the package as it was before these paths.

Compilation is not timed (``compile_bench.py`` does). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from efficientvit_jax import _linen, ops
from efficientvit_jax.zoo import create_model


def _apply(setting: str) -> Callable[..., Any]:
    """Patch this process as ``setting`` says (each setting has a process of its own: nothing
    is put back); returns the ``eval_shape`` the setting uses for the variables."""
    if setting in ("flax_param", "before"):
        _linen.FastParams.param = nn.Module.param
    if setting in ("inline_kernel", "before"):
        ops._shifted_forward = ops._shifted_forward.__wrapped__
        ops._shifted_dwconv_vjp.defvjp(ops._shifted_dwconv_fwd, ops._shifted_dwconv_bwd.__wrapped__)
        ops._shifted_dwconv = ops._shifted_dwconv_vjp
        return jax.eval_shape
    return ops.eval_shape


def _first_and_best(fn: Callable[[], Any], repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(1 + repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], min(times[1:])


def trace_times(name: str, size: int, batch: int, repeat: int, setting: str) -> dict[str, Any]:
    model = create_model(name)
    c = model.config.in_channels
    nchw = model.config.data_format == "NCHW"
    x = jax.ShapeDtypeStruct(
        (batch, c, size, size) if nchw else (batch, size, size, c), jnp.float32
    )
    eval_shape = _apply(setting)
    # A new lambda each time: JAX keeps traces by function, and each timing must trace.
    shapes = lambda: eval_shape(lambda x: model.init(jax.random.key(0), x), x)  # noqa: E731
    first_shapes = _first_and_best(shapes, repeat)
    variables = shapes()
    forward = lambda: jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x)  # noqa: E731

    def gradient() -> Any:
        loss = lambda v, x: model.apply(v, x).astype(jnp.float32).sum()  # noqa: E731
        return jax.jit(jax.grad(loss)).lower(variables, x)

    return dict(
        variables=first_shapes,
        forward=_first_and_best(forward, repeat),
        gradient=_first_and_best(gradient, repeat),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientvit_m3,efficientvit_b1")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # the child process: one model in one setting, as JSON
        print(
            json.dumps(trace_times(*args.one[:1], args.size, args.batch, args.repeat, args.one[1]))
        )
        return
    print(f"jax {jax.__version__}, {jax.default_backend()}; seconds, first trace / again")
    print("| model | setting | variables | forward | forward + gradient, lowered |")
    print("| --- | --- | --- | --- | --- |")
    common = ["--size", str(args.size), "--batch", str(args.batch), "--repeat", str(args.repeat)]
    for name in args.models.split(","):
        for setting in ("now", "flax_param", "inline_kernel", "before"):
            out = subprocess.run(
                [sys.executable, __file__, "--one", name, setting, *common],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            t = json.loads(out.strip().splitlines()[-1])
            cells = " | ".join(f"{a:.2f} / {b:.2f}" for a, b in t.values())
            print(f"| {name} | {setting} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
