"""global_mean_pool, global_max_pool: PyTorch's adaptive pooling to 1×1, the backward's
routing, every transform, and the error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn._certify.registry import distinct
from jaxcnn import ops, reference


def test_global_pools_are_torch_adaptive_pools_to_one_by_one(rng):
    # torch: AdaptiveAvgPool2d(1) / AdaptiveMaxPool2d(1) on NCHW give (N, C, 1, 1); here NHWC → (N, C).
    x = distinct(rng, 2, 3, 4, 5)
    np.testing.assert_allclose(ops.global_mean_pool(x), x.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_array_equal(ops.global_max_pool(x), x.max(axis=(1, 2)))
    assert ops.global_mean_pool(x, keepdims=True).shape == (2, 1, 1, 5)
    assert ops.global_max_pool(jnp.asarray(x[:, :, 0]), keepdims=True).shape == (2, 1, 5)  # 1-D maps


def test_backward_spreads_g_over_s_and_routes_to_the_first_maximum(rng):
    x = distinct(rng, 2, 3, 3, 2)
    g = rng.normal(size=(2, 2))
    dx = jax.vjp(ops.global_mean_pool, x)[1](g)[0]
    np.testing.assert_allclose(dx, np.broadcast_to(g[:, None, None, :] / 9, x.shape), rtol=1e-15)
    dx = np.asarray(jax.vjp(ops.global_max_pool, x)[1](g)[0])
    at_max = x == x.max(axis=(1, 2), keepdims=True)
    np.testing.assert_array_equal(dx, np.where(at_max, g[:, None, None, :], 0))
    tie = np.zeros((1, 2, 2, 1))
    tie[0, 0, 1, 0] = tie[0, 1, 0, 0] = 1.0
    np.testing.assert_array_equal(jax.grad(lambda x: ops.global_max_pool(x).sum())(tie).ravel(), [0, 1, 0, 0])
    _, vjp = jax.vjp(ops.global_max_pool, jnp.asarray(x))
    assert [leaf.dtype for leaf in jax.tree_util.tree_leaves(vjp)] == [jnp.int32]  # the arg-max only


@pytest.mark.parametrize("name", ["global_mean_pool", "global_max_pool"])
def test_gradients_all_transforms(rng, name):
    opcheck.assert_all(name, jnp.asarray(distinct(rng, 2, 3, 2, 3)))
    opcheck.assert_vjp(name, jnp.asarray(distinct(rng, 2, 5, 3, gap=0.1), jnp.bfloat16), keepdims=True)


def test_global_pool_errors():
    with pytest.raises(ValueError, match=r"global_mean_pool: `x` must have at least 3 dimensions \(N, \*spatial, C\)"):
        ops.global_mean_pool(jnp.ones((2, 3)))
    with pytest.raises(TypeError, match=r"global_max_pool: `x` must be a floating-point array"):
        ops.global_max_pool(jnp.ones((2, 3, 3), jnp.int32))


@pytest.mark.parametrize("name", ["global_mean_pool", "global_max_pool"])
def test_global_pool_keepdims_must_be_a_bool(name):
    # bool(keepdims) took "no" and 0.0 silently (as True and False); NumPy's bool is a bool
    x = jnp.ones((2, 3, 3, 4))
    for module in (ops, reference):
        op = getattr(module, name)
        for bad in ("no", 0.0, None):
            with pytest.raises(TypeError, match=rf"{name}: `keepdims` must be True or False, got {bad!r}"):
                op(x, keepdims=bad)
        assert op(x, keepdims=np.True_).shape == (2, 1, 1, 4)
