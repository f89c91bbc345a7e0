import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import nn, ops, reference, verify
from jaxcnn._certify.registry import away_from_zero


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)])  # rank 2 is in the low-precision and kink tests below
def test_elementwise_gradients_all_transforms(rng, name, shape):
    x = jnp.asarray(away_from_zero(rng, *shape, low=0.05, high=3.0))
    opcheck.assert_all(name, x)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_gradients_all_transforms(rng, axis):
    x = jnp.asarray(rng.normal(size=(3, 5)) * 2)
    opcheck.assert_all("softmax", x, axis=axis)


def test_softmax_axis_1_of_a_matrix_is_the_program_of_axis_minus_1(rng):
    """So the check above of axis=-1 covers it, without compiling it all again."""
    x, g = jnp.asarray(rng.normal(size=(3, 5))), jnp.asarray(rng.normal(size=(3, 5)))
    for module in (ops, reference):
        programs = [str(jax.make_jaxpr(lambda x, g: jax.vjp(lambda v: module.softmax(v, axis=axis), x)[1](g))(x, g))
                    for axis in (1, -1)]
        assert programs[0] == programs[1]


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


def test_relu_derivative_at_zero_option_is_jax_flax_and_pytorchs_convention(rng):
    # torch.relu's backward is g·[x > 0] (threshold_backward), as jax.nn.relu's: 0 at x = 0.
    x = jnp.array([-1.0, 0.0, 0.0, 1.0])
    for module in (ops, reference):
        grad = jax.grad(lambda v: module.relu(v, derivative_at_zero=0.0).sum())(x)
        np.testing.assert_array_equal(grad, jax.grad(lambda v: jax.nn.relu(v).sum())(x))
    np.testing.assert_array_equal(ops.relu(x, derivative_at_zero=0.0), ops.relu(x))
    layer = nn.Relu(derivative_at_zero=0.0)
    np.testing.assert_array_equal(jax.grad(lambda v: layer.apply((), (), v)[0].sum())(x), [0.0, 0.0, 0.0, 1.0])
    np.testing.assert_array_equal(jax.grad(lambda v: nn.Relu().apply((), (), v)[0].sum())(x), [0.0, 1.0, 1.0, 1.0])
    opcheck.assert_all("relu", jnp.asarray(away_from_zero(rng, 3, 4)), derivative_at_zero=0.0)


def test_leaky_relu_is_torch_leaky_relu_and_its_kink_options(rng):
    x = away_from_zero(rng, 3, 4)
    np.testing.assert_allclose(ops.leaky_relu(x), np.where(x > 0, x, 0.01 * x), rtol=1e-15)
    np.testing.assert_allclose(ops.leaky_relu(x, 0.2), np.where(x > 0, x, 0.2 * x), rtol=1e-15)
    at_zero = jnp.array([-2.0, 0.0, 3.0])
    np.testing.assert_allclose(jax.grad(lambda v: ops.leaky_relu(v, 0.1).sum())(at_zero), [0.1, 1.0, 1.0])
    # torch: leaky_relu_backward is g if x > 0 else g·slope, so slope at 0
    np.testing.assert_allclose(
        jax.grad(lambda v: ops.leaky_relu(v, 0.1, derivative_at_zero=0.1).sum())(at_zero), [0.1, 0.1, 1.0])
    np.testing.assert_allclose(jax.grad(lambda v: jax.nn.leaky_relu(v, 0.1).sum())(at_zero), [0.1, 1.0, 1.0])
    opcheck.assert_all("leaky_relu", jnp.asarray(x), negative_slope=0.3)
    _, vjp = jax.vjp(ops.leaky_relu, jnp.asarray(x))
    assert [leaf.dtype for leaf in jax.tree_util.tree_leaves(vjp)] == [jnp.bool_]


def test_log_softmax_is_log_of_softmax_and_its_backward_formula(rng):
    x = rng.normal(size=(3, 5)) * 3
    y = ops.log_softmax(x)
    np.testing.assert_allclose(y, np.log(np.asarray(ops.softmax(x))), rtol=1e-12)
    g = rng.normal(size=(3, 5))
    dx = jax.vjp(ops.log_softmax, x)[1](g)[0]
    np.testing.assert_allclose(dx, g - np.exp(y) * g.sum(-1, keepdims=True), rtol=1e-12)
    assert np.isfinite(ops.log_softmax(jnp.array([0.0, 1e4]))).all()
    opcheck.assert_all("log_softmax", jnp.asarray(x), axis=0)
    opcheck.assert_vjp("log_softmax", jnp.asarray(x, jnp.bfloat16))


