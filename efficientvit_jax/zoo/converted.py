"""Converted weights on disk: Flax variables saved with orbax beside the model's name.

``save_converted(out, variables, model=..., overrides=...)`` writes ``out/variables`` (an orbax
``StandardCheckpointer`` checkpoint of ``{"params", "batch_stats"}``) and ``out/model.json``
(the model name and config overrides); ``load_converted(out)`` rebuilds ``(module,
variables)``. ``efficientvit-jax convert`` writes this format from a timm checkpoint.
"""

from __future__ import annotations

import json
import os
from typing import Any

from efficientvit_jax.zoo.base import current_names
from efficientvit_jax.zoo.registry import create_model, get_config

# Config fields that change the variables' shapes in every family (``ZooConfig``): an override
# of one must agree with the folder's; the others (dtype, data_format, drop_rate) apply freely.
SHAPED_FIELDS = ("num_classes", "in_channels")

VARIABLES_DIR = "variables"
META_FILE = "model.json"


def is_converted(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``save_converted``."""
    return os.path.isfile(os.path.join(os.fspath(path), META_FILE))


def save_converted(
    out: str | os.PathLike,
    variables: dict[str, Any],
    *,
    model: str,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
) -> None:
    """Save ``variables`` of zoo model ``model`` (with config ``overrides``) under ``out``."""
    import orbax.checkpoint as ocp

    out = os.path.abspath(os.fspath(out))
    os.makedirs(out, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(out, VARIABLES_DIR), variables, force=force)
    ckptr.wait_until_finished()
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump({"model": model, "overrides": current_names(overrides or {})}, f, indent=2)


def read_converted_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """``{"model": name, "overrides": {...}}`` of a converted folder, the overrides under
    today's names (older folders may hold ``in_chans``)."""
    path = os.path.join(os.fspath(directory), META_FILE)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a converted-weights folder ({e})") from e
    if not isinstance(meta, dict) or "model" not in meta:
        raise ValueError(f"{path}: not a converted-weights folder (no 'model' entry)")
    return {**meta, "overrides": current_names(meta.get("overrides") or {})}


def load_converted(directory: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(module, variables)`` from a directory written by ``save_converted``."""
    meta = read_converted_meta(directory)
    return create_model(meta["model"], **meta.get("overrides", {})), _restore(directory)


def _restore(directory: str | os.PathLike) -> dict[str, Any]:
    import orbax.checkpoint as ocp

    directory = os.path.abspath(os.fspath(directory))
    return ocp.StandardCheckpointer().restore(os.path.join(directory, VARIABLES_DIR))


def load_converted_as(
    name: str, folder: str | os.PathLike, *, option: str = "--weights", **overrides: Any
) -> tuple[Any, dict[str, Any]]:
    """``(module, variables)`` of zoo model or tag ``name`` from a ``convert`` folder.

    The folder may hold any tag of the same variant (``efficientvit_b0.r224_in1k`` weights
    serve ``efficientvit_b0``). ``overrides`` apply to the module; one that changes the
    variables' shapes (``num_classes``, ``in_channels``) must agree with the folder's. Every
    refusal is a ``ValueError`` of one line naming ``option`` and the folder.
    """
    from efficientvit_jax.data.tags import split_name  # data-only module: names, no models

    folder = os.fspath(folder)
    if not is_converted(folder):
        raise ValueError(
            f"{option} {folder}: a folder, but not one written by `efficientvit-jax convert` "
            "(no model.json)"
        )
    meta = read_converted_meta(folder)
    ours, theirs = split_name(name)[0], split_name(meta["model"])[0]
    if ours != theirs:
        raise ValueError(f"{option} {folder} holds {theirs} weights, not {ours}")
    saved, overrides = meta["overrides"], current_names(overrides)
    converted = get_config(meta["model"], **saved)  # its defaults count too
    for k in SHAPED_FIELDS:
        if k in overrides and overrides[k] != getattr(converted, k):
            raise ValueError(
                f"{option} {folder} was converted with {k}={getattr(converted, k)}, "
                f"not {overrides[k]}"
            )
    return create_model(name, **{**saved, **overrides}), _restore(folder)
