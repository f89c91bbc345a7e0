"""`find_nonfinite`: the first operation, forward or backward, whose value becomes NaN/inf."""

import inspect

import equinox as eqx
import flax.linen as fnn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from jaxcnn.ops._rule import custom_rule
from jaxcnn.verify import find_nonfinite
from jaxcnn.verify._nans import NonFiniteReport


def _here(obj, offset):
    """``file:line`` of the line ``offset`` lines below the ``def`` or ``class`` line of ``obj``."""
    return f"{__file__}:{inspect.getsourcelines(obj)[1] + offset}"


def test_a_finite_program_gives_none():
    @jax.custom_vjp
    def square(x):
        return x * x

    square.defvjp(lambda x: (x * x, x), lambda x, g: (2 * x * g,))
    loss = lambda x: jnp.sum(jnp.tanh(square(x)) + jnp.where(x > 0, jnp.sqrt(jnp.abs(x) + 1), 0.0))  # noqa: E731
    assert find_nonfinite(loss, jnp.array([-1.0, 0.5, 2.0])) is None


def test_forward_log_of_zero_is_named_with_its_line():
    def loss(x):
        y = x - x.max()
        return jnp.sum(jnp.log(y))

    report = find_nonfinite(loss, jnp.array([3.0, 1.0, 2.0]))
    assert isinstance(report, NonFiniteReport)
    assert (report.phase, report.primitive, report.source) == ("forward", "log", _here(loss, 2))
    assert "log(0.0) = -inf at [0]" in report.message and "-inf" in str(report)


def test_a_non_finite_argument_is_named_as_the_input():
    report = find_nonfinite(lambda p: jnp.sum(p["w"] ** 2), {"w": jnp.array([1.0, jnp.nan])})
    assert (report.phase, report.primitive) == ("forward", "input")
    assert "args[0]['w']" in report.message and "1 of 2" in report.message


def test_backward_only_nan_is_named_at_the_sqrt():
    def loss(x):
        centred = x - x.min()
        return jnp.sum(jnp.sqrt(centred) * 2.0)

    x = jnp.array([1.0, 2.0, 4.0])
    assert bool(jnp.isfinite(loss(x))) and not bool(jnp.isfinite(jax.grad(loss)(x)).all())
    report = find_nonfinite(loss, x)
    assert (report.phase, report.primitive, report.source) == ("backward", "sqrt", _here(loss, 2))
    assert "becomes inf at [0]" in report.message and "inputs 0.0" in report.message


def test_the_where_trap_names_the_masked_branch():
    def loss(x):
        return jnp.sum(jnp.where(x > 0, jnp.sqrt(x), 0.0))

    report = find_nonfinite(loss, jnp.array([0.0, 1.0]))
    assert (report.phase, report.primitive, report.source) == ("backward", "sqrt", _here(loss, 1))
    assert "becomes nan" in report.message and "incoming cotangent 0.0" in report.message


@jax.custom_vjp
def _sine(x):
    return jnp.sin(x)


def _sine_fwd(x):
    return jnp.sin(x), x


def _sine_bwd(x, g):
    return (g * jnp.cos(x) / x,)  # wrong: divides by x


_sine.defvjp(_sine_fwd, _sine_bwd)


def test_a_custom_vjp_bwd_dividing_by_zero_is_named_inside_the_bwd():
    loss = jax.jit(lambda x: jnp.sum(_sine(x - 1.0)))
    x = jnp.array([1.0, 2.0])
    report = find_nonfinite(loss, x)
    assert (report.phase, report.primitive, report.source) == ("backward", "div", _here(_sine_bwd, 1))
    assert report.within[-1] == "its bwd _sine_bwd" and "custom_vjp _sine called at" in report.within[-2]
    assert "div(1.0, 0.0) = inf" in report.message


def _op_sine_bwd(x, g):
    return (g * jnp.cos(x) / x,)  # wrong: divides by x


def _op_log(x):
    return jnp.log(x)


_op_sine = custom_rule(jnp.sin).defvjp(lambda x: (jnp.sin(x), x), _op_sine_bwd)
_op_log_rule = custom_rule(_op_log).defvjp(lambda x: (jnp.log(x), x), lambda x, g: (g / x,))


def test_a_jaxcnn_op_bwd_dividing_by_zero_is_named_inside_the_bwd():
    report = find_nonfinite(jax.jit(lambda x: jnp.sum(_op_sine(x - 1.0))), jnp.array([1.0, 2.0]))
    assert (report.phase, report.primitive, report.source) == ("backward", "div", _here(_op_sine_bwd, 1))
    assert report.within[-1] == "its bwd _op_sine_bwd" and "jaxcnn op sin called at" in report.within[-2]
    assert "div(1.0, 0.0) = inf" in report.message


def test_a_nan_born_inside_a_jaxcnn_ops_primal_is_named_there():
    report = find_nonfinite(jax.jit(lambda x: jnp.sum(_op_log_rule(x - 1.0))), jnp.array([1.0, 2.0]))
    assert (report.phase, report.primitive, report.source) == ("forward", "log", _here(_op_log, 1))


