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


@pytest.mark.parametrize("shape", [(2, 3, 2), (3,)])
def test_flatten_forward_mode_every_transform_against_the_reference(rng, shape):
    opcheck.assert_forward_mode("flatten", jnp.asarray(rng.normal(size=shape)))


def test_flatten_tangent_is_the_flattened_tangent_under_vmap_and_in_float32(rng):
    x, t = jnp.asarray(rng.normal(size=(2, 3, 2))), jnp.asarray(rng.normal(size=(2, 3, 2)))
    np.testing.assert_array_equal(jax.jvp(ops.flatten, (x,), (t,))[1], np.asarray(t).reshape(2, 6))
    opcheck.assert_adjoint("flatten", x)
    opcheck.assert_jvp("flatten", jnp.asarray(rng.normal(size=(3, 2, 2, 2))), in_axes=(0,))
    opcheck.assert_jvp("flatten", jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32), rtol=0, atol=0)
