"""adaptive_mean_pool, adaptive_max_pool: PyTorch's window formula from its definition (and
against torch itself), hand-computed examples, the tie convention, the gradient checks, the
mutants, the residuals and the errors."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import opcheck
from conftest import examples
from jaxcnn import nn, ops, reference, verify
from jaxcnn._certify import mutants
from jaxcnn._certify.registry import distinct

NAMES = ["adaptive_mean_pool", "adaptive_max_pool"]


def _torch_windows(n, m):
    """PyTorch's adaptive windows, written from ATen's start_index/end_index with floats."""
    return [range(int(np.floor(i * n / m)), int(np.ceil((i + 1) * n / m))) for i in range(m)]


def _by_definition(x, out, reduce):
    """Every output position's window, reduced by ``reduce`` over its (N, K, C) entries."""
    windows = [_torch_windows(n, m) for n, m in zip(x.shape[1:-1], out)]
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for i in itertools.product(*(range(m) for m in out)):
        entries = list(itertools.product(*(w[a] for w, a in zip(windows, i))))  # row-major: window order
        y[(slice(None), *i)] = reduce(np.stack([x[(slice(None), *p)] for p in entries], axis=1))
    return y


def _grad(op, x, g, **settings):
    return jax.vjp(lambda x: op(x, **settings), x)[1](jnp.asarray(g, x.dtype))[0]


# --------------------------------------------------------------------------- PyTorch's windows, by hand


def test_the_windows_are_pytorchs_formula():
    # n = 5 → m = 3: [0, 2), [1, 4), [3, 5); m = 2 → 5: every window inside [0, n), overlapping
    assert [list(w) for w in _torch_windows(5, 3)] == [[0, 1], [1, 2, 3], [3, 4]]
    x = jnp.asarray([1.0, 2.0, 3.0, 4.0, 5.0], jnp.float64).reshape(1, 5, 1)
    np.testing.assert_allclose(ops.adaptive_mean_pool(x, 3)[0, :, 0], [1.5, 3.0, 4.5], rtol=1e-15)
    x = jnp.asarray([1.0, 3.0], jnp.float64).reshape(1, 2, 1)  # windows {0}, {0}, {0, 1}, {1}, {1}
    np.testing.assert_allclose(ops.adaptive_mean_pool(x, 5)[0, :, 0], [1, 1, 2, 3, 3], rtol=1e-15)
    np.testing.assert_array_equal(ops.adaptive_max_pool(x, 5)[0, :, 0], [1, 1, 3, 3, 3])


def test_mean_backward_spreads_each_windows_share_with_plus_equals():
    x = jnp.arange(5.0, dtype=jnp.float64).reshape(1, 5, 1)
    g = [10.0, 20.0, 30.0]
    dx = _grad(ops.adaptive_mean_pool, x, np.reshape(g, (1, 3, 1)), output_size=3)
    np.testing.assert_allclose(dx[0, :, 0], [5, 5 + 20 / 3, 20 / 3, 20 / 3 + 15, 15], rtol=1e-15)


def test_max_backward_sums_the_delta_of_windows_sharing_a_maximum():
    x = jnp.asarray([0.0, 9.0, 1.0, 2.0, 3.0], jnp.float64).reshape(1, 5, 1)  # 9 is the max of windows 0 and 1
    dx = _grad(ops.adaptive_max_pool, x, np.reshape([1.0, 10.0, 100.0], (1, 3, 1)), output_size=3)
    np.testing.assert_array_equal(dx[0, :, 0], [0, 11, 0, 0, 100])
    # an output larger than the input: 2 → 5, the 3 is the max of three windows
    x = jnp.asarray([1.0, 3.0], jnp.float64).reshape(1, 2, 1)
    dx = _grad(ops.adaptive_max_pool, x, np.reshape([1.0, 2.0, 4.0, 8.0, 16.0], (1, 5, 1)), output_size=5)
    np.testing.assert_array_equal(dx[0, :, 0], [3, 28])


