"""Shared test helpers.

Compilation dominates the cost of tests on CPU, and ``init`` is the worst of
it (one threefry program per parameter shape). Tests that need *some*
parameters, not the initialisers' own, fill the abstract tree from NumPy.
"""

import atexit
import gc
import os
import runpy
import shutil
import tempfile
from typing import Any

# Threads that wait for work sleep instead of spinning: two test processes share two cores, so
# a thread that spins takes the core the other process's work needs. torch's OpenMP threads
# (OMP_WAIT_POLICY, read when torch loads) and NumPy's OpenBLAS (one thread: its waiting threads
# spin for a while after every call) here; onnxruntime's per session (``tests/_ort.py``, where
# every test's session is made). Set before the test processes start, so they and the
# processes they start inherit it. Measured in two test processes, each pair back to back:
# the torch parity files (103 tests) 85.2 and 85.7 s against 88.6 and 89.6 s with OpenMP's
# default; SAM, attention, ops, data and others (385 tests) 96.3 and 103.7 s against 112.2 and
# 107.0 s with both defaults; the export files without the four large variants (38 tests)
# 71.6 and 75.3 s against 82.9 and 84.5 s with onnxruntime's default spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import numpy as np
import pytest

# XLA's optimisation passes double the compile time of the small programs the
# tests build, and change nothing the tests assert (every comparison has a
# tolerance). EVIT_TEST_FULL_OPT=1 runs the suite with them on.
# The environment variable carries it into every process a test starts (the CLI, notebook
# kernels, multi-process workers, the reloads of exported files).
if os.environ.get("EVIT_TEST_FULL_OPT") != "1":
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    jax.config.update("jax_disable_most_optimizations", True)

# The garbage collector of every process the tests start tuned as this one's (see
# ``pytest_collection_finish``): ``tests/_site/sitecustomize.py``, first on their path.
_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_site")
# "default", "A,B,C" (three thresholds) or empty (the tuned ones): read once, here.
_GC_SETTING = os.environ.get("EVIT_TEST_GC", "")
if _GC_SETTING != "default":
    _PATH = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if _SITE not in _PATH:
        os.environ["PYTHONPATH"] = os.pathsep.join([_SITE, *_PATH])

# One persistent compilation cache for the run: the pytest-xdist workers and every subprocess
# a test starts (they inherit the environment) compile many of the same programs (the tiny
# training runs, the zoo models in a fresh process). Keyed by the program and the flags, so a
# stale entry cannot be read; EVIT_TEST_XLA_CACHE="" turns it off.
_CACHE = os.environ.setdefault(
    "EVIT_TEST_XLA_CACHE", os.path.join(tempfile.gettempdir(), "efficientvit-jax-test-xla-cache")
)
if _CACHE:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
    jax.config.update("jax_compilation_cache_dir", _CACHE)
    # Every program, not only those compiling for a second or more (JAX's default): most of the
    # suite's compiles are small, and the same small programs come back in other tests, in the
    # other worker and in the processes the tests start.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )


class _XdistGroupIds:
    """Keep each ``xdist_group`` on one worker under pytest 9.

    pytest-xdist (3.8) tags a grouped test by appending ``@group`` to ``item._nodeid``, which
    its ``--dist loadgroup`` scheduler then reads back from the node ids. pytest 9 derives
    ``nodeid`` from ``item._id`` instead, so the tag was lost: every group was spread over
    both workers, and each worker built the group's shared runs (the round-trip runs, the
    segmentation runs, the SAM models) and ran two large exports side by side. Copy the tag
    to where pytest 9 reads it, after xdist has set it.
    """

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        for item in items:
            tagged = getattr(item, "_nodeid", None)
            if (
                isinstance(tagged, str)
                and "@" in tagged
                and tagged != item.nodeid
                and hasattr(item, "_id")
            ):
                from _pytest.nodeid import NodeId

                item._id = NodeId.parse(tagged)


_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_read",
}


