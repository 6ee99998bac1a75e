"""Conversion of timm checkpoints: refusals with every problem named, and the ``convert`` CLI."""

from __future__ import annotations

import os
import pickle
from typing import Any

import jax
import numpy as np
import pytest

from efficientvit_jax.cli import main as cli_main
from efficientvit_jax.zoo import load_converted
from efficientvit_jax.zoo.mit import MIT_CONFIGS, mit_from_timm, timm_key, variable_shapes
from efficientvit_jax.zoo.registry import load_timm_weights


def _timm_layout_state_dict(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict with timm's keys and PyTorch layouts for ``name``, built without torch."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    shapes = variable_shapes(MIT_CONFIGS[name])
    for col in ("params", "batch_stats"):
        for path, s in jax.tree_util.tree_leaves_with_path(shapes[col]):
            names = [p.key for p in path]
            a = rng.normal(size=s.shape).astype(np.float32)
            if names[-1] == "kernel":
                a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T
            # contiguous: safetensors.numpy writes a transposed view in memory order
            sd[timm_key("/".join(names))] = np.ascontiguousarray(a)
    return sd


def test_round_trip_keys_and_layouts() -> None:
    sd = _timm_layout_state_dict("efficientvit_b0")
    v = mit_from_timm(sd, MIT_CONFIGS["efficientvit_b0"])
    got = np.asarray(v["params"]["stem"]["in_conv"]["conv"]["kernel"])
    np.testing.assert_array_equal(got, sd["stem.in_conv.conv.weight"].transpose(2, 3, 1, 0))
    fc = np.asarray(v["params"]["head"]["fc"]["kernel"])
    np.testing.assert_array_equal(fc, sd["head.classifier.4.weight"].T)
    var = v["batch_stats"]["stages_3"]["blocks_1"]["context_module"]["proj"]["norm"]["var"]
    np.testing.assert_array_equal(
        np.asarray(var), sd["stages.3.blocks.1.context_module.main.proj.norm.running_var"]
    )


def test_wrong_variant_is_refused_with_tensors_named() -> None:
    sd = _timm_layout_state_dict("efficientvit_b0")
    with pytest.raises(ValueError) as err:
        load_timm_weights(sd, "efficientvit_b1")
    msg = str(err.value)
    # a width mismatch (b0 stem 8 vs b1 16), a tensor b1 has and b0 lacks (stage-1 third block)
    assert "'stem.in_conv.conv.weight': shape (8, 3, 3, 3)" in msg
    assert "missing tensor 'stages.1.blocks.2.main.inverted_conv.conv.weight'" in msg
    # every problem is reported at once, not just the first
    assert int(msg.split(": ")[1].split()[0]) > 50


def test_wrong_num_classes_and_extra_tensor_are_named() -> None:
    sd = _timm_layout_state_dict("efficientvit_b0")
    sd["head.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as err:
        load_timm_weights(sd, "efficientvit_b0", num_classes=10)
    assert "'head.classifier.4.weight'" in str(err.value)
    assert "unexpected tensor 'head.extra.weight'" in str(err.value)


def test_plain_pickle_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"stem.in_conv.conv.weight": np.zeros((8, 3, 3, 3))}, f)
    with pytest.raises(ValueError, match="never a plain pickle"):
        load_timm_weights(str(path), "efficientvit_b0")


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'efficientvit_b9'.*efficientvit_b0"):
        load_timm_weights({}, "efficientvit_b9")


def _save_safetensors(path: Any, sd: dict[str, np.ndarray]) -> str:
    from safetensors.numpy import save_file

    save_file(sd, str(path))
    return str(path)


def test_cli_converts_and_saves_with_orbax(tmp_path: Any, capsys: Any) -> None:
    sd = _timm_layout_state_dict("efficientvit_b0", seed=5)
    src = _save_safetensors(tmp_path / "b0.safetensors", sd)
    out = tmp_path / "out"
    argv = ["convert", "--model", "efficientvit_b0", "--input", src, "--output", str(out)]
    assert cli_main(argv) == 0
    assert "converted efficientvit_b0 (3,410,008 parameters)" in capsys.readouterr().out
    module, restored = load_converted(out)
    assert module.config == MIT_CONFIGS["efficientvit_b0"]
    expected = mit_from_timm(sd, MIT_CONFIGS["efficientvit_b0"])
    jax.tree.map(np.testing.assert_array_equal, restored, expected)
    # a second run refuses to overwrite, --force allows it
    assert cli_main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli_main([*argv, "--force"]) == 0


@pytest.mark.parametrize(
    "case, needle",
    [
        ("unknown", "unknown model 'efficientvit_x'"),
        ("missing", "checkpoint file not found"),
        ("pickle", "never a plain pickle"),
        ("variant", "tensor(s) do not match"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Any, capsys: Any, case: str, needle: str) -> None:
    model, src = "efficientvit_b1", str(tmp_path / "nope.safetensors")
    if case == "unknown":
        model = "efficientvit_x"
    elif case == "pickle":
        src = str(tmp_path / "m.bin")
        with open(src, "wb") as f:
            pickle.dump({}, f)
    elif case == "variant":
        src = _save_safetensors(
            tmp_path / "b0.safetensors", _timm_layout_state_dict("efficientvit_b0")
        )
    argv = ["convert", "--model", model, "--input", src, "--output", str(tmp_path / "out")]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert err.count("\n") == 1 and err.startswith("efficientvit-jax convert: error:")
    assert not os.path.exists(tmp_path / "out" / "variables")


def test_converted_folder_serves_any_tag_of_its_variant_and_refuses_others(tmp_path: Any) -> None:
    """``load_converted_as``, behind ``predict``/``eval``, fine-tuning and export alike."""
    import jax.numpy as jnp

    from efficientvit_jax.zoo import save_converted
    from efficientvit_jax.zoo.converted import load_converted_as

    cfg = MIT_CONFIGS["efficientvit_b0"]
    variables = mit_from_timm(_timm_layout_state_dict("efficientvit_b0", seed=2), cfg)
    out = tmp_path / "b0"
    save_converted(out, variables, model="efficientvit_b0.r224_in1k")
    module, got = load_converted_as("efficientvit_b0", out, dtype=jnp.bfloat16)
    assert module.config.dtype == jnp.bfloat16 and module.config.num_classes == 1000
    jax.tree.map(np.testing.assert_array_equal, got, variables)
    refusals = {
        "holds efficientvit_b0 weights, not efficientvit_b1": dict(name="efficientvit_b1"),
        "was converted with num_classes=1000, not 10": dict(num_classes=10),
    }
    for needle, kw in refusals.items():
        with pytest.raises(ValueError, match=needle) as e:
            load_converted_as(kw.pop("name", "efficientvit_b0"), out, **kw)
        assert "\n" not in str(e.value) and str(out) in str(e.value)
    os.makedirs(tmp_path / "plain")
    with pytest.raises(ValueError, match=r"--model-weights .* not one written by"):
        load_converted_as("efficientvit_b0", tmp_path / "plain", option="--model-weights")
