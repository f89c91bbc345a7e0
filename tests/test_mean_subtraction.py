import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops


@pytest.mark.parametrize("axis", [-1, 0, (1, 2)])
def test_mean_subtraction_all_transforms(rng, axis):
    opcheck.assert_all("mean_subtraction", jnp.asarray(rng.normal(size=(3, 4, 5))), axis=axis)


def test_mean_subtraction_low_precision(rng):
    opcheck.assert_vjp("mean_subtraction", jnp.asarray(rng.normal(size=(4, 6)), jnp.bfloat16))


def test_backward_equals_forward(rng):
    # Bell: "The backward pass is easy: def backward(dh): return forward(dh)"
    x = jnp.asarray(rng.normal(size=(3, 5)))
    g = jnp.asarray(rng.normal(size=(3, 5)))
    _, vjp = jax.vjp(ops.mean_subtraction, x)
    np.testing.assert_allclose(vjp(g)[0], ops.mean_subtraction(g), rtol=1e-14)
    expected = np.asarray(g) - np.asarray(g).mean(1, keepdims=True)
    np.testing.assert_allclose(ops.mean_subtraction(g), expected, rtol=1e-14)


def test_mean_subtraction_errors():
    with pytest.raises(ValueError, match=r"mean_subtraction: `axis`=\(1, 1\) repeats an axis"):
        ops.mean_subtraction(jnp.ones((2, 3)), axis=(1, 1))
    with pytest.raises(ValueError, match=r"mean_subtraction: `axis`=-3 is out of range for an array with 2 dimensions"):
        ops.mean_subtraction(jnp.ones((2, 3)), axis=-3)
    with pytest.raises(TypeError, match=r"mean_subtraction: `axis` must be an int or a tuple of ints, got 'x'"):
        ops.mean_subtraction(jnp.ones((2, 3)), axis="x")


@pytest.mark.parametrize("axis", [-1, (1, 2)])
def test_mean_subtraction_forward_mode_every_transform_against_the_reference(rng, axis):
    opcheck.assert_forward_mode("mean_subtraction", jnp.asarray(rng.normal(size=(2, 3, 2))), axis=axis)


def test_mean_subtraction_tangent_is_the_forward_under_vmap_and_in_float32(rng):
    x, t = jnp.asarray(rng.normal(size=(3, 5))), jnp.asarray(rng.normal(size=(3, 5)))
    np.testing.assert_allclose(jax.jvp(ops.mean_subtraction, (x,), (t,))[1], ops.mean_subtraction(t), rtol=1e-14)
    for axis in (-1, 0, (0, 1)):
        opcheck.assert_adjoint("mean_subtraction", x, axis=axis)
    opcheck.assert_jvp("mean_subtraction", jnp.asarray(rng.normal(size=(3, 2, 4))), in_axes=(0,), axis=0)
    opcheck.assert_jvp("mean_subtraction", jnp.asarray(rng.normal(size=(4, 6)), jnp.float32), rtol=1e-5, atol=1e-6)