def test_ties_go_to_the_first_maximum_in_window_order():
    x = jnp.full((1, 3, 3, 1), 2.0, jnp.float64)  # 3 → 2: windows [0, 2), [1, 3) on both axes
    dx = _grad(ops.adaptive_max_pool, x, np.reshape([1.0, 2.0, 4.0, 8.0], (1, 2, 2, 1)), output_size=2)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 2, 0], [4, 8, 0], [0, 0, 0]])  # each window its first entry
    x = jnp.asarray([[0.0, 5.0], [5.0, 0.0]], jnp.float64)[None, :, :, None]  # (0, 1) precedes (1, 0)
    for op in (ops.adaptive_max_pool, reference.adaptive_max_pool):
        np.testing.assert_array_equal(_grad(op, x, [[[[7.0]]]], output_size=1)[0, :, :, 0], [[0, 7], [0, 0]])


@pytest.mark.parametrize("shape, out", [((2, 7, 3), (3,)), ((2, 3, 2), (5,)), ((1, 5, 7, 2), (3, 4)),
                                        ((2, 4, 3, 1), (6, 2)), ((1, 4, 5, 3, 2), (2, 3, 4)), ((1, 6, 2), (1,))])
def test_forward_and_indices_are_the_definition(rng, shape, out):
    x = np.asarray(distinct(rng, *shape))
    np.testing.assert_allclose(ops.adaptive_mean_pool(x, out), _by_definition(x, out, lambda w: w.mean(1)),
                               rtol=1e-13, atol=1e-15)
    y, indices = ops.adaptive_max_pool(x, out, return_indices=True)
    np.testing.assert_array_equal(y, _by_definition(x, out, lambda w: w.max(1)))
    assert indices.dtype == jnp.int32 and indices.shape == y.shape
    flat = x.reshape(x.shape[0], -1, x.shape[-1])  # PyTorch's flat index in each (n, c) plane
    np.testing.assert_array_equal(np.take_along_axis(flat, np.asarray(indices).reshape(x.shape[0], -1, x.shape[-1]),
                                                     1).reshape(y.shape), y)
    for name in NAMES:
        np.testing.assert_allclose(getattr(reference, name)(x, out), getattr(ops, name)(x, out), rtol=1e-13,
                                   atol=1e-15)
    np.testing.assert_array_equal(reference.adaptive_max_pool(x, out, return_indices=True)[1], indices)


def test_dividing_sizes_are_the_window_pools_and_size_one_the_global_pools(rng):
    x = jnp.asarray(distinct(rng, 2, 6, 9, 3))
    np.testing.assert_allclose(ops.adaptive_mean_pool(x, (2, 3)), ops.mean_pool(x, (3, 3)), rtol=1e-13)
    np.testing.assert_array_equal(ops.adaptive_max_pool(x, (3, 3)), ops.max_pool(x, (2, 3)))
    np.testing.assert_allclose(ops.adaptive_mean_pool(x, 1)[:, 0, 0], ops.global_mean_pool(x), rtol=1e-13)
    np.testing.assert_array_equal(ops.adaptive_max_pool(x, (1, 1))[:, 0, 0], ops.global_max_pool(x))
    np.testing.assert_array_equal(ops.adaptive_mean_pool(x, (None, 9)), x)  # None keeps the axis: identity


def test_nan_is_the_maximum_as_in_pytorch(rng):
    x = jnp.asarray(distinct(rng, 1, 5, 1)).at[0, 1, 0].set(jnp.nan)  # in windows 0 and 1 of 5 → 3
    y, indices = ops.adaptive_max_pool(x, 3, return_indices=True)
    assert np.isnan(y[0, :2, 0]).all() and not np.isnan(y[0, 2, 0]) and indices[0, :2, 0].tolist() == [1, 1]
    dx = _grad(ops.adaptive_max_pool, x, jnp.ones((1, 3, 1)), output_size=3)
    assert float(dx[0, 1, 0]) == 2.0  # both windows' δ on the NaN


