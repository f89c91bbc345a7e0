"""The gradient checker itself: it must pass right rules, catch wrong ones, and say where."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops, reference, verify


def _one_wrong_element(index):
    """Sigmoid whose backward is right everywhere except at `index` (doubled there)."""

    @jax.custom_vjp
    def f(x):
        return jax.nn.sigmoid(x)

    def bwd(y, g):
        dx = g * y * (1 - y)
        return (dx.at[index].multiply(2.0),)

    f.defvjp(lambda x: (f(x), f(x)), bwd)
    return f


def test_report_names_the_worst_element_with_three_values(rng):
    x = jnp.asarray(rng.normal(size=(3, 4)))
    result = verify.check_vjp(_one_wrong_element((2, 1)), reference.sigmoid, x, cotangents=1)
    report = result["x"]
    assert not result.ok and not report.ok
    assert report.index == (2, 1)
    assert report.rule == pytest.approx(2 * report.expected)
    assert 0 < report.tolerance < abs(report.rule - report.expected)
    text = str(result)
    assert "FAILED" in text and "MISMATCH at [2, 1]" in text and "autodiff" in text
    with pytest.raises(verify.GradientMismatch, match=r"x .* MISMATCH at \[2, 1\]"):
        result.assert_ok()


def test_numerical_check_names_the_worst_element(rng):
    x = jnp.asarray(rng.normal(size=(3, 4)))
    result = verify.check_numerical(_one_wrong_element((0, 3)), x)
    assert not result.ok and result["x"].index == (0, 3)
    assert "finite-diff" in str(result)


def test_numerical_projection_mode_catches_a_wrong_rule_on_large_inputs(rng):
    x = jnp.asarray(rng.normal(size=(40, 40)))
    good = verify.check_numerical(ops.sigmoid, x, elementwise_max=100)
    bad = verify.check_numerical(_one_wrong_element((7, 9)), x, elementwise_max=100)
    assert good.ok and good["x"].index[0] == "direction"
    assert not bad.ok and bad["x"].index[0] == "direction"


def test_right_rules_pass_on_pytree_arguments(rng):
    params = {"a": jnp.asarray(rng.normal(size=(2, 3))), "b": (jnp.asarray(rng.normal(size=4)),)}
    result = verify.check_vjp(ops.l2_penalty, reference.l2_penalty, params, jnp.float64(0.2))
    assert result.ok
    assert [r.name for r in result.arguments] == ["params['a']", "params['b'][0]", "lam"]
    assert verify.check_numerical(ops.l2_penalty, params, jnp.float64(0.2)).ok


def test_user_defined_leaky_relu_is_certified(rng):
    @jax.custom_vjp
    def leaky_relu(x, slope):
        return jnp.where(x >= 0, x, slope * x)

    def bwd(res, g):
        x, slope = res
        return jnp.where(x >= 0, g, slope * g), jnp.sum(jnp.where(x >= 0, 0.0, g * x))

    leaky_relu.defvjp(lambda x, s: (leaky_relu(x, s), (x, s)), bwd)

    def leaky_relu_reference(x, slope):
        return jnp.maximum(x, slope * x)

    x = jnp.asarray(rng.uniform(0.1, 2, size=(5, 3)) * rng.choice([-1, 1], size=(5, 3)))
    slope = jnp.float64(0.1)
    assert verify.check_vjp(leaky_relu, leaky_relu_reference, x, slope).ok
    assert verify.check_numerical(leaky_relu, x, slope).ok


def test_settings_are_passed_to_both_sides(rng):
    x = jnp.asarray(rng.normal(size=(3, 4)))
    assert verify.check_vjp(ops.softmax, reference.softmax, x, axis=0).ok
    # a rule that ignores the setting is caught
    assert not verify.check_vjp(lambda x, axis: ops.softmax(x), reference.softmax, x, axis=0).ok


def test_a_rule_that_raises_is_reported_not_crashed(rng):
    @jax.custom_vjp
    def broken(x):
        return x * 2

    broken.defvjp(lambda x: (broken(x), None), lambda _, g: (g.reshape(-1, 1),))
    result = verify.check_vjp(broken, lambda x: x * 2, jnp.ones((2, 3)))
    assert not result.ok and result.error
    assert "error:" in str(result)


def test_numerical_check_does_not_leak_the_x64_flag(rng):
    x = np.asarray(rng.normal(size=(4,)), np.float32)
    with jax.enable_x64(False):
        result = verify.check_numerical(ops.tanh, x)
        assert not jax.config.jax_enable_x64
    assert result.ok and result.dtype == "float64"


def test_tolerances_follow_the_dtype(rng):
    x = jnp.asarray(rng.normal(size=(8,)))
    assert verify.check_vjp(ops.tanh, reference.tanh, x).dtype == "float64"
    assert verify.TOLERANCES["float64"].rtol < verify.TOLERANCES["float32"].rtol < verify.TOLERANCES["bfloat16"].rtol
    # a 1e-6 relative error fails in float64 and passes in float32
    off = lambda x: reference.tanh(x) * (1 + 1e-6)
    assert not verify.check_vjp(off, reference.tanh, x).ok
    assert verify.check_vjp(off, reference.tanh, x.astype(jnp.float32)).ok


def test_integer_arguments_are_held_fixed(rng):
    result = verify.check_vjp(ops.softmax_cross_entropy, reference.softmax_cross_entropy,
                              jnp.asarray(rng.normal(size=(3, 4))), jnp.array([0, 3, 1]))
    assert result.ok and [r.name for r in result.arguments] == ["logits"]
