"""The EfficientViT module: Edifice's own cases, both layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import efficientvit_jax as ev

# SPEC.md section 6: Edifice's test cases (images 32x32, patch 8, 3 channels).
EDIFICE_CASES = [
    (dict(embed_dim=32, depths=(1, 2), num_heads=(4, 4)), 64),
    (dict(embed_dim=32, depths=(1, 2), num_heads=(4, 4), num_classes=10), 10),
    (dict(embed_dim=32, depths=(2,), num_heads=(4,)), 32),
    (dict(embed_dim=16, depths=(1, 1, 1), num_heads=(2, 2, 2)), 64),
]


@pytest.mark.parametrize("layout", ["cascaded", "edifice"])
@pytest.mark.parametrize("opts,size", EDIFICE_CASES)
def test_edifice_cases(layout, opts, size):
    model = ev.build(image_size=32, patch_size=8, in_channels=3, layout=layout, **opts)
    assert ev.output_size(model.config) == size
    assert ev.output_size(image_size=32, patch_size=8, layout=layout, **opts) == size
    x5 = jax.random.uniform(jax.random.key(1), (5, 3, 32, 32))
    variables = model.init(jax.random.key(0), x5[:1])
    apply = jax.jit(model.apply)
    for batch in (1, 2, 5):
        out = apply(variables, x5[:batch])
        assert out.shape == (batch, size)
        assert bool(jnp.isfinite(out).all())
        # Samples do not interact: each row is what the sample gives alone.
        np.testing.assert_allclose(out[-1], apply(variables, x5[batch - 1 : batch])[0], atol=1e-5)
