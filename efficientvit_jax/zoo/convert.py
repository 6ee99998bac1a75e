"""Reading timm checkpoints and turning PyTorch tensors into Flax variables.

A family's conversion is a table, ``KeyRules``: regular expressions that turn a Flax variable
path into timm's state-dict key, a table of leaf names (``kernel`` -> ``weight``, ...) and the
layout changes of kernels. ``convert_state_dict`` runs a table against a model's variable
shapes and reports every missing, unexpected or mis-shaped tensor at once
(``ConversionReport``). The checkpoint itself is read by ``load_state_dict``: safetensors or
``torch.load(weights_only=True)``, never a plain pickle.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from efficientvit_jax._arrays import device_array
from efficientvit_jax.zoo.base import unflatten

StateDict = Mapping[str, Any]


def to_numpy(t: Any) -> np.ndarray:
    """A torch tensor (any device, any grad state) or array as a NumPy array."""
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        t = t.numpy()
    return np.asarray(t)


def load_state_dict(source: str | os.PathLike | StateDict) -> dict[str, np.ndarray]:
    """A timm state dict as ``{name: np.ndarray}``.

    ``source`` is a mapping of tensors, a ``.safetensors`` file, or a PyTorch
    file saved with ``torch.save`` (zip format), read with
    ``weights_only=True``. Anything else, a plain pickle in particular, is
    refused: unpickling runs arbitrary code.
    """
    if isinstance(source, Mapping):
        sd = source
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"checkpoint file not found: {path}")
        if path.endswith(".safetensors"):
            from safetensors import SafetensorError
            from safetensors.numpy import load_file

            try:
                sd = load_file(path)
            except SafetensorError as e:  # truncated or not safetensors at all
                raise ValueError(f"{path}: not a safetensors checkpoint ({e})") from None
        elif zipfile.is_zipfile(path):
            import torch

            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises UnpicklingError for unsafe content
                raise ValueError(
                    f"{path}: refused: not a plain tensor checkpoint ({type(e).__name__}: "
                    f"{str(e).splitlines()[0]})"
                ) from e
        else:
            raise ValueError(
                f"{path}: refused: only .safetensors files and PyTorch zip checkpoints "
                "(read with weights_only=True) are accepted, never a plain pickle"
            )
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
            break
    return {k: to_numpy(v) for k, v in sd.items()}


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch conv weight ``[out, in/groups, kh, kw]`` -> Flax ``[kh, kw, in/groups, out]``.

    A depthwise weight ``[C, 1, kh, kw]`` becomes ``[kh, kw, 1, C]``, the layout
    of ``ops.depthwise_conv2d`` and of ``nn.Conv(feature_group_count=C)``.
    """
    return np.transpose(w, (2, 3, 1, 0))


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch linear weight ``[out, in]`` -> Flax Dense kernel ``[in, out]``."""
    return np.transpose(w)


class ConversionError(ValueError):
    """Tensors of a checkpoint that do not fit the model, all of them.

    Attributes:
      problems: ``(kind, key)`` pairs, kind ``"missing"``, ``"shape"`` or ``"unexpected"``.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]]):
        super().__init__(message)
        self.problems = problems


class ConversionReport:
    """Collects every problem of a conversion and raises them all at once.

    Usage: ``take(key, shape, transform)`` for each tensor the Flax model
    needs; ``finish()`` then adds the checkpoint's unused keys and raises a
    ``ValueError`` listing everything that did not fit, or returns quietly.
    """

    def __init__(self, state_dict: Mapping[str, np.ndarray], what: str):
        self.sd = state_dict
        self.what = what
        self.used: set[str] = set()
        self.problems: list[str] = []
        self.kinds: list[tuple[str, str]] = []

    def take(
        self,
        key: str,
        shape: tuple[int, ...],
        transform: Any = None,
        dtype: Any = np.float32,
    ) -> np.ndarray:
        """The tensor ``key`` transformed to ``shape``, or zeros (and a problem noted)."""
        self.used.add(key)
        if key not in self.sd:
            self.problems.append(f"missing tensor {key!r} (Flax expects shape {tuple(shape)})")
            self.kinds.append(("missing", key))
            return np.zeros(shape, dtype)
        arr = np.asarray(self.sd[key])
        out = transform(arr) if transform is not None else arr
        if tuple(out.shape) != tuple(shape):
            self.problems.append(
                f"tensor {key!r}: shape {tuple(arr.shape)} does not fit; "
                f"Flax expects {tuple(shape)}" + ("" if transform is None else " after conversion")
            )
            self.kinds.append(("shape", key))
            return np.zeros(shape, dtype)
        return out.astype(dtype)

    def ignore(self, *keys: str) -> None:
        """Mark keys as known but unused (e.g. ``num_batches_tracked``)."""
        self.used.update(keys)

    def finish(self) -> None:
        """Raise one ``ConversionError`` (a ``ValueError``) listing every problem, unused keys
        included."""
        extra = sorted(
            k for k in self.sd if k not in self.used and not k.endswith("num_batches_tracked")
        )
        problems = self.problems + [f"unexpected tensor {k!r}" for k in extra]
        if problems:
            raise ConversionError(
                f"{self.what}: {len(problems)} tensor(s) do not match:\n  " + "\n  ".join(problems),
                self.kinds + [("unexpected", k) for k in extra],
            )


