"""The gradient checker itself: it must pass right rules, catch wrong ones, and say where."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops, reference, verify
from jaxcnn.verify._report import TOLERANCES


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
    assert TOLERANCES["float64"].rtol < TOLERANCES["float32"].rtol < TOLERANCES["bfloat16"].rtol
    # a 1e-6 relative error fails in float64 and passes in float32
    def off(x):
        return reference.tanh(x) * (1 + 1e-6)
    assert not verify.check_vjp(off, reference.tanh, x).ok
    assert verify.check_vjp(off, reference.tanh, x.astype(jnp.float32)).ok


def test_integer_arguments_are_held_fixed(rng):
    result = verify.check_vjp(ops.softmax_cross_entropy, reference.softmax_cross_entropy,
                              jnp.asarray(rng.normal(size=(3, 4))), jnp.array([0, 3, 1]))
    assert result.ok and [r.name for r in result.arguments] == ["logits"]


# --------------------------------------------------------------------------- the custom_vjp contract


def _with_bwd(bwd, fwd_out=None):
    """sigmoid with the given backward (and, optionally, a fwd whose output differs)."""

    @jax.custom_vjp
    def f(x):
        return jax.nn.sigmoid(x)

    f.defvjp(lambda x: (f(x) if fwd_out is None else fwd_out(x), jax.nn.sigmoid(x)), bwd)
    return f


def test_contract_holds_for_every_op_and_names_each_broken_clause(rng):
    x = jnp.asarray(rng.normal(size=(3, 4)))
    right = lambda y, g: (g * y * (1 - y),)  # noqa: E731
    assert verify.check_contract(_with_bwd(right), x).ok
    cases = {
        "fwd = primal": _with_bwd(right, fwd_out=lambda x: jax.nn.sigmoid(x) + 1e-3),
        "vjp(0) = 0": _with_bwd(lambda y, g: (g * y * (1 - y) + 1e-3,)),
        "linear in g": _with_bwd(lambda y, g: (g * g * y,)),
        "shape/dtype": _with_bwd(lambda y, g: ((g * y * (1 - y)).astype(jnp.float32),)),
    }
    for what, op in cases.items():
        result = verify.check_contract(op, x)
        failed = result.failures()
        assert not result.ok and [r.what for r in failed] == [what], result
        assert what in str(result)
    assert "float32[3, 4], the primal is float64[3, 4]" in str(verify.check_contract(cases["shape/dtype"], x))


def test_contract_reports_a_wrong_number_of_cotangents_as_an_error():
    @jax.custom_vjp
    def f(x, y):
        return x * y

    f.defvjp(lambda x, y: (f(x, y), (x, y)), lambda res, g: (g * res[1],))
    result = verify.check_contract(f, jnp.ones(3), jnp.ones(3))
    assert not result.ok and "error:" in str(result)


# --------------------------------------------------------------------------- transforms


def test_every_transform_passes_a_right_rule_with_weights_and_labels(rng):
    x, w, b = (jnp.asarray(rng.normal(size=s)) for s in ((4, 3), (5, 3), (5,)))
    forward_mode = set(verify.checks.FORWARD_MODE)  # ops.dense has no hand JVP here: checked on plain autodiff
    for transform in set(verify.TRANSFORMS) - {"sharding"} - forward_mode:
        assert verify.check_transform(transform, ops.dense, reference.dense, x, w, b).ok, transform
    for transform in forward_mode:
        assert verify.check_transform(transform, reference.dense, reference.dense, x, w, b).ok, transform
    logits, labels = jnp.asarray(rng.normal(size=(4, 3))), jnp.array([0, 2, 1, 1])
    ce = (ops.softmax_cross_entropy, reference.softmax_cross_entropy)
    assert verify.check_transform("vmap", *ce, logits, labels, batched=(0, 1)).ok
    assert verify.check_transform("grad-of-grad", *ce, logits, labels).ok


def test_vmap_compares_per_example_gradients_of_the_shared_weights(rng):
    x, w = jnp.asarray(rng.normal(size=(4, 3))), jnp.asarray(rng.normal(size=(5, 3)))
    result = verify.check_transform("vmap", ops.dense, reference.dense, x, w)
    assert result["x"].shape == (3, 4, 3) and result["w"].shape == (3, 5, 3)  # a batch of 3 examples
    assert "loop over examples" in str(result)


def test_grad_of_grad_catches_a_backward_that_is_right_only_to_first_order(rng):
    x = jnp.asarray(rng.normal(size=(6,)))
    frozen = _with_bwd(lambda y, g: (g * jax.lax.stop_gradient(y * (1 - y)),))  # no second derivative
    assert verify.check_transform("eager", frozen, reference.sigmoid, x).ok
    assert verify.check_transform("finite differences", frozen, reference.sigmoid, x).ok
    result = verify.check_transform("grad-of-grad", frozen, reference.sigmoid, x)
    assert result.forward.ok and not result["x"].ok


def test_eager_jit_and_checkpoint_share_one_expected_side(rng):
    # the reference is traced for its output's type and for one compiled program (its forward and
    # every cotangent's pullback), not once per transform;
    # a wrong rule is still caught under each transform against that shared side (the probes
    # beyond the sample, eager's own program, are left out here)
    traced = []

    def counted_reference(x, w):
        traced.append(1)
        return reference.dense(x, w)

    x, w = rng.standard_normal((3, 4)), rng.standard_normal((2, 4))
    for transform in ("eager", "jit", "checkpoint"):
        verify.check_transform(transform, ops.dense, counted_reference, x, w, probe=False).assert_ok()
    assert len(traced) == 2
    wrong = jax.custom_vjp(lambda x, w: ops.dense(x, w))
    wrong.defvjp(lambda x, w: (ops.dense(x, w), (x, w)), lambda res, g: (g @ res[1], 2 * g.T @ res[0]))
    for transform in ("eager", "jit", "checkpoint"):
        result = verify.check_transform(transform, wrong, counted_reference, x, w, probe=False)
        assert result["x"].ok and not result["w"].ok, transform
    assert len(traced) == 2


def test_transform_errors():
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"unknown `transform` 'pmap'; use one of contract, eager"):
        verify.check_transform("pmap", ops.relu, reference.relu, x)
    if jax.device_count() == 1:
        with pytest.raises(ValueError, match=r"'sharding' needs more than one device \(have 1\)"):
            verify.check_transform("sharding", ops.relu, reference.relu, x)


# --------------------------------------------------------------------------- beyond the sample


def _swish(backward):
    """Swish with the backward ``backward(x, g)`` (the right one: ``g · swish'(x)``)."""
    @jax.custom_vjp
    def f(x):
        return x * jax.nn.sigmoid(x)

    f.defvjp(lambda x: (f(x), x), backward)
    return f


def _swish_derivative(x):
    s = jax.nn.sigmoid(x)
    return s + x * s * (1 - s)


def _swish_reference(x):
    return x * jax.nn.sigmoid(x)


# wrong only where the samples do not look: for |x| > 5 (an approximated region), and for
# cotangents beyond ±10 (clipped: the loss-scaling range)
FAR_WRONG = _swish(lambda x, g: (g * jnp.where(jnp.abs(x) > 5, 0.5, 1.0) * _swish_derivative(x),))
CLIPPED = _swish(lambda x, g: (jnp.clip(g, -10, 10) * _swish_derivative(x),))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_rules_wrong_only_beyond_the_sample_are_caught_by_the_probes(rng, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(rng.normal(size=(3, 4)), dtype)  # |x| < 5, cotangents standard normal
        right = verify.check_vjp(_swish(lambda x, g: (g * _swish_derivative(x),)), _swish_reference, x)
        assert right.ok and not right.notes, str(right)
        for op, probe in ((FAR_WRONG, "inputs"), (CLIPPED, "cotangent")):
            assert verify.check_vjp(op, _swish_reference, x, probe=False).ok  # at the sample it is right
            result = verify.check_vjp(op, _swish_reference, x)
            assert not result.ok and result.forward.ok, str(result)
            assert result["x"].probe[0] == probe and f"x [{probe} ×" in str(result), str(result)


def test_the_cotangent_probes_scale_the_tolerance_with_the_cotangent(rng):
    # a rule off by a relative 1e-3 fails at every scale, one off by 1e-6 (float32 rounding) at none
    x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    for error, ok in ((1e-3, False), (1e-6, True)):
        op = _swish(lambda x, g, e=error: (g * _swish_derivative(x) * (1 + e),))
        result = verify.check_vjp(op, _swish_reference, x)
        assert result.ok == ok, str(result)
    # the clipped rule's report at ×16384 is the sample's scale: divided by the factor
    report = verify.check_vjp(CLIPPED, _swish_reference, x)["x"]
    assert report.probe == ("cotangent", 2.0 ** 14) and abs(report.expected) < 10, report


def test_the_probes_keep_the_domain(rng):
    # exp overflows float32 at inputs ×1024: that scale is skipped and said, the others compared
    x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    exp = jax.custom_vjp(jnp.exp)
    exp.defvjp(lambda x: (jnp.exp(x), jnp.exp(x)), lambda y, g: (g * y,))
    result = verify.check_vjp(exp, lambda x: jnp.e ** x, x)
    assert result.ok and result.notes == ("inputs ×1024 skipped: the reference is not finite there "
                                          "(outside the op's domain)",), str(result)
    # a reference that loses its precision out there (float32 overflows in (1 + e^{-2x})²) is not
    # held against the rule: it is judged against the reference in float64 there, and says so
    naive = verify.check_vjp(ops.tanh, lambda x: (1 - jnp.exp(-2 * x)) / (1 + jnp.exp(-2 * x)),
                             jnp.array([-2.0, -0.5, 0.7, 1.5], jnp.float32))  # at ×16: e^{64}, squared
    assert naive.ok and "inputs ×16: compared with the reference in float64" in naive.notes[0], str(naive)
    # inputs shrunk ×1/1024: a normalisation's gradient, and its rounding, grow ×1024 (two features,
    # no eps: the exact gradient is 0, both sides are float32 noise of the 1/σ terms)
    from jaxcnn._certify import runner

    assert runner.check_sample("layer_norm", 3, "float32", "eager").ok
    # probability labels (one sign) keep their values, the logits are scaled: the rule p − t holds
    logits, labels = rng.normal(size=(4, 5)), rng.dirichlet(np.ones(5), size=4)
    result = verify.check_vjp(ops.softmax_cross_entropy, reference.softmax_cross_entropy, logits, labels)
    assert result.ok and not result.notes, str(result)
    # nothing takes both signs: nothing scaled, said so
    result = verify.check_vjp(ops.softmax_cross_entropy, reference.softmax_cross_entropy, np.abs(logits), labels)
    assert result.ok and "inputs not scaled" in result.notes[0], str(result)


def test_the_diagnosis_beyond_the_sample(rng):
    x = jnp.asarray(rng.normal(size=(3, 4)))
    assert verify.diagnose(FAR_WRONG, _swish_reference, x).verdict == "agree"  # at the sample
    far = verify.diagnose(FAR_WRONG, _swish_reference, x, probe=("inputs", 16.0))
    assert far.verdict == "rule wrong" and "at the sample's inputs ×16" in str(far), str(far)
    clipped = verify.diagnose(CLIPPED, _swish_reference, x, probe=("cotangent", 2.0 ** 14))
    assert clipped.verdict == "rule wrong" and abs(clipped["x"].worst[0].rule) <= 10 * 1.1, str(clipped)


# --------------------------------------------------------------------------- the three-way verdict


def test_verdict_rule_wrong_names_the_argument_and_element(rng):
    x = jnp.asarray(rng.normal(size=(3, 4)))
    d = verify.diagnose(_one_wrong_element((2, 1)), reference.sigmoid, x)
    assert d.verdict == "rule wrong" and d["x"].worst[0].index == (2, 1)
    e = d["x"].worst[0]
    assert e.rule == pytest.approx(2 * e.autodiff) and e.central == pytest.approx(e.autodiff, rel=1e-6)


def _sine(frequency):
    @jax.custom_vjp
    def f(x):
        return jnp.sin(frequency * x)

    f.defvjp(lambda x: (f(x), x), lambda x, g: (g * frequency * jnp.cos(frequency * x),))
    return f, lambda x: jnp.sin(frequency * x)


@pytest.mark.parametrize("step", [1e-5, 1e-3, 1e-13])  # curvature, far too large a step, rounding
def test_verdict_finite_differences_untrustworthy(step):
    x = jnp.array([0.1, 0.2, 0.3])
    op, ref = _sine(3e3)
    assert not verify.check_numerical(op, x, step=step).ok
    assert verify.diagnose(op, ref, x, step=step).verdict == "finite differences untrustworthy"


def test_verdict_non_smooth_point_at_a_kink():
    x = jnp.array([-1.0, 0.0, 2.0])
    d = verify.diagnose(ops.relu, reference.relu, x)
    assert d.verdict == "non-smooth point" and d["x"].worst[0].index == (1,)
    e = d["x"].worst[0]
    assert e.rule == e.autodiff and abs(e.forward - e.backward) > 0.1 * abs(e.rule)
    # against a reference with the other convention (0 at 0) the three values all differ: still a kink
    assert verify.diagnose(ops.relu, lambda x: jnp.where(x > 0, x, 0.0), x)["x"].verdict == "non-smooth point"


def _tie_routed(first, second):
    """Max over one 2×2 window whose two tied maxima get ``first`` and ``second`` times δ."""
    @jax.custom_vjp
    def f(x):
        return ops.max_pool(x, window=2)

    weights = jnp.array([first, second, 0.0, 0.0]).reshape(1, 2, 2, 1)
    f.defvjp(lambda x: (f(x), None), lambda _, g: (g * weights,))
    return f


@pytest.mark.parametrize("first, second, verdict", [
    (1.0, 0.0, "non-smooth point"),  # the first maximum: jaxcnn's convention
    (0.5, 0.5, "non-smooth point"),  # an even split: also a subgradient
    (1.0, 1.0, "rule wrong"),  # every maximum: the weights sum to 2, jointly wrong
    (1.5, -0.5, "rule wrong"),  # sums to 1, but -0.5 is outside the one-sided slopes
])
def test_verdict_a_tie_is_judged_jointly(first, second, verdict):
    x = jnp.array([1.0, 1.0, 0.2, -0.3]).reshape(1, 2, 2, 1)
    d = verify.diagnose(_tie_routed(first, second), lambda x: reference.max_pool(x, window=2), x)
    assert d.verdict == verdict, str(d)


def _batching_wrong():
    """Swish whose backward pairs each example's cotangent with another's input under vmap."""
    @jax.custom_batching.custom_vmap
    def backward(x, g):
        return g * _swish_derivative(x)

    backward.def_vmap(lambda size, batched, x, g: (g[::-1] * _swish_derivative(x), True))
    return _swish(lambda x, g: (backward(x, g),))


def test_verdict_a_failure_only_under_a_transform_is_explained(rng):
    from jaxcnn._certify import runner

    registry = verify.Registry()
    registry.register("swish", _batching_wrong(), _swish_reference, [verify.Sample((rng.normal(size=(3, 4)),))])
    records = runner.run(module=registry, dtypes=("float32",), transforms=("eager", "jit", "vmap"))
    assert [(r.transform, r.ok) for r in records] == [("eager", True), ("jit", True), ("vmap", False)]
    d = records[-1].diagnosis
    assert d.verdict == "fails only under vmap" and "its batching is wrong" in d.explanation, str(d)
    assert "verdict: fails only under vmap: the rule is right at the sample" in str(records[-1])


def test_verdict_a_rule_that_raises_says_so(rng):
    def raises(x):
        raise ValueError("bad window\nsecond line")

    d = verify.diagnose(raises, reference.relu, rng.normal(size=3))
    assert d.verdict == "the rule raised" and d.error == "ValueError: bad window", str(d)
    assert str(d) == "raises: verdict: the rule raised: ValueError: bad window"
    d = verify.diagnose(ops.relu, lambda x: x.undefined, rng.normal(size=3))
    assert d.verdict == "the reference raised" and "AttributeError" in d.error, str(d)


def test_verdict_agree_and_projections_for_large_arguments(rng):
    x = jnp.asarray(rng.normal(size=(30, 30)))
    assert verify.diagnose(ops.tanh, reference.tanh, x, elementwise_max=100).verdict == "agree"
    wrong = verify.diagnose(_one_wrong_element((7, 9)), reference.sigmoid, x, elementwise_max=100)
    assert wrong.verdict == "rule wrong" and wrong["x"].worst[0].index[0] == "direction"


# --------------------------------------------------------------------------- the public surface


def test_the_public_checker_is_a_dozen_names_and_the_audits_entry_points():
    assert sorted(verify.__all__) == sorted([
        "TRANSFORMS", "CheckResult", "Diagnosis", "GradientMismatch", "Registry", "Sample", "check_adjoint",
        "check_contract",
        "check_jvp", "check_numerical", "check_transform", "check_vjp", "diagnose",
        "audit", "AuditReport", "Finding", "find_nonfinite"])  # the audit of a whole program (issue 32)
    assert all(hasattr(verify, name) for name in verify.__all__)


def test_compiled_expected_sides_are_kept_for_a_bounded_number_of_functions(rng):
    from jaxcnn.verify import _core

    x = rng.standard_normal(3)
    functions = [lambda x, k=k: x * k for k in range(40)]
    for f in functions:
        verify.check_vjp(f, f, x).assert_ok()
    assert _core._compiled.cache_info().currsize <= 16  # by identity, never by the arguments' values


def test_an_argument_named_like_the_output_is_an_argument(rng):
    def loss(outputs, targets):
        return jnp.sum((outputs - targets) ** 2)

    result = verify.check_vjp(loss, loss, jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=3)))
    assert [r.name for r in result.arguments] == ["outputs", "targets"] and result.forward.name == "output"


