"""The notebooks run top to bottom (nbclient), so they cannot rot."""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
# The TPU notebook needs its own environment (8 simulated devices): test_notebook_tpu.py.
OWN_TEST = {"02_tpu_experiment.ipynb"}
# XLA's optimisations on in the kernel (see ``optimised_compiles`` in conftest.py): the SAM
# notebook's time goes to running its programs (the encoder, a grid of prompts through the
# decoder), not to compiling them. Measured with the compilation cache warm: 13.9 s against
# 19.5-19.8 s at level 0 (from a cold cache 23.3 s against 19.8 s). The quickstart and TPU
# notebooks gained 1-1.5 s, within the noise: they stay at level 0.
OPTIMISED = {"03_segment_anything.ipynb"}
# What each notebook prints when its last cells ran (their own asserts passed).
FINAL_WORDS = {
    "01_quickstart.ipynb": "held-out accuracy",
    "03_segment_anything.ipynb": "segment anything: done",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "path", [p for p in NOTEBOOKS if p.name not in OWN_TEST], ids=lambda p: p.name
)
def test_notebook_executes(path, tmp_path, monkeypatch):
    # The SAM notebook takes MIT's checkpoint from the Hub's cache when it is there and random
    # weights otherwise; offline, a test never starts a 140 MB download.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if path.name in OPTIMISED:
        monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert FINAL_WORDS[path.name] in text
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_every_notebook_is_tested():
    assert {p.name for p in NOTEBOOKS} == set(FINAL_WORDS) | OWN_TEST
    assert os.path.basename(NOTEBOOKS[0]) == "01_quickstart.ipynb"
