"""Test configuration: 64-bit types are available (tests always name their dtype).

Sample inputs away from kinks come from the verify registry's helpers
(:func:`jaxcnn.verify.registry.away_from_zero`, :func:`~jaxcnn.verify.registry.distinct`), one set for both.
"""

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

FLOAT_DTYPES = ["float32", "float64"]


@pytest.fixture
def rng():
    return np.random.default_rng(0)
