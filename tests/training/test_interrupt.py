"""SIGINT / SIGTERM during training: stop at a step boundary with the state saved, one line,
exit 130, and a resume that ends exactly where an uninterrupted run does."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax.cli import interrupted_line, main
from efficientvit_jax.training import Checkpointer, TrainState
from efficientvit_jax.training.loop import Interrupted, RunLog, Schedule, fit

from ._subprocess import _kill, worker_env

SPE = 4
SCHEDULE = Schedule(steps_per_epoch=SPE, epochs=3, stop=12, save_every=4, batch_size=1)


def _state() -> TrainState:
    return TrainState(
        step=jnp.int32(0), params={"w": jnp.zeros(3, jnp.float32)}, opt_state={},
        rng=jnp.zeros(2, jnp.uint32),
    )  # fmt: skip


def _batches(epoch, first):
    return ({"x": np.full(3, epoch * SPE + i + 1, np.float32)} for i in range(first, SPE))


def _step(signal_at=(), sig=signal.SIGTERM):
    """A toy train step that raises ``sig`` in this thread during the steps ``signal_at``."""

    def step(state, batch):
        w = state.params["w"] * 0.5 + batch["x"]
        new = state.replace(step=state.step + 1, params={"w": w})
        if int(new.step) in signal_at:
            signal.raise_signal(sig)  # in this thread: handled before the step returns
        return new, {"loss": float(w[0]), "accuracy": 0.0}

    return step


def _evaluate(state):
    return {"loss": float(state.params["w"][1]), "accuracy": 1.0, "count": 1}


def _fit(state, ckpt, log, step_fn, schedule=SCHEDULE):
    return fit(state, step_fn, _batches, _evaluate, ckpt, schedule, log, progress=False)


def _handlers():
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def test_sigterm_stops_at_the_step_saves_it_and_resumes_exactly(tmp_path, tree_equal):
    before = _handlers()
    straight_log = RunLog()
    straight = _fit(_state(), Checkpointer(tmp_path / "a" / "ck", config={}), straight_log, _step())

    ckpt = Checkpointer(tmp_path / "b" / "ck", config={})
    with pytest.raises(Interrupted) as info:
        _fit(_state(), ckpt, RunLog(), _step(signal_at=(6,)))
    e = info.value
    assert (e.step, e.signal, e.aborted) == (6, "SIGTERM", False)
    assert e.checkpoint == str(tmp_path / "b" / "ck" / "6") and e.workdir == str(tmp_path / "b")
    assert str(e).startswith("interrupted by SIGTERM at step 6; last checkpoint ")
    assert _handlers() == before  # put back
    assert ckpt.all_steps() == [4, 6]

    restored, extra = ckpt.restore(_state())
    log = RunLog.from_extra(extra)
    assert len(log.step_losses) == 6 and len(log.history) == 1
    resumed = _fit(restored, ckpt, log, _step())
    assert tree_equal(resumed, straight)
    assert log.to_extra() == straight_log.to_extra()


def test_a_second_signal_aborts_without_saving(tmp_path):
    class SignalledSave(Checkpointer):
        def save(self, state, **kw):
            if int(state.step) == 6:  # the save of the interruption: interrupted in turn
                signal.raise_signal(signal.SIGINT)
            return super().save(state, **kw)

    ckpt = SignalledSave(tmp_path / "ck", config={})
    before = _handlers()
    with pytest.raises(Interrupted) as info:
        _fit(_state(), ckpt, RunLog(), _step(signal_at=(6,), sig=signal.SIGINT))
    e = info.value
    assert (e.step, e.signal, e.aborted) == (6, "SIGINT", True)
    assert e.checkpoint == str(tmp_path / "ck" / "4")  # the newest one written
    assert str(e).startswith("interrupted by a second SIGINT at step 6; last checkpoint")
    assert ckpt.all_steps() == [4] and _handlers() == before


def test_handlers_are_put_back_after_an_error_and_not_touched_off_the_main_thread(tmp_path):
    before = _handlers()

    def failing(state, batch):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _fit(_state(), Checkpointer(tmp_path / "a", config={}), RunLog(), failing)
    assert _handlers() == before

    result = {}

    def run():  # signal.signal raises ValueError outside the main thread
        state = _fit(_state(), Checkpointer(tmp_path / "b", config={}), RunLog(), _step())
        result["step"] = int(state.step)

    t = threading.Thread(target=run)
    t.start()
    t.join(120)
    assert result == {"step": 12}


def test_the_cli_says_one_line_and_exits_130(monkeypatch, capsys):
    import efficientvit_jax.cli.summary as summary

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(summary, "run", interrupted)
    assert main(["summary", "--embed-dim", "16"]) == 130
    assert capsys.readouterr().err == "efficientvit-jax summary: interrupted\n"

    cwd = os.getcwd()
    e = Interrupted(37, os.path.join(cwd, "runs", "x y", "checkpoints", "37"),
                    os.path.join(cwd, "runs", "x y"), "SIGINT")  # fmt: skip
    assert interrupted_line(["train", "-o", "runs/x y"], e) == (
        "efficientvit-jax train: interrupted by SIGINT at step 37; last checkpoint "
        "runs/x y/checkpoints/37; continue with: efficientvit-jax train --output 'runs/x y' "
        "--resume"
    )
    e = Interrupted(3, None, "/elsewhere/run", "SIGTERM")
    assert interrupted_line(["train"], e) == (
        "efficientvit-jax train: interrupted by SIGTERM at step 3; no checkpoint written yet"
    )


# ------------------------------------------------------------------ the real command

TRAIN = [
    sys.executable, "-m", "efficientvit_jax.cli", "train",
    "--image-size", "16", "--patch-size", "4", "--embed-dim", "8", "--depths", "1,1",
    "--num-heads", "2,2", "--epochs", "2", "--batch-size", "64", "--save-every", "1000",
    "--no-progress",
]  # fmt: skip
TOTAL = 44  # 2 epochs of 22 steps (1437 train images, 64 a batch)
LINE = re.compile(
    r"efficientvit-jax train: interrupted by SIGINT at step (\d+); last checkpoint "
    r"run/checkpoints/(\d+); continue with: (efficientvit-jax train --output run --resume)"
)


def _interrupt_when_training(tmp_path, env):
    """Start `train`, send SIGINT once it is in its loop (while the first step compiles, or
    a few steps in on a fast machine), and return (returncode, stderr)."""
    log = tmp_path / "stdout.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*TRAIN, "--output", "run"], cwd=tmp_path, env=env, stdout=out,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while "training EfficientViT" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(1.0)  # the line is printed just before the loop installs its handlers
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        _kill(proc)
    return proc.returncode, err


def _final(run):
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "checkpoints" / str(TOTAL) / "meta" / "metadata").read_text())
    return metrics, meta["checksums"]["arrays"]


@pytest.mark.slow
def test_sigint_during_train_then_resume_matches_a_straight_run(tmp_path):
    # Later runs reuse the compiled steps; the interrupted run comes first, so that its
    # first step compiles from scratch and the signal lands while it does.
    env = worker_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"))
    rc, err = _interrupt_when_training(tmp_path, env)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 130 and len(lines) == 1, err[-3000:]
    match = LINE.fullmatch(lines[0])
    assert match and match[1] == match[2], lines[0]
    step = int(match[1])
    assert 1 <= step < TOTAL
    assert os.listdir(tmp_path / "run" / "checkpoints") == [str(step)]

    # The command the line gives, as it is: the run folder holds the recipe.
    command = [sys.executable, "-m", "efficientvit_jax.cli", *shlex.split(match[3])[1:]]
    resume = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    straight = subprocess.run(
        [*TRAIN, "--output", "straight"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr[-3000:]

    (a, sums_a), (b, sums_b) = _final(tmp_path / "run"), _final(tmp_path / "straight")
    assert b["steps_this_run"] == TOTAL and a["steps_this_run"] == TOTAL - step
    for key in ("test_loss", "test_accuracy", "step_losses", "history"):
        assert a[key] == b[key], key  # bit for bit
    assert sums_a == sums_b  # every array of the final state: params, optimizer, rng


ABORT = textwrap.dedent(
    """
    import os, signal, sys, time
    import jax.numpy as jnp
    import numpy as np
    from orbax.checkpoint._src.serialization import serialization
    from efficientvit_jax.cli import _exit_now, interrupted_line
    from efficientvit_jax.training import Checkpointer, TrainState
    from efficientvit_jax.training.loop import RunLog, Schedule, fit

    state = TrainState(step=jnp.int32(0), params={f"w{i}": jnp.zeros(3) for i in range(8)},
                       opt_state={}, rng=jnp.zeros(2, jnp.uint32))

    def step(s, batch):
        if int(s.step) == 2:
            signal.raise_signal(signal.SIGINT)  # the first: stop after this step, saving it
        return s.replace(step=s.step + 1), {"loss": 1.0, "accuracy": 0.0}

    write, seen = serialization.async_serialize_from_host, []

    async def slow_write(*a, **kw):  # the second lands while the arrays are being written
        seen.append(1)
        if len(seen) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return await write(*a, **kw)

    serialization.async_serialize_from_host = slow_write
    batches = lambda epoch, first: [None] * (4 - first)
    try:
        fit(state, step, batches, lambda s: {}, Checkpointer(sys.argv[1], config={}),
            Schedule(4, 1, 4, 100, 1), RunLog(), progress=False)
    except KeyboardInterrupt as e:  # what cli.main does
        print(interrupted_line(["train"], e), file=sys.stderr, flush=True)
        _exit_now(130)
    """
)


@pytest.mark.slow
def test_a_second_sigint_in_the_middle_of_a_save_is_one_line(tmp_path):
    """Orbax's writer threads, cut short, log tracebacks at interpreter exit; the CLI's exit
    skips that, and the half-written step never shows up."""
    proc = subprocess.run(
        [sys.executable, "-c", ABORT, str(tmp_path / "run" / "checkpoints")],
        cwd=tmp_path, env=worker_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert proc.stderr == (
        "efficientvit-jax train: interrupted by a second SIGINT at step 3; no checkpoint "
        "written yet\n"
    )
    assert Checkpointer(tmp_path / "run" / "checkpoints", config={}).all_steps() == []
