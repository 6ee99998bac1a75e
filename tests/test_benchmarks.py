"""A smoke run of the benchmark entry point: tiny sizes, no timing asserts."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_runner():
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_writes_json_table_and_plot(tmp_path):
    runner = load_runner()
    assert (
        runner.main(
            ["--quick", "--repeats", "1", "--sections", "core,attention", "--out", str(tmp_path)]
        )
        == 0
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["model"] for r in results["core"]} == {"core/cascaded", "core/edifice"}
    for r in results["core"]:
        assert r["infer_img_s"] > 0 and r["train_img_s"] > 0 and r["flops"] > 0
    tokens = [r["tokens"] for r in results["attention"]]
    assert tokens == sorted(tokens) and all(r["linear_s"] > 0 for r in results["attention"])
    assert (tmp_path / "attention.png").stat().st_size > 1000
    assert "core/cascaded" in (tmp_path / "results.md").read_text()


@pytest.mark.slow
def test_quick_zoo_run_compares_with_timm(tmp_path):
    pytest.importorskip("timm", reason="the zoo section compares with timm's PyTorch models")
    runner = load_runner()
    args = ["--quick", "--repeats", "1", "--sections", "zoo", "--models", "efficientvit_b0"]
    assert runner.main([*args, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["zoo"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("efficientvit_b0", 1),
        ("efficientvit_b0", 2),
    ]
    assert rows[-1]["train_ratio"] > 0 and all(r["infer_ratio"] > 0 for r in rows)


def test_unknown_section_is_refused(capsys):
    runner = load_runner()
    with pytest.raises(SystemExit) as info:
        runner.main(["--sections", "core,gpu"])
    assert info.value.code == 2
    assert "unknown section(s) ['gpu']" in capsys.readouterr().err
