"""Imported at start-up by every Python process the tests start (``tests/conftest.py`` puts
this folder first on their ``PYTHONPATH``; ``EVIT_TEST_GC=default`` leaves it off), and read by
conftest for the test processes themselves: Python's garbage collector tuned for processes that
trace models (see ``pytest_collection_finish`` in conftest.py). Young collections every 10,000
allocations instead of 700, full ones a hundredth as often as Python's default. The CLI runs,
notebook kernels, multi-process workers and reload interpreters import and trace as much as a
test process does."""

import gc

# Absolute, not scaled from the current thresholds: the test processes read them here again
# (and the CLI raises its own floor), and a second scaling would compound.
THRESHOLDS = (10_000, 10, 1_000)

gc.set_threshold(*THRESHOLDS)
