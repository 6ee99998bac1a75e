"""Pretrained tags and data configs against timm 1.0's ``pretrained_cfg`` of every tag."""

from __future__ import annotations

from typing import Any

import pytest

import efficientvit_jax
from efficientvit_jax.data import get_tag, list_tags, resolve_data_config
from efficientvit_jax.data.tags import TAGS


@pytest.fixture(scope="module")
def timm_data(timm: Any) -> Any:
    import timm.data
    import timm.models

    return timm


def test_the_tags_are_timms(timm_data: Any) -> None:
    theirs = timm_data.list_pretrained("efficientvit_*")
    assert len(theirs) == 25
    assert sorted(efficientvit_jax.list_models(pretrained=True)) == sorted(theirs)


@pytest.mark.parametrize("tag", list(TAGS))
def test_data_config_equals_timms(timm_data: Any, tag: str) -> None:
    cfg = timm_data.models.get_pretrained_cfg(tag).to_dict()
    expected = timm_data.data.resolve_data_config(pretrained_cfg=cfg)
    assert resolve_data_config(tag).to_dict() == expected
    assert get_tag(tag).num_classes == cfg["num_classes"]
    # Where timm downloads the tag's weights from: the repository our table names.
    assert get_tag(tag).hf_hub_id == cfg["hf_hub_id"]
    assert get_tag(tag).hf_hub_filename == (cfg.get("hf_hub_filename") or "model.safetensors")


def test_bare_name_is_the_first_tag_and_unknown_tags_are_named() -> None:
    assert get_tag("efficientvit_b1").name == "efficientvit_b1.r224_in1k"
    assert get_tag("efficientvit_l3").name == "efficientvit_l3.r224_in1k"
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'efficientvit_b1.r999_in1k'; "
                       r"known: efficientvit_b1.r224_in1k, efficientvit_b1.r256_in1k"):  # fmt: skip
        get_tag("efficientvit_b1.r999_in1k")
    with pytest.raises(ValueError, match="unknown model 'efficientvit_x9'"):
        efficientvit_jax.create_model("efficientvit_x9.r224_in1k")


def test_published_top1_is_quoted_with_its_source() -> None:
    for t in TAGS.values():
        assert (t.top1 is None) == (t.top1_source is None), t.name
    # The MIT eval script's figures rise with the resolution for every model.
    for model in ("efficientvit_b1", "efficientvit_b2", "efficientvit_b3", "efficientvit_l3"):
        top1 = [TAGS[n].top1 for n in list_tags(f"{model}.*")]
        assert top1 == sorted(top1) and len(top1) >= 3


def test_create_model_takes_a_tag() -> None:
    m = efficientvit_jax.create_model("efficientvit_m0.r224_in1k", num_classes=7)
    assert m.config.img_size == 224 and m.config.num_classes == 7
    b1 = efficientvit_jax.create_model("efficientvit_b1.r288_in1k")
    assert b1.config == efficientvit_jax.create_model("efficientvit_b1").config


def test_overrides() -> None:
    c = resolve_data_config("efficientvit_b0", input_size=160, crop_pct=1.0, data_format="NHWC")
    assert c.input_size == (3, 160, 160) and c.crop_pct == 1.0 and c.data_format == "NHWC"
    with pytest.raises(ValueError, match=r"unknown data config option\(s\) \['size'\]"):
        resolve_data_config("efficientvit_b0", size=3)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        resolve_data_config("efficientvit_b0", interpolation="cubic")


def test_import_stays_light() -> None:
    """The zoo is a lazy attribute: importing the package does not import it."""
    import subprocess
    import sys

    code = "import sys, efficientvit_jax; print('efficientvit_jax.zoo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400)
    assert out.stdout.strip() == "False", out.stderr[-1000:]
