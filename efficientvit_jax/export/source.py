"""What export takes: a model, its variables and the shape of one image, from any source.

- ``from_zoo``: a zoo model or timm tag, with a timm weights file, a folder written by
  ``convert``, or random weights;
- ``from_checkpoint``: a ``train`` run (its folder, its ``checkpoints/`` folder or one step);
- ``from_config``: the core builder with random weights.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from efficientvit_jax._arrays import device_array
from efficientvit_jax._once import run_once
from efficientvit_jax.config import EfficientViTConfig


@dataclasses.dataclass(frozen=True)
class Exportable:
    """A model ready to export.

    Attributes:
      module: anything with ``apply(variables, images)`` (a Flax module).
      variables: its eval-mode variables.
      image_shape: one image as the model takes it, ``(C, H, W)`` or ``(H, W, C)``.
      dtype: the compute dtype, also the dtype of the exported graph's input.
      name: a name for the file's metadata and messages.
      metadata: strings the file carries so that it describes itself (a run's
        ``classes`` and ``data_config``, as JSON): ONNX ``metadata_props``; for StableHLO a
        ``<file>.json`` beside it.
    """

    module: Any
    variables: dict[str, Any]
    image_shape: tuple[int, int, int]
    dtype: Any = jnp.float32
    name: str = "efficientvit"
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    # What ``prepare.inference_function`` derives once per model: the BatchNorm-folded module
    # and variables, so that exporting both formats traces the fold once (L3: 1.7 s).
    _derived: dict[str, Any] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )


def image_shape(config: Any, size: int | tuple[int, int] | None = None) -> tuple[int, int, int]:
    """One image of ``size`` (default: the config's ``image_size``) in the config's layout.

    ``config``: the core's ``EfficientViTConfig`` or a zoo config (``zoo.base.ZooConfig``);
    both name ``image_size``, ``in_channels`` and ``data_format`` alike."""
    if size is None:
        size = config.image_size
    h, w = (size, size) if isinstance(size, int) else size
    c = config.in_channels
    return (c, h, w) if config.data_format == "NCHW" else (h, w, c)


def image_side(model: Exportable) -> int:
    """The height of ``model``'s input image (its side, for a square one)."""
    nchw = getattr(model.module.config, "data_format", "NCHW") == "NCHW"
    return model.image_shape[1] if nchw else model.image_shape[0]


def random_variables(module: Any, shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    """The module's own initialisation (``init``, compiled as a program run once: ``_once``)
    for a batch of one ``shape`` image."""
    x = jnp.zeros((1, *shape), jnp.float32)
    return run_once(module.init, jax.random.key(seed), x)


def from_config(config: EfficientViTConfig, *, seed: int = 0) -> Exportable:
    """The core builder's model with random weights (``seed``), at ``config.image_size``."""
    from efficientvit_jax.model import EfficientViT

    module = EfficientViT(config)
    shape = image_shape(config)
    return Exportable(module, random_variables(module, shape, seed), shape, config.dtype)


def _tag_size(name: str) -> int | None:
    """The resolution a timm tag names (``efficientvit_b1.r288_in1k`` -> 288), if any."""
    m = re.search(r"\.r(\d+)", name)
    return int(m.group(1)) if m else None


def from_zoo(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    random_weights: bool = False,
    seed: int = 0,
    image_size: int | None = None,
    **overrides: Any,
) -> Exportable:
    """A zoo model or timm tag with its weights.

    A segment-anything model (``efficientvit_sam_l0``, ...) comes with MIT's checkpoint (or a
    ``convert`` folder); ``export`` writes it as two files (``export.sam``).

    Args:
      name: a zoo name (``efficientvit_b0``) or a timm tag, passed on to ``create_model``.
      weights: a timm checkpoint (``.safetensors`` or PyTorch zip) or a folder written by
        ``efficientvit-jax convert``. A checkpoint of another variant is refused. ``None``
        (and not ``random_weights``): the tag's published weights, from the Hugging Face
        Hub's cache (``zoo.hub``).
      random_weights: no ``weights``: the model's own initialisation (``seed``).
      image_size: the exported input's side (default: the tag's resolution, else the
        config's ``image_size``).
      overrides: config fields (``num_classes``, ``data_format``, ``dtype``).
    """
    from efficientvit_jax.zoo import create_model
    from efficientvit_jax.zoo.converted import load_converted_as
    from efficientvit_jax.zoo.registry import check_task

    # before any download
    entry = check_task(name, ("classification", "segmentation", "sam"), "export")
    if weights is not None and random_weights:
        raise ValueError(f"model {name!r}: a weights file or random weights, not both")
    if weights is None and not random_weights:
        from efficientvit_jax.zoo import fetch_pretrained

        weights = fetch_pretrained(name)
    if weights is not None and os.path.isdir(weights):
        module, variables = load_converted_as(name, weights, **overrides)
    else:
        module = create_model(name, **overrides)
        variables = None if weights is None else _from_timm_file(name, weights, overrides)
    cfg = module.config
    shape = image_shape(cfg, image_size or _tag_size(name))
    if variables is None and entry.task == "sam":  # init takes prompts too
        variables = random_sam_variables(module, seed)
    elif variables is None:
        variables = random_variables(module, shape, seed)
    return Exportable(module, variables, shape, jnp.dtype(cfg.dtype), name)


def _from_timm_file(name: str, path: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    from efficientvit_jax.zoo import load_timm_weights
    from efficientvit_jax.zoo.base import current_names
    from efficientvit_jax.zoo.converted import SHAPED_FIELDS

    if not os.path.isfile(path):
        raise ValueError(f"weights {os.fspath(path)!r}: no such file")
    # Only the fields that change the variables' shapes matter to the conversion.
    shaped = {k: v for k, v in current_names(overrides).items() if k in SHAPED_FIELDS}
    return load_timm_weights(os.fspath(path), name, **shaped)


def to_float(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` as ``dtype`` (NumPy arrays of a restored checkpoint too)."""

    def cast(a: Any) -> Any:
        kind = a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype
        return device_array(a, dtype if jnp.issubdtype(kind, jnp.floating) else None)

    return jax.tree.map(cast, tree)


def random_sam_variables(model: Any, seed: int = 0) -> dict[str, Any]:
    """The model's own initialisation (``init``, compiled as a program run once: ``_once``) on
    ``zoo.sam.init_inputs``: the smallest input side (the variables do not depend on it) and
    one prompt of one point."""
    from efficientvit_jax.zoo.sam import init_inputs

    args = [jnp.zeros(a.shape, a.dtype) for a in init_inputs(model.config)]
    return run_once(model.init, jax.random.key(seed), *args)
