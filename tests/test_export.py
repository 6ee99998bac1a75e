"""Export: ONNX (onnxruntime) and StableHLO (a fresh process) against the JAX model, fp16, the CLI.

Every comparison is with the unfolded model run by JAX itself (``model.apply`` on the original
variables), at batch 1 and 3; the exported files have a symbolic batch, so one file serves both.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import select
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is needed")
ort = pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is needed")
pytest.importorskip("jax2onnx", reason="the export extra (jax2onnx) is needed")

from efficientvit_jax import EfficientViTConfig, export  # noqa: E402
from efficientvit_jax.cli import main  # noqa: E402
from efficientvit_jax.export.source import Exportable  # noqa: E402
from efficientvit_jax.model import EfficientViT  # noqa: E402
from efficientvit_jax.zoo import create_model  # noqa: E402

from ._ort import cpu_session  # noqa: E402

MIT = ["b0", "b1", "b2", "b3", "l1", "l2", "l3"]
MSRA = ["m0", "m1", "m2", "m3", "m4", "m5"]
FAST = {"efficientvit_b0", "efficientvit_m0"}
# The smallest inputs: MIT needs a multiple of 32, MSRA at least 64 for its three stages.
# Weights of this scale keep the random models well conditioned (at 0.3 the MSRA models
# amplify float32 rounding to 1e-4 of their outputs, folded or not).
SCALE = 0.2

# Runs in a separate interpreter: JAX and NumPy only, never this package. One serves every
# StableHLO file of this module's tests in a test process (a request per line: the file, the
# inputs and outputs): a fresh interpreter per file spent about 1.5 s importing JAX each time.
# Each file's programs and heap are dropped after it (L3's hold gigabytes).
RELOAD = """
import ctypes, gc, json, sys, traceback
import jax, numpy as np
jax.config.update("jax_disable_most_optimizations", True)
for line in sys.stdin:
    try:
        path, io = json.loads(line)
        exported = jax.export.deserialize(bytearray(open(path, "rb").read()))
        assert not isinstance(exported.in_avals[0].shape[0], int), exported.in_avals  # symbolic
        data = np.load(io)
        worst = 0.0
        for key in ("x1", "x3"):
            if key in data:
                out = np.asarray(exported.call(data[key]), np.float32)
                worst = max(worst, float(np.abs(out - data["y" + key[1:]]).max()))
        assert "efficientvit_jax" not in sys.modules
        reply = {"worst": worst}
    except Exception:
        reply = {"error": traceback.format_exc()}
    exported = data = None
    jax.clear_caches()
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(json.dumps(reply), flush=True)
"""


def _images(shape, n, seed=1, scale=1.0):
    return (np.random.default_rng(seed).normal(size=(n, *shape)) * scale).astype(np.float32)


def _tolerance(ref):
    return 1e-4 * max(1.0, float(np.abs(ref).max()))


def _onnx_outputs(path, *xs):
    sess = cpu_session(path)
    assert [i.name for i in sess.get_inputs()] == ["images"]
    return [sess.run(None, {"images": x})[0] for x in xs]


class _Reloader:
    """The ``RELOAD`` interpreters of one test process, started when first needed: one with
    the persistent compilation cache (the small files: their programs come back from the cache
    in the next run) and one without (``uncached_env``: the large variants' files, whose
    programs hold their weights as constants)."""

    def __init__(self, uncached_env):
        # The large files' interpreter also keeps what it frees (``_kept_heap``), set through
        # glibc's environment variables as it starts.
        self.uncached_env = {**uncached_env, **KEPT_HEAP_ENV}
        self.procs = {}

    def __call__(self, path, tmp_path, *, cached, **io):
        """Max difference of the StableHLO file's outputs for the inputs ``x1``/``x3`` of
        ``io`` from ``y1``/``y3``."""
        data = tmp_path / "io.npz"
        np.savez(data, **io)
        proc = self.procs.get(cached)
        if proc is None or proc.poll() is not None:
            proc = self.procs[cached] = subprocess.Popen(
                [sys.executable, "-c", RELOAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, env=None if cached else self.uncached_env,
            )  # fmt: skip
        proc.stdin.write(json.dumps([str(path), str(data)]) + "\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 900)
        assert ready, f"no answer for {path} in 900 s"
        reply = json.loads(proc.stdout.readline() or '{"error": "the interpreter exited"}')
        assert "error" not in reply, reply["error"][-3000:]
        return reply["worst"]

    def close(self):
        for proc in self.procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def reload_elsewhere(uncached_env):
    reloader = _Reloader(uncached_env)
    yield reloader
    reloader.close()


def _release_memory():
    """Hand the freed heap back to the system (glibc keeps it otherwise): L3's exports free
    gigabytes that the StableHLO run in a second process needs. For the large variants only:
    a full collection and a trim of a test process's heap take 1-2 s, 41 s over the suite when
    every export did them (py-spy, the whole suite)."""
    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# glibc's mallopt parameters (malloc.h) and the values its dynamic threshold reaches on 64 bits.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
KEPT_HEAP_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


@contextlib.contextmanager
def _kept_heap(large):
    """While a large variant exports, glibc serves every allocation from its heap (no
    mmap) and keeps what is freed (trimmed only above 2 GB): the exports' gigabyte-sized
    buffers (protobuf serialisations, the MLIR constants) are then reused, not mapped afresh.
    On this virtual machine a page touched for the first time costs about 3 microseconds of
    system time, and L3's test touched about 35 GB. Measured on L3's test alone, back to
    back: 42.8 and 48.2 s against 55.4 and 56.8 s (system time 17-18 s against 26-28 s), its
    peak 9.6 GB against 8.4 GB. Afterwards the heap is released (``_release_memory``) and glibc
    set back to where its dynamic threshold settles (mmap above 32 MB, trim above 64 MB)."""
    if not (large and sys.platform.startswith("linux")):
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, 65536)
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
        _release_memory()


def _check_both_formats(
    model, variables, shape, tmp_path, reload, name="m", *, both_batches=True, large=False
):
    """Export ``model`` both ways (folded), run the files, compare with ``model.apply``;
    returns the export's report and the ONNX graph (its nodes). ``large`` (the large
    variants): the exports keep glibc's heap (``_kept_heap``), which goes back to the system
    before the StableHLO file's run, and the file's programs stay out of the compilation cache.

    The StableHLO file runs in an interpreter without this package (``reload``), at batch 1 and 3
    (``both_batches``) or at batch 3 alone, its batch checked to be symbolic: each batch size
    is one compile of the file (the zoo variants other than B0 and M0 run at batch 3 alone:
    the ONNX file is still run at both), and for L3 each holds its gigabyte of constants
    several times over (measured: 5.4 GB for one, 15.5 GB for the test in all with two), more
    than two test processes on the 24 GB machine can afford side by side."""
    x = _images(shape, 4)  # one program for the reference: batch 1 and batch 3 in one
    y = np.asarray(jax.jit(model.apply)(variables, x))
    x1, y1, x3, y3 = x[:1], y[:1], x[1:], y[1:]
    dtype = getattr(model.config, "dtype", jnp.float32)
    source = Exportable(model, variables, shape, dtype, name)
    with _kept_heap(large):
        info, graph, hlo = _export_both(source, tmp_path, name, shape, x1, y1, x3, y3)
    io = dict(x1=x1, y1=y1, x3=x3, y3=y3) if both_batches else dict(x3=x3, y3=y3)
    assert reload(hlo["path"], tmp_path, cached=not large, **io) <= _tolerance(y3)
    return info, graph.graph


def _export_both(source, tmp_path, name, shape, x1, y1, x3, y3):
    """The ONNX file written, checked and run against ``y1``/``y3``; the StableHLO file
    written; ``(ONNX report, its graph without weights, StableHLO report)``."""
    info = export.export_onnx(source, tmp_path / f"{name}.onnx")
    graph = onnx.load(info["path"])
    onnx.checker.check_model(graph, full_check=True)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == list(shape)
    o1, o3 = _onnx_outputs(info["path"], x1, x3)
    assert o1.shape == y1.shape and o3.shape == y3.shape
    assert np.abs(o1 - y1).max() <= _tolerance(y1)
    assert np.abs(o3 - y3).max() <= _tolerance(y3)
    del graph.graph.initializer[:]  # the weights are checked; the nodes are what callers read
    # (No release between the two exports: the StableHLO export reuses the heap the ONNX one
    # freed. Released there too, L3's test took 56-58 s against 51-52 s, its peak the same.)
    hlo = export.export_stablehlo(source, tmp_path / f"{name}.stablehlo")
    return info, graph, hlo


# The variants whose export peaks above 5 GB (L3: 10.9 GB, measured with /usr/bin/time -v): one
# test process runs them one after another, so that two of them never meet in the 24 GB of the
# 2-process test run.
LARGE = {"efficientvit_b3", "efficientvit_l1", "efficientvit_l2", "efficientvit_l3"}


def _zoo_params():
    names = [f"efficientvit_{v}" for v in MIT + MSRA]
    marks = {n: [] if n in FAST else [pytest.mark.slow] for n in names}
    for n in LARGE:
        marks[n].append(pytest.mark.xdist_group("large_exports"))
    return [pytest.param(n, marks=marks[n]) for n in names]


@pytest.mark.parametrize("name", _zoo_params())
def test_zoo_variant_exports_equal_the_jax_model(
    name, random_variables, tmp_path, reload_elsewhere
):
    model = create_model(name)
    shape = (3, 64, 64)
    variables = random_variables(model, jnp.zeros((1, *shape)), scale=SCALE)
    info, graph = _check_both_formats(
        model, variables, shape, tmp_path, reload_elsewhere, name, both_batches=name in FAST,
        large=name in LARGE,
    )  # fmt: skip
    assert "BatchNormalization" not in info["ops"] and info["folded_batchnorms"] > 0
    # The portable path: grouped Conv nodes for the depthwise convs, no shifted slices.
    grouped = [n for n in graph.node if n.op_type == "Conv" and _attr(n, "group", 1) > 1]
    # (The shifted-slice kernel would be k*k Slices per depthwise conv; the MSRA models' window
    # crops are a few.)
    assert grouped and len([n for n in graph.node if n.op_type == "Slice"]) < len(grouped)
    # ONNX's own ops where they exist (onnxruntime runs them several times faster): MatMul, not
    # Einsum, for the attention's products; HardSwish (or HardSigmoid times x), not the five
    # elementwise nodes of its formula (Add, Max, Min, Div, Mul).
    assert "Einsum" not in info["ops"] and "MatMul" in info["ops"]
    assert not {"Max", "Min"} & set(info["ops"]), info["ops"]


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


@pytest.mark.parametrize(
    "layout,data_format", [("cascaded", "NCHW"), ("edifice", "NHWC")]
)  # fmt: skip
def test_core_builder_exports_equal_the_jax_model(
    layout, data_format, random_variables, tmp_path, reload_elsewhere, monkeypatch
):
    """Both formats equal the model; the fold is traced once for the two (``Exportable``
    keeps it)."""
    from efficientvit_jax.export import fold

    traced, original = [], fold.trace_calls
    monkeypatch.setattr(fold, "trace_calls", lambda *a: traced.append(1) or original(*a))
    cfg = EfficientViTConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 2),
        num_classes=10, layout=layout, data_format=data_format,
    )  # fmt: skip
    model = EfficientViT(cfg)
    shape = (3, 32, 32) if data_format == "NCHW" else (32, 32, 3)
    variables = random_variables(model, jnp.zeros((1, *shape)), scale=SCALE)
    info, _ = _check_both_formats(model, variables, shape, tmp_path, reload_elsewhere, layout)
    assert info["folded_batchnorms"] == 0 and len(traced) == 1


# --- BatchNorm folding -------------------------------------------------------------------------


def test_quicker_lookups_write_the_same_graph(random_variables, monkeypatch):
    """``export.lookups.quicker_lookups`` (jax2onnx's three linear graph scans answered from
    the IR's back-pointers and indexes) changes the time, not the graph: byte-identical protos
    with and without it, for a model with convs, BatchNorms, attention and residual adds."""
    import contextlib

    from jax2onnx.converter import output_binding

    from efficientvit_jax.export import lookups, onnx_export

    model = create_model(
        "efficientvit_b0", widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8,
        head_widths=(32, 32), num_classes=10,
    )  # fmt: skip
    source = Exportable(model, random_variables(model, jnp.zeros((1, 3, 32, 32))), (3, 32, 32))
    onnx_export.to_onnx_model(source)  # jax2onnx's first conversion in a process differs
    original, real, fast_answers = output_binding._value_is_graph_connected, lookups._connected, []
    real_consumer, consumer_answers = lookups._named_consumer, []

    def counting(scan):
        quick = real(scan)
        return lambda ctx, value: fast_answers.append(quick(ctx, value)) or fast_answers[-1]

    def counting_consumers(*functions):
        quick = real_consumer(*functions)
        return lambda *a, **kw: consumer_answers.append(quick(*a, **kw)) or consumer_answers[-1]

    monkeypatch.setattr(lookups, "_connected", counting)
    monkeypatch.setattr(lookups, "_named_consumer", counting_consumers)
    quick = onnx_export.to_onnx_model(source)[0].SerializeToString()
    assert len(fast_answers) > 50 and output_binding._value_is_graph_connected is original
    assert len(consumer_answers) > 10  # every Transpose of the convs' pairs asked after
    monkeypatch.setattr(onnx_export, "quicker_lookups", contextlib.nullcontext)
    slow = onnx_export.to_onnx_model(source)[0].SerializeToString()
    assert quick == slow
    # The consumer look-up against jax2onnx's scan for every output of every node of the
    # graph written: consumed values and the graph's output, which nothing consumes.
    import onnx_ir
    from jax2onnx.converter import ir_optimizations as opt

    nodes = list(onnx_ir.serde.deserialize_model(onnx.load_from_string(quick)).graph)
    fast = lookups._named_consumer(opt._v_name, opt._node_inputs)
    answers = {
        (opt._has_named_consumer(nodes, producer=n, output_name=o.name),
         fast(nodes, producer=n, output_name=o.name))
        for n in nodes for o in n.outputs
    }  # fmt: skip
    assert answers == {(True, True), (False, False)}


LEAN = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax2onnx.plugins import plugin_system
from efficientvit_jax.export.onnx_export import to_onnx_model
from efficientvit_jax.export.source import Exportable
from efficientvit_jax.zoo import create_model

model = create_model(
    "efficientvit_b0", widths=(8, 8, 16, 16, 32), depths=(1, 1, 1, 1, 1), head_dim=8,
    head_widths=(32, 32), num_classes=10,
)
shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
rng = np.random.default_rng(0)
variables = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.2, s.shape), s.dtype), shapes)
source = Exportable(model, variables, (3, 32, 32))
lean = to_onnx_model(source)[0].SerializeToString()
loaded = {m.split(".")[2] for m in sys.modules if m.startswith("jax2onnx.plugins.")}
assert plugin_system._already_imported_plugins is False  # a later to_onnx loads them all
plugin_system.import_all_plugins()
full = to_onnx_model(source)[0].SerializeToString()
print(sorted(loaded), lean == full)
"""


def test_an_export_loads_only_the_plugins_a_linen_model_uses():
    """``export.plugins.lean_plugins``: a first export in a fresh process imports jax2onnx's
    jax, flax and dm_pix plugins, not equinox's or its examples (seconds of imports and
    compiles), and writes the graph it writes with every plugin loaded, byte for byte."""
    proc = subprocess.run([sys.executable, "-c", LEAN], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded, same = proc.stdout.strip().rsplit("] ", 1)
    assert "equinox" not in loaded and "examples" not in loaded and "'jax'" in loaded, loaded
    assert same == "True"


def _count(jaxpr, primitive):
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == primitive
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            n += _count(sub, primitive)
    return n


@pytest.mark.parametrize(
    "name",
    [
        "efficientvit_b0",
        pytest.param("efficientvit_b1", marks=pytest.mark.slow),
        "efficientvit_m0",
        pytest.param("efficientvit_m4", marks=pytest.mark.slow),
    ],
)
def test_fold_batchnorm_equals_the_unfolded_model(name, random_variables):
    model = create_model(name)
    x = _images((3, 64, 64), 2)
    variables = random_variables(model, jnp.zeros((1, 3, 64, 64)), scale=SCALE)
    folded, fvars = export.fold_batchnorm(model, variables, x)
    want = np.asarray(jax.jit(model.apply)(variables, x))
    got = np.asarray(jax.jit(folded.apply)(fvars, x))
    assert np.abs(got - want).max() <= _tolerance(want)
    # No BatchNorm left: no statistics, and every BatchNorm's rsqrt gone from the program
    # (the LayerNorms' stay).
    n_bn = len(jax.tree.leaves(variables["batch_stats"])) // 2
    assert "batch_stats" not in fvars and len(folded.folded) == n_bn
    before = _count(jax.make_jaxpr(model.apply)(variables, x).jaxpr, "rsqrt")
    after = _count(jax.make_jaxpr(folded.apply)(fvars, x).jaxpr, "rsqrt")
    assert before - after == n_bn
    assert sum(a.size for a in jax.tree.leaves(fvars)) < sum(
        a.size for a in jax.tree.leaves(variables)
    )


# --- float16 -----------------------------------------------------------------------------------


def _value_types(model):
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}


def _amplify_attention(variables, block, factor):
    """Q, K, V of one attention block ``factor`` times larger, its projection as much smaller.

    The model's output hardly changes, but inside that block the sums over tokens exceed
    float16's range (65504) while q, k, v and the attention's result stay within it: done
    in float16 those sums give inf, then NaN (checked when this test was written by
    swapping in an attention without the float32 casts).
    """

    def one(path, a):
        names = [p.key for p in path]
        if tuple(names[1 : 1 + len(block)]) != block or names[-1] != "kernel":
            return a
        inner = names[1 + len(block)]
        return a * factor if inner in ("qkv", "head_0", "head_1") else a / factor

    return jax.tree_util.tree_map_with_path(one, variables)


@pytest.mark.parametrize("kind", ["mit", "core"])
def test_float16_keeps_attention_sums_and_division_in_float32(kind, random_variables, tmp_path):
    if kind == "mit":
        model = create_model("efficientvit_b0", dtype=jnp.float16)
        shape, attention_blocks = (3, 64, 64), 4  # stages 3 and 4 of B0: 2 blocks each
        block = ("stages_2", "blocks_1", "context_module")
    else:
        cfg = EfficientViTConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=(1, 1), num_heads=(2, 2),
            num_classes=10, dtype="float16",
        )  # fmt: skip
        model, shape, attention_blocks = EfficientViT(cfg), (3, 32, 32), 2 * 2  # heads x blocks
        block = ("stage_0_block_0", "attn")
    variables = random_variables(model, jnp.zeros((1, *shape)), scale=SCALE)
    variables = _amplify_attention(variables, block, 100.0)
    source = Exportable(model, variables, shape, jnp.float16, kind)
    info = export.export_onnx(source, tmp_path / "m.onnx")
    graph = onnx.load(info["path"])
    types = _value_types(graph)
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert graph.graph.input[0].type.tensor_type.elem_type == f16
    # The attention's division is the only one of two computed values (the others divide by a
    # constant: means, hardswish); it and its numerator and denominator are float32.
    constants = {t.name for t in graph.graph.initializer}
    constants |= {o for n in graph.graph.node if n.op_type == "Constant" for o in n.output}
    divs = [n for n in graph.graph.node if n.op_type == "Div" and not set(n.input) & constants]
    assert len(divs) == attention_blocks
    for n in divs:
        assert [types.get(v) for v in (*n.input, *n.output)] == [f32, f32, f32], n
    weights = [t for t in graph.graph.initializer if len(t.dims) >= 2]
    assert weights and all(t.data_type == f16 for t in weights)  # stored as float16
    # Finite for inputs up to 1e3 (onnxruntime's CPU provider lacks float16 convs: run the
    # StableHLO file of the same model).
    hlo = export.export_stablehlo(source, tmp_path / "m.stablehlo")
    with open(hlo["path"], "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    x = np.clip(_images(shape, 2, scale=1e3), -1e3, 1e3).astype(np.float16)
    out = np.asarray(exported.call(x))
    assert out.dtype == np.float16 and np.isfinite(out).all()


# --- a trained model, through the CLI ----------------------------------------------------------

TINY = [
    "--image-size", "16", "--patch-size", "4", "--embed-dim", "8", "--depths", "1,1",
    "--num-heads", "2,2", "--batch-size", "32", "--epochs", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits run of 2 steps (checkpoints 1 and 2)."""
    out = tmp_path_factory.mktemp("digits")
    assert main(["train", *TINY, "--max-steps", "2", "--save-every", "1", "-o", str(out)]) == 0
    return out


def _restored(run, step):
    """The run's model and params at ``step``, read with orbax and the run's config.json."""
    import orbax.checkpoint as ocp

    cfg = json.loads((run / "config.json").read_text())["model"]["builder"]
    state = ocp.StandardCheckpointer().restore(run / "checkpoints" / str(step) / "state")
    return EfficientViT(EfficientViTConfig(**cfg)), {"params": state["params"]}


def test_trained_checkpoint_gives_the_same_predictions_in_onnxruntime(trained, tmp_path, capsys):
    from efficientvit_jax.training.digits import load_digits_split

    out = tmp_path / "digits.onnx"
    assert main(["export", "--format", "onnx", "--checkpoint", str(trained), "-o", str(out)]) == 0
    assert f"{trained.name}_step_2" in capsys.readouterr().out
    images = load_digits_split(16).test_images[:64]
    model, variables = _restored(trained, 2)
    want = np.asarray(jax.jit(model.apply)(variables, images))
    (got,) = _onnx_outputs(out, images)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert np.abs(got - want).max() <= _tolerance(want)


def test_checkpoint_step_choice_and_step_folder(trained, tmp_path):
    from efficientvit_jax import load_run

    model, variables = _restored(trained, 1)
    for args in (["--checkpoint", str(trained), "--step", "1"],
                 ["--checkpoint", str(trained / "checkpoints" / "1")]):  # fmt: skip
        out = tmp_path / "s.stablehlo"
        assert main(["export", "--format", "stablehlo", "-o", str(out), *args]) == 0
        exported = jax.export.deserialize(bytearray(out.read_bytes()))
        x = _images((1, 16, 16), 2)
        want = np.asarray(jax.jit(model.apply)(variables, x))
        assert np.abs(np.asarray(exported.call(x)) - want).max() <= _tolerance(want)
    assert load_run(trained / "checkpoints").step == 2


def test_latest_intact_step_is_used(trained, tmp_path):
    import shutil

    from efficientvit_jax import load_run

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    for root, _, files in os.walk(run / "checkpoints" / "2" / "state"):
        for f in files:
            os.remove(os.path.join(root, f))
    assert load_run(run).step == 1
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        load_run(run, step=2)


# --- bad input ---------------------------------------------------------------------------------


def _fails(capsys, out, *argv, message):
    assert main(["export", "-o", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert err.startswith("efficientvit-jax export: error:")
    assert not os.path.exists(out)
    leftovers = [n for n in os.listdir(os.path.dirname(out)) if ".tmp" in n]
    assert not leftovers


def test_unknown_format(tmp_path, capsys):
    _fails(capsys, tmp_path / "m.x", "--format", "tflite", message="--format must be one of")


def test_checkpoint_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(
        capsys, tmp_path / "m.onnx", "--format", "onnx", "--checkpoint", str(tmp_path / "empty"),
        message="no checkpoint",
    )  # fmt: skip


def test_weights_of_another_variant(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path / "m1.safetensors"
    save_file(timm.create_model("efficientvit_m1").state_dict(), str(path))
    _fails(
        capsys, tmp_path / "m.onnx", "--format", "onnx", "--model", "efficientvit_m0",
        "--weights", str(path), message="do not match",
    )  # fmt: skip


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "m.onnx"
    assert main(["export", "--format", "stablehlo", "-o", str(out), "--embed-dim", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot be written" in err
    assert os.listdir(tmp_path) == ["file"]


def test_missing_jax2onnx_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if the extra were not installed
    _fails(
        capsys, tmp_path / "m.onnx", "--format", "onnx", "--embed-dim", "8",
        message="pip install 'efficientvit-jax[export]'",
    )  # fmt: skip


def test_failure_midway_leaves_no_file(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("checker says no")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    _fails(
        capsys, tmp_path / "m.onnx", "--format", "onnx", "--embed-dim", "8", "--depths", "1",
        "--num-heads", "2", "--image-size", "32", message="checker says no",
    )  # fmt: skip


def test_builder_options_are_refused_with_a_zoo_model(tmp_path, capsys):
    _fails(
        capsys, tmp_path / "m.onnx", "--format", "onnx", "--model", "efficientvit_b0",
        "--random-weights", "--embed-dim", "8", message="--embed-dim",
    )  # fmt: skip
