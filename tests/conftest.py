"""Test configuration: 64-bit types are available (tests always name their dtype)."""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

FLOAT_DTYPES = ["float32", "float64"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def away_from_zero(rng, shape, low=0.1, high=2.0):
    """Random values with |v| in [low, high): no ReLU kink, no exact zeros."""
    magnitude = rng.uniform(low, high, size=shape)
    return magnitude * rng.choice([-1.0, 1.0], size=shape)


def distinct(rng, shape, gap=1e-2):
    """Random values, all distinct by at least `gap` (no ties in a pooling window)."""
    n = int(np.prod(shape))
    values = (np.arange(n) - n / 2) * gap * rng.uniform(1.0, 1.5)
    return rng.permutation(values).reshape(shape)
