"""Orbax checkpoints of the whole train state, with the run's config and checksums beside it.

Each checkpoint is one orbax step directory ``<directory>/<step>/`` holding two items:
``state`` (the ``TrainState``) and ``meta`` (JSON: the run's ``config``, any ``extra`` the
caller passes, e.g. the loss history, and a SHA-256 of every saved array's bytes keyed by
its tree path). Orbax writes a step into a temporary directory and renames it only once
complete, so a save that is interrupted (crash, kill, full disk) never shows up as a step
and never touches the previous checkpoints; leftover temporary directories are removed the
next time the folder is opened.

Damage after the fact (a flipped bit on disk, a truncated or overwritten file) is another
matter: orbax reads most of it back without complaint. ``restore`` therefore checks every
array against its checksum, and, unless a step was asked for, falls back from a damaged
checkpoint to the newest intact one, reporting each one it skipped in one line::

    r = ckpt.restore(fresh_state)  # Restored(state, extra, step, skipped, verified)
    state, extra = r               # the shape older callers unpack
    for s in r.skipped:            # SkippedStep(step, reason), newest first
        ...

A damaged step that was skipped is moved aside to ``<directory>/<step>.damaged`` by the
next ``save`` (it would otherwise block that step, or outlive intact ones under
``max_to_keep``); restoring never changes the folder.

Restoring compares the stored config with the current one and refuses a mismatch with a
``CheckpointError`` that names every differing field (no fallback: that is not damage).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from efficientvit_jax.training.state import TrainState

log = logging.getLogger(__name__)

CHECKSUM_ALGORITHM = "sha256"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or from another config (one-line message)."""


class _DamagedError(Exception):
    """One step failed to read or verify; ``str`` is the one-line reason."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a (possibly nested) dataclass or mapping: tuples become lists,
    dtypes and other objects their ``str``."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, np.generic):
            return v.item()
        return str(v)  # dtypes and the like

    return conv(config)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"name: saved -> current"`` for every field that differs (nested names dotted)."""
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    diffs = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k, missing), b.get(k, missing)
        if x != y:
            fx = "(absent)" if x is missing else repr(x)
            fy = "(absent)" if y is missing else repr(y)
            diffs.append(f"{k}: checkpoint {fx}, now {fy}")
    return diffs


# --------------------------------------------------------------------------- checksums


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def leaf_name(path: tuple[Any, ...]) -> str:
    """A tree path as ``"params/stage_1/kernel"`` (the key of a checksum)."""
    return "/".join(_key_name(k) for k in path)


def array_checksum(x: Any) -> str:
    """SHA-256 of an array's bytes (C order), as hex."""
    a = np.ascontiguousarray(np.asarray(x))
    # A uint8 view hashes any dtype (bfloat16 has no buffer-protocol format code).
    return hashlib.sha256(a.reshape(-1).view(np.uint8)).hexdigest()


def tree_checksums(tree: Any) -> dict[str, str]:
    """``{leaf_name: sha256}`` of every array leaf that this process holds entirely.

    Leaves split across processes (multi-host sharding) are left out: no process has all
    their bytes, and a checksum of one process's shards would not survive a change of
    topology on restore.
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            continue
        out[leaf_name(path)] = array_checksum(leaf)
    return out


def checksum_mismatches(tree: Any, expected: Mapping[str, str]) -> list[str]:
    """Names of the leaves of ``tree`` whose checksum differs from ``expected`` (in tree
    order); leaves without an expected value are not checked."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        want = expected.get(leaf_name(path))
        if want is not None and array_checksum(leaf) != want:
            bad.append(leaf_name(path))
    return bad


# ----------------------------------------------------------------- orbax's async noise


def _drop(_record: logging.LogRecord) -> bool:
    return False


def _closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and "Event loop is closed" in str(exc)


def _not_closed_loop(record: logging.LogRecord) -> bool:
    return not (record.exc_info and _closed_loop(record.exc_info[1]))