# --- jaxcnn verify's compiler configurations (jaxcnn._certify.compilation) ---


def test_every_flag_set_runs_on_this_jaxlib_and_an_unknown_flag_is_an_error_not_a_crash():
    from jaxcnn._certify import compilation

    compilation.check_flags([f for flags in compilation.FLAG_SETS.values() for f in flags])
    with pytest.raises(ValueError, match=r"--compilers mine: this jaxlib \(.*\) does not run with XLA_FLAGS=.*"
                                         r"Unknown flag in XLA_FLAGS: --xla_cpu_no_such_flag=1"):
        compilation.check_flags(["--xla_cpu_no_such_flag=1"], "mine")


def test_flags_the_user_set_are_kept_and_not_added_twice():
    from jaxcnn._certify import compilation

    assert compilation.with_flags(compilation.FAST_COMPILE_FLAGS, "--xla_backend_optimization_level=2") == (
        "--xla_backend_optimization_level=2 --xla_cpu_use_fusion_emitters=false")


# --------------------------------------------------------------------------- forward mode


def _rule(fun, jvp, bwd=None):
    """A toy hand rule (jaxcnn.ops._rule.custom_rule): ``bwd`` defaults to autodiff of ``fun``."""
    from jaxcnn.ops._rule import custom_rule

    rule = custom_rule(fun)
    rule.defvjp(lambda *a: (fun(*a), a), bwd or (lambda a, g: tuple(jax.vjp(fun, *a)[1](g))))
    return rule.defjvp(jvp)


