"""The mechanism behind every op: ``custom_rule``, the VJP in reverse mode and the JVP in forward mode.

A rule with a deliberately distinguishable backward (``bwd`` returns ``100 g``, the JVP the true
``2 x ṫ``) shows which rule each transform runs: every path to a cotangent must give 100s (the
hand VJP), every path to a tangent the true derivative (the hand JVP).
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.ops import _rule


def _marked_square():
    @_rule.custom_rule
    def square(x):
        return x * x

    square.defvjp(lambda x: (square(x), x), lambda x, g: (100.0 * g,))  # marks the VJP's path
    square.defjvp(lambda p, t: (square(p[0]), 2.0 * p[0] * t[0]))
    return square


X = jnp.array([1.0, 2.0, -3.0])


def test_every_reverse_path_runs_the_hand_vjp():
    square = _marked_square()
    f = lambda x: square(x).sum()  # noqa: E731
    hundreds = np.full(3, 100.0)
    np.testing.assert_array_equal(jax.grad(f)(X), hundreds)
    np.testing.assert_array_equal(jax.jit(jax.grad(f))(X), hundreds)
    np.testing.assert_array_equal(jax.grad(jax.checkpoint(f))(X), hundreds)  # linearised through the JVP
    np.testing.assert_array_equal(jax.jacrev(f)(X), hundreds)
    np.testing.assert_array_equal(jax.vmap(jax.grad(f))(jnp.stack([X, X])), np.stack([hundreds] * 2))
    np.testing.assert_array_equal(jax.grad(lambda x: jax.vmap(jax.checkpoint(f))(jnp.stack([x, x])).sum())(X),
                                  2 * hundreds)
    scanned = lambda x: jax.lax.scan(lambda c, _: (c + f(x), None), 0.0, None, length=2)[0]  # noqa: E731
    np.testing.assert_array_equal(jax.grad(scanned)(X), 2 * hundreds)
    linear = jax.linearize(f, X)[1]
    np.testing.assert_array_equal(jax.linear_transpose(linear, X)(1.0)[0], hundreds)


def test_every_forward_path_runs_the_hand_jvp():
    square = _marked_square()
    f = lambda x: square(x).sum()  # noqa: E731
    t = jnp.array([1.0, 0.5, 2.0])
    assert float(jax.jvp(f, (X,), (t,))[1]) == pytest.approx(float(jnp.sum(2 * X * t)))
    np.testing.assert_allclose(jax.jacfwd(f)(X), 2 * X)
    np.testing.assert_allclose(jax.linearize(f, X)[1](t), jnp.sum(2 * X * t))
    np.testing.assert_allclose(jax.vmap(lambda t: jax.jvp(f, (X,), (t,))[1])(jnp.eye(3)), 2 * X)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(square))(X), np.diag(2 * X))


def test_second_order_transforms_compose():
    @_rule.custom_rule
    def tanh(x):
        return jnp.tanh(x)

    tanh.defvjp(lambda x: (tanh(x), tanh(x)), lambda y, g: (g * (1 - y * y),))
    tanh.defjvp(lambda p, t: (tanh(p[0]), t[0] * (1 - tanh(p[0]) ** 2)))
    f, ref = (lambda x: jnp.sum(tanh(x) ** 3)), (lambda x: jnp.sum(jnp.tanh(x) ** 3))
    t = jnp.array([0.3, -1.0, 2.0])
    for transform in (jax.hessian, lambda g: jax.jacfwd(jax.jacrev(g)), lambda g: jax.jacrev(jax.jacrev(g)),
                      lambda g: lambda x: jax.jvp(jax.grad(g), (x,), (t,))[1],
                      lambda g: jax.grad(lambda x: jax.jvp(g, (x,), (t,))[1])):
        np.testing.assert_allclose(transform(f)(X), transform(ref)(X), rtol=1e-6)


def test_settings_and_integer_arguments():
    import functools

    @functools.partial(_rule.custom_rule, nondiff_argnums=(2,))
    def scaled_pick(x, labels, scale):
        return scale * x[jnp.arange(x.shape[0]), labels]

    def fwd(x, labels, scale):
        return scaled_pick(x, labels, scale), (x.shape, labels)

    def bwd(scale, res, g):
        shape, labels = res
        return jnp.zeros(shape, g.dtype).at[jnp.arange(shape[0]), labels].set(scale * g), None

    def jvp(scale, primals, tangents):
        (x, labels), (tx, _) = primals, tangents
        return scaled_pick(x, labels, scale), scale * tx[jnp.arange(x.shape[0]), labels]

    scaled_pick.defvjp(fwd, bwd)
    scaled_pick.defjvp(jvp)
    x, labels = jnp.arange(6.0).reshape(2, 3), jnp.array([2, 0])
    expected = jnp.zeros((2, 3)).at[jnp.arange(2), labels].set(3.0)
    np.testing.assert_array_equal(jax.grad(lambda x: scaled_pick(x, labels, 3.0).sum())(x), expected)
    np.testing.assert_array_equal(jax.grad(jax.checkpoint(lambda x: scaled_pick(x, labels, 3.0).sum()))(x), expected)
    np.testing.assert_array_equal(jax.jvp(lambda x: scaled_pick(x, labels, 3.0), (x,), (jnp.ones((2, 3)),))[1],
                                  jnp.array([3.0, 3.0]))


def test_a_rule_without_a_jvp_names_itself_in_forward_mode_and_keeps_reverse_mode():
    @_rule.custom_rule
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (double(x), None), lambda _, g: (2 * g,))
    np.testing.assert_array_equal(jax.grad(lambda x: double(x).sum())(X), np.full(3, 2.0))
    with pytest.raises(TypeError, match=r"jaxcnn.ops.double has no forward-mode rule"):
        jax.jvp(double, (X,), (X,))


def test_without_hijax_the_ops_fall_back_to_custom_vjp():
    # an older jax (no jax.experimental.hijax): reverse mode as before, forward mode refused
    code = ("import sys; sys.modules['jax.experimental.hijax'] = None\n"
            "import jax, jax.numpy as jnp\n"
            "from jaxcnn import ops\n"
            "from jaxcnn.ops import _rule\n"
            "assert not _rule.FORWARD_MODE\n"
            "x = jnp.array([-1.0, 0.0, 2.0])\n"
            "assert jax.grad(lambda x: ops.relu(x).sum())(x).tolist() == [0.0, 1.0, 1.0]\n"
            "try:\n"
            "    jax.jvp(ops.relu, (x,), (x,))\n"
            "except TypeError as e:\n"
            "    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused:" in out.stdout and "custom_vjp" in out.stdout


def test_a_rule_whose_backward_calls_a_rule_survives_every_second_order_transform():
    # downsample's VJP is upsample: a rule bound inside another rule's bwd, under jacfwd of jacrev
    @_rule.custom_rule
    def double(x):
        return 2.0 * x

    double.defvjp(lambda x: (double(x), None), lambda _, g: (double(g),))
    double.defjvp(lambda p, t: (double(p[0]), double(t[0])))
    f = lambda x: jnp.sum(jnp.cos(double(x)))  # noqa: E731
    expected = np.diag(-4.0 * np.cos(2.0 * np.asarray(X)))
    for transform in (jax.hessian, lambda g: jax.jacfwd(jax.jacrev(g)), lambda g: jax.jacrev(jax.jacfwd(g)),
                      lambda g: jax.jacrev(jax.jacrev(g))):
        np.testing.assert_allclose(transform(f)(X), expected, rtol=1e-6)