# Flax leaf names -> timm's tensor names, the same for every family.
TORCH_LEAF_NAMES: Mapping[str, str] = {
    "kernel": "weight",
    "scale": "weight",
    "mean": "running_mean",
    "var": "running_var",
}

# (Flax leaf name, rank) -> the PyTorch tensor's transform into the Flax layout.
TORCH_LAYOUTS: Mapping[tuple[str, int], Callable[[np.ndarray], np.ndarray]] = {
    ("kernel", 4): conv_kernel,
    ("kernel", 2): linear_kernel,
}


@dataclasses.dataclass(frozen=True)
class KeyRules:
    """How a family's Flax variables are named and laid out in timm's checkpoints.

    Attributes:
      what: the checkpoint's description in error messages.
      modules: ``(pattern, replacement)`` pairs applied in order with ``re.sub`` to the
        variable's module path, ``"/"``-joined with a trailing ``"/"``
        (``stages_0/blocks_1/mixer/``); every ``"/"`` left afterwards becomes a ``"."``.
      leaves: Flax leaf name -> timm's tensor name (others keep their name).
      layouts: ``(leaf, rank)`` -> the transform of a PyTorch tensor into Flax's layout.
      ignored_suffixes: checkpoint keys ending so are known and not weights (derived
        buffers); ``num_batches_tracked`` is always ignored.
      collections: the Flax variable collections filled from the checkpoint (a family with
        fixed buffers, SAM's positional-encoding matrix, keeps them apart from ``params``).
    """

    what: str
    modules: tuple[tuple[str, str], ...]
    leaves: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(TORCH_LEAF_NAMES))
    layouts: Mapping[tuple[str, int], Callable[[np.ndarray], np.ndarray]] = dataclasses.field(
        default_factory=lambda: dict(TORCH_LAYOUTS)
    )
    ignored_suffixes: tuple[str, ...] = ()
    collections: tuple[str, ...] = ("params", "batch_stats")

    def key(self, path: Sequence[str]) -> str:
        """The timm state-dict key of the Flax variable at ``path`` (its collection left out:
        ``("stem", "in_conv", "norm", "scale")`` -> ``"stem.in_conv.norm.weight"``)."""
        *mods, leaf = path
        s = "/".join(mods) + "/"
        for pattern, repl in self.modules:
            s = re.sub(pattern, repl, s)
        return s.replace("/", ".") + self.leaves.get(leaf, leaf)


def convert_state_dict(
    state_dict: Mapping[str, Any], shapes: Mapping[str, Any], rules: KeyRules
) -> dict[str, Any]:
    """Flax variables (``{"params", "batch_stats"}``: ``rules.collections``) of the shapes
    ``shapes`` (``variable_shapes`` of the model) from a timm state dict, by ``rules``.

    Every Flax variable is looked up by ``rules.key``, transformed by ``rules.layouts`` and cast
    to the variable's dtype. Missing, unexpected and mis-shaped tensors are all collected and
    raised in one ``ConversionError`` (a checkpoint of another variant names its tensors).
    """
    sd = {k: to_numpy(v) for k, v in state_dict.items()}
    report = ConversionReport(sd, rules.what)
    report.ignore(*(k for k in sd if k.endswith(rules.ignored_suffixes)))
    out: dict[str, Any] = {}
    for collection in rules.collections:
        flat = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes.get(collection, {}))[0]:
            names = tuple(p.key for p in path)
            transform = rules.layouts.get((names[-1], len(leaf.shape)))
            arr = report.take(rules.key(names), tuple(leaf.shape), transform, leaf.dtype)
            flat[names] = device_array(arr)
        out[collection] = unflatten(flat)
    report.finish()
    return out