def test_a_nan_born_in_a_scan_body_reports_the_iteration():
    def body(c, a):
        c = c - 1.0
        return c, jnp.log(c) * a

    report = find_nonfinite(lambda x: lax.scan(body, 2.5, x)[1].sum(), jnp.ones(4))
    assert (report.phase, report.primitive, report.source) == ("forward", "log", _here(body, 2))
    assert report.within == ("scan iteration 2",) and "log(-0.5) = nan" in report.message


def test_a_backward_nan_in_a_scan_body_reports_the_iteration():
    def body(c, a):
        c = c - a
        return c, jnp.sqrt(c)

    loss = lambda x: lax.scan(body, 3.0, x)[1].sum()  # noqa: E731
    x = jnp.array([1.0, 1.0, 1.0, 0.0])  # the carry is 0 from iteration 2 on; the backward meets iteration 3 first
    report = find_nonfinite(loss, x)
    assert (report.phase, report.primitive, report.source) == ("backward", "sqrt", _here(body, 2))
    assert report.within == ("scan iteration 3",)


def test_while_and_cond_bodies_are_searched():
    def body(c):
        i, v = c
        v = lax.cond(i == 3, lambda v: v / (v - v), lambda v: v + 1.0, v)
        return i + 1, v

    loss = lambda x: lax.while_loop(lambda c: c[0] < 5, body, (0, x))[1]  # noqa: E731
    report = find_nonfinite(loss, 1.0)
    assert (report.phase, report.primitive, report.source) == ("forward", "div", _here(body, 2))
    assert report.within == ("while iteration 3", "cond branch 1")


class _Block(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return jnp.log(fnn.Dense(3)(x))


class _Model(fnn.Module):
    @fnn.compact
    def __call__(self, x):
        return _Block(name="block")(fnn.relu(fnn.Dense(4)(x)))


def test_a_flax_module_path_is_reported():
    model, x = _Model(), jnp.ones((2, 5))
    params = model.init(jax.random.PRNGKey(0), x)
    report = find_nonfinite(lambda p: jnp.sum(model.apply(p, x)), params)
    assert (report.phase, report.primitive, report.path) == ("forward", "log", "_Model/block")
    assert report.source == _here(_Block, 3) and "layer path: _Model/block" in str(report)


@pytest.mark.parametrize("bad", [False, True])
def test_report_str_is_a_few_lines(bad):
    report = find_nonfinite(lambda x: jnp.sum(jnp.log(x)), jnp.array([1.0, 0.0 if bad else 2.0]))
    assert (report is None) is not bad
    if bad:
        assert str(report).splitlines()[0].startswith("non-finite value born in the forward pass: log at ")


def test_an_equinox_module_with_static_leaves_and_its_path():
    model = eqx.nn.Sequential([eqx.nn.Linear(5, 4, key=jax.random.PRNGKey(0)), eqx.nn.Lambda(jnp.log)])
    report = find_nonfinite(lambda m, x: jnp.sum(jax.vmap(m)(x)), model, jnp.ones((3, 5)))
    assert (report.phase, report.primitive, report.path) == ("forward", "log", "eqx.nn.Sequential")
    assert report.within == ("under vmap",)


def test_a_train_step_names_a_nan_of_its_own_gradient_under_jvp():
    def loss(w, x):
        return jnp.sum(jnp.sqrt(x * w))

    def step(w, x):
        return w - 0.1 * jax.grad(loss)(w, x)

    report = find_nonfinite(step, jnp.array([0.0, 1.0]), jnp.ones(2))  # the derivative of sqrt at 0 is inf
    assert (report.phase, report.primitive, report.source) == ("forward", "div", _here(loss, 1))
    assert report.within == ("under jvp",) and "div(0.5, 0.0) = inf" in report.message


@jax.custom_jvp
def _sine_jvp(x):
    return jnp.sin(x)


_sine_jvp.defjvps(lambda t, ans, x: t * jnp.cos(x) / x)  # wrong: divides by x


def test_a_custom_jvp_rule_under_remat_is_named_by_its_function():
    def loss(x):
        return jnp.sum(jax.checkpoint(_sine_jvp)(x))

    report = find_nonfinite(loss, jnp.array([0.0, 1.0]))
    assert (report.phase, report.primitive, report.source) == ("backward", "custom_jvp_call[_sine_jvp]", _here(loss, 1))
    assert "becomes inf at [0]" in report.message


def test_a_masked_forward_inf_is_noted_in_the_backward_report():
    def loss(x):
        return jnp.sum(jnp.where(x > 0, jnp.log(x), 0.0))  # log(0) = -inf, masked; its VJP is 0/0

    report = find_nonfinite(loss, jnp.array([0.0, 1.0]))
    assert (report.phase, report.primitive, report.source) == ("backward", "log", _here(loss, 1))
    assert f"the forward had already made log non-finite at {_here(loss, 1)}" in report.message
