import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops, reference, verify
from jaxcnn.verify.registry import away_from_zero


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4)])
def test_elementwise_gradients_all_transforms(rng, name, shape):
    x = jnp.asarray(away_from_zero(rng, *shape, low=0.05, high=3.0))
    opcheck.assert_all(name, x)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_gradients_all_transforms(rng, axis):
    x = jnp.asarray(rng.normal(size=(3, 5)) * 2)
    opcheck.assert_all("softmax", x, axis=axis)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_low_precision_vjp(rng, name, dtype):
    opcheck.assert_vjp(name, jnp.asarray(away_from_zero(rng, 6, 5, low=0.05, high=3.0), dtype))


def test_relu_kink_passes_gradient_at_zero():
    # Lectures (Hu & Zhu, Jearanaitanakij): f'(x) = 1 if x >= 0.  jax.nn.relu says 0 at 0.
    x = jnp.array([-1.0, 0.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda v: ops.relu(v).sum())(x), [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda v: jax.nn.relu(v).sum())(x), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda v: reference.relu(v).sum())(x), [0.0, 1.0, 1.0])


def test_relu_saves_a_boolean_mask_not_the_input():
    x = jnp.ones((64, 64), jnp.float32)
    _, vjp = jax.vjp(ops.relu, x)
    leaves = jax.tree_util.tree_leaves(vjp)
    assert [l.dtype for l in leaves] == [jnp.bool_]


def test_sigmoid_and_tanh_backward_use_the_output():
    x = jnp.array([-2.0, 0.0, 0.7], jnp.float64)
    f = ops.sigmoid(x)
    np.testing.assert_allclose(jax.vjp(ops.sigmoid, x)[1](jnp.ones(3))[0], f * (1 - f), rtol=1e-15)
    t = ops.tanh(x)
    np.testing.assert_allclose(jax.vjp(ops.tanh, x)[1](jnp.ones(3))[0], 1 - t**2, rtol=1e-15)


def test_tanh_float32_matches_tanh_to_a_few_ulp():
    # On the CPU, float32 tanh is XLA's rational approximation written out (it fuses at full
    # speed); it must stay as accurate as jnp.tanh over every magnitude, and map the specials.
    rng = np.random.default_rng(0)
    magnitudes = 10.0 ** rng.uniform(-35, 1.5, size=200_000)
    x = np.concatenate([magnitudes, -magnitudes, rng.uniform(-10, 10, 200_000), [8.5, 9.0, 1e4]]).astype(np.float32)
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    for f in (ops.tanh, jax.jit(ops.tanh), reference.tanh):
        assert np.max(np.abs(np.asarray(f(jnp.asarray(x)), np.float64) - exact) / ulp) <= 7
    specials = jnp.array([np.inf, -np.inf, 0.0, -0.0, 1e-37, -1e-37, np.nan], jnp.float32)
    y = np.asarray(ops.tanh(specials))
    np.testing.assert_array_equal(y[:4], [1.0, -1.0, 0.0, -0.0])
    np.testing.assert_array_equal(np.signbit(y[:6]), [False, True, False, True, False, True])  # odd
    np.testing.assert_allclose(y[4:6], [1e-37, -1e-37], rtol=0, atol=3e-36)  # tiny: ±0 or x
    assert np.isnan(y[6])


def test_sigmoid_is_stable_for_large_inputs():
    x = jnp.array([-1000.0, 1000.0], jnp.float32)
    np.testing.assert_array_equal(ops.sigmoid(x), [0.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda v: ops.sigmoid(v).sum())(x), [0.0, 0.0])


def test_softmax_backward_formula():
    x = jnp.array([[0.1, 1.0, -0.5]], jnp.float64)
    g = jnp.array([[1.0, -2.0, 0.5]], jnp.float64)
    p = ops.softmax(x)
    expected = p * (g - jnp.sum(g * p, axis=-1, keepdims=True))
    np.testing.assert_allclose(jax.vjp(ops.softmax, x)[1](g)[0], expected, rtol=1e-15)


def test_softmax_large_logits():
    x = jnp.array([[1e4, 0.0, -1e4]], jnp.float32)
    np.testing.assert_allclose(ops.softmax(x), [[1.0, 0.0, 0.0]])


def test_checker_catches_sigmoid_backward_from_x_instead_of_f(rng):
    @jax.custom_vjp
    def wrong(x):
        return jax.nn.sigmoid(x)

    wrong.defvjp(lambda x: (wrong(x), x), lambda x, g: (g * x * (1 - x),))  # f'(x) from x, not f(x)
    x = jnp.asarray(rng.normal(size=(5,)))
    result = verify.check_vjp(wrong, reference.sigmoid, x)
    assert not result.ok and not result["x"].ok
    assert "MISMATCH" in str(result) and result["x"].name == "x"


def test_activation_errors():
    with pytest.raises(TypeError, match=r"relu: `x` must be a floating-point array .* got dtype int32 with shape "
                                        r"\(3,\)"):
        ops.relu(jnp.array([1, 2, 3], jnp.int32))
    with pytest.raises(TypeError, match=r"sigmoid: `x` must be a floating-point array .* got dtype bool"):
        ops.sigmoid(jnp.array([True]))
    with pytest.raises(ValueError, match=r"softmax: `axis`=2 is out of range for an array with 2 dimensions"):
        ops.softmax(jnp.ones((2, 3)), axis=2)
    with pytest.raises(ValueError, match=r"softmax: `x` must have at least 1 dimension"):
        ops.softmax(jnp.float32(1.0))
