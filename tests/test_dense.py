import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops, reference, verify


def _args(rng, x_shape, n_out, dtype, bias=True):
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    w = jnp.asarray(rng.normal(size=(n_out, x_shape[-1])), dtype)
    b = jnp.asarray(rng.normal(size=(n_out,)), dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("x_shape", [(4, 3), (2, 5, 3), (3,)])
@pytest.mark.parametrize("bias", [True, False])
def test_dense_gradients_all_transforms(rng, x_shape, bias):
    x, w, b = _args(rng, x_shape, 5, jnp.float64, bias)
    args = (x, w) if b is None else (x, w, b)
    axes = (0, None) if b is None else (0, None, None)
    opcheck.assert_all("dense", *args, vmap_axes=axes)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dense_vjp_low_precision(rng, dtype):
    opcheck.assert_vjp("dense", *_args(rng, (8, 6), 4, dtype))


def test_dense_forward_hand_computed():
    x = jnp.array([[1.0, 2.0], [-1.0, 0.5]])
    w = jnp.array([[1.0, 0.0], [2.0, -1.0], [0.5, 0.5]])
    b = jnp.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(ops.dense(x, w, b), [[1.1, 0.2, 1.8], [-0.9, -2.3, 0.05]], rtol=1e-6)


def test_dense_backward_is_the_lecture_formula(rng):
    # dx = g W, dW = gᵀ x (summed over leading axes), db = Σ g
    x, w, b = _args(rng, (2, 3, 4), 5, jnp.float64)
    g = jnp.asarray(rng.normal(size=(2, 3, 5)))
    _, vjp = jax.vjp(ops.dense, x, w, b)
    dx, dw, db = vjp(g)
    gn, xn = np.asarray(g).reshape(6, 5), np.asarray(x).reshape(6, 4)
    np.testing.assert_allclose(dx, np.asarray(g) @ np.asarray(w), rtol=1e-12)
    np.testing.assert_allclose(dw, gn.T @ xn, rtol=1e-12)
    np.testing.assert_allclose(db, gn.sum(0), rtol=1e-12)


def test_dense_checker_catches_untransposed_weights(rng):
    # A classic slip: dx = g Wᵀ instead of g W (only shape-compatible for square W).
    @jax.custom_vjp
    def wrong(x, w, b):
        return x @ w.T + b

    wrong.defvjp(lambda x, w, b: (wrong(x, w, b), (x, w)),
                 lambda res, g: (g @ res[1].T, g.T @ res[0], g.sum(0)))
    x, w, b = _args(rng, (4, 3), 3, jnp.float64)
    result = verify.check_vjp(wrong, reference.dense, x, w, b)
    assert not result.ok
    assert not result["x"].ok and result["w"].ok and result["b"].ok


def test_dense_errors(rng):
    x, w, b = _args(rng, (4, 3), 5, jnp.float32)
    with pytest.raises(ValueError, match=r"dense: `w` must have shape \(n_out, n_in\) with n_in = x.shape\[-1\] = 3, "
                                         r"got w of shape \(3, 5\).*pass `w.T`"):
        ops.dense(x, w.T, b)
    with pytest.raises(ValueError, match=r"dense: `b` must have shape \(5,\) \(n_out,\) with n_out = w.shape\[0\], "
                                         r"got \(4,\)"):
        ops.dense(x, w, b[:4])
    with pytest.raises(ValueError, match=r"dense: `w` must have 2 dimensions \(n_out, n_in\), got 3 dimensions with "
                                         r"shape \(1, 5, 3\)"):
        ops.dense(x, w[None], b)
    with pytest.raises(TypeError, match=r"dense: `x` must be a floating-point array .* got dtype int32"):
        ops.dense(jnp.ones((4, 3), jnp.int32), w, b)
    with pytest.raises(TypeError, match=r"dense: all floating arguments must share one dtype, but `x` is float64, "
                                        r"`w` is float32"):
        ops.dense(x.astype(jnp.float64), w, b)
    with pytest.raises(ValueError, match=r"dense: `x` must have at least 1 dimension \(..., n_in\), got shape \(\)"):
        ops.dense(jnp.float32(1.0), w, b)
    # reference validates identically
    with pytest.raises(ValueError, match="dense: `w` must have shape"):
        reference.dense(x, w.T, b)


@pytest.mark.parametrize("x_shape,bias,method", [((4, 3), True, "lectures"), ((2, 5, 3), False, "lectures"),
                                                  ((3,), True, "lectures"), ((4, 3), True, "transposed"),
                                                  ((2, 5, 3), False, "transposed")])
def test_dense_forward_mode_every_transform_against_the_reference(rng, x_shape, bias, method):
    x, w, b = _args(rng, x_shape, 5, jnp.float64, bias)
    opcheck.assert_forward_mode("dense", *((x, w) if b is None else (x, w, b)), method=method)


def test_dense_tangent_is_bilinear_and_works_under_vmap_and_in_float32(rng):
    # ṫ_y = ṫ_x Wᵀ + x ṫ_Wᵀ + ṫ_b, as jax.jvp, jacfwd and jacrev agree (formerly forward mode raised)
    x, w, b = _args(rng, (2, 3), 4, jnp.float64)
    tx, tw, tb = _args(rng, (2, 3), 4, jnp.float64)
    y, ty = jax.jvp(ops.dense, (x, w, b), (tx, tw, tb))
    np.testing.assert_allclose(y, ops.dense(x, w, b), rtol=1e-15)
    np.testing.assert_allclose(ty, np.asarray(tx) @ np.asarray(w).T + np.asarray(x) @ np.asarray(tw).T + tb,
                               rtol=1e-13)
    for fwd, rev in zip(jax.jacfwd(ops.dense, argnums=(0, 1, 2))(x, w, b),
                        jax.jacrev(ops.dense, argnums=(0, 1, 2))(x, w, b)):
        np.testing.assert_allclose(fwd, rev, rtol=1e-13)
    opcheck.assert_adjoint("dense", *_args(rng, (2, 3, 4), 5, jnp.float64))
    opcheck.assert_adjoint("dense", *_args(rng, (2, 3, 4), 5, jnp.float64, bias=False))
    opcheck.assert_jvp("dense", *_args(rng, (3, 2, 4), 5, jnp.float64), in_axes=(0, None, None))
    per_example_w = jnp.asarray(rng.normal(size=(3, 5, 4)))  # one weight matrix per mapped example
    opcheck.assert_jvp("dense", jnp.asarray(rng.normal(size=(3, 2, 4))), per_example_w, in_axes=(0, 0))
    opcheck.assert_jvp("dense", *_args(rng, (8, 6), 4, jnp.float32), rtol=1e-5, atol=1e-5)
