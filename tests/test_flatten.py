import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops


@pytest.mark.parametrize("shape", [(2, 3, 4), (3, 2, 2, 2), (4,)])
def test_flatten_all_transforms(rng, shape):
    opcheck.assert_all("flatten", jnp.asarray(rng.normal(size=shape)))


def test_flatten_is_row_major_and_backward_reshapes(rng):
    x = jnp.arange(24.0).reshape(2, 2, 3, 2)
    np.testing.assert_array_equal(ops.flatten(x), np.arange(24.0).reshape(2, 12))
    g = jnp.asarray(rng.normal(size=(2, 12)))
    np.testing.assert_array_equal(jax.vjp(ops.flatten, x)[1](g)[0], np.asarray(g).reshape(2, 2, 3, 2))


def test_flatten_errors():
    with pytest.raises(ValueError, match=r"flatten: `x` must have at least 1 dimension \(N, ...\), got shape \(\)"):
        ops.flatten(jnp.float32(1))