def test_relu_keeps_its_input_and_takes_the_mask_in_the_backward():
    # a stored mask costs a pass of its own in a jitted step (docs/performance.md, "ReLU's residual")
    x = jnp.ones((64, 64), jnp.float32)
    _, vjp = jax.vjp(ops.relu, x)
    leaves = jax.tree_util.tree_leaves(vjp)
    assert [(l.dtype, l.shape) for l in leaves] == [(jnp.float32, (64, 64))]


def test_sigmoid_and_tanh_backward_use_the_output():
    x = jnp.array([-2.0, 0.0, 0.7], jnp.float64)
    f = ops.sigmoid(x)
    np.testing.assert_allclose(jax.vjp(ops.sigmoid, x)[1](jnp.ones(3))[0], f * (1 - f), rtol=1e-15)
    t = ops.tanh(x)
    np.testing.assert_allclose(jax.vjp(ops.tanh, x)[1](jnp.ones(3))[0], 1 - t**2, rtol=1e-15)


#: XLA's own defaults for the flags the suite changes (conftest: fast compilation): the
#: float32 tanh tests check the rounding users get, so they compile as users do.
USERS_XLA_OPTIONS = {"xla_backend_optimization_level": 2, "xla_cpu_use_fusion_emitters": True}


def _as_users_compile(f):
    return lambda *args: jax.jit(f).lower(*args).compile(compiler_options=USERS_XLA_OPTIONS)(*args)


def test_tanh_float32_matches_tanh_to_a_few_ulp():
    # On the CPU, float32 tanh is XLA's rational approximation written out (it fuses at full
    # speed); it must stay as accurate as jnp.tanh over every magnitude, and map the specials.
    rng = np.random.default_rng(0)
    magnitudes = 10.0 ** rng.uniform(-35, 1.5, size=200_000)
    x = np.concatenate([magnitudes, -magnitudes, rng.uniform(-10, 10, 200_000), [8.5, 9.0, 1e4]]).astype(np.float32)
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    for f in (ops.tanh, reference.tanh):
        assert np.max(np.abs(np.asarray(_as_users_compile(f)(jnp.asarray(x)), np.float64) - exact) / ulp) <= 7
    specials = jnp.array([np.inf, -np.inf, 0.0, -0.0, 1e-37, -1e-37, np.nan], jnp.float32)
    y = np.asarray(_as_users_compile(ops.tanh)(specials))
    np.testing.assert_array_equal(y[:4], [1.0, -1.0, 0.0, -0.0])
    np.testing.assert_array_equal(np.signbit(y[:6]), [False, True, False, True, False, True])  # odd
    np.testing.assert_allclose(y[4:6], [1e-37, -1e-37], rtol=0, atol=3e-36)  # tiny: ±0 or x
    assert np.isnan(y[6])


def test_tanh_float32_never_exceeds_one_around_the_clamp():
    # Every float32 in [7, 10] (the rational's clamp and Eigen's old ±9 included) and a
    # stride through [0, 10): |tanh| <= 1 and the derivative 1 − f² >= 0, on both signs.
    exhaustive = np.arange(np.float32(7).view(np.int32), np.float32(10).view(np.int32), dtype=np.int32)
    strided = np.arange(0, np.float32(10).view(np.int32), 61, dtype=np.int32)
    x = np.concatenate([exhaustive, strided]).view(np.float32)
    for sign in (1, -1):
        y = np.asarray(_as_users_compile(ops.tanh)(jnp.asarray(sign * x)))
        assert np.max(np.abs(y)) <= 1.0
        assert np.min(1 - y * y) >= 0.0
    np.testing.assert_array_equal(_as_users_compile(ops.tanh)(jnp.array([8.5, 100.0, -9.0], jnp.float32)),
                                  [1.0, 1.0, -1.0])
    dx = _as_users_compile(jax.grad(lambda v: ops.tanh(v).sum()))(jnp.array([7.9, 8.2, 8.5, 9.0], jnp.float32))
    assert np.all(np.asarray(dx) >= 0)


def test_tanh_clamp_is_safe_with_and_without_fused_multiply_adds():
    # How XLA compiles Horner's rule (separate rounding, or fused multiply-adds) depends
    # on the machine: at the clamp both must round to at most 1.
    from jaxcnn import _xla_cpu

    def rational(z, fma):
        z2, f32, wide = np.float32(z * z), np.float32, np.float64
        p, q = (functools.reduce(
            lambda acc, c: f32(wide(acc) * wide(z2) + wide(c)) if fma else f32(f32(acc * z2) + f32(c)),
            coefficients[1:], f32(coefficients[0]))
            for coefficients in (_xla_cpu.TANH_NUMERATOR, _xla_cpu.TANH_DENOMINATOR))
        return f32(f32(z * p) / q)

    z = np.arange(np.float32(7.5).view(np.int32), np.float32(_xla_cpu.TANH_CLAMP).view(np.int32) + 1,
                  dtype=np.int32).view(np.float32)
    for fma in (False, True):
        assert rational(z, fma).max() <= 1.0


