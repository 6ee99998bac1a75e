"""layers: the conv modules equal Flax's own (same parameters, same outputs)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

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
