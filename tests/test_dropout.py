"""dropout: PyTorch's inverted dropout from first principles, the backward's mask, every
transform, and the error messages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops, reference


def test_rate_is_the_drop_probability_and_kept_elements_are_scaled(rng):
    # torch.nn.functional.dropout(x, p): zero with probability p, the rest times 1/(1 − p).
    x = jnp.asarray(rng.uniform(1.0, 2.0, size=(200, 100)), jnp.float32)
    y = ops.dropout(x, jax.random.key(0), 0.3)
    kept = np.asarray(y) != 0
    assert abs(kept.mean() - 0.7) < 0.01  # 20,000 draws: 4.5 standard deviations
    np.testing.assert_allclose(np.asarray(y)[kept], np.asarray(x)[kept] / 0.7, rtol=1e-6)
    assert abs(float(y.mean()) / float(x.mean()) - 1) < 0.02  # the expectation is x


def test_same_key_same_mask_and_the_backward_uses_the_forwards_mask(rng):
    x = jnp.asarray(rng.normal(size=(6, 7)))
    key = jax.random.key(3)
    y1, y2 = ops.dropout(x, key, 0.5), ops.dropout(x, key, 0.5)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, ops.dropout(x, jax.random.split(key)[0], 0.5))
    g = jnp.asarray(rng.normal(size=(6, 7)))
    dx = jax.vjp(lambda x: ops.dropout(x, key, 0.5), x)[1](g)[0]
    np.testing.assert_allclose(dx, np.where(np.asarray(y1) != 0, 2 * g, 0), rtol=1e-15)


def test_the_residual_is_the_key_not_a_mask(rng):
    x = jnp.ones((64, 64), jnp.float32)
    _, vjp = jax.vjp(lambda x: ops.dropout(x, jax.random.key(0), 0.5), x)
    assert sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(vjp)) <= 16


def test_deterministic_rate_0_and_rate_1(rng):
    x = jnp.asarray(rng.normal(size=(3, 4)))
    key = jax.random.PRNGKey(0)  # a legacy uint32 key works too
    assert ops.dropout(x, key, 0.5, deterministic=True) is x
    assert ops.dropout(x, key, 0.0) is x
    np.testing.assert_array_equal(ops.dropout(x, key, 1.0), np.zeros((3, 4)))  # PyTorch: p=1 gives zeros
    np.testing.assert_array_equal(jax.grad(lambda x: ops.dropout(x, key, 1.0).sum())(x), np.zeros((3, 4)))
    np.testing.assert_array_equal(jax.grad(lambda x: ops.dropout(x, key, 0.5, deterministic=True).sum())(x),
                                  np.ones((3, 4)))
    t = jnp.asarray(rng.normal(size=(3, 4)))  # forward mode: the identity's tangent, and zeros for rate 1
    np.testing.assert_array_equal(jax.jvp(lambda x: ops.dropout(x, key, 0.5, deterministic=True), (x,), (t,))[1], t)
    np.testing.assert_array_equal(jax.jvp(lambda x: ops.dropout(x, key, 1.0), (x,), (t,))[1], np.zeros((3, 4)))


def test_gradients_all_transforms(rng):
    x = jnp.asarray(rng.normal(size=(4, 5)))
    opcheck.assert_all("dropout", x, jax.random.PRNGKey(7), vmap_axes=(0, None), rate=0.4)
    opcheck.assert_vjp("dropout", jnp.asarray(x, jnp.bfloat16), jax.random.key(1), rate=0.25)


def test_dropout_errors():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"dropout: `rate` must be a finite number in \[0, 1\], got 1.5"):
        ops.dropout(x, jax.random.key(0), 1.5)
    with pytest.raises(TypeError, match=r"dropout: `rate` must be a number, got Array"):
        ops.dropout(x, jax.random.key(0), jnp.float32(0.5))
    with pytest.raises(TypeError, match=r"dropout: `key` must be one PRNG key.* shape \(2,\)"):
        ops.dropout(x, jax.random.split(jax.random.key(0)), 0.5)
    with pytest.raises(TypeError, match=r"dropout: `key` must be one PRNG key.*dtype int32"):
        ops.dropout(x, jnp.array([0, 1], jnp.int32), 0.5)
    with pytest.raises(TypeError, match=r"dropout: `deterministic` must be True or False, got 'yes'"):
        ops.dropout(x, jax.random.key(0), 0.5, deterministic="yes")
    with pytest.raises(ValueError, match=r"dropout: `rate` must be a finite number in \[0, 1\], got nan"):
        reference.dropout(x, jax.random.key(0), np.float32("nan"))
    np.testing.assert_array_equal(ops.dropout(x, jax.random.key(0), np.float32(0.5)),
                                  ops.dropout(x, jax.random.key(0), float(np.float32(0.5))))
    with pytest.raises(TypeError, match=r"dropout: `x` must be a floating-point array"):
        ops.dropout(jnp.ones(3, jnp.int32), jax.random.key(0), 0.5)


@pytest.mark.parametrize("key", [jax.random.key(2), jax.random.PRNGKey(5)], ids=["typed key", "legacy key"])
def test_forward_mode_every_transform_against_the_reference(rng, key):
    opcheck.assert_forward_mode("dropout", jnp.asarray(rng.normal(size=(3, 4))), key, rate=0.4)


def test_the_tangent_takes_the_forwards_and_the_backwards_mask(rng):
    # ṫ_y = ṫ_x · m / (1 − rate), m from the key: the mask of the forward and of the VJP
    x, t = jnp.asarray(rng.normal(size=(6, 7))), jnp.asarray(rng.normal(size=(6, 7)))
    key = jax.random.key(3)
    f = lambda x: ops.dropout(x, key, 0.5)  # noqa: E731
    y, tangent = jax.jvp(f, (x,), (t,))
    kept = np.asarray(y) != 0
    assert 0 < kept.sum() < kept.size
    np.testing.assert_allclose(tangent, np.where(kept, 2 * t, 0), rtol=1e-15)
    np.testing.assert_array_equal(jax.jvp(f, (x,), (jnp.ones_like(x),))[1], jax.vjp(f, x)[1](jnp.ones_like(x))[0])
    opcheck.assert_adjoint("dropout", x, key, rate=0.5)
    opcheck.assert_jvp("dropout", jnp.asarray(rng.normal(size=(3, 4, 5))), key, in_axes=(0,), rate=0.3)
    opcheck.assert_jvp("dropout", jnp.asarray(rng.normal(size=(4, 5)), jnp.float32), key, rate=0.3, rtol=1e-6)
