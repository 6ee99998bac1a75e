"""EfficientViTConfig: defaults, normalisation and every bad option (SPEC.md section 2)."""

import dataclasses

import jax.numpy as jnp
import pytest

import efficientvit_jax as ev
from efficientvit_jax.config import make_config, round_half_away


def test_defaults_are_edifices():
    cfg = ev.EfficientViTConfig()
    assert (cfg.image_size, cfg.patch_size, cfg.in_channels, cfg.embed_dim) == (224, 16, 3, 64)
    assert (cfg.depths, cfg.num_heads, cfg.mlp_ratio, cfg.num_classes) == (
        (1, 2, 3),
        (4, 4, 4),
        4.0,
        None,
    )
    assert (cfg.layout, cfg.data_format, cfg.drop_path_rate) == ("cascaded", "NCHW", 0.0)
    assert cfg.dims == (64, 128, 256)
    assert ev.output_size() == 256


def test_lists_become_tuples_and_config_is_hashable():
    cfg = ev.EfficientViTConfig(depths=[1, 1], num_heads=[2, 2])
    assert cfg.depths == (1, 1) and cfg.num_heads == (2, 2)
    assert hash(cfg) == hash(ev.EfficientViTConfig(depths=(1, 1), num_heads=(2, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embed_dim = 8


def test_build_from_options_equals_build_from_config():
    opts = dict(embed_dim=32, depths=[1, 2], num_heads=[4, 4], num_classes=10)
    assert ev.build(**opts) == ev.build(ev.EfficientViTConfig(**opts))
    # Options given beside a config override it.
    assert ev.build(ev.EfficientViTConfig(), embed_dim=32).config.embed_dim == 32


def test_output_size_follows_num_classes_or_last_width():
    assert ev.output_size(num_classes=7) == 7
    assert ev.output_size(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)) == 16 * 8


def test_round_half_away_from_zero_like_elixir():
    # Python's round(2.5) == 2; Elixir's round(2.5) == 3.
    assert [round_half_away(v) for v in (0.5, 1.5, 2.5, 2.4, -2.5)] == [1, 2, 3, 2, -3]
    assert ev.EfficientViTConfig(embed_dim=5, num_heads=(1, 1, 1), mlp_ratio=0.5).hidden_dim(5) == 3


def test_dtype_strings_are_normalised():
    cfg = ev.EfficientViTConfig(dtype="bfloat16")
    assert cfg.dtype == jnp.bfloat16 and cfg.param_dtype == jnp.float32


# One case per rule: (options, the option the message must name, a fragment of the rule).
BAD = [
    ({"image_size": 0}, "image_size", "> 0"),
    ({"image_size": -32}, "image_size", "> 0"),
    ({"image_size": 224.0}, "image_size", "int"),
    ({"image_size": True}, "image_size", "int"),
    ({"patch_size": 0}, "patch_size", "> 0"),
    ({"patch_size": "16"}, "patch_size", "int"),
    ({"in_channels": 0}, "in_channels", "> 0"),
    ({"embed_dim": -1}, "embed_dim", "> 0"),
    ({"image_size": 100, "patch_size": 16}, "image_size", "divisible by patch_size"),
    ({"depths": ()}, "depths", "non-empty"),
    ({"depths": (1, 0, 1)}, "depths", ">= 1"),
    ({"depths": "123"}, "depths", "list or tuple"),
    ({"depths": (1, 2.5, 1)}, "depths", "int"),
    ({"num_heads": (4, 4)}, "num_heads", "one entry per stage"),
    ({"num_heads": (4, 0, 4)}, "num_heads", ">= 1"),
    ({"num_heads": (3, 4, 4)}, "num_heads", "not divisible by 3 heads"),
    ({"embed_dim": 6, "num_heads": (1, 1, 5)}, "num_heads", "width 24"),
    ({"mlp_ratio": 0.0}, "mlp_ratio", "> 0"),
    ({"mlp_ratio": -1.0}, "mlp_ratio", "> 0"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio", "finite"),
    ({"mlp_ratio": "4"}, "mlp_ratio", "float"),
    ({"mlp_ratio": 0.001}, "mlp_ratio", "hidden width"),
    ({"num_classes": 0}, "num_classes", ">= 1"),
    ({"num_classes": 2.0}, "num_classes", "int"),
    ({"layout": "swin"}, "layout", "cascaded"),
    ({"data_format": "CHW"}, "data_format", "NHWC"),
    ({"dtype": "int32"}, "dtype", "floating"),
    ({"dtype": "floaty"}, "dtype", "floating"),
    ({"drop_path_rate": 1.0}, "drop_path_rate", "[0, 1)"),
    ({"drop_path_rate": -0.1}, "drop_path_rate", "[0, 1)"),
]


@pytest.mark.parametrize(
    "opts,option,rule", BAD, ids=[f"{o}={v}" for o, v in (next(iter(b[0].items())) for b in BAD)]
)
def test_bad_option_raises_naming_option_value_and_rule(opts, option, rule):
    with pytest.raises(ValueError) as info:
        ev.EfficientViTConfig(**opts)
    msg = str(info.value)
    assert repr(option) in msg, msg
    assert repr(opts[option]) in msg, msg
    assert rule in msg, msg
    # The builder and output_size take the same path.
    with pytest.raises(ValueError, match=option):
        ev.build(**opts)
    with pytest.raises(ValueError, match=option):
        ev.output_size(**opts)


def test_unknown_option_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match=r"'embed_dims' \(did you mean 'embed_dim'\?\)"):
        ev.build(embed_dims=64)
    with pytest.raises(ValueError, match="unknown EfficientViT option"):
        ev.output_size(heads=4)
    with pytest.raises(ValueError, match="unknown EfficientViT option"):
        ev.EfficientViTConfig().replace(colour="red")


def test_config_argument_must_be_a_config():
    with pytest.raises(ValueError, match="EfficientViTConfig"):
        make_config({"embed_dim": 32})
