"""scikit-learn's handwritten digits, upsampled: a real dataset that needs no download.

1,797 grey 8x8 images of the digits 0-9 ship inside scikit-learn. They are upsampled
(bilinear) to ``image_size`` so that the patch grid is large enough for three stages, then
standardised with the training split's mean and std. The held-out split is
fixed (stratified, ``random_state=0``, 360 test images; ``data.digits`` keeps it) and does not
depend on the training seed, so accuracies of different runs are comparable.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax.data.digits import NUM_CLASSES, SPLIT_SEED, TEST_SIZE, digit_splits

__all__ = ["NUM_CLASSES", "SPLIT_SEED", "TEST_SIZE", "Split", "load_digits_split"]


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
    if data_format not in ("NCHW", "NHWC"):
        raise ValueError(f"data_format must be 'NCHW' or 'NHWC', got {data_format!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    (x_tr, y_tr), (x_te, y_te) = digit_splits()
    y_tr, y_te = y_tr.astype(np.int32), y_te.astype(np.int32)

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
