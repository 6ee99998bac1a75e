"""Imported at start-up by every Python process the tests start (``tests/conftest.py`` puts
this folder first on their ``PYTHONPATH``; ``EVIT_TEST_GC=default`` leaves it off): Python's
garbage collector as the test processes themselves have it (``pytest_collection_finish``
there), young collections every 10,000 allocations and full ones a tenth as often. The CLI
runs, notebook kernels, multi-process workers and reload interpreters import and trace as much
as a test process does."""

import gc

_young, _middle, _full = gc.get_threshold()
gc.set_threshold(max(_young, 10_000), _middle, 10 * _full)
