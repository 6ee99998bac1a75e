"""MIT's own EfficientViT-Seg code, the reference of the segmentation parity tests.

It comes from PyPI's ``efficientvit-gml`` (a snapshot of mit-han-lab/efficientvit's
``efficientvit`` package whose ``models/efficientvit/seg.py`` is MIT's), pinned in
``tests/reference-requirements.txt`` and installed with ``--no-deps`` by the README's test
command: its declared dependencies (transformers, onnxsim, pycocotools, segment-anything, ...)
are heavy and the models need none of them beyond torch and torchvision. Its package
``__init__`` chains still import some of them at module level, through modules the models never
call (``apps/utils/export.py``: onnx, onnxsim; ``models/efficientvit/sam.py``:
segment_anything; ...). While ``efficientvit.seg_model_zoo`` is imported, each such module that
is not installed is served as an inert stand-in (any attribute is a class whose construction
raises), and the stand-ins are dropped from ``sys.modules`` right after: an installed module is
always the real one, and no later import sees a stand-in.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

DISTRIBUTION, VERSION = "efficientvit-gml", "0.1.10"
INSTALL = "pip install --no-deps -r tests/reference-requirements.txt"

# Top-level modules that the snapshot's import chain reaches but the seg models never use.
UNUSED = ("onnx", "onnxsim", "segment_anything", "timm", "yaml")


class _Inert(type):
    """Classes whose construction raises and whose other attributes are no-op functions (module
    bodies subclass them and configure the subclass: ``yaml.SafeLoader.add_constructor``)."""

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return lambda *_, **__: None

    def __call__(cls, *_: Any, **__: Any) -> None:
        raise RuntimeError(f"{cls.__module__}.{cls.__name__} is a stand-in (not installed)")


class _StandIn(types.ModuleType):
    """A module any of whose public attributes is an ``_Inert`` class."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__path__: list[str] = []  # a package: its submodules come from the finder too

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = _Inert(attr, (), {"__module__": self.__name__})
        setattr(self, attr, cls)
        return cls


class _StandInFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``_StandIn`` modules under ``UNUSED``; consulted after every real finder."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name.split(".")[0] in UNUSED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StandIn(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def _require_distribution() -> None:
    try:
        found = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found != VERSION:
        have = "is not installed" if found is None else f"is {found}"
        raise RuntimeError(
            f"the parity tests need MIT's reference code, {DISTRIBUTION}=={VERSION}, which "
            f"{have}: run `{INSTALL}` (the README's test command does)"
        )


def load_create_seg_model() -> Callable[..., Any]:
    """MIT's ``create_seg_model(name, dataset, pretrained=False)`` (``"b0"``, ``"cityscapes"``).

    Raises ``RuntimeError`` saying how to install the reference when it is missing.
    """
    _require_distribution()
    finder = _StandInFinder()
    sys.meta_path.append(finder)
    try:
        with warnings.catch_warnings():
            # its ops.py decorates with torch.cuda.amp.autocast, deprecated by today's torch
            warnings.simplefilter("ignore", FutureWarning)
            zoo = importlib.import_module("efficientvit.seg_model_zoo")
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n, m in sys.modules.items() if isinstance(m, _StandIn)]:
            del sys.modules[name]
    return zoo.create_seg_model
