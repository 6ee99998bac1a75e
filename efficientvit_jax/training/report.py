"""What a training run leaves beside its checkpoints: ``metrics.json`` and ``curves.png``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from efficientvit_jax._io import atomic_write, write_json  # noqa: F401  (write_json: training.report.write_json)


def plot_curves(
    path: str, step_losses: Sequence[float], history: Sequence[Mapping[str, Any]]
) -> None:
    """Loss (per step, held-out per epoch) and accuracy (per epoch) curves as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(range(1, len(step_losses) + 1), step_losses, lw=0.8, label="train (per step)")
    if history:
        steps = [h["step"] for h in history]
        epochs = [h["epoch"] for h in history]
        ax1.plot(steps, [h["test_loss"] for h in history], "o-", label="held-out (per epoch)")
        ax2.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
        ax2.plot(epochs, [h["test_accuracy"] for h in history], "o-", label="held-out")
    ax1.set(xlabel="step", ylabel="cross-entropy", yscale="log", title="loss")
    ax2.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5" tick on short runs
        if ax.get_legend_handles_labels()[0]:  # no epoch finished: nothing to label
            ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
