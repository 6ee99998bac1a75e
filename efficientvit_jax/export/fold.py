"""BatchNorm folded for inference: each BatchNorm merged into the conv or linear next to it.

In eval mode a BatchNorm is an affine map per channel, ``y = (x - mean) * s + beta`` with
``s = scale / sqrt(var + eps)``. After a conv or a linear layer (kernel ``[..., C]``, output
channel last) it folds into that layer: ``kernel * s`` and a bias ``beta - mean * s`` (plus
``bias * s`` where the layer has one). Before a linear layer (the classifier of the MSRA
models, timm's ``BatchNormLinear``) it folds forward: ``diag(s) @ kernel`` and
``bias + (beta - mean * s) @ kernel``. timm's MSRA ``fuse()`` does the same.

Which layer feeds (or is fed by) which BatchNorm is read from one abstract trace of the
model (``jax.eval_shape``: nothing is computed), so the zoo modules need no change: the folded
model is the same module run with an interceptor that turns each folded BatchNorm into its
bias add (or into nothing).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from efficientvit_jax._arrays import device_array
from efficientvit_jax.layers import Conv2d, DepthwiseConv
from efficientvit_jax.zoo.base import TorchBatchNorm

# Layers whose kernel is ``[..., out]`` with the output channel last, one output per channel.
_LINEAR = (Conv2d, DepthwiseConv, nn.Conv, nn.Dense)


@dataclasses.dataclass(frozen=True)
class _Call:
    path: tuple[str, ...]
    module: nn.Module  # a clone, for its attributes only
    inputs: Any
    output: Any


@dataclasses.dataclass(frozen=True)
class FoldedModel:
    """A model whose folded BatchNorms are bias adds (or nothing): ``apply`` as a Flax module.

    ``apply(variables, images, **kwargs)`` with the variables ``fold_batchnorm`` returned;
    inference only. ``module`` is the original model, ``folded`` the paths of the BatchNorms
    that were folded.
    """

    module: nn.Module
    folded: tuple[tuple[str, ...], ...]

    def apply(self, variables: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("train"):
            raise ValueError("a folded model is for inference only (train=False)")
        with nn.intercept_methods(_run_folded):
            return self.module.apply(variables, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # config, etc. of the original model
        if name.startswith("__") or name in ("module", "folded"):
            raise AttributeError(name)
        return getattr(self.module, name)


def _run_folded(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    module = context.module
    if not isinstance(module, TorchBatchNorm) or context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    if module.has_variable("batch_stats", "mean"):  # not folded
        return next_fun(*args, **kwargs)
    x = args[0]
    if module.has_variable("params", "bias"):
        x = x + module.get_variable("params", "bias").astype(x.dtype)
    return x.astype(module.dtype)


def trace_calls(
    model: nn.Module, variables: Mapping[str, Any], images: Any, method: str | None = None
) -> list[_Call]:
    """Every module ``__call__`` of one abstract forward pass (``model.apply``, or its
    ``method`` of one input, e.g. SAM's ``"embed_images"``), innermost first.

    Inputs and outputs are the trace's abstract values: ``a is b`` says that one call's output
    is another's input. They are kept alive in the list, so identities are not reused.
    """
    calls: list[_Call] = []

    def record(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            m = context.module
            calls.append(_Call(tuple(m.path), m.clone(parent=None), args, out))
        return out

    def forward(v: Any, x: Any) -> Any:
        with nn.intercept_methods(record):
            return model.apply(v, x, method=method)

    jax.eval_shape(forward, variables, images)
    return calls


def _pairs(calls: list[_Call]) -> list[tuple[_Call, _Call, bool]]:
    """``(batchnorm, layer, backward)``: the layer each BatchNorm folds into.

    ``backward``: the layer's output is the BatchNorm's only module input (conv -> BN);
    otherwise the BatchNorm's output is the input of a linear layer (BN -> linear).
    """
    counts: dict[tuple[str, ...], int] = {}
    for c in calls:
        counts[c.path] = counts.get(c.path, 0) + 1
    layers = [c for c in calls if isinstance(c.module, _LINEAR) and counts[c.path] == 1]
    pairs = []
    for bn in calls:
        if not isinstance(bn.module, TorchBatchNorm) or counts[bn.path] != 1:
            continue
        if not bn.module.use_running_average:
            continue
        feeding = [c for c in layers if c.output is bn.inputs[0]]
        if len(feeding) == 1 and _only_reader(calls, feeding[0].output, bn):
            pairs.append((bn, feeding[0], True))
            continue
        fed = [c for c in layers if c.inputs and c.inputs[0] is bn.output]
        if len(fed) == 1 and isinstance(fed[0].module, nn.Dense):
            pairs.append((bn, fed[0], False))
    return pairs


def _only_reader(calls: list[_Call], value: Any, reader: _Call) -> bool:
    """Whether ``reader`` is the only module call that takes ``value`` as an input."""
    readers = [
        c
        for c in calls
        if any(a is value for a in c.inputs) and c.path[: len(reader.path)] != reader.path
    ]
    return not readers


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    if value is None:
        tree.pop(path[-1], None)
    else:
        tree[path[-1]] = value


def _to_dict(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _to_dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _prune(tree: dict[str, Any]) -> dict[str, Any]:
    """Drop empty sub-dicts."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            v = _prune(v)
            if not v:
                continue
        out[k] = v
    return out


def _affine(bn: _Call, params: Mapping, stats: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The BatchNorm as ``x * s + t`` (float64)."""
    p, st = _get(params, bn.path), _get(stats, bn.path)
    s = np.asarray(p["scale"], np.float64) / np.sqrt(
        np.asarray(st["var"], np.float64) + bn.module.epsilon
    )
    t = np.asarray(p["bias"], np.float64) - np.asarray(st["mean"], np.float64) * s
    return s, t


def _fold_pair(params: dict, stats: dict, bn: _Call, layer: _Call, backward: bool) -> None:
    s, t = _affine(bn, params, stats)
    lp = _get(params, layer.path)
    kernel = np.asarray(lp["kernel"], np.float64)
    dtype = np.asarray(lp["kernel"]).dtype
    if backward:  # y = BN(layer(x)): scale the layer's outputs, the BN keeps only its shift
        _set(params, (*layer.path, "kernel"), (kernel * s).astype(dtype))
        if "bias" in lp:
            _set(
                params,
                (*layer.path, "bias"),
                (np.asarray(lp["bias"], np.float64) * s).astype(dtype),
            )
        _set(params, bn.path, {"bias": t.astype(dtype)})
    else:  # y = layer(BN(x)): scale the layer's inputs (a Dense's kernel is [in, out])
        bias = np.asarray(lp["bias"], np.float64) if "bias" in lp else 0.0
        _set(params, (*layer.path, "kernel"), (s[:, None] * kernel).astype(dtype))
        _set(params, (*layer.path, "bias"), (bias + t @ kernel).astype(dtype))
        _set(params, bn.path, None)
    _set(stats, bn.path, None)


def fold_batchnorm(
    model: nn.Module, variables: Mapping[str, Any], images: Any, *, method: str | None = None
) -> tuple[FoldedModel, dict[str, Any]]:
    """The inference model without BatchNorm, and its variables.

    Args:
      model: a model of the zoo (or any Flax module whose BatchNorms are ``TorchBatchNorm``
        next to a ``Conv2d``, ``DepthwiseConv``, ``nn.Conv`` or ``nn.Dense``).
      variables: its eval-mode variables (``params`` and ``batch_stats``).
      images: an example input, or a ``jax.ShapeDtypeStruct`` (only its shape is traced).
      method: the method of ``model`` that takes ``images`` (default ``__call__``): the
        BatchNorms it runs are those folded (SAM's encoder: ``"embed_images"``).

    Returns:
      ``(folded, folded_variables)``: ``folded.apply(folded_variables, images)`` equals
      ``model.apply(variables, images)`` up to float rounding (with ``method=``, as given). A BatchNorm with no layer to
      fold into stays as it is (``folded.folded`` lists those that were folded).
    """
    variables = _to_dict(variables)
    calls = trace_calls(model, variables, images, method)
    params = _to_dict(variables.get("params", {}))
    stats = _to_dict(variables.get("batch_stats", {}))
    pairs = _pairs(calls)
    for bn, layer, backward in pairs:
        _fold_pair(params, stats, bn, layer, backward)
    out = {k: v for k, v in variables.items() if k not in ("params", "batch_stats")}
    out["params"] = _prune(params)
    stats = _prune(stats)
    if stats:
        out["batch_stats"] = stats
    out = jax.tree.map(device_array, out)
    return FoldedModel(model, tuple(bn.path for bn, _, _ in pairs)), out
