"""curves.png: whole-number ticks on the step and epoch axes, however short the run."""

from __future__ import annotations

from typing import Any

import pytest


def test_epoch_and_step_ticks_are_whole_numbers(tmp_path: Any, monkeypatch: Any) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from efficientvit_jax.training.report import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its axes
    history = [
        {"step": 2 * e, "epoch": e, "test_loss": 1.0 / e, "train_accuracy": 0.5,
         "test_accuracy": 0.4}
        for e in (1, 2)
    ]  # fmt: skip
    plot_curves(str(tmp_path / "curves.png"), [2.0, 1.5, 1.2, 1.0], history)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    for ax in figures[0].axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
