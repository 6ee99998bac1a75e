"""What a training run leaves beside its checkpoints: ``metrics.json``, ``curves.png`` and,
for segmentation, ``predictions.png``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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
        if "test_miou" in history[0]:  # segmentation: the accuracies are of pixels
            ax2.plot(epochs, [h["test_miou"] for h in history], "s-", label="held-out mIoU")
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


def plot_segmentations(
    path: str,
    pixels: np.ndarray,
    labels: np.ndarray,
    predicted: np.ndarray,
    classes: Sequence[str],
    colors: Sequence[Sequence[int]],
) -> None:
    """A row per image: the image, its true mask and the predicted one, in the classes'
    colours (ignored pixels grey), with the legend of the classes shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    table = np.zeros((256, 3), np.uint8) + 128  # ignore (255) and any unknown value: grey
    table[: len(colors)] = np.asarray(colors, np.uint8)[:256]
    n = len(pixels)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.4 * n + 0.6), squeeze=False)
    for i in range(n):
        shown = (pixels[i], table[np.clip(labels[i], 0, 255)], table[predicted[i]])
        for ax, img, title in zip(axes[i], shown, ("image", "truth", "prediction"), strict=True):
            ax.imshow(img, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    present = sorted(set(np.unique(labels).tolist()) | set(np.unique(predicted).tolist()))
    handles = [Patch(color=table[c] / 255, label=classes[c]) for c in present if c < len(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.6 / (2.4 * n + 0.6), 1, 1))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