def test_pytorch_adaptive_pools_values_gradients_and_indices(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for shape, out, tied in [((2, 7, 3), (3,), False), ((2, 5, 7, 2), (3, 4), True), ((1, 3, 4, 2), (5, 6), False),
                             ((1, 4, 5, 3, 2), (2, 3, 4), True), ((2, 6, 2), (4,), True)]:
        x = rng.integers(0, 2, size=shape).astype(np.float64) if tied else rng.normal(size=shape)
        g = rng.normal(size=(shape[0], *out, shape[-1]))
        d = len(out)
        for name, torch_op in [("adaptive_mean_pool", getattr(F, f"adaptive_avg_pool{d}d")),
                               ("adaptive_max_pool", getattr(F, f"adaptive_max_pool{d}d"))]:
            xt = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)  # NHWC → NCHW
            yt = torch_op(xt, out)
            (yt * torch.tensor(np.moveaxis(g, -1, 1).copy())).sum().backward()
            y, vjp = jax.vjp(lambda x: getattr(ops, name)(x, out), jnp.asarray(x))
            np.testing.assert_allclose(np.moveaxis(y, -1, 1), yt.detach().numpy(), rtol=1e-13)
            np.testing.assert_allclose(np.moveaxis(vjp(jnp.asarray(g))[0], -1, 1), xt.grad.numpy(), rtol=1e-13,
                                       atol=1e-13)
        _, it = getattr(F, f"adaptive_max_pool{d}d")(torch.tensor(np.moveaxis(x, -1, 1).copy()), out,
                                                      return_indices=True)
        np.testing.assert_array_equal(np.moveaxis(ops.adaptive_max_pool(x, out, return_indices=True)[1], -1, 1),
                                      it.numpy())


# --------------------------------------------------------------------------- gradient checks


@st.composite
def adaptive_cases(draw):
    rank = draw(st.integers(1, 3))
    largest = 7 if rank < 3 else 4
    spatial = tuple(draw(st.integers(1, largest)) for _ in range(rank))
    out = tuple(draw(st.integers(1, largest + 2)) for _ in range(rank))  # often larger than the input
    x = distinct(np.random.default_rng(draw(st.integers(0, 2**16))), 2, *spatial, 2)  # tie-free
    return jnp.asarray(x, jnp.float64), out


@examples(5, 30)
@given(case=adaptive_cases())
def test_vjp_matches_autodiff_and_finite_differences(case):
    x, out = case
    for name in NAMES:
        verify.check_vjp(getattr(ops, name), getattr(reference, name), x, output_size=out).assert_ok()
        verify.check_numerical(getattr(ops, name), x, output_size=out).assert_ok()


@pytest.mark.parametrize("name", NAMES)
def test_every_transform(rng, name):
    opcheck.assert_all(name, jnp.asarray(distinct(rng, 2, 7, 5, 2)), output_size=(3, 4))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", NAMES)
def test_vjp_low_precision(rng, dtype, name):
    x = jnp.asarray(distinct(rng, 2, 7, 6, 3, gap=0.08), dtype)
    y = getattr(ops, name)(x, (3, 4))
    assert y.dtype == x.dtype
    opcheck.assert_vjp(name, x, output_size=(3, 4))


@pytest.mark.parametrize("name", ["adaptive_mean_pool.overwrite_on_overlap", "adaptive_max_pool.overwrite_on_overlap",
                                  "adaptive_mean_pool.divided_by_largest_window",
                                  "adaptive_max_pool.spread_over_window"])
def test_the_checker_catches_the_adaptive_mistakes(name):
    outcome = mutants.run_one(mutants.MUTANTS[name])
    assert outcome.ok and outcome.record.verdict == "rule wrong", str(outcome)


def test_overwriting_is_invisible_where_windows_do_not_overlap(rng):
    x = jnp.asarray(distinct(rng, 2, 6, 6, 2))  # 6 → 3: tiled, no overlap
    for name in ("adaptive_mean_pool.overwrite_on_overlap", "adaptive_max_pool.overwrite_on_overlap"):
        wrong = mutants.MUTANTS[name].build()
        verify.check_vjp(wrong, getattr(reference, mutants.MUTANTS[name].op), x, output_size=3).assert_ok()


