"""batch_norm, layer_norm, group_norm: PyTorch's definitions from first principles (NumPy),
the hand rule's formula and residuals, every transform, and the error messages."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops, reference, verify


def _np_normalise(x, axes, eps):
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)  # biased
    return (x - mu) / np.sqrt(var + eps)


def test_batch_norm_training_is_torch_batchnorm_with_biased_normaliser_and_unbiased_running_var(rng):
    # torch.nn.BatchNorm2d (NCHW) in training: normalise with the biased batch variance;
    # running_var takes the unbiased one, n / (n − 1) times it (n = N·H·W per channel).
    x = rng.normal(size=(4, 3, 5, 2)) * 3 + 1  # NHWC
    gamma, beta = rng.normal(size=2), rng.normal(size=2)
    y, mu, var = ops.batch_norm(x, gamma, beta, eps=1e-5)
    np.testing.assert_allclose(y, _np_normalise(x, (0, 1, 2), 1e-5) * gamma + beta, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mu, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=1e-12)  # biased: ddof=0
    n = x.size // x.shape[-1]
    np.testing.assert_allclose(var * n / (n - 1), x.var(axis=(0, 1, 2), ddof=1), rtol=1e-12)
    momentum, running = 0.1, np.ones(2)  # one PyTorch running-variance update
    expected = (1 - momentum) * running + momentum * x.reshape(-1, 2).var(axis=0, ddof=1)
    np.testing.assert_allclose((1 - momentum) * running + momentum * var * n / (n - 1), expected, rtol=1e-12)


def test_batch_norm_eval_uses_the_given_statistics_and_axis_1_is_nchw(rng):
    x = rng.normal(size=(2, 3, 4, 4))  # NCHW, channels on axis 1 as in PyTorch
    gamma, beta, mean, var = rng.normal(size=3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)
    y = ops.batch_norm(x, gamma, beta, axis=1, mean=mean, var=var, eps=1e-3)
    c = (1, 3, 1, 1)
    expected = (x - mean.reshape(c)) / np.sqrt(var.reshape(c) + 1e-3) * gamma.reshape(c) + beta.reshape(c)
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    y_train, mu, _ = ops.batch_norm(x, None, None, axis=1)
    np.testing.assert_allclose(mu, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(y_train, _np_normalise(x, (0, 2, 3), 1e-5), rtol=1e-11, atol=1e-11)


def test_batch_norm_backward_is_the_formula_from_x_hat_and_inverse_sigma(rng):
    x, gamma, beta = rng.normal(size=(5, 3)), rng.normal(size=3), rng.normal(size=3)
    g = rng.normal(size=(5, 3))
    _, vjp = jax.vjp(ops.batch_norm, x, gamma, beta)
    dx, dgamma, dbeta = vjp((g, np.zeros(3), np.zeros(3)))
    inv_sigma = 1 / np.sqrt(x.var(0) + 1e-5)
    x_hat = (x - x.mean(0)) * inv_sigma
    np.testing.assert_allclose(dx, gamma * inv_sigma * (g - g.mean(0) - x_hat * (g * x_hat).mean(0)), rtol=1e-12)
    np.testing.assert_allclose(dgamma, (g * x_hat).sum(0), rtol=1e-12)
    np.testing.assert_allclose(dbeta, g.sum(0), rtol=1e-12)
    # residuals: x̂ (the size of x), 1/σ and γ per channel, nothing else
    sizes = sorted(leaf.size for leaf in jax.tree_util.tree_leaves(vjp))
    assert sizes == [3, 3, 15]


def test_batch_norm_gradients_of_the_returned_statistics_and_running_statistics(rng):
    x = jnp.asarray(rng.normal(size=(3, 4, 2)))
    gamma, beta = jnp.asarray(rng.normal(size=2)), jnp.asarray(rng.normal(size=2))
    opcheck.assert_all("batch_norm", x, gamma, beta)  # training: (y, μ, σ²) all carry cotangents
    mean, var = jnp.asarray(rng.normal(size=2)), jnp.asarray(rng.uniform(0.5, 2, 2))

    def evaluation(module):
        def f(x, gamma, beta, mean, var):
            return module.batch_norm(x, gamma, beta, mean=mean, var=var, eps=1e-3)
        return f

    verify.check_vjp(evaluation(ops), evaluation(reference), x, gamma, beta, mean, var).assert_ok()
    verify.check_numerical(evaluation(ops), x, gamma, beta, mean, var).assert_ok()


@pytest.mark.parametrize("axis, affine", [(-1, (3, 5)), ((1, 2), (3, 5)), (1, (3,))])
def test_layer_norm_is_torch_layernorm_over_the_given_axes(rng, axis, affine):
    x = jnp.asarray(rng.normal(size=(2, 3, 5)) * 2 + 1)
    gamma, beta = rng.normal(size=affine[-1:] if axis == -1 else affine), rng.normal(size=affine[-1:] if axis == -1
                                                                                  else affine)
    axes = (2,) if axis == -1 else ((axis,) if isinstance(axis, int) else axis)
    shape = [n if a in axes else 1 for a, n in enumerate(x.shape)]
    expected = _np_normalise(np.asarray(x), axes, 1e-5) * gamma.reshape(shape) + beta.reshape(shape)
    np.testing.assert_allclose(ops.layer_norm(x, gamma, beta, axis=axis), expected, rtol=1e-11, atol=1e-11)
    check = opcheck.assert_all if axis == (1, 2) else opcheck.assert_vjp  # every transform once
    check("layer_norm", x, jnp.asarray(gamma), jnp.asarray(beta), axis=axis)


def test_group_norm_is_torch_groupnorm_with_layer_and_instance_norm_at_the_ends(rng):
    x = rng.normal(size=(2, 3, 2, 6))  # NHWC, 6 channels
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    grouped = x.reshape(2, 3, 2, 3, 2)  # torch.nn.GroupNorm(3, 6): channels (0,1), (2,3), (4,5)
    expected = _np_normalise(grouped, (1, 2, 4), 1e-5).reshape(x.shape) * gamma + beta
    np.testing.assert_allclose(ops.group_norm(x, gamma, beta, 3), expected, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(ops.group_norm(x, gamma, beta, 1),  # one group: layer norm over (H, W, C)
                               _np_normalise(x, (1, 2, 3), 1e-5) * gamma + beta, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(ops.group_norm(x, gamma, beta, 6),  # C groups: instance norm
                               _np_normalise(x, (1, 2), 1e-5) * gamma + beta, rtol=1e-11, atol=1e-11)
    opcheck.assert_all("group_norm", jnp.asarray(x), jnp.asarray(gamma), jnp.asarray(beta), groups=3)


@pytest.mark.parametrize("name, settings", [("batch_norm", {}), ("layer_norm", {}), ("group_norm", {"groups": 2})])
def test_bfloat16_normalises_in_float32(rng, name, settings):
    x = rng.normal(size=(8, 4)) * 0.01 + 30.0  # a large mean: bfloat16 statistics would lose x − μ
    out = getattr(ops, name)(jnp.asarray(x, jnp.bfloat16), None, None, **settings)
    y = out[0] if name == "batch_norm" else out
    exact = getattr(reference, name)(jnp.asarray(x, jnp.bfloat16).astype(jnp.float64), None, None, **settings)
    exact = exact[0] if name == "batch_norm" else exact
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float64), exact, atol=0.03)
    opcheck.assert_vjp(name, jnp.asarray(rng.normal(size=(6, 4)), jnp.bfloat16), jnp.ones(4, jnp.bfloat16),
                       jnp.zeros(4, jnp.bfloat16), **settings)


def test_normalisation_errors():
    x = jnp.ones((4, 3))
    with pytest.raises(ValueError, match=r"batch_norm: `gamma` must have shape \(3,\) .* got \(4,\)"):
        ops.batch_norm(x, jnp.ones(4), None)
    with pytest.raises(ValueError, match=r"batch_norm: `mean` was given without `var`"):
        ops.batch_norm(x, None, None, mean=jnp.zeros(3))
    with pytest.raises(ValueError, match=r"batch_norm: training mode needs more than one value per channel.*\(1, 3\)"):
        ops.batch_norm(jnp.ones((1, 3)), None, None)
    with pytest.raises(ValueError, match=r"batch_norm: `x` must have at least 2 dimensions"):
        ops.batch_norm(jnp.ones(3), None, None)
    with pytest.raises(ValueError, match=r"batch_norm: `axis`=2 is out of range"):
        ops.batch_norm(x, None, None, axis=2)
    with pytest.raises(ValueError, match=r"batch_norm: `eps` must be a finite number in \[0, inf\), got -0.1"):
        ops.batch_norm(x, None, None, eps=-0.1)
    with pytest.raises(TypeError, match=r"batch_norm: `eps` must be a number, got Array"):
        ops.batch_norm(x, None, None, eps=jnp.float32(1e-5))
    with pytest.raises(TypeError, match=r"batch_norm: all floating arguments must share one dtype"):
        ops.batch_norm(x, jnp.ones(3, jnp.bfloat16), None)
    with pytest.raises(ValueError, match=r"layer_norm: `gamma` must have shape \(2, 3\)"):
        ops.layer_norm(jnp.ones((4, 2, 3)), jnp.ones(3), None, axis=(1, 2))
    with pytest.raises(ValueError, match=r"group_norm: `groups`=4 must be a positive divisor of the 6 channels"):
        ops.group_norm(jnp.ones((2, 6)), None, None, 4)
    with pytest.raises(TypeError, match=r"group_norm: `groups` must be an int, got 2.0 \(float\)"):
        ops.group_norm(jnp.ones((2, 6)), None, None, 2.0)
    with pytest.raises(TypeError, match=r"layer_norm: `x` must be a floating-point array"):
        ops.layer_norm(jnp.ones(3, jnp.int32), None, None)


NORMS = {"batch_norm": lambda f, x, **kw: f(x, None, None, **kw)[0],
         "layer_norm": lambda f, x, **kw: f(x, None, None, axis=(1, 2, 3), **kw),
         "group_norm": lambda f, x, **kw: f(x, None, None, 2, **kw)}


@pytest.mark.parametrize("name", sorted(NORMS))
@pytest.mark.parametrize("eps", [np.inf, np.nan, -1e-5, np.float32("inf")])
def test_normalisation_refuses_an_eps_that_is_not_finite_or_negative(name, eps):
    # eps = inf made every output β (1/√inf = 0), NaN made it NaN: refused at trace time, by the reference too
    for module in (ops, reference):
        with pytest.raises(ValueError, match=rf"{name}: `eps` must be a finite number in \[0, inf\), got {eps}"):
            NORMS[name](getattr(module, name), jnp.ones((4, 3, 3, 4)), eps=eps)


def test_normalisation_axis_and_groups_settings():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 6)), jnp.float32)
    for module in (ops, reference):
        with pytest.raises(ValueError, match=r"layer_norm: `axis`=\(\) names no axis; give at least one axis"):
            module.layer_norm(x, None, None, axis=())
        with pytest.raises(TypeError, match=r"batch_norm: `axis` must be one int \(a single axis\), got \(2,\)"):
            module.batch_norm(x, None, None, axis=(2,))
        # NumPy scalars are the settings they stand for
        np.testing.assert_array_equal(module.group_norm(x, None, None, np.int64(3), eps=np.float32(1e-3)),
                                      module.group_norm(x, None, None, 3, eps=float(np.float32(1e-3))))
        np.testing.assert_array_equal(module.layer_norm(x, None, None, axis=np.int32(-1)),
                                      module.layer_norm(x, None, None))
        with pytest.raises(TypeError, match=r"group_norm: `groups` must be an int, got True \(bool\)"):
            module.group_norm(x, None, None, True)


@pytest.mark.parametrize("name", sorted(NORMS))
@pytest.mark.parametrize("power", [62, 64, 100])
def test_normalisation_in_float32_survives_an_overflowing_variance(rng, name, power):
    """x̂ is scale-invariant: at 2^p times the input (|x| ≈ 2·10¹⁹ for p = 64) the sum of (x − μ)²
    overflows float32, and the plain formula gave σ² = inf, x̂ = 0, every output β. Powers of two
    scale exactly, so y(2^p x) = y(x) and dx(2^p x) = 2^−p dx(x), up to rounding."""
    x = rng.normal(size=(8, 3, 3, 4)) + rng.normal(size=4) * 3  # channel offsets: μ ≠ 0
    v = rng.normal(size=x.shape)
    small, big = jnp.asarray(x, jnp.float32), jnp.asarray(x * 2.0**power, jnp.float32)
    assert np.all(np.isfinite(big))
    for module in (ops, reference):
        f = functools.partial(NORMS[name], getattr(module, name))
        (y_small, vjp_small), (y_big, vjp_big) = jax.vjp(f, small), jax.vjp(f, big)
        np.testing.assert_allclose(y_big, y_small, rtol=2e-5, atol=2e-5)
        dx_small, dx_big = vjp_small(jnp.asarray(v, jnp.float32))[0], vjp_big(jnp.asarray(v, jnp.float32))[0]
        np.testing.assert_allclose(np.asarray(dx_big, np.float64) * 2.0**power, dx_small, rtol=1e-4, atol=1e-4)
    if name == "batch_norm":  # the statistics: μ scales by 2^p, σ² by 4^p — inf beyond float32's range
        for module in (ops, reference):
            _, mu_small, var_small = module.batch_norm(small, None, None)
            _, mu_big, var_big = module.batch_norm(big, None, None)
            np.testing.assert_allclose(np.asarray(mu_big, np.float64), mu_small * 2.0**power, rtol=1e-5)
            expected = np.asarray(var_small, np.float64) * 4.0**power
            fits = expected < np.finfo(np.float32).max
            np.testing.assert_allclose(np.asarray(var_big, np.float64)[fits], expected[fits], rtol=1e-5)
            assert np.all(np.isinf(np.asarray(var_big)[~fits]))


def test_normalisation_of_a_nearly_constant_huge_channel_stays_finite(rng):
    # the scaled fallback scales x − μ by its own power of two: a huge offset with a small spread keeps
    # its x̂ (a scale taken from max |x| alone would underflow the spread and divide 0 by 0)
    x = jnp.asarray(2.0**100 * (1 + 2.0**-10 * rng.normal(size=(64, 3))), jnp.float32)
    exact = np.asarray(x, np.float64)
    exact = (exact - exact.mean(0)) / exact.std(0)
    for module in (ops, reference):
        y, mu, var = module.batch_norm(x, None, None, eps=1e-5)
        np.testing.assert_allclose(y, exact, rtol=1e-3, atol=1e-3)
        assert np.all(np.isfinite(mu)) and np.all(np.isinf(var))


# --------------------------------------------------------------------------- forward mode


def _params(rng, *shapes):
    return tuple(jnp.asarray(rng.normal(size=s)) for s in shapes)


@pytest.mark.parametrize("shape, settings", [((6, 3), {}), ((3, 2, 3, 4), {}), ((3, 4, 2, 2), {"axis": 1, "eps": 0.1})])
def test_batch_norm_training_forward_mode_matches_the_reference(rng, shape, settings):
    c = shape[settings.get("axis", -1)]
    x, gamma, beta = _params(rng, shape, c, c)
    opcheck.assert_forward_mode("batch_norm", x, gamma, beta, **settings)  # y, μ and σ² and their tangents
    opcheck.assert_adjoint_identity(lambda *a: ops.batch_norm(*a, **settings), x, gamma, beta)


def test_batch_norm_evaluation_forward_mode_includes_the_running_statistics(rng):
    x, gamma, beta, mean = _params(rng, (3, 2, 2, 4), 4, 4, 4)
    var = jnp.exp(jnp.asarray(rng.normal(size=4)))
    opcheck.assert_forward_mode("batch_norm", x, gamma, beta, mean=mean, var=var)
    primals, tangents = (x, gamma, beta, mean, var), _params(rng, x.shape, 4, 4, 4, 4)
    hand, auto = (functools.partial(lambda m, *a: m.batch_norm(*a[:3], mean=a[3], var=a[4], eps=0.01), m)
                  for m in (ops, reference))  # every argument differentiated, the statistics too
    np.testing.assert_allclose(jax.jvp(hand, primals, tangents)[1], jax.jvp(auto, primals, tangents)[1],
                               rtol=1e-12, atol=1e-12)
    for a, b in zip(jax.jacfwd(hand, argnums=(3, 4))(*primals), jax.jacfwd(auto, argnums=(3, 4))(*primals)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    opcheck.assert_adjoint_identity(hand, *primals)


@pytest.mark.parametrize("shape, axis", [((3, 5), -1), ((2, 3, 2, 4), (1, 2, 3))])
def test_layer_norm_forward_mode_matches_the_reference(rng, shape, axis):
    normalised = tuple(shape[a] for a in ((axis,) if isinstance(axis, int) else axis))
    x, gamma, beta = _params(rng, shape, normalised, normalised)
    opcheck.assert_forward_mode("layer_norm", x, gamma, beta, axis=axis)
    opcheck.assert_adjoint_identity(lambda *a: ops.layer_norm(*a, axis=axis), x, gamma, beta)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_group_norm_forward_mode_matches_the_reference(rng, groups):
    x, gamma, beta = _params(rng, (2, 3, 6), 6, 6)
    opcheck.assert_forward_mode("group_norm", x, gamma, beta, groups)
    opcheck.assert_adjoint_identity(lambda *a: ops.group_norm(*a, groups), x, gamma, beta)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_normalisation_forward_mode_under_vmap_float32_and_bfloat16(rng, name):
    f = functools.partial(NORMS[name], getattr(ops, name))
    opcheck.assert_jvp_vmaps_and_keeps_float32(f, jnp.asarray(rng.normal(size=(3, 4, 2, 2, 4))))
    x = jnp.asarray(rng.normal(size=(4, 2, 2, 4)), jnp.bfloat16)
    y, t_y = jax.jvp(f, (x,), (jnp.ones_like(x),))
    assert y.dtype == t_y.dtype == jnp.bfloat16


@pytest.mark.parametrize("name", sorted(NORMS))
def test_normalisation_forward_mode_survives_an_overflowing_variance(rng, name):
    """The JVP reads the fallback's exact x̂ and 1/σ: at 2^64 times the input and the tangent (the
    plain σ² overflows float32) the output tangent is the unscaled one."""
    x = rng.normal(size=(8, 3, 3, 4)) + rng.normal(size=4) * 3
    t = rng.normal(size=x.shape)
    for module in (ops, reference):
        f = functools.partial(NORMS[name], getattr(module, name))
        small = jax.jvp(f, (jnp.asarray(x, jnp.float32),), (jnp.asarray(t, jnp.float32),))[1]
        big = jax.jvp(f, (jnp.asarray(x * 2.0**64, jnp.float32),), (jnp.asarray(t * 2.0**64, jnp.float32),))[1]
        np.testing.assert_allclose(big, small, rtol=1e-4, atol=1e-4)
    if name == "batch_norm":  # the statistics' tangents scale as the statistics: 2^p and 4^p
        x32, t32 = jnp.asarray(x * 2.0**40, jnp.float32), jnp.asarray(t * 2.0**40, jnp.float32)
        hand = jax.jvp(lambda x: ops.batch_norm(x, None, None), (x32,), (t32,))[1]
        auto = jax.jvp(lambda x: reference.batch_norm(x, None, None), (x32,), (t32,))[1]
        for a, b in zip(hand, auto):  # y's, μ's and σ²'s tangents, each to its own scale
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.max(np.abs(b)))