def test_tanh_method_is_an_explicit_policy(monkeypatch):
    # float32 on the CPU gets XLA's rational written out; the choice is tanh's `method` and
    # `platform`, never a guess deep inside the op: "auto" reads only the platform it is given.
    import re

    from jaxcnn import _xla_cpu

    x = jnp.linspace(-9.0, 9.0, 101, dtype=jnp.float32)

    def uses_rational(x=x, **options):
        return not re.search(r"stablehlo.tanh\b", jax.jit(lambda x: ops.tanh(x, **options)).lower(x).as_text())

    assert uses_rational(platform="cpu") and uses_rational(method="rational", platform="gpu")
    assert not uses_rational(platform="gpu") and not uses_rational(method="jnp", platform="cpu")
    np.testing.assert_array_equal(ops.tanh(x, method="rational"), jax.jit(_xla_cpu.tanh_rational)(x))
    np.testing.assert_array_equal(ops.tanh(x, method="jnp"), jax.jit(jnp.tanh)(x))
    x64 = x.astype(jnp.float64)
    assert not uses_rational(platform="cpu", x=x64)  # float64
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as if traced in a GPU process
    assert uses_rational(platform="cpu") and not uses_rational()
    with pytest.raises(ValueError, match=r"tanh: unknown `method` 'fast'; use one of 'auto', 'jnp', 'rational'"):
        ops.tanh(x, method="fast")
    with pytest.raises(ValueError, match=r"tanh: `method='rational'` is XLA's float32 approximation, got x of dtype "
                                         r"float64"):
        ops.tanh(x64, method="rational")
    with pytest.raises(TypeError, match=r"tanh: `platform` must be None or a platform name"):
        reference.tanh(x, platform=1)


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
    with pytest.raises(ValueError, match=r"relu: `derivative_at_zero` must be 1.0 .* or 0.0 .*, got 0.5"):
        ops.relu(jnp.ones(3), derivative_at_zero=0.5)
    with pytest.raises(ValueError, match=r"leaky_relu: `derivative_at_zero` must be 1.0 .* or negative_slope=0.2"):
        ops.leaky_relu(jnp.ones(3), 0.2, derivative_at_zero=0.0)
    with pytest.raises(TypeError, match=r"leaky_relu: `negative_slope` must be a number, got Array"):
        ops.leaky_relu(jnp.ones(3), jnp.float32(0.2))
    with pytest.raises(ValueError, match=r"log_softmax: `axis`=1 is out of range"):
        ops.log_softmax(jnp.ones(3), axis=1)


@pytest.mark.parametrize("op", [ops.leaky_relu, reference.leaky_relu])
@pytest.mark.parametrize("slope", [np.nan, np.inf, -np.inf, np.float32("nan")])
def test_leaky_relu_refuses_a_slope_that_is_not_finite(op, slope):
    # inf · x is −inf below 0 and NaN at 0; NaN is NaN: no model wants them, so they are refused at trace time
    with pytest.raises(ValueError, match=rf"leaky_relu: `negative_slope` must be a finite number, got {slope}"):
        op(jnp.ones(3), slope)


def test_activation_settings_accept_numpy_scalars_and_refuse_bools_and_tuples():
    x = jnp.array([-2.0, 0.0, 3.0])
    for module in (ops, reference):
        np.testing.assert_array_equal(module.leaky_relu(x, np.float32(0.25)), module.leaky_relu(x, 0.25))
        np.testing.assert_array_equal(jax.grad(lambda v: module.relu(v, derivative_at_zero=np.float64(0.0)).sum())(x),
                                      [0.0, 0.0, 1.0])
        np.testing.assert_array_equal(module.softmax(x, axis=np.int64(0)), module.softmax(x))
        with pytest.raises(TypeError, match=r"leaky_relu: `negative_slope` must be a number, got True \(bool\)"):
            module.leaky_relu(x, True)
        for name in ("softmax", "log_softmax"):
            with pytest.raises(TypeError, match=rf"{name}: `axis` must be one int \(a single axis\), got \(0,\)"):
                getattr(module, name)(x, axis=(0,))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_log_softmax_over_an_empty_axis_is_empty_as_softmax_and_pytorch(axis):
    # PyTorch's OpInfo sample (5, 0, 0): torch.log_softmax returns the empty tensor for every dim
    x = jnp.ones((5, 0, 0), jnp.float32)
    for module in (ops, reference):
        for name in ("softmax", "log_softmax"):
            y, vjp = jax.vjp(lambda v: getattr(module, name)(v, axis=axis), x)
            assert y.shape == x.shape and y.dtype == x.dtype and vjp(y)[0].shape == x.shape
    y, vjp = jax.vjp(ops.log_softmax, jnp.ones((3, 0)))
    assert y.shape == (3, 0) and vjp(y)[0].shape == (3, 0)