def _scaled_product(x, w):
    return jnp.sin(x) * w


def _product_jvp(primals, tangents):
    (x, w), (tx, tw) = primals, tangents
    return _scaled_product(x, w), jnp.cos(x) * w * tx + jnp.sin(x) * tw


def test_the_adjoint_identity_holds_for_right_rules_and_scales_with_their_magnitude(rng):
    x, w = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    right = _rule(_scaled_product, _product_jvp)
    for dtype in (jnp.float32, jnp.bfloat16):
        assert verify.check_adjoint(right, x.astype(dtype), w.astype(dtype)).ok, dtype
    assert verify.check_adjoint(ops.relu, jnp.asarray(x, jnp.float32)).ok
    # a million times larger: the tolerance is relative to |J ṫ| |g|, not absolute
    huge = _rule(lambda x: 1e6 * jnp.tanh(x),
                 lambda p, t: (1e6 * jnp.tanh(p[0]), 1e6 * (1 - jnp.tanh(p[0]) ** 2) * t[0]))
    result = verify.check_adjoint(huge, jnp.asarray(rng.normal(size=(64, 64)), jnp.float32))
    assert result.ok and result["x"].max_abs_error > 0, str(result)


def test_the_adjoint_identity_blames_the_argument_whose_tangent_is_wrong(rng):
    x, w = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))

    def without_w_term(primals, tangents):
        (x, w), (tx, _) = primals, tangents
        return _scaled_product(x, w), jnp.cos(x) * w * tx

    def slightly_off(primals, tangents):
        out, t = _product_jvp(primals, tangents)
        return out, t * (1 + 1e-6)

    result = verify.check_adjoint(_rule(_scaled_product, without_w_term), x, w)
    assert not result.ok and result["x"].ok and not result["w"].ok, str(result)
    assert result["w"].index[0] == "pair" and result["w"].rule == 0.0
    text = str(result)
    assert "adjoint identity" in text and "⟨ṫ, Jᵀ g⟩" in text and "MISMATCH at [pair" in text
    with jax.enable_x64(True):  # a relative error of 1e-6: caught in float64, within float32's rounding
        assert not verify.check_adjoint(_rule(_scaled_product, slightly_off), x, w).ok
    assert verify.check_adjoint(_rule(_scaled_product, slightly_off), x.astype(np.float32), w.astype(np.float32)).ok


