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


# --------------------------------------------------------------------------- forward mode


@pytest.mark.parametrize("shape", [(2, 5, 3), (2, 3, 4, 2), (1, 2, 3, 2, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["global_max_pool", "global_mean_pool"])
def test_forward_mode_matches_the_reference(rng, name, shape, keepdims):
    opcheck.assert_forward_mode(name, jnp.asarray(rng.standard_normal(shape)), keepdims=keepdims)  # tie-free


def test_max_tangent_at_a_tie_is_the_vjps_maximum(rng):
    x = jnp.asarray(rng.integers(0, 2, (3, 4, 3, 2)), jnp.float64)  # exact ties
    opcheck.assert_adjoint_identity(ops.global_max_pool, x)
    t = jnp.array([[[1.0], [2.0], [3.0]]])
    assert jax.jvp(ops.global_max_pool, (jnp.array([[[1.0], [5.0], [5.0]]]),), (t,))[1].tolist() == [[2.0]]


@pytest.mark.parametrize("name", ["global_max_pool", "global_mean_pool"])
def test_forward_mode_under_vmap_and_float32(rng, name):
    opcheck.assert_jvp_vmaps_and_keeps_float32(getattr(ops, name), jnp.asarray(rng.standard_normal((3, 2, 4, 3, 2))))
