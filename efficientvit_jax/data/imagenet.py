"""ImageNet-1k class names in the class-index order of the weights (package data).

The file ``imagenet_classes.txt`` holds one ``synset<TAB>names`` line per class, taken from
timm 1.0.31 (``timm/data/_info/imagenet_synsets.txt`` and ``imagenet_synset_to_lemma.txt``).
"""

from __future__ import annotations

import functools
from importlib import resources

NUM_CLASSES = 1000


@functools.cache
def _table() -> tuple[tuple[str, str], ...]:
    text = resources.files("efficientvit_jax.data").joinpath("imagenet_classes.txt").read_text()
    rows = [line.split("\t", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return tuple((s, n) for s, n in rows)


def synsets() -> tuple[str, ...]:
    """The 1,000 WordNet IDs (``"n01440764"``, ...), index ``i`` is class ``i``."""
    return tuple(s for s, _ in _table())


def class_names() -> tuple[str, ...]:
    """Readable names (``"tench, Tinca tinca"``, ...), index ``i`` is class ``i``."""
    return tuple(n for _, n in _table())


@functools.cache
def synset_index() -> dict[str, int]:
    """``{synset: class index}``."""
    return {s: i for i, s in enumerate(synsets())}
