"""layers: the conv modules equal Flax's own (same parameters, same outputs); ``_linen``'s
subclasses equal Flax's modules and check a parameter's shape without tracing its initializer."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficientvit_jax import _linen
from efficientvit_jax.layers import Conv2d, DepthwiseConv


@pytest.mark.parametrize("k,stride", [(1, 1), (3, 1), (3, 2), (1, 2)])
def test_conv2d_equals_flax_conv_with_the_same_parameters(k, stride):
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 5))
    p = k // 2
    ours = Conv2d(7, k, stride, padding=((p, p), (p, p)))
    ref = nn.Conv(7, (k, k), strides=(stride, stride), padding=((p, p), (p, p)))
    variables = ref.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda a: a + 0.1, variables)  # a non-zero bias too
    assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(variables)
    np.testing.assert_allclose(
        ours.apply(variables, x), ref.apply(variables, x), rtol=1e-5, atol=1e-5
    )


def test_depthwise_conv_equals_flax_grouped_conv():
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 4))
    ref = nn.Conv(4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=4)
    variables = ref.init(jax.random.key(1), x)
    out = DepthwiseConv(3, 2).apply(variables, x)
    np.testing.assert_allclose(out, ref.apply(variables, x), rtol=1e-5, atol=1e-5)


# --- _linen: Flax's parameter check without the initializer's trace ---------------------------


def _counting(init):
    """``init`` that counts its calls (Flax's check in ``apply`` calls it under eval_shape)."""
    calls = []

    def counted(key, shape, dtype=jnp.float32):
        calls.append(shape)
        return init(key, shape, dtype)

    return counted, calls


@pytest.mark.parametrize(
    "ours,flax_cls,kw",
    [
        (_linen.Dense, nn.Dense, dict(features=3)),
        (_linen.Conv, nn.Conv, dict(features=3, kernel_size=(3, 3))),
        (_linen.LayerNorm, nn.LayerNorm, dict()),
    ],
)
def test_linen_subclasses_equal_flax_and_trace_no_initializer_in_apply(ours, flax_cls, kw):
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    init_name = "scale_init" if flax_cls is nn.LayerNorm else "kernel_init"
    base_init = nn.initializers.ones if flax_cls is nn.LayerNorm else nn.initializers.lecun_normal()
    counted, calls = _counting(base_init)
    ref = flax_cls(**kw, **{init_name: counted})
    mine = ours(**kw, **{init_name: counted})
    variables = ref.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda a: a + 0.25, variables)  # no parameter at its initial value
    assert jax.tree.structure(mine.init(jax.random.key(1), x)) == jax.tree.structure(variables)
    del calls[:]
    want = ref.apply(variables, x)
    assert len(calls) == 1  # Flax traces the initializer to check the shape
    del calls[:]
    got = mine.apply(variables, x)
    assert calls == []  # the subclass answers the check from the declared shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert type(mine).__name__ == flax_cls.__name__ and isinstance(mine, flax_cls)


def test_linen_shape_check_names_the_parameter_as_flax_does():
    x = jnp.ones((2, 4))
    variables = nn.Dense(3).init(jax.random.key(0), x)
    wrong = {"params": {**variables["params"], "kernel": jnp.ones((4, 5))}}
    with pytest.raises(flax.errors.ScopeParamShapeError) as flax_error:
        nn.Dense(3).apply(wrong, x)
    with pytest.raises(flax.errors.ScopeParamShapeError) as ours:
        _linen.Dense(3).apply(wrong, x)
    assert str(ours.value) == str(flax_error.value)
    assert "kernel" in str(ours.value) and "(4, 5)" in str(ours.value)


def test_linen_subclasses_are_auto_named_as_flax_s():
    """An unnamed submodule is named after its class (``Dense_0``, ``LayerNorm_0``): the
    subclasses keep Flax's class names, so a tree written with Flax's modules loads."""

    def stack(dense, norm, conv):
        class Stack(nn.Module):
            @nn.compact
            def __call__(self, x):
                return dense(2)(norm()(conv(3, (1, 1))(dense(4)(x))))

        return Stack()

    x = jnp.ones((1, 3, 3, 5))
    ours = stack(_linen.Dense, _linen.LayerNorm, _linen.Conv).init(jax.random.key(0), x)
    ref = stack(nn.Dense, nn.LayerNorm, nn.Conv).init(jax.random.key(0), x)
    assert sorted(ours["params"]) == ["Conv_0", "Dense_0", "Dense_1", "LayerNorm_0"]
    assert jax.tree.structure(ours) == jax.tree.structure(ref)
    jax.tree.map(np.testing.assert_array_equal, ours, ref)  # the same draws, too
