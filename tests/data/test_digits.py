"""The digits read without scikit-learn equal scikit-learn's own ``load_digits`` and split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from efficientvit_jax.data import digits

sklearn_datasets = pytest.importorskip("sklearn.datasets")
model_selection = pytest.importorskip("sklearn.model_selection")


def test_images_and_labels_equal_scikit_learns() -> None:
    images, labels = digits.load_digits()
    ref = sklearn_datasets.load_digits()
    assert images.shape == (1797, 8, 8) and images.dtype == ref.images.dtype
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(labels, ref.target)
    assert not images.flags.writeable  # the cached arrays cannot be changed by a caller


def test_the_stored_split_is_scikit_learns() -> None:
    """The stored order equals ``train_test_split(..., stratify=target, random_state=0)``
    with the installed scikit-learn, element for element, arrays and labels."""
    ref = sklearn_datasets.load_digits()
    x = ref.images.astype(np.float32) / 16.0
    x_tr, x_te, y_tr, y_te = model_selection.train_test_split(
        x, ref.target, test_size=digits.TEST_SIZE, stratify=ref.target,
        random_state=digits.SPLIT_SEED,
    )  # fmt: skip
    (a_tr, b_tr), (a_te, b_te) = digits.digit_splits()
    for ours, theirs in ((a_tr, x_tr), (b_tr, y_tr), (a_te, x_te), (b_te, y_te)):
        np.testing.assert_array_equal(ours, theirs)
    train, test = digits.split_indices()
    assert len(test) == 360 and sorted([*train, *test]) == list(range(1797))


def test_loading_does_not_import_scikit_learn() -> None:
    code = (
        "import sys; from efficientvit_jax.training.digits import load_digits_split; "
        "s = load_digits_split(8); assert s.test_images.shape == (360, 1, 8, 8); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sklearn', 'scipy')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_missing_scikit_learn_names_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError) as e:
        digits.digits_csv_path()
    assert e.value.name == "sklearn"  # the CLI maps it to the `train` extra