def _without_hand_jvp(monkeypatch, op):
    """jaxcnn's ``op`` as if its hand JVP were missing (its custom_rule's ``jvp`` unset)."""
    from jaxcnn.ops import _activations

    monkeypatch.setattr(getattr(_activations, f"_{op}").__wrapped__, "jvp", None)
    jax.clear_caches()


def test_the_adjoint_identity_reports_a_function_without_forward_mode_as_an_error(rng, monkeypatch):
    result = verify.check_adjoint(_one_wrong_element(0), jnp.asarray(rng.normal(size=3)))
    assert not result.ok and "custom_vjp" in result.error
    _without_hand_jvp(monkeypatch, "tanh")
    result = verify.check_adjoint(ops.tanh, jnp.ones((2, 3)))  # a jaxcnn op without a hand JVP
    assert not result.ok and "has no forward-mode rule" in result.error


def test_forward_mode_under_vmap_and_of_the_gradient_checks_the_jvp_and_the_vjps_own_derivative(rng):
    x, w = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    reference_ = _scaled_product
    right = _rule(_scaled_product, _product_jvp)
    for transform in ("jvp", "adjoint", "jvp vmap", "jvp-of-grad"):
        assert verify.check_transform(transform, right, reference_, x, w).ok, transform
    result = verify.check_transform("jvp vmap", right, reference_, x, w)
    assert result["x"].shape == (3, 3, 4) and "loop over examples" in str(result)

    def first_order_only(a, g):  # right VJP, but its own derivative misses cos(x)'s
        x, w = a
        x = jax.lax.stop_gradient(x)
        return g * jnp.cos(x) * w, g * jnp.sin(x)

    frozen = _rule(_scaled_product, _product_jvp, bwd=first_order_only)
    assert verify.check_transform("jvp", frozen, reference_, x, w).ok
    assert verify.check_transform("adjoint", frozen, reference_, x, w).ok
    hvp = verify.check_transform("jvp-of-grad", frozen, reference_, x, w)
    assert not hvp.ok and not hvp["x"].ok and hvp["w"].ok, str(hvp)
    wrong = _rule(_scaled_product, lambda p, t: (_scaled_product(*p), 2 * _product_jvp(p, t)[1]))
    assert not verify.check_transform("jvp vmap", wrong, reference_, x, w).ok


