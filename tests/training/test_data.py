"""The input pipeline: per-epoch shuffle from (seed, epoch), explicit drop/pad, digits."""

import numpy as np
import pytest

from efficientvit_jax.training import epoch_order, iterate_batches, num_batches
from efficientvit_jax.training.digits import NUM_CLASSES, TEST_SIZE, load_digits_split

X = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
Y = np.arange(23, dtype=np.int32)


def test_order_depends_on_seed_and_epoch_only():
    a = epoch_order(100, seed=3, epoch=2)
    assert np.array_equal(a, epoch_order(100, seed=3, epoch=2))
    assert sorted(a) == list(range(100))
    assert not np.array_equal(a, epoch_order(100, seed=3, epoch=3))
    assert not np.array_equal(a, epoch_order(100, seed=4, epoch=2))
    assert np.array_equal(epoch_order(5, seed=0, epoch=0, shuffle=False), np.arange(5))


def test_drop_remainder():
    batches = list(iterate_batches(X, Y, 5, seed=1, epoch=0, remainder="drop"))
    assert len(batches) == num_batches(23, 5, remainder="drop") == 4
    assert all(b["images"].shape == (5, 2) and b["mask"].all() for b in batches)
    seen = np.concatenate([b["labels"] for b in batches])
    assert np.array_equal(seen, epoch_order(23, seed=1, epoch=0)[:20])
    # images stay paired with their labels
    for b in batches:
        assert np.array_equal(b["images"][:, 0], b["labels"] * 2)


def test_pad_remainder_counts_each_example_once():
    batches = list(iterate_batches(X, Y, 5, shuffle=False, remainder="pad"))
    assert len(batches) == num_batches(23, 5, remainder="pad") == 5
    assert all(b["images"].shape == (5, 2) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["labels"] for b in batches])
    assert mask.sum() == 23 and np.array_equal(mask[23:], [0, 0])
    assert np.array_equal(labels[mask > 0], Y)
    assert (batches[-1]["images"][3:] == 0).all()


def test_start_batch_resumes_mid_epoch():
    full = list(iterate_batches(X, Y, 4, seed=7, epoch=5, remainder="drop"))
    rest = list(iterate_batches(X, Y, 4, seed=7, epoch=5, remainder="drop", start_batch=3))
    assert len(rest) == len(full) - 3
    for a, b in zip(full[3:], rest, strict=True):
        assert np.array_equal(a["labels"], b["labels"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=0, remainder="drop"), "batch_size"),
        (dict(batch_size=4, remainder="keep"), "remainder"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(iterate_batches(X, Y, **kwargs))
    with pytest.raises(ValueError, match="same length"):
        next(iterate_batches(X, Y[:5], 4, remainder="drop"))


def test_digits_split_is_fixed_and_stratified():
    a = load_digits_split(16)
    assert a.train_images.shape == (1797 - TEST_SIZE, 1, 16, 16)
    assert a.test_images.shape == (TEST_SIZE, 1, 16, 16)
    assert a.train_images.dtype == np.float32 and a.train_labels.dtype == np.int32
    counts = np.bincount(a.test_labels, minlength=NUM_CLASSES)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: ~36 per class
    # standardised with the training split's statistics
    assert abs(a.train_images.mean()) < 1e-3 and abs(a.train_images.std() - 1) < 1e-3
    b = load_digits_split(16, "NHWC")
    assert np.array_equal(b.test_labels, a.test_labels)
    assert np.array_equal(b.test_images[..., 0], a.test_images[:, 0])