# --------------------------------------------------------------------------- forward mode

FORWARD_CASES = [("relu", {}), ("relu", {"derivative_at_zero": 0.0}), ("leaky_relu", {"negative_slope": 0.2}),
                 ("leaky_relu", {"negative_slope": 0.2, "derivative_at_zero": 0.2}), ("sigmoid", {}),
                 ("tanh", {}), ("softmax", {}), ("softmax", {"axis": 0}), ("log_softmax", {}),
                 ("log_softmax", {"axis": 0})]


@pytest.mark.parametrize("name,settings", FORWARD_CASES, ids=[f"{n}-{s}" for n, s in FORWARD_CASES])
def test_forward_mode_every_transform_against_the_reference(rng, name, settings):
    opcheck.assert_forward_mode(name, jnp.asarray(away_from_zero(rng, 2, 3, low=0.05, high=3.0)), **settings)


@pytest.mark.parametrize("name,settings", FORWARD_CASES, ids=[f"{n}-{s}" for n, s in FORWARD_CASES])
def test_jvp_is_the_adjoint_of_the_vjp(rng, name, settings):
    opcheck.assert_adjoint(name, jnp.asarray(away_from_zero(rng, 3, 4, low=0.05, high=3.0)), **settings)


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "log_softmax"])
def test_forward_mode_under_vmap_and_in_float32(rng, name):
    x = away_from_zero(rng, 4, 2, 3, low=0.05, high=3.0)
    opcheck.assert_jvp(name, jnp.asarray(x), in_axes=(0,))
    opcheck.assert_jvp(name, jnp.asarray(x, jnp.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("passes", [True, False])
def test_relu_and_leaky_relu_tangents_take_the_vjps_side_at_zero(passes):
    # J is diagonal, so jvp with ṫ = 1 is the vjp with g = 1: the same kink convention, exactly
    x, ones = jnp.array([-1.0, 0.0, 2.0]), jnp.ones(3)
    cases = [(functools.partial(ops.relu, derivative_at_zero=1.0 if passes else 0.0), 0.0),
             (functools.partial(ops.leaky_relu, negative_slope=0.1, derivative_at_zero=1.0 if passes else 0.1), 0.1)]
    for f, below in cases:
        tangent = jax.jvp(f, (x,), (ones,))[1]
        np.testing.assert_array_equal(tangent, [below, 1.0 if passes else below, 1.0])
        np.testing.assert_array_equal(tangent, jax.vjp(f, x)[1](ones)[0])


def test_tanh_rational_tangent_is_the_derivative_of_the_rational_from_its_output(rng):
    # the tangent is 1 − f² of what the forward computed (the rational, not jnp.tanh), as the VJP
    x = jnp.asarray(rng.normal(size=(3, 4)) * 2, jnp.float32)
    t = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
    f = functools.partial(ops.tanh, method="rational")
    y, tangent = jax.jvp(f, (x,), (t,))
    np.testing.assert_array_equal(tangent, t * (1 - y * y))
    np.testing.assert_array_equal(jax.jvp(f, (x,), (jnp.ones_like(x),))[1], jax.vjp(f, x)[1](jnp.ones_like(x))[0])
    program = jax.jit(lambda x, t: jax.jvp(f, (x,), (t,))).lower(x, t).as_text()
    assert "stablehlo.tanh" not in program
    np.testing.assert_allclose(tangent, jax.jvp(reference.tanh, (x,), (t,))[1], rtol=1e-5, atol=1e-6)
    opcheck.assert_jvp("tanh", x, method="rational", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softmax", "log_softmax"])
def test_forward_mode_computes_no_more_transcendentals_than_autodiff_of_the_reference(name):
    # the JVP reuses the forward's exponentials (log-softmax: p from e^{x − max x}, not a second e^y)
    import re

    x = jnp.ones((8, 10), jnp.float64)

    def count(module):
        program = jax.jit(lambda x, t: jax.jvp(getattr(module, name), (x,), (t,))).lower(x, x).compile().as_text()
        return len(re.findall(r"\b(exponential|tanh|logistic|log)\(", program))

    assert count(ops) <= count(reference)
