"""A ``train`` run as an ``Exportable``: the model, weights, class names and data config all
from the run folder (``training.loaded.load_run``: checksums verified, a damaged newest step
falls back to the newest intact one).

Every kind of run exports: the digits job, the builder or any zoo family on folders, from
scratch or fine-tuned, with EMA (``ema=True``). The file carries the run's class names and
evaluation data config (``Exportable.metadata``), so it describes itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp

from efficientvit_jax.export.source import Exportable, image_shape, to_float


def from_checkpoint(
    path: str | os.PathLike,
    step: int | None = None,
    *,
    ema: bool = False,
    dtype: Any = jnp.float32,
    image_size: int | None = None,
    data_format: str | None = None,
) -> Exportable:
    """A ``train`` run's model at ``step`` (default: the newest intact one), computing in
    ``dtype`` (default float32, whatever the run trained in), optionally at another
    ``image_size`` or ``data_format`` (the weights do not depend on either for the core
    builder and MIT's models; MSRA's attention biases are sized for the training size)."""
    from efficientvit_jax.training.loaded import load_run

    run = load_run(path, step=step, ema=ema, dtype=dtype)
    module = run.model
    if data_format is not None:
        module = module.clone(config=module.config.replace(data_format=data_format))
    size = image_size or run.data_config.image_size[0]
    data = dataclasses.replace(
        run.data_config,
        input_size=(run.data_config.input_size[0], size, size),
        data_format=module.config.data_format,
    )
    variables = to_float(run.variables, module.config.param_dtype)
    metadata = {
        "classes": json.dumps(list(run.classes)),
        "data_config": json.dumps({**data.to_dict(), "data_format": data.data_format}),
        "source": f"{run.path} step {run.step}" + (" (EMA)" if run.ema else ""),
    }
    name = f"{os.path.basename(run.path)}_step_{run.step}" + ("_ema" if run.ema else "")
    shape = image_shape(module.config, size)
    return Exportable(module, variables, shape, jnp.dtype(dtype), name, metadata)
