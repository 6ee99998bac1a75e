"""output_size(cfg) is the last dimension of what apply returns, for many random valid configs."""

import jax
import jax.numpy as jnp
from hypothesis import given, settings
from hypothesis import strategies as st

import efficientvit_jax as ev
from efficientvit_jax import ops


@st.composite
def configs(draw):
    stages = draw(st.integers(1, 4))
    embed_dim = draw(st.sampled_from([4, 6, 8, 12, 16, 24]))
    heads = []
    for i in range(stages):
        width = embed_dim * 2**i
        heads.append(draw(st.sampled_from([h for h in (1, 2, 3, 4, 8) if width % h == 0])))
    patch = draw(st.sampled_from([1, 2, 4, 8]))
    return ev.EfficientViTConfig(
        image_size=patch * draw(st.integers(1, 6)),
        patch_size=patch,
        in_channels=draw(st.integers(1, 4)),
        embed_dim=embed_dim,
        depths=tuple(draw(st.lists(st.integers(1, 2), min_size=stages, max_size=stages))),
        num_heads=tuple(heads),
        mlp_ratio=draw(st.sampled_from([0.5, 1.0, 2.5, 4.0])),
        num_classes=draw(st.one_of(st.none(), st.integers(1, 50))),
        layout=draw(st.sampled_from(["cascaded", "edifice"])),
        data_format=draw(st.sampled_from(["NCHW", "NHWC"])),
    )


@settings(max_examples=40, deadline=None)
@given(
    cfg=configs(), batch=st.integers(1, 3), extra=st.tuples(st.integers(0, 2), st.integers(0, 2))
)
def test_output_size_matches_eval_shape(cfg, batch, extra):
    # H and W may differ from image_size and from each other.
    h = cfg.image_size + extra[0] * cfg.patch_size
    w = cfg.image_size + extra[1] * cfg.patch_size
    c = cfg.in_channels
    shape = (batch, c, h, w) if cfg.data_format == "NCHW" else (batch, h, w, c)
    model = ev.build(cfg)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    # ``ops.eval_shape``: the portable path, the shorter trace (the shapes are the same).
    variables = ops.eval_shape(model.init, jax.random.key(0), x)
    out = ops.eval_shape(model.apply, variables, x)
    assert out.shape == (batch, ev.output_size(cfg))
    expect = (
        cfg.num_classes
        if cfg.num_classes is not None
        else cfg.embed_dim * 2 ** (len(cfg.depths) - 1)
    )
    assert ev.output_size(cfg) == expect
