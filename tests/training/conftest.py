"""Shared tiny models and data for the training tests (compile time dominates on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import efficientvit_jax as ev
from efficientvit_jax.training import make_optimizer
from efficientvit_jax.training.digits import load_digits_split

TINY = dict(
    image_size=16,
    patch_size=4,
    in_channels=1,
    embed_dim=8,
    depths=(1, 1),
    num_heads=(2, 2),
    num_classes=10,
)


def _tiny_model(layout="cascaded", **opts):
    return ev.build(**{**TINY, "layout": layout, **opts})


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(layout="cascaded", **opts)``: a 2-stage model on 16x16 grey images."""
    return _tiny_model


@pytest.fixture(scope="session")
def digits16():
    """The digits at 16x16 (NCHW)."""
    return load_digits_split(16)


@pytest.fixture(scope="session")
def subset(digits16):
    """A fixed small training subset: 64 images, 16 per batch."""
    return digits16.train_images[:64], digits16.train_labels[:64]


@pytest.fixture(scope="session")
def optimizer():
    return make_optimizer(1e-2, total_steps=40, warmup_steps=2)


@pytest.fixture(scope="session")
def sample():
    """An init batch for the tiny model."""
    return jnp.zeros((16, 1, 16, 16), jnp.float32)


def _tree_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
        for x, y in zip(la, lb, strict=True)
    )


@pytest.fixture(scope="session")
def tree_equal():
    """``tree_equal(a, b)``: bitwise equality of two pytrees (structure and every leaf)."""
    return _tree_equal
