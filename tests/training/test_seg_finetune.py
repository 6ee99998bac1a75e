"""Fine-tuning a segmentation model: from one of MIT's checkpoints of another class count (its
classifier dropped and named, everything else loaded exactly) and from a timm checkpoint of
its backbone (the head new). The checkpoints' variables come from NumPy; the run's start
computes only what does not load (``finetune.init_from_pretrained``)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from efficientvit_jax._once import run_once
from efficientvit_jax.training import DataOptions, ModelOptions, TrainConfig
from efficientvit_jax.training.recipe import build_model, pretrained_tuning
from efficientvit_jax.zoo import create_model, load_timm_weights
from efficientvit_jax.zoo.seg import mit_key

MODEL = "efficientvit_seg_b0_cityscapes"
SIZE = 32


def _flat(tree: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree), sep="/").items()}


def _config(weights: str) -> TrainConfig:
    return TrainConfig(data=DataOptions(folder="unused"), model=ModelOptions(MODEL, weights, SIZE))


def _start(model: Any, tuning: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The run's start (``tuning.init``: the checkpoint where it fits, the init's draws for
    the rest) and the whole ``model.init`` of the same key (the same program in both tests:
    the second is a cache hit)."""
    x = jnp.zeros((1, 3, SIZE, SIZE))
    key = jax.random.PRNGKey(0)
    return _flat(tuning.init(key, x)), _flat(run_once(model.init, key, x))


def _mit_file(variables: dict[str, Any], config: Any, path: Any) -> str:
    """``variables`` saved as MIT's state dict (its key names, PyTorch's conv layout)."""
    from safetensors.numpy import save_file

    sd = {}
    for col in ("params", "batch_stats"):
        for p, v in _flat(variables[col]).items():
            sd[mit_key(p, config)] = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return str(path)


def test_mit_checkpoint_of_another_class_count(
    tmp_path: Any, random_variables: Any, capsys: Any
) -> None:
    mit19 = create_model(MODEL)  # MIT's Cityscapes head: 19 classes
    ckpt = random_variables(mit19, jnp.zeros((1, 3, SIZE, SIZE)), seed=1)
    path = _mit_file(ckpt, mit19.config, tmp_path / "b0.safetensors")
    config = _config(path)
    model = build_model(config, 11)
    tuning = pretrained_tuning(config, model, 11)
    got, fresh = _start(model, tuning)
    out = capsys.readouterr().out
    # MIT's B0 head: output_ops.0 = final_expand conv (op_list.0), then the classifier (op_list.1)
    dropped = "head.output_ops.0.op_list.1.conv.bias, head.output_ops.0.op_list.1.conv.weight"
    assert f"checkpoint classifier not loaded (another class count, 19): {dropped}" in out
    assert "re-initialised 2: params/head/classifier/bias, params/head/classifier/kernel" in out
    want = {**_flat({"params": ckpt["params"]}), **_flat({"batch_stats": ckpt["batch_stats"]})}
    assert got.keys() == fresh.keys()
    for k, v in got.items():
        assert v.shape == fresh[k].shape and v.dtype == fresh[k].dtype, k
        if k.startswith("params/head/classifier/"):
            assert v.shape[-1] == 11 and want[k].shape[-1] == 19
            np.testing.assert_array_equal(v, fresh[k])  # the fresh head, as initialised
        else:
            np.testing.assert_array_equal(v, want[k], err_msg=k)  # loaded exactly
    tuning.optimizer(10)  # the classifier found as the head: the rest at the backbone's rate


def test_timm_backbone_start_loads_the_backbone_only(
    timm: Any, tmp_path: Any, make_timm_file: Any, capsys: Any
) -> None:
    path = make_timm_file(timm, "efficientvit_b0", tmp_path / "b0.safetensors")
    reference = load_timm_weights(path, "efficientvit_b0")
    config = _config(path)
    model = build_model(config, 11)
    tuning = pretrained_tuning(config, model, 11)
    got, fresh = _start(model, tuning)
    out = capsys.readouterr().out
    assert "timm classifier tensors not loaded: head." in out
    ref = _flat({c: reference[c] for c in ("params", "batch_stats")})
    for k, v in got.items():
        col, top, rest = k.split("/", 2)
        if top == "backbone":
            np.testing.assert_array_equal(v, ref[f"{col}/{rest}"], err_msg=k)
        else:
            assert top == "head"
            np.testing.assert_array_equal(v, fresh[k], err_msg=k)  # as initialised
    n_head = sum(1 for k in got if k.split("/")[1] == "head")
    assert f"re-initialised {n_head}: " in out
    tuning.optimizer(10)