def test_jaxcnn_verify_checks_every_ops_forward_rules_and_fails_an_op_without_them(monkeypatch):
    from jaxcnn._certify import display, runner

    _without_hand_jvp(monkeypatch, "tanh")

    units = runner.plan(["relu", "tanh"])
    planned = {(u.name, dtype, t) for u in units for dtype, t in u.checks}
    forward = {("float64", "jvp"), ("float64", "jvp finite differences"), ("float64", "adjoint"),
               ("float32", "jvp"), ("float32", "adjoint"), ("float32", "jvp vmap"), ("float32", "jvp-of-grad")}
    assert all((op, *check) in planned for op in ("relu", "tanh") for check in forward)
    records = runner.run(units=[runner.Unit(u.name, u.index, tuple(c for c in u.checks if c[1] == "adjoint"))
                                for u in units if u.index == 0])
    by_op = {r.op: r for r in records if r.dtype == "float32"}
    assert by_op["relu"].ok, str(by_op["relu"])
    assert not by_op["tanh"].ok and "has no forward-mode rule" in by_op["tanh"].result.error  # never skipped
    table = display.format_table(records)
    relu_row, tanh_row = (next(line.split() for line in table.splitlines() if line.startswith(op))
                          for op in ("relu", "tanh"))
    assert table.split()[:9] == ["op", "checks", "worst", "abs", "(where)", "worst", "rel", "(where)", "forward"]
    assert relu_row[-2:] == ["ok", "ok"] and tanh_row[-4:] == ["2", "FAILED", "2", "FAILED"]