def _unraisable_hook(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    def hook(u: Any) -> None:
        if not _closed_loop(u.exc_value):
            previous(u)

    hook.drops_closed_loop = True  # type: ignore[attr-defined]
    return hook


def _mute_closed_loop_callbacks() -> None:
    """From now on, drop reports of callbacks for an event loop that no longer exists.

    Orbax runs blocking work in threads and awaits it from the loop of its
    ``asyncio.run``; a thread that finishes after a failed restore closed that loop calls
    ``loop.call_soon_threadsafe`` and gets ``RuntimeError: Event loop is closed``, which
    ``concurrent.futures`` logs with a traceback (or Python reports as unraisable), at
    any later moment, e.g. after the caller printed its error. Nothing can act on such
    a report; every other record and unraisable exception passes.
    """
    cf_log = logging.getLogger("concurrent.futures")
    if _not_closed_loop not in cf_log.filters:
        cf_log.addFilter(_not_closed_loop)
    if not getattr(sys.unraisablehook, "drops_closed_loop", False):
        sys.unraisablehook = _unraisable_hook(sys.unraisablehook)


@contextlib.contextmanager
def _quiet_failed_reads() -> Iterator[dict[str, bool]]:
    """Keep orbax's asyncio debris off stderr while it reads a checkpoint.

    Orbax runs each restore under ``asyncio.run`` with one task per array shard. When one
    read fails, ``asyncio.gather`` raises at once while the sibling reads go on; at
    shutdown ``asyncio.run`` cancels them, orbax turns each ``CancelledError`` into an
    ``Exception`` carrying a whole TensorStore spec, and asyncio logs every one
    ("unhandled exception during asyncio.run() shutdown": thousands of lines for a real
    model). Failed tasks that are garbage collected later log "Task exception was never
    retrieved". Which of these appear is a race. The failure itself reaches the caller
    as one line, so asyncio's records are dropped while the read runs, and the failed
    tasks are collected before leaving, while the filter is still in place.
    """
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addFilter(_drop)
    read = {"failed": True}  # the caller clears it when the read succeeded
    try:
        yield read
    finally:
        if read["failed"]:  # only a failed read leaves tasks to collect (a collection costs)
            gc.collect()
        asyncio_log.removeFilter(_drop)


def _orbax_call(fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` with orbax's failure noise contained; any failure -> ``_DamagedError(what: ...)``.

    The orbax exception is not chained: its traceback holds the failed asyncio tasks,
    which would report themselves on stderr whenever the caller drops the error.
    """
    reason = None
    with _quiet_failed_reads() as read:
        try:
            out = fn()
            read["failed"] = False
            return out
        except Exception as e:
            _mute_closed_loop_callbacks()
            reason = f"{what}: {_one_line(e)}"
            traceback.clear_frames(e.__traceback__)
            del e
    raise _DamagedError(reason)


# -------------------------------------------------------------------------- restoring


class SkippedStep(NamedTuple):
    """A checkpoint ``restore`` passed over, and why (one line)."""

    step: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Restored:
    """What ``Checkpointer.restore`` returns.

    Unpacks as ``state, extra = restored`` (the return shape of earlier versions).

    Attributes:
      state: the restored train state.
      extra: the ``extra`` saved with it.
      step: the step that was restored.
      skipped: newer checkpoints passed over as damaged, newest first.
      verified: whether the arrays were checked against stored checksums (``False`` for
        checkpoints written before checksums were stored).
    """

    state: Any
    extra: dict[str, Any]
    step: int
    skipped: tuple[SkippedStep, ...] = ()
    verified: bool = True

    def __iter__(self) -> Iterator[Any]:
        return iter((self.state, self.extra))


def _placed_as(restored: Any, target: Any) -> Any:
    """``restored`` with each array left uncommitted where ``target``'s is (a fresh array on
    the default device). Orbax hands arrays back committed to their device, and jit lowers a
    committed argument with a sharding annotation: a resumed run's train step would be
    another program than the fresh run's, compiled again and never found in the persistent
    compilation cache. The copy through the host happens once per restore. ``target``
    ``None`` (a restore without target, e.g. ``load_run``): every array, as a fresh model's;
    so is a leaf of an abstract target (``abstract_train_state``) that is not on a mesh."""

    def place(r: Any, t: Any) -> Any:
        fresh = (
            t is None
            or (isinstance(t, jax.Array) and not t.committed)
            or (
                isinstance(t, jax.ShapeDtypeStruct)
                and not isinstance(t.sharding, jax.sharding.NamedSharding)
            )
        )
        if (
            fresh
            and isinstance(r, jax.Array)
            and not jax.dtypes.issubdtype(r.dtype, jax.dtypes.extended)
        ):  # (typed PRNG keys have no NumPy form; they stay as restored)
            return jax.device_put(np.asarray(r))
        return r

    if target is None:
        return jax.tree.map(lambda r: place(r, None), restored)
    return jax.tree.map(place, restored, target)


class Checkpointer:
    """Save and restore ``TrainState`` checkpoints in one folder (orbax, synchronous).

    Args:
      directory: the checkpoint folder (created on the first save).
      config: what identifies the run (a dataclass or mapping); stored with every
        checkpoint and compared on restore.
      max_to_keep: keep the newest this many checkpoints.
    """

    def __init__(self, directory: str | os.PathLike, *, config: Any, max_to_keep: int = 3):
        self.directory = os.path.abspath(os.fspath(directory))
        self.config = config_to_dict(config)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=False,
            # Remove what an interrupted save left behind (never a finished step).
            cleanup_tmp_directories=True,
            # Synchronous: a save is complete when ``save`` returns, and the train step
            # may then donate the state's buffers safely.
            enable_async_checkpointing=False,
            # Write into ``<step>.orbax-checkpoint-tmp-*`` and rename when complete: the
            # rename is what makes a step visible, so a half-written one never is.
            temporary_path_class=ocp.path.atomicity.AtomicRenameTemporaryPath,
        )
        self._options = options
        self._manager: ocp.CheckpointManager | None = None
        # Steps a restore skipped as damaged; the next save moves them aside.
        self._damaged: set[int] = set()

    def _mgr(self, create: bool = False) -> ocp.CheckpointManager:
        if self._manager is None:
            if create:
                os.makedirs(self.directory, exist_ok=True)
            self._manager = ocp.CheckpointManager(
                self.directory, item_names=("state", "meta"), options=self._options
            )
        return self._manager

    def all_steps(self) -> list[int]:
        """Steps of the finished checkpoints, oldest first (damaged ones included)."""
        if not os.path.isdir(self.directory):
            return []
        mgr = self._mgr()
        mgr.reload()  # another process (or a killed save) may have changed the folder
        return sorted(mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or ``None`` (it may be damaged:
        ``restore`` finds out)."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, state: TrainState, *, extra: Mapping[str, Any] | None = None) -> int:
        """Save ``state`` under its step (atomically), with a checksum of every array;
        returns the step. Steps an earlier ``restore`` skipped as damaged are first moved
        aside to ``<step>.damaged``."""
        step = int(jax.device_get(state.step))
        meta = {
            "config": self.config,
            "extra": config_to_dict(dict(extra or {})),
            "checksums": {"algorithm": CHECKSUM_ALGORITHM, "arrays": tree_checksums(state)},
        }
        self._set_aside_damaged()
        mgr = self._mgr(create=True)
        mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        mgr.wait_until_finished()
        return step

    def _set_aside_damaged(self) -> None:
        """Rename skipped damaged steps so that orbax no longer sees them as steps: kept
        for inspection, out of the way of this run's saves and of ``max_to_keep``."""
        # One process renames (on a shared disk several would race for the same folder);
        # the others wait for it before orbax looks at the folder again.
        for step in sorted(self._damaged) if jax.process_index() == 0 else ():
            src = os.path.join(self.directory, str(step))
            if not os.path.isdir(src):
                continue
            dst, n = f"{src}.damaged", 1
            while os.path.exists(dst):
                dst, n = f"{src}.damaged-{n}", n + 1
            os.replace(src, dst)
            log.warning("moved damaged checkpoint %s aside to %s", src, dst)
        if self._damaged and jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("efficientvit_jax: damaged steps set aside")
        if self._damaged and self._manager is not None:
            self._manager.reload()
        self._damaged.clear()

    def restore(
        self,
        target: TrainState | None,
        step: int | None = None,
        *,
        report: Callable[[str], None] | None = None,
    ) -> Restored:
        """The state saved at ``step``, or by default the newest intact checkpoint.

        ``target`` gives the structure, shapes and dtypes (e.g. a freshly created state).
        Every array is checked against the checksum stored at save time. With ``step=None``
        a damaged checkpoint (unreadable, truncated, or failing a checksum) is skipped for
        the next older one; if any were skipped, one line saying which and why, and which
        step was restored, goes to ``report`` (default: this module's logger, as a
        warning). The result unpacks as ``state, extra``; see ``Restored``.

        Raises ``CheckpointError`` (one line) if there is no checkpoint, if none is intact
        (each named with its reason) or the requested ``step`` is damaged, or if the
        checkpoint was saved with another config (naming the differing fields).
        """
        steps = self.all_steps()
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"no checkpoint for step {step} in {self.directory}")
            candidates = [step]
        elif not steps:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        else:
            candidates = steps[::-1]
        # No target: the arrays as saved, on this process's default device (readers of the
        # weights alone, e.g. ``load_run``, need not rebuild the optimizer).
        abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        skipped: list[SkippedStep] = []
        for s in candidates:
            try:
                state, extra, verified = self._restore_step(s, abstract)
            except _DamagedError as e:
                skipped.append(SkippedStep(s, str(e)))
                continue
            state = _placed_as(state, target)
            self._damaged.update(k.step for k in skipped)
            if skipped:
                (report or log.warning)(self._fallback_message(skipped, s))
            return Restored(state, extra, s, tuple(skipped), verified)
        if step is not None:
            where = os.path.join(self.directory, str(step))
            raise CheckpointError(f"checkpoint {where} is corrupt or unreadable ({skipped[0][1]})")
        raise CheckpointError(
            f"no intact checkpoint in {self.directory}: "
            + "; ".join(f"step {k.step} is corrupt or unreadable ({k.reason})" for k in skipped)
        )

    def _fallback_message(self, skipped: list[SkippedStep], step: int) -> str:
        parts = "; ".join(
            f"checkpoint {os.path.join(self.directory, str(k.step))} is corrupt or "
            f"unreadable ({k.reason})"
            for k in skipped
        )
        return f"{parts}; restored step {step}, the newest intact checkpoint"

    def _restore_step(self, step: int, abstract: Any) -> tuple[Any, dict[str, Any], bool]:
        """One step's state, extra and whether it was verified; ``_DamagedError`` if it cannot
        be read or fails a checksum, ``CheckpointError`` if its config differs."""
        mgr = self._mgr()
        meta = _orbax_call(
            lambda: mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())),
            "metadata",
        )["meta"]
        if not isinstance(meta, Mapping) or not isinstance(meta.get("config"), Mapping):
            raise _DamagedError("metadata: no config in it")
        diffs = config_differences(meta["config"], self.config)
        if diffs:
            where = os.path.join(self.directory, str(step))
            raise CheckpointError(
                f"checkpoint {where} was saved with another config; differs in " + "; ".join(diffs)
            )
        if abstract is None:
            abstract = _orbax_call(lambda: self._saved_layout(step), "array metadata")
        state = _orbax_call(
            lambda: mgr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            ),
            "arrays",
        )["state"]
        sums = meta.get("checksums")
        if not isinstance(sums, Mapping):  # written before checksums were stored
            return state, dict(meta.get("extra") or {}), False
        if sums.get("algorithm") != CHECKSUM_ALGORITHM or not isinstance(
            sums.get("arrays"), Mapping
        ):
            raise _DamagedError(f"metadata: checksums of an unknown kind {sums.get('algorithm')!r}")
        bad = checksum_mismatches(state, sums["arrays"])
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise _DamagedError(f"array {bad[0]} fails its {CHECKSUM_ALGORITHM} checksum{more}")
        return state, dict(meta.get("extra") or {}), True

    def _saved_layout(self, step: int) -> Any:
        """The saved state's arrays (shapes, dtypes) placed whole on this process's first
        device: a checkpoint written on a mesh or by several processes reads anywhere."""
        from etils import epath

        meta = ocp.StandardCheckpointHandler().metadata(
            epath.Path(self.directory) / str(step) / "state"
        )
        tree = getattr(meta, "item_metadata", meta)
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

        def leaf(m: Any) -> Any:
            if hasattr(m, "shape") and hasattr(m, "dtype"):
                return jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device)
            return m

        return jax.tree.map(leaf, tree, is_leaf=lambda m: hasattr(m, "shape"))

    def close(self) -> None:
        """Release orbax's resources."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None


CHECKPOINTS = "checkpoints"  # a run folder's checkpoint folder


def open_run_checkpoints(workdir: str, identity: Any, keep: int, *, resume: bool) -> Checkpointer:
    """The ``Checkpointer`` of the run in ``workdir`` (its ``checkpoints/``), identified by
    ``identity``; refuses to mix runs (checkpoints there without ``resume``) before anything
    is written."""
    from efficientvit_jax._io import check_output_writable

    ckpt_dir = os.path.join(workdir, CHECKPOINTS)
    check_output_writable(workdir)
    ckpt = Checkpointer(ckpt_dir, config=identity, max_to_keep=keep)
    if not resume and ckpt.latest_step() is not None:
        raise ValueError(
            f"{ckpt_dir} already holds checkpoints (latest step {ckpt.latest_step()}); "
            "pass --resume to continue, or choose another --output"
        )
    return ckpt


def _one_line(e: BaseException) -> str:
    # Orbax wraps a failed array read in a generic "Encountered error while reading array
    # index"; the innermost cause is the TensorStore error that names the array and file.
    while e.__cause__ is not None:
        e = e.__cause__
    # TensorStore errors may append the store's whole spec after "See full TensorStore
    # details"; the first sentence says what failed.
    text = " ".join(str(e).split()).split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {text[:300]}"
