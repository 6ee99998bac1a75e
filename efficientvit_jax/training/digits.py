"""scikit-learn's handwritten digits, upsampled: a real dataset that needs no download.

1,797 grey 8x8 images of the digits 0-9 ship inside scikit-learn. They are upsampled
(bilinear) to ``image_size`` so that the patch grid is large enough for three stages, then
standardised with the training split's mean and std. The held-out split is
fixed (stratified, ``random_state=0``, 360 test images) and does not depend on the training
seed, so accuracies of different runs are comparable.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10
TEST_SIZE = 360
SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Split:
    """Train and held-out arrays: images ``[N, ...]`` float32, labels ``[N]`` int32."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    # The standardisation of the upsampled pixels (in [0, 1]): a digit in an image file is
    # prepared with the same two numbers (``training.recipe.data_config``).
    mean: float = 0.0
    std: float = 1.0


def load_digits_split(image_size: int = 32, data_format: str = "NCHW") -> Split:
    """The digits, upsampled to ``image_size`` x ``image_size`` with one channel.

    Args:
      image_size: side of the returned images (bilinear upsampling from 8x8).
      data_format: ``"NCHW"`` (``[N, 1, S, S]``) or ``"NHWC"`` (``[N, S, S, 1]``).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if data_format not in ("NCHW", "NHWC"):
        raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {data_format!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0  # pixel values are 0..16
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )

    def up(a: np.ndarray) -> np.ndarray:
        a = jax.image.resize(jnp.asarray(a), (len(a), image_size, image_size), "bilinear")
        return np.asarray(a, np.float32)

    x_tr, x_te = up(x_tr), up(x_te)
    # Standardise after upsampling (which smooths, lowering the std), with train stats only.
    mean, std = x_tr.mean(), x_tr.std()

    def prep(a: np.ndarray) -> np.ndarray:
        a = (a - mean) / std
        return a[:, None] if data_format == "NCHW" else a[..., None]

    return Split(prep(x_tr), y_tr, prep(x_te), y_te, float(mean), float(std))
