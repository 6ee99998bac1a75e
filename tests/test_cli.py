"""The CLI: `train` end to end (in process and as the console script), resume, bad inputs."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from efficientvit_jax.cli import main

TINY = [
    "--image-size", "16", "--patch-size", "4", "--embed-dim", "8",
    "--depths", "1,1", "--num-heads", "2,2", "--batch-size", "32",
    "--epochs", "2", "--no-progress",
]  # fmt: skip


def _train(out, *extra):
    return main(["train", *TINY, "--output", str(out), *extra])


# Its tests stay on one test process, so that the run below is trained once (it was trained
# on both).
ON_RUN4 = pytest.mark.xdist_group("cli_run4")


@pytest.fixture(scope="module")
def run4(tmp_path_factory):
    """4 steps straight, checkpoint every 2."""
    out = tmp_path_factory.mktemp("run4")
    assert _train(out, "--max-steps", "4", "--save-every", "2") == 0
    return out


@ON_RUN4
def test_train_writes_metrics_plot_and_checkpoint(run4):
    m = json.loads((run4 / "metrics.json").read_text())
    assert m["step"] == 4 and len(m["step_losses"]) == 4
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["test_count"] == 360
    assert m["config"]["model"]["builder"]["embed_dim"] == 8
    assert m["config"]["data"]["batch_size"] == 32 and m["config"]["classes"][9] == "9"
    assert (run4 / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(run4 / "checkpoints")) == ["2", "4"]
    assert not [n for n in os.listdir(run4) if ".tmp" in n or n.startswith(".write-probe")]


@ON_RUN4
@pytest.mark.slow
def test_resume_continues_exactly(run4, tmp_path):
    """2 steps, stop, --resume to 4: the same losses as 4 straight, bit for bit."""
    out = tmp_path / "r"
    assert _train(out, "--max-steps", "2") == 0
    assert _train(out, "--max-steps", "4", "--resume") == 0
    a = json.loads((run4 / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert b["step_losses"] == a["step_losses"] and b["test_loss"] == a["test_loss"]
    assert b["steps_this_run"] == 2


@pytest.mark.slow
def test_console_script_end_to_end(tmp_path):
    exe = shutil.which("efficientvit-jax") or ""
    cmd = [exe] if exe else [sys.executable, "-m", "efficientvit_jax.cli"]
    out = tmp_path / "cs"
    proc = subprocess.run(
        [*cmd, "train", *TINY, "--max-steps", "3", "--output", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy:" in proc.stdout
    assert (out / "metrics.json").exists() and (out / "curves.png").exists()
    assert os.listdir(out / "checkpoints") == ["3"]


def _err(capsys):
    err = capsys.readouterr().err.strip()
    return err


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--learning-rate", "-0.1"], "--learning-rate must be a finite number > 0"),
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"),
        (["--batch-size", "5000"], "--batch-size must be <= 1437"),
        (["--embed-dim", "7"], "num_heads"),
        (["--in-channels", "3"], "--in-channels must be 1"),
    ],
)
def test_impossible_values(flags, message, tmp_path, capsys):
    out = tmp_path / "o"
    assert _train(out, *flags) == 2
    err = _err(capsys)
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing written


def test_unknown_flag_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _train(tmp_path / "o", "--no-such-flag")
    assert e.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert _train(blocker / "sub" / "out") == 2
    err = _err(capsys)
    assert "cannot be written" in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == ["file"]


def test_resume_without_checkpoint(tmp_path, capsys):
    assert _train(tmp_path / "none", "--resume") == 2
    assert "no checkpoint" in _err(capsys)
    assert not (tmp_path / "none").exists()


@ON_RUN4
def test_existing_checkpoints_need_resume(run4, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(run4, out)
    assert _train(out) == 2
    assert "already holds checkpoints (latest step 4); pass --resume" in _err(capsys)


@ON_RUN4
def test_resume_with_another_config_names_the_field(run4, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(run4, out)
    assert _train(out, "--resume", "--learning-rate", "0.5") == 2
    err = _err(capsys)
    assert "differs in optim.learning_rate: 0.003 -> 0.5" in err
    assert len(err.splitlines()) == 1
    assert sorted(os.listdir(out / "checkpoints")) == ["2", "4"]  # untouched


@ON_RUN4
@pytest.mark.parametrize("damaged", [["4"], ["2", "4"]], ids=["latest", "all"])
def test_resume_from_corrupt_checkpoint(run4, tmp_path, capsys, caplog, damaged):
    """A destroyed latest checkpoint: resume falls back to step 2, saying so, and its next
    save moves the damaged one aside. All destroyed: one line, nothing written."""
    out = tmp_path / "copy"
    shutil.copytree(run4, out)
    before = (out / "metrics.json").read_bytes()
    for step in damaged:
        for root, _, files in os.walk(out / "checkpoints" / step / "state"):
            for f in files:
                (np.frombuffer(b"\x00bad", np.uint8)).tofile(os.path.join(root, f))
    rc = _train(out, "--resume", "--max-steps", "6")
    err = _err(capsys)
    if damaged == ["4"]:
        assert rc == 0
        assert "restored step 2, the newest intact checkpoint" in err + caplog.text
        assert json.loads((out / "metrics.json").read_text())["step"] == 6
        # --save-every 2 comes back from the stored recipe: step 4 is saved anew
        assert sorted(os.listdir(out / "checkpoints")) == ["2", "4", "4.damaged", "6"]
    else:
        assert rc == 2
        assert "no intact checkpoint" in err and "corrupt or unreadable" in err
        assert len(err.splitlines()) == 1
        assert (out / "metrics.json").read_bytes() == before


def test_summary_still_works(capsys):
    assert main(["summary", "--no-flops", "--embed-dim", "16", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "output_size: 10" in out and "total" in out


def test_convert_is_a_subcommand_and_names_the_known_models(tmp_path, capsys):
    from efficientvit_jax.cli import main

    rc = main(
        [
            "convert",
            "--model",
            "efficientvit_b9",
            "--input",
            str(tmp_path / "x"),
            "--output",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "unknown model 'efficientvit_b9'" in err and "efficientvit_m5" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_train_on_a_simulated_mesh_in_bfloat16_with_remat(tmp_path):
    # A fresh process: the CPU device count must be set before JAX starts.
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "efficientvit_jax.cli",
        "train",
        "--cpu-devices",
        "4",
        "--mesh",
        "data=2,fsdp=2",
    ]
    # The tiny model (the mesh, the precision and remat are what is tested, not the size).
    cmd += [*TINY, "--precision", "bfloat16", "--remat", "block", "--max-steps", "2"]
    cmd += ["-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "4 devices (4 local) in 1 process(es); mesh data=2 fsdp=2; precision bfloat16"
        in proc.stdout
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 2 and metrics["config"]["model"]["builder"]["remat"] == "block"
    assert metrics["config"]["precision"]["precision"] == "bfloat16"
    assert np.isfinite(metrics["step_losses"]).all()


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if the 'train' extra were not installed
    rc = main(["train", "--max-steps", "1", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "`train` needs tqdm: pip install 'efficientvit-jax[train]'" in err
    assert not (tmp_path / "run").exists()
