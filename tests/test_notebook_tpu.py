"""notebooks/02_tpu_experiment.ipynb runs top to bottom on CPU (8 simulated devices)."""

from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = pathlib.Path(__file__).parents[1] / "notebooks" / "02_tpu_experiment.ipynb"


@pytest.mark.slow
def test_tpu_notebook_executes_on_cpu(tmp_path, monkeypatch):
    # The kernel inherits this environment (conftest's compile settings included): CPU only,
    # no device-count flags of our own (the notebook must ask for its 8 host devices itself).
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "CPU only: 8 simulated host devices" in text
    assert "devices: 8" in text
    assert "held-out accuracy" in text
    assert "8 devices:" in text  # the throughput sweep reached the full mesh
    assert "softmax" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
