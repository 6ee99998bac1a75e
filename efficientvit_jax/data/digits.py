"""scikit-learn's handwritten digits, read from the file scikit-learn ships, and their split.

The 1,797 grey 8x8 digits are one small CSV inside scikit-learn's package
(``sklearn/datasets/data/digits.csv.gz``: 64 pixel values 0..16 and the class per row). Reading
it directly takes milliseconds; importing scikit-learn to call ``load_digits`` took 0.8 s of
each ``efficientvit-jax train`` start (SciPy comes with it). scikit-learn stays the dependency
that brings the file (the ``train`` extra).

The held-out split is stored beside this module (``digits_split.txt``): the rows in the order
``train_test_split(images, target, test_size=360, stratify=target, random_state=0)`` returns
them, so it needs no scikit-learn either and cannot drift with its versions
(``tests/data/test_digits.py`` checks both against scikit-learn's own functions).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os

import numpy as np

NUM_CLASSES = 10
TEST_SIZE = 360  # held-out digits, stratified
SPLIT_SEED = 0  # the random_state the stored split was drawn with
_SPLIT_FILE = os.path.join(os.path.dirname(__file__), "digits_split.txt")


def digits_csv_path() -> str:
    """Where the installed scikit-learn keeps the digits (found without importing it)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        # The name the CLI maps to the extra that brings it (``cli._EXTRAS``).
        raise ModuleNotFoundError(
            "the digits come with scikit-learn: No module named 'sklearn'", name="sklearn"
        )
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"scikit-learn's digits file is missing: {path}")
    return path


def _read_only(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays, made read-only: a cached result is shared by every caller."""
    for a in arrays:
        a.flags.writeable = False
    return arrays


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits in the file's order: images ``[N, 8, 8]`` float64 with values 0..16
    (as ``sklearn.datasets.load_digits().images``) and labels ``[N]`` int64, read-only."""
    with gzip.open(digits_csv_path(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    return _read_only(rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64))


@functools.cache
def split_indices() -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training (1,437) and held-out (360) digits, in the stored order,
    read-only."""
    parts: list[list[int]] = []
    with open(_SPLIT_FILE) as f:
        for line in f:
            if line.startswith("# train:") or line.startswith("# test:"):
                parts.append([])
            elif not line.startswith("#"):
                parts[-1].extend(int(v) for v in line.split())
    return _read_only(*(np.asarray(p, np.int64) for p in parts))


def digit_splits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train ink, train labels), (held-out ink, held-out labels))``: ink ``[N, 8, 8]``
    float32 in [0, 1], labels int64; new arrays on each call."""
    images, labels = load_digits()
    ink = images.astype(np.float32) / 16.0  # pixel values are 0..16
    return tuple((ink[i], labels[i]) for i in split_indices())  # type: ignore[return-value]