def test_the_adjoint_identity_agrees_on_nan_by_design_and_fails_a_nan_on_one_side():
    from jaxcnn.ops import _rule

    def nan_rule(jvp_nan, vjp_nan):
        @_rule.custom_rule
        def f(x):
            return x * 2.0

        f.defvjp(lambda x: (f(x), None), lambda _, g: (g * (jnp.nan if vjp_nan else 2.0),))
        f.defjvp(lambda p, t: (f(p[0]), t[0] * (jnp.nan if jvp_nan else 2.0)))
        return f

    x = jnp.arange(3.0)
    assert verify.check_adjoint(nan_rule(True, True), x).ok  # a NaN-by-design sample: both sides NaN
    assert not verify.check_adjoint(nan_rule(True, False), x).ok
    assert not verify.check_adjoint(nan_rule(False, True), x).ok
    assert verify.check_adjoint(nan_rule(False, False), x).ok


@pytest.mark.parametrize("transform", ["jvp", "adjoint", "jvp finite differences"])
def test_forward_checks_pass_an_op_with_an_integer_output_beside_its_values(rng, transform):
    # max pools with return_indices: the indices' tangent is float0, there is nothing to compare
    x = jnp.asarray(rng.normal(size=(2, 9, 2)))
    result = verify.check_transform(transform, ops.adaptive_max_pool, reference.adaptive_max_pool, x, output_size=4,
                                    return_indices=True)
    assert result.ok, str(result)