def test_residuals_are_the_indices_alone_and_nothing_for_the_mean(rng):
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 4)), jnp.float32)
    for fn, expected in [(lambda x: ops.adaptive_max_pool(x, (4, 3)), [((2, 4, 3, 4), jnp.int32)]),
                         (lambda x: ops.adaptive_mean_pool(x, (4, 3)), [])]:
        vjp = jax.eval_shape(lambda x: jax.vjp(fn, x)[1], x)
        assert [(leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(vjp)] == expected


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", NAMES)
def test_errors(name):
    x = jnp.zeros((2, 5, 5, 3), jnp.float32)
    for op in (getattr(ops, name), getattr(reference, name)):
        with pytest.raises(ValueError, match=rf"{name}: `output_size` must be >= 1 on every axis, got \(2, 0\)"):
            op(x, (2, 0))
        with pytest.raises(ValueError, match=rf"{name}: `output_size` must be >= 1 on every axis, got -1"):
            op(x, -1)
        with pytest.raises(ValueError, match=rf"{name}: `output_size` has 3 entries but `x` of shape \(2, 5, 5, 3\) "
                                             rf"\(N, \*spatial, C\) has 2 spatial axes"):
            op(x, (2, 2, 2))
        for bad in (2.0, (2, 1.5), True, "2"):
            with pytest.raises(TypeError, match=rf"{name}: `output_size` must be an int or a sequence of 2 ints or "
                                                rf"None \(one per spatial axis\), got {re.escape(repr(bad))}"):
                op(x, bad)
        with pytest.raises(ValueError, match=rf"{name}: `x` must have 3 or 4 or 5 dimensions \(N, \*spatial, C\)"):
            op(x[0, :, :, 0], 2)
        with pytest.raises(ValueError, match=rf"{name}: the input has size 0 along spatial axis 1 \(spatial shape "
                                             rf"\(5, 0\)\); adaptive pooling needs at least one input position"):
            op(jnp.zeros((2, 5, 0, 3), jnp.float32), 2)
        with pytest.raises(TypeError, match=rf"{name}: `x` must be a floating-point array"):
            op(jnp.zeros((2, 5, 5, 3), jnp.int32), 2)
    with pytest.raises(TypeError, match=r"adaptive_max_pool: `return_indices` must be True or False, got 1"):
        ops.adaptive_max_pool(x, 2, return_indices=1)


def test_an_empty_batch_pools_to_an_empty_batch():
    assert ops.adaptive_max_pool(jnp.zeros((0, 5, 4, 2)), (3, 3)).shape == (0, 3, 3, 2)
    assert jax.grad(lambda x: ops.adaptive_mean_pool(x, 3).sum())(jnp.zeros((0, 5, 2))).shape == (0, 5, 2)


@pytest.mark.parametrize("layer, name", [(nn.AdaptiveMeanPool, "adaptive_mean_pool"),
                                         (nn.AdaptiveMaxPool, "adaptive_max_pool")])
@pytest.mark.parametrize("shape, out", [((-1, 7, 3), 4), ((-1, 5, 6, 2), (3, None)), ((-1, 3, 4, 5, 1), (2, 6, 1))])
def test_layers_init_and_apply_agree(rng, layer, name, shape, out):
    for backend in (ops, reference):
        model = layer(out, ops=backend)
        params, state, out_shape = model.init(jax.random.key(0), shape)
        y, _ = model.apply(params, state, jnp.asarray(rng.normal(size=(2, *shape[1:]))))
        assert out_shape == (-1, *y.shape[1:]) and y.shape[0] == 2
    with pytest.raises(ValueError, match=rf"{layer.__name__}: `output_size` must be >= 1 on every axis"):
        layer(0).init(jax.random.key(0), shape)


# --------------------------------------------------------------------------- forward mode


@pytest.mark.parametrize("shape, out", [((2, 5, 6, 3), (3, 4)), ((2, 4, 3), 7), ((1, 3, 4, 5, 2), (2, None, 3))])
@pytest.mark.parametrize("name", ["adaptive_max_pool", "adaptive_mean_pool"])
def test_forward_mode_matches_the_reference(rng, name, shape, out):
    opcheck.assert_forward_mode(name, jnp.asarray(rng.standard_normal(shape)), output_size=out)  # tie-free


@pytest.mark.parametrize("out", [(3, 4), 7])
def test_max_tangent_at_a_tie_is_the_vjps_maximum(rng, out):
    x = jnp.asarray(rng.integers(0, 2, (2, 5, 6, 2)), jnp.float64)  # exact ties, shared maxima
    opcheck.assert_adjoint_identity(lambda x: ops.adaptive_max_pool(x, out), x)
    t = jnp.arange(1.0, 4.0).reshape(1, 3, 1)
    assert jax.jvp(lambda x: ops.adaptive_max_pool(x, 1), (jnp.ones((1, 3, 1)),), (t,))[1].ravel().tolist() == [1.0]


@pytest.mark.parametrize("name", ["adaptive_max_pool", "adaptive_mean_pool"])
def test_forward_mode_under_vmap_and_float32(rng, name):
    opcheck.assert_jvp_vmaps_and_keeps_float32(lambda x: getattr(ops, name)(x, (2, 3)),
                                               jnp.asarray(rng.standard_normal((3, 1, 5, 4, 2))))