class _CompileLog:
    """Where each test's time goes: seconds of tracing, lowering and XLA compilation, the
    number of compilations and the names of those over 2 s, appended as JSON lines to
    ``EVIT_TEST_COMPILE_LOG`` (one line per test and phase; each xdist worker appends its
    own; ``end``: the phase's end, seconds since the epoch, and ``worker``: the timeline of the
    two processes; ``user``, ``sys``, ``child_user``, ``child_sys``: CPU seconds since the
    previous row). Off unless the variable is set."""

    def __init__(self, path):
        import jax.monitoring

        self.path, self.now, self.cpu = path, {}, self._rusage()
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _cpu_since_last(self):
        """CPU seconds since the previous row: user and system time of this process and of
        the processes it waited for (the CLI runs, the reload interpreters)."""
        last, self.cpu = self.cpu, self._rusage()
        keys = ("user", "sys", "child_user", "child_sys")
        return {k: round(b - a, 3) for k, a, b in zip(keys, last, self.cpu, strict=True)}

    @staticmethod
    def _rusage():
        import resource

        own, children = (
            resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        return [own.ru_utime, own.ru_stime, children.ru_utime, children.ru_stime]

    def _record(self, event, secs, fun_name=None, **_):
        key = _COMPILE_EVENTS.get(event)
        if key:
            self.now[key] = self.now.get(key, 0.0) + secs
            if key == "compile":
                self.now["compiles"] = self.now.get("compiles", 0) + 1
                if secs >= 2.0:  # the programs worth sharing or shrinking, by name
                    self.now.setdefault("slow_compiles", []).append([fun_name, round(secs, 1)])

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        yield
        import json

        row = {
            "test": item.nodeid, "when": call.when, "secs": call.duration, "end": call.stop,
            "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), **self.now,
            **self._cpu_since_last(),
        }  # fmt: skip
        self.now = {}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _drop_empty_cache_entries(cache: str, older_than_s: float = 600.0) -> list[str]:
    """Remove the empty files from the compilation cache ``cache``; returns their names.

    A write that fails (a full disk: stop 31's CI) leaves an empty entry, which JAX never
    replaces: every later run warned ``Error reading persistent compilation cache entry ...
    truncated stream`` and compiled those programs again. Only files untouched for
    ``older_than_s`` go: a fresh empty one may be another process's write in progress."""
    import time

    if not os.path.isdir(cache):
        return []
    dropped, now = [], time.time()
    for entry in os.scandir(cache):
        try:
            info = entry.stat()
            if entry.is_file() and info.st_size == 0 and now - info.st_mtime > older_than_s:
                os.remove(entry.path)
                dropped.append(entry.name)
        except OSError:  # another run removed or replaced it meanwhile
            pass
    return dropped


def pytest_configure(config):
    if _CACHE and not hasattr(config, "workerinput"):  # once, before the workers start
        _drop_empty_cache_entries(_CACHE)
    config.pluginmanager.register(_XdistGroupIds(), "evit-xdist-group-ids")
    if os.environ.get("EVIT_TEST_COMPILE_LOG"):
        config.pluginmanager.register(
            _CompileLog(os.environ["EVIT_TEST_COMPILE_LOG"]), "evit-compile-log"
        )


def pytest_collection_finish(session):
    """Python's garbage collector tuned for a process that traces models all day.

    A full (oldest-generation) collection scans every tracked object of the process, and a
    test process holds millions once it has imported JAX, Flax, PyTorch and timm, collected
    the tests and filled JAX's caches: 0.3-0.7 s each, dozens per worker over the suite. What
    is alive now stays alive (modules, functions, the collected tests), so it leaves the
    collector's generations (``gc.freeze``); full collections come a hundredth as often, and
    young ones a fourteenth (every 10,000 allocations, not 700: tracing allocates millions).
    Short-lived cycles still go at the next young collection. Measured with ``gc.callbacks``
    on five test files (the zoo parity files, fine-tuning, the run round trip; two workers):
    8.3 and 10.0 s of collections with Python's defaults, 3.9 and 6.4 s with these; tracing
    and lowering the gradients of B1, M3 and L1 twice each in a process that imported PyTorch
    and timm: 10.6-11.6 s with the defaults, 7.1-8.2 s with these. A full-collection threshold
    of 1,000 rather than 100: ``tests/test_run_roundtrip.py`` with ``tests/zoo/test_msra.py``
    (one process, alternated twice) in 136 and 131 s against 149 and 141 s.
    ``EVIT_TEST_GC=default`` leaves the collector as Python sets it; ``EVIT_TEST_GC=A,B,C``
    sets the three thresholds."""
    if _GC_SETTING == "default":
        return
    gc.collect()
    gc.freeze()
    if _GC_SETTING:
        thresholds = tuple(int(t) for t in _GC_SETTING.split(","))
    else:  # the one definition, shared with the processes the tests start
        thresholds = runpy.run_path(os.path.join(_SITE, "sitecustomize.py"))["THRESHOLDS"]
    gc.set_threshold(*thresholds)


def pytest_sessionfinish(session):
    """What a test process does after its last test, made cheap: pytest's unraisable-exception
    plugin runs a full collection as it unconfigures, and JAX's exit handler clears every
    cache and backend one by one; in a worker that traced hundreds of models, 1.5-3 s each
    (py-spy, the whole suite: 7 s and 5.5 s in the two workers), spent after the last test,
    when the run is waiting on them. What is alive now is frozen (the collection skips it;
    garbage made by the tests was collected as they ran), and the exit handler is dropped:
    the process's memory goes back to the system as it exits, and the compilation cache was
    written as each program compiled."""
    if _GC_SETTING != "default":
        gc.freeze()
    import jax._src.api

    atexit.unregister(jax._src.api.clean_up)


_SLOW_LIST = os.path.join(os.path.dirname(__file__), "slow.txt")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Mark ``slow`` the tests that ``tests/slow.txt`` lists as measured slow."""
    with open(_SLOW_LIST) as f:
        listed = {ln.strip() for ln in f if ln.strip() and not ln.startswith("#")}
    for item in items:
        if item.nodeid.split("@", 1)[0] in listed:
            item.add_marker(pytest.mark.slow)


def _random_variables(model, x, seed=0, scale=0.3):
    """Variables of ``model`` for input ``x``, drawn with NumPy instead of the initialisers.

    Shapes come from ``ops.eval_shape`` (no compilation; the portable path's shorter trace).
    LayerNorm-like ``scale`` leaves are drawn around 1 so the model stays well conditioned.
    """
    from efficientvit_jax import ops

    x = jax.ShapeDtypeStruct(x.shape, x.dtype)
    shapes = ops.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        # Drawn in float32 (NumPy's float64 draws and their cast took 4x longer: L3's 246M
        # parameters were seconds of every test that drew them).
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']") or name.endswith("['var']"):
            arr = rng.random(leaf.shape, dtype=np.float32) + np.float32(0.5)
        else:
            fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 10
            arr = rng.standard_normal(leaf.shape, dtype=np.float32)
            arr *= np.float32(scale / np.sqrt(max(fan_in, 1)) * 3)
        # device_put, not jnp.asarray: no small program compiled for each leaf's shape
        return jax.device_put(np.asarray(arr, leaf.dtype))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _jax_option(key: str, value: Any, env_value: str):
    """``jax.config`` ``key`` set to ``value`` for one test, restored after; yields the
    environment that carries it (``env_value``) into the processes the test starts."""
    before = jax.config.values[key]  # (``read`` refuses the flags that have a context manager)
    jax.config.update(key, value)
    try:
        yield {**os.environ, key.upper(): env_value}
    finally:
        jax.config.update(key, before)


# A compilation that would take longer than this is never written to the cache: none is.
_NO_CACHE_WRITES = ("jax_persistent_cache_min_compile_time_secs", 1e9, "1e9")


@pytest.fixture
def uncached():
    """Compilations of exported files kept out of the persistent cache, in this test and in the
    processes it starts with the environment this yields.

    An exported file holds the weights as constants, so its program is as large as they are
    (L3's: 984 MB). Writing it to the cache is the expensive part: L3's StableHLO file
    compiled in 16 s without the cache and in 59 s with it (the executable serialised and
    compressed, 872 MB written). For the large models only: a small model's file compiles in a
    second or two, which the next run reads back from the cache in a fraction of that. The
    lookup stays, so an entry already there is still read.
    """
    yield from _jax_option(*_NO_CACHE_WRITES)


@pytest.fixture(scope="session")
def uncached_env():
    """The environment of ``uncached`` for the processes a test starts, this process's own
    compilations unchanged (they go to the cache as any other)."""
    key, _, env_value = _NO_CACHE_WRITES
    return {**os.environ, key.upper(): env_value}


@pytest.fixture
def optimised_compiles():
    """XLA's optimisations on for this test (and, through the environment it yields, for the
    processes it starts): for the few tests whose time goes to running many steps rather than
    to compiling them, since at level 0 a step runs about 4x slower. Each use is measured both
    ways (the test says so)."""
    yield from _jax_option("jax_disable_most_optimizations", False, "0")


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


# Image files made from scikit-learn's two sample photographs (no download): real photos and
# the odd files a loader meets (grey, palette, RGBA, CMYK, tiny, very tall, very wide).
@pytest.fixture(scope="session")
def photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)  # china.jpg, flower.jpg: 427x640x3 uint8


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: Any, photos: list[np.ndarray]) -> dict[str, str]:
    """``{kind: path}`` of image files of every kind the transforms must handle."""
    from PIL import Image

    d = tmp_path_factory.mktemp("images")
    china, flower = (Image.fromarray(p) for p in photos)
    files = {
        "photo_jpeg": (china, "china.jpg"),
        "photo_png": (flower, "flower.png"),
        "grey": (flower.convert("L"), "grey.png"),
        "palette": (china.convert("P"), "palette.png"),
        "rgba": (flower.convert("RGBA"), "rgba.png"),
        "cmyk": (china.convert("CMYK"), "cmyk.jpg"),
        "tiny": (flower.resize((37, 23)), "tiny.png"),  # smaller than every crop
        "tall": (china.crop((300, 0, 340, 427)), "tall.png"),  # 40 x 427
        "wide": (flower.crop((0, 200, 640, 230)), "wide.jpg"),  # 640 x 30
    }
    out = {}
    for kind, (img, name) in files.items():
        img.save(d / name)
        out[kind] = str(d / name)
    return out


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory: Any, image_files: dict[str, str]) -> dict[str, str]:
    """A text file with an image's name, and a JPEG cut in half."""
    d = tmp_path_factory.mktemp("bad")
    text = d / "notes.jpg"
    text.write_text("not an image")
    with open(image_files["photo_jpeg"], "rb") as f:
        data = f.read()
    cut = d / "truncated.jpg"
    cut.write_bytes(data[: len(data) // 2])
    return {"text": str(text), "truncated": str(cut)}


def _make_class_tree(root: str, classes: dict[str, list[str]]) -> str:
    import shutil

    for cls, files in classes.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i, f in enumerate(files):
            shutil.copy(f, os.path.join(root, cls, f"{i}{os.path.splitext(f)[1]}"))
    return root


@pytest.fixture(scope="session")
def make_class_tree() -> Any:
    """``(root, {class: [files]}) -> root``: ``root/<class>/<i>.<ext>`` copies of the files."""
    return _make_class_tree


def _timm_file(
    timm: Any, name: str, path: Any, *, num_classes: int = 1000, img_size: int | None = None
) -> str:
    """A timm ``name`` checkpoint (.safetensors) at ``path``: random weights (torch seed 1),
    random BatchNorm statistics, ``num_classes`` outputs; ``img_size`` for the MSRA models,
    whose attention biases depend on it."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    msra = name.startswith("efficientvit_m")  # MIT's timm models take no img_size
    extra = {"img_size": img_size} if msra and img_size is not None else {}
    m = timm.create_model(name, pretrained=False, num_classes=num_classes, **extra)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return str(path)


def _interrupted_copy(run: Any, out: Any, step: int) -> Any:
    """A copy ``out`` of the finished run folder ``run`` as a Ctrl-C right after ``step``
    leaves it: the checkpoints after ``step`` and the files of the run's end removed."""
    import pathlib

    run, out = pathlib.Path(run), pathlib.Path(out)
    shutil.copytree(run, out)
    later = [d for d in (out / "checkpoints").iterdir() if d.name.isdigit() and int(d.name) > step]
    assert later and (out / "checkpoints" / str(step)).is_dir(), (run, step)
    for d in later:
        shutil.rmtree(d)
    (out / "metrics.json").unlink()  # a finished run has one
    for name in ("curves.png", "predictions.png"):  # the plots of its end (segmentation: both)
        (out / name).unlink(missing_ok=True)
    return out


@pytest.fixture(scope="session")
def interrupted_copy() -> Any:
    """``(run, out, step) -> out``: see ``_interrupted_copy``."""
    return _interrupted_copy


@pytest.fixture(scope="session")
def make_timm_file() -> Any:
    """``(timm, name, path, *, num_classes=1000, img_size=None) -> path``: see ``_timm_file``."""
    return _timm_file


@pytest.fixture(scope="session")
def timm_b0(timm: Any, tmp_path_factory: Any) -> str:
    """A timm ``efficientvit_b0`` checkpoint (.safetensors) with random weights and random
    BatchNorm statistics, its classifier scaled up so that probabilities are far from
    uniform."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("efficientvit_b0", pretrained=False).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
        [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1].weight.mul_(40.0)
    path = tmp_path_factory.mktemp("timm_b0") / "b0.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)
