"""Max and mean pooling: the lectures' worked examples, the tie convention, the gradient
checks, the classic mistakes, the residual memory, the errors."""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import opcheck
from conftest import covering, examples
from jaxcnn import _shapes, nn, ops, reference, verify
from jaxcnn._certify import mutants
from jaxcnn._certify.registry import distinct

PARK = [[3, 2, 3, 1], [0, 5, 3, 4], [1, 2, 2, 2], [7, 3, 1, 7]]


def _image(rows):
    """A 2-D list as one example with one channel, (1, H, W, 1), float64."""
    return jnp.asarray(rows, jnp.float64)[None, :, :, None]


def _grad(op, x, g, **settings):
    """dx for the cotangent g."""
    _, vjp = jax.vjp(lambda x: op(x, **settings), x)
    return vjp(jnp.asarray(g, x.dtype))[0]


# --------------------------------------------------------------------------- worked examples


def test_park_max_pool_example():
    # Park: 2×2 max-pool, stride 2, of the 4×4 map gives [[5, 4], [7, 7]].
    x = _image(PARK)
    y = ops.max_pool(x, 2)
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 4], [7, 7]])
    # Maxpool_back: each δ lands on its window's maximum, every other entry gets 0.
    dx = _grad(ops.max_pool, x, _image([[1, 2], [3, 4]]), window=2)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 0, 0, 0], [0, 1, 0, 2], [0, 0, 0, 0], [3, 0, 0, 4]])


def test_jearanaitanakij_gradient_flows_only_through_the_largest():
    x = _image([[0.2, 0.9, 0.1, 0.4], [0.5, 0.3, 0.8, 0.7]])
    dx = _grad(ops.max_pool, x, _image([[10.0, 20.0]]), window=2)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 10, 0, 0], [0, 0, 20, 0]])


def test_overlapping_windows_sum_their_delta_on_a_shared_maximum():
    # Raj: "+=" because this entry may be selected in multiple adjacent overlapping windows.
    x = jnp.asarray([0.0, 1.0, 5.0, 2.0, 3.0], jnp.float64).reshape(1, 5, 1)
    dx = _grad(ops.max_pool, x, jnp.asarray([1.0, 10.0, 100.0], jnp.float64).reshape(1, 3, 1), window=3, stride=1)
    np.testing.assert_array_equal(dx[0, :, 0], [0, 0, 111, 0, 0])
    # 2-D: the centre of a 4×4 map is the maximum of all four 3×3 windows at stride 1.
    x = _image(np.arange(16.0).reshape(4, 4) / 100).at[0, 1, 2, 0].set(9.0)
    dx = _grad(ops.max_pool, x, _image([[1, 2], [4, 8]]), window=3, stride=1)
    expected = np.zeros((4, 4))
    expected[1, 2] = 1 + 2 + 4 + 8
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


def test_tie_goes_to_the_first_maximum_in_window_order():
    # A window of equal values: exactly one element, the first (top-left), receives δ.
    x = jnp.full((1, 2, 2, 1), 3.0, jnp.float64)
    np.testing.assert_array_equal(_grad(ops.max_pool, x, [[[[7.0]]]], window=2)[0, :, :, 0], [[7, 0], [0, 0]])
    # A partial tie: (0, 1) comes before (1, 0) in row-major window order.
    x = _image([[1.0, 3.0], [3.0, 2.0]])
    np.testing.assert_array_equal(_grad(ops.max_pool, x, [[[[7.0]]]], window=2)[0, :, :, 0], [[0, 7], [0, 0]])
    # Overlapping windows over a constant map: every window gives δ to its own first entry.
    x = jnp.full((1, 3, 3, 1), 2.0, jnp.float64)
    dx = _grad(ops.max_pool, x, _image([[1, 2], [4, 8]]), window=2, stride=1)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 2, 0], [4, 8, 0], [0, 0, 0]])
    # 3-D window order: the first axis is slowest, the last axis fastest.
    x = jnp.zeros((1, 2, 2, 2, 1), jnp.float64).at[0, 1, 0, 0, 0].set(1.0).at[0, 0, 1, 1, 0].set(1.0)
    dx = _grad(ops.max_pool, x, jnp.ones((1, 1, 1, 1, 1), jnp.float64), window=2)
    assert float(dx[0, 0, 1, 1, 0]) == 1.0 and float(dx.sum()) == 1.0


def test_mean_pool_spreads_delta_over_k_squared():
    # Raj: dy(l−1, ·) += dy(l, ·) / K² over the window.
    x = jnp.asarray(np.arange(36.0).reshape(1, 6, 6, 1), jnp.float64)
    dx = _grad(ops.mean_pool, x, jnp.ones((1, 2, 2, 1), jnp.float64), window=3)
    np.testing.assert_allclose(dx, np.full((1, 6, 6, 1), 1 / 9), rtol=1e-15)
    y = ops.mean_pool(x, 2)
    np.testing.assert_array_equal(y[0, :, :, 0], [[3.5, 5.5, 7.5], [15.5, 17.5, 19.5], [27.5, 29.5, 31.5]])
    # Overlapping windows: an entry in two windows receives both shares (+=).
    x1 = jnp.arange(4.0, dtype=jnp.float64).reshape(1, 4, 1)
    dx = _grad(ops.mean_pool, x1, jnp.asarray([1.0, 10.0, 100.0], jnp.float64).reshape(1, 3, 1), window=2, stride=1)
    np.testing.assert_allclose(dx[0, :, 0], [0.5, 5.5, 55.0, 50.0], rtol=1e-15)


def test_mean_pool_count_padding():
    x = jnp.asarray([1.0, 2.0, 3.0, 4.0], jnp.float64).reshape(1, 4, 1)
    np.testing.assert_allclose(ops.mean_pool(x, 3, 1, "SAME")[0, :, 0], [1.0, 2.0, 3.0, 7 / 3], rtol=1e-15)
    y = ops.mean_pool(x, 3, 1, "SAME", count_padding=False)
    np.testing.assert_allclose(y[0, :, 0], [1.5, 2.0, 3.0, 3.5], rtol=1e-15)
    g = jnp.ones((1, 4, 1), jnp.float64)
    dx = _grad(ops.mean_pool, x, g, window=3, stride=1, padding="SAME", count_padding=False)
    np.testing.assert_allclose(dx[0, :, 0], [1 / 2 + 1 / 3, 1 / 2 + 2 / 3, 2 / 3 + 1 / 2, 1 / 3 + 1 / 2], rtol=1e-15)


def test_padding_never_wins_max_but_counts_as_zero_in_mean():
    x = -1.0 - jnp.asarray(np.arange(9.0).reshape(1, 3, 3, 1), jnp.float64)  # all negative
    y = ops.max_pool(x, 2, 2, "SAME")  # pads one row and column of −∞ at the end
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -3], [-7, -9]])
    dx = _grad(ops.max_pool, x, jnp.ones((1, 2, 2, 1), jnp.float64), window=2, stride=2, padding="SAME")
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0, 1], [0, 0, 0], [1, 0, 1]])
    np.testing.assert_allclose(ops.mean_pool(x, 2, 2, "SAME")[0, :, :, 0], [[-3, -9 / 4], [-15 / 4, -9 / 4]])


@pytest.mark.parametrize("count_padding", [True, False])
def test_forward_is_the_raj_loop(rng, count_padding):
    # Raj's pseudocode with downsampling, over the padded map, written as plain loops.
    x = np.asarray(distinct(rng, 2, 7, 6, 3))
    window, stride, pads = (3, 2), (2, 1), ((1, 2), (0, 1))
    real = np.pad(np.ones(x.shape), ((0, 0), *pads, (0, 0)))
    x_max = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-np.inf)
    x_sum = np.pad(x, ((0, 0), *pads, (0, 0)))
    y_max = ops.max_pool(jnp.asarray(x), window, stride, pads)
    y_mean = ops.mean_pool(jnp.asarray(x), window, stride, pads, count_padding)
    for i, j in itertools.product(range(y_max.shape[1]), range(y_max.shape[2])):
        rows, cols = slice(i * 2, i * 2 + 3), slice(j, j + 2)
        np.testing.assert_array_equal(y_max[:, i, j], x_max[:, rows, cols].max(axis=(1, 2)))
        count = 6 if count_padding else real[:, rows, cols].sum(axis=(1, 2))
        np.testing.assert_allclose(y_mean[:, i, j], x_sum[:, rows, cols].sum(axis=(1, 2)) / count, rtol=1e-13)


def test_nan_in_a_window_propagates_like_lax_max(rng):
    x = jnp.asarray(distinct(rng, 1, 4, 4, 1)).at[0, 1, 1, 0].set(jnp.nan)
    y, vjp = jax.vjp(lambda x: ops.max_pool(x, 2), x)
    assert np.isnan(y[0, 0, 0, 0]) and not np.isnan(y[0, 1:, :, 0]).any() and not np.isnan(y[0, :, 1, 0]).any()
    dx = vjp(jnp.ones_like(y))[0]
    assert not np.isnan(dx).any() and float(dx[0, :2, :2].sum()) == 1.0  # one element of that window


# --------------------------------------------------------------------------- gradient checks


@st.composite
def pool_cases(draw):
    rank = draw(st.integers(1, 3))
    window = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))  # often < window: overlap
    kind = draw(st.sampled_from(["VALID", "SAME", "FULL", "int", "pairs"]))
    if kind == "int":
        padding = draw(st.integers(0, min(window) - 1))
    elif kind == "pairs":
        padding = tuple((draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in window)
    else:
        padding = kind
    largest = 7 if rank < 3 else 4
    spatial = tuple(draw(st.integers(1, largest)) for _ in range(rank))
    try:
        _shapes.pool_geometry("case", spatial, window, stride, padding)
    except ValueError:
        assume(False)
    seed = draw(st.integers(0, 2**16))
    x = distinct(np.random.default_rng(seed), 2, *spatial, 2)  # tie-free
    return jnp.asarray(x, jnp.float64), dict(window=window, stride=stride, padding=padding)


@examples(8, 30)
@given(case=pool_cases())
def test_max_pool_vjp_matches_autodiff_and_finite_differences(case):
    x, settings_ = case
    verify.check_vjp(ops.max_pool, reference.max_pool, x, **settings_).assert_ok()
    verify.check_numerical(ops.max_pool, x, **settings_).assert_ok()


@examples(8, 30)
@given(case=pool_cases(), count_padding=st.booleans())
def test_mean_pool_vjp_matches_autodiff_and_finite_differences(case, count_padding):
    x, settings_ = case
    verify.check_vjp(ops.mean_pool, reference.mean_pool, x, count_padding=count_padding, **settings_).assert_ok()
    verify.check_numerical(ops.mean_pool, x, count_padding=count_padding, **settings_).assert_ok()


TRANSFORM_CASES = [
    ((2, 6, 6, 3), dict(window=2)),  # tiled windows (the reshape path)
    ((2, 4, 6, 8), dict(window=2)),  # tiled, 8 channels: mean pool's block-sum forward
    ((2, 7, 6, 2), dict(window=3, stride=2, padding="SAME")),  # overlapping
    ((2, 9, 2), dict(window=3, stride=1, padding=((1, 2),))),
    ((1, 4, 5, 3, 2), dict(window=(2, 3, 2), stride=(1, 2, 2), padding="FULL")),
]


TRANSFORM_IDS = ["2d-tiled", "2d-tiled-8", "2d-overlap", "1d", "3d"]


@covering("transform", opcheck.TRANSFORMS, "x_shape,settings_", TRANSFORM_CASES, TRANSFORM_IDS)
def test_max_pool_under_jit_vmap_and_grad_of_grad(rng, transform, x_shape, settings_):
    opcheck.assert_transform(transform, "max_pool", jnp.asarray(distinct(rng, *x_shape)), **settings_)


@covering("transform", opcheck.TRANSFORMS, "x_shape,settings_", TRANSFORM_CASES[::-1], TRANSFORM_IDS[::-1])
def test_mean_pool_under_jit_vmap_and_grad_of_grad(rng, transform, x_shape, settings_):
    count_padding = "padding" not in settings_  # exercise both divisors
    opcheck.assert_transform(transform, "mean_pool", jnp.asarray(distinct(rng, *x_shape)),
                             count_padding=count_padding, **settings_)


@pytest.mark.parametrize("channels", [2, 8], ids=["slices", "block-sum"])  # mean pool's two tiled forwards
@pytest.mark.parametrize("count_padding", [True, False])
def test_tiled_windows_with_padding_and_an_unreached_tail(rng, count_padding, channels):
    # stride = window (the reshape path), padded (1, 0) and (2, 0): padded sizes 8 and 10,
    # so the last column is in no window and must get exactly zero gradient.
    x = jnp.asarray(distinct(rng, 2, 7, 8, channels))
    settings_ = dict(window=(2, 3), padding=((1, 0), (2, 0)))
    verify.check_vjp(ops.max_pool, reference.max_pool, x, **settings_).assert_ok()
    verify.check_numerical(ops.max_pool, x, **settings_).assert_ok()
    verify.check_vjp(ops.mean_pool, reference.mean_pool, x, count_padding=count_padding, **settings_).assert_ok()
    verify.check_numerical(ops.mean_pool, x, count_padding=count_padding, **settings_).assert_ok()
    dx = _grad(ops.mean_pool, x, jnp.ones((2, 4, 3, channels), jnp.float64), count_padding=count_padding, **settings_)
    assert not np.asarray(dx[:, :, -1]).any() and np.asarray(dx[:, :, :-1]).all()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["max_pool", "mean_pool"])
@pytest.mark.parametrize("settings_", [dict(window=2), dict(window=3, stride=2, padding="SAME")])
def test_vjp_low_precision(rng, dtype, name, settings_):
    x = jnp.asarray(distinct(rng, 2, 8, 8, 3, gap=0.08), dtype)  # distinct in bfloat16 (spacing 1/16 below 16)
    assert len(np.unique(np.asarray(x, np.float64))) == x.size
    y = getattr(ops, name)(x, **settings_)
    assert y.dtype == x.dtype
    opcheck.assert_vjp(name, x, **settings_)


# --------------------------------------------------------------------------- the checker catches the lectures' mistakes
#
# The wrong rules live once, in jaxcnn._certify.mutants (with the lecture that warns against each);
# here the pooling mistakes meet the checker on a 6×6 input whose overlapping windows share maxima.


def _windows(out_shape, window, stride):
    """(output position, input slices) of every window of a 2-D VALID pool."""
    for i, j in itertools.product(range(out_shape[1]), range(out_shape[2])):
        yield (i, j), (slice(i * stride, i * stride + window), slice(j * stride, j * stride + window))


def _shared_maxima(x, window, stride):
    """How many windows pick as their maximum an entry that another window picked too."""
    winners = []
    for _, (rows, cols) in _windows(reference.max_pool(x, window, stride).shape, window, stride):
        a, b = np.unravel_index(np.argmax(x[0, rows, cols, 0]), (window, window))
        winners.append((rows.start + a, cols.start + b))
    return len(winners) - len(set(winners))


@pytest.fixture
def overlapping_x(rng):
    x = jnp.asarray(distinct(rng, 1, 6, 6, 1))
    assert _shared_maxima(x, 3, 1) > 0  # the case where = and += differ
    return x


def test_raj_loop_backward_is_the_rule(overlapping_x, rng):
    # Raj: dy(l−1, P(l, m, i, j)) += dy(l, m, i, j), written as his loop over windows
    g = jnp.asarray(rng.normal(size=reference.max_pool(overlapping_x, 3, 1).shape))
    dx = np.zeros(overlapping_x.shape)
    for (i, j), (rows, cols) in _windows(g.shape, 3, 1):
        patch = np.asarray(overlapping_x[0, rows, cols, 0])
        a, b = np.unravel_index(np.argmax(patch), patch.shape)
        dx[0, rows.start + a, cols.start + b, 0] += g[0, i, j, 0]
    np.testing.assert_allclose(_grad(ops.max_pool, overlapping_x, g, window=3, stride=1), dx, rtol=1e-12)


POOL_MISTAKES = [  # (mutant, window, stride): 2×2/2 tiles the input, 3×3/1 overlaps
    ("max_pool.spread_over_window", 2, 2),
    ("max_pool.spread_over_window", 3, 1),
    ("mean_pool.missing_1_over_K", 2, 2),
    ("mean_pool.missing_1_over_K", 3, 1),
    ("max_pool.overwrite_on_overlap", 3, 1),
    ("mean_pool.overwrite_on_overlap", 3, 1),
]


@pytest.mark.parametrize("name, window, stride", POOL_MISTAKES)
def test_checker_catches_the_lectures_pooling_mistakes(overlapping_x, name, window, stride):
    mutant = mutants.MUTANTS[name]
    assert mutant.lecture
    wrong, ref = mutant.build(), getattr(reference, mutant.op)
    result = verify.check_vjp(wrong, ref, overlapping_x, window=window, stride=stride)
    assert result.forward.ok and not result["x"].ok and not result.ok
    assert not verify.check_numerical(wrong, overlapping_x, window=window, stride=stride)["x"].ok
    verify.check_vjp(getattr(ops, mutant.op), ref, overlapping_x, window=window, stride=stride).assert_ok()


def test_overwriting_is_invisible_without_overlap(overlapping_x):
    # = and += agree when the windows are disjoint: only overlapping samples can show the slip
    wrong = mutants.MUTANTS["max_pool.overwrite_on_overlap"].build()
    verify.check_vjp(wrong, reference.max_pool, overlapping_x, window=3, stride=3).assert_ok()


# --------------------------------------------------------------------------- residual memory


def _residuals(fn, x):
    """(shape, dtype) of every array that ``jax.vjp`` keeps for the backward pass (traced only)."""
    vjp = jax.eval_shape(lambda x: jax.vjp(fn, x)[1], x)
    return [(leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(vjp)]


def _nbytes(leaves):
    return sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in leaves)


@pytest.mark.parametrize("window,stride,expected", [(2, 2, (4, 8, 8, 8)), (3, 2, (4, 7, 7, 8))])
def test_max_pool_keeps_the_argmax_not_the_input(rng, window, stride, expected):
    x = jnp.asarray(rng.normal(size=(4, 16, 16, 8)), jnp.float32)
    kept = _residuals(lambda x: ops.max_pool(x, window, stride), x)
    assert kept == [(expected, jnp.int8)]  # one byte per output element; shapes are static
    assert _nbytes(kept) == np.prod(expected) < x.nbytes / 4
    assert _nbytes(_residuals(lambda x: reference.max_pool(x, window, stride), x)) >= x.nbytes


def test_max_pool_argmax_widens_for_large_windows(rng):
    x = jnp.asarray(rng.normal(size=(1, 24, 24, 2)), jnp.float32)
    assert _residuals(lambda x: ops.max_pool(x, 12), x) == [((1, 2, 2, 2), jnp.int32)]  # 144 offsets > 127
    assert _residuals(lambda x: ops.max_pool(x, (11, 11)), x) == [((1, 2, 2, 2), jnp.int8)]  # 121 offsets


def test_mean_pool_keeps_nothing(rng):
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32)
    assert _residuals(lambda x: ops.mean_pool(x, 3, 2, "SAME", count_padding=False), x) == []


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["max_pool", "mean_pool"])
def test_errors(name):
    op, ref = getattr(ops, name), getattr(reference, name)
    x = jnp.zeros((2, 5, 5, 3), jnp.float32)
    with pytest.raises(ValueError, match=rf"{name}: the window \(6 with dilation 1, extent 6\) is larger than the "
                                         rf"padded input \(5 \+ 0 \+ 0 = 5\) along spatial axis 0"):
        op(x, 6)
    with pytest.raises(ValueError, match=rf"{name}: the window \(4 with dilation 1, extent 4\) is larger than the "
                                         rf"padded input \(2 \+ 1 \+ 0 = 3\) along spatial axis 1"):
        op(jnp.zeros((1, 4, 2, 1), jnp.float32), (2, 4), padding=((0, 0), (1, 0)))
    with pytest.raises(ValueError, match=rf"{name}: `stride` must be >= 1 on every axis, got 0"):
        op(x, 2, 0)
    with pytest.raises(ValueError, match=rf"{name}: `window` must be >= 1 on every axis, got \(2, 0\)"):
        op(x, (2, 0))
    with pytest.raises(ValueError, match=rf"{name}: `x` must have 3 or 4 or 5 dimensions \(N, \*spatial, C\): 1 to 3 "
                                         rf"spatial axes, channels last, got 2 dimensions with shape \(5, 5\)"):
        op(x[0, :, :, 0], 2)
    with pytest.raises(ValueError, match=rf"{name}: `window` has 3 entries but `x` of shape \(2, 5, 5, 3\) \(N, "
                                         rf"\*spatial, C\) has 2 spatial axes; give one entry per spatial axis"):
        op(x, (2, 2, 2))
    with pytest.raises(ValueError, match=rf"{name}: `stride` has 1 entries but `x` of shape \(2, 5, 5, 3\) \(N, "
                                         rf"\*spatial, C\) has 2 spatial axes"):
        op(x, 2, (1,))
    with pytest.raises(ValueError, match=rf"{name}: unknown `padding` 'HALF'; use 'VALID', 'SAME', 'FULL', an int, "
                                         rf"or 2 \(low, high\) pairs"):
        op(x, 2, padding="HALF")
    with pytest.raises(ValueError, match=rf"{name}: `padding` must not be negative, got -1"):
        op(x, 2, padding=-1)
    with pytest.raises(TypeError, match=rf"{name}: `padding` must be 2 \(low, high\) pairs of ints, got "
                                        rf"\(\(1, 1\), \(0.5, 0\)\)"):
        op(x, 2, padding=((1, 1), (0.5, 0)))
    with pytest.raises(ValueError, match=rf"{name}: `padding` must be 'VALID', 'SAME', 'FULL', an int, or 2 \(low, "
                                         rf"high\) pairs \(one per spatial axis\), got \(\(1, 1\),\)"):
        op(x, 2, padding=((1, 1),))
    with pytest.raises(ValueError, match=rf"{name}: a window covers padding only: with padding \(\(0, 3\), \(0, 0\)\) "
                                         rf"\(pads \(\(0, 3\), \(0, 0\)\)\), window \(2, 2\), dilation \(1, 1\) and "
                                         rf"stride \(2, 2\) on an input of spatial size \(5, 5\), output position 3 "
                                         rf"along spatial axis 0 reads input positions \[6, 7\], none inside \[0, 5\)"):
        op(x, 2, padding=((0, 3), (0, 0)))
    with pytest.raises(TypeError, match=rf"{name}: `window` must be an int or a sequence of 2 ints \(one per spatial "
                                        rf"axis\), got 2.0"):
        op(x, 2.0)
    with pytest.raises(TypeError, match=rf"{name}: `x` must be a floating-point array .* got dtype int32"):
        op(jnp.zeros((2, 5, 5, 3), jnp.int32), 2)
    with pytest.raises(ValueError, match=rf"{name}: `window` has 3 entries"):  # the reference validates alike
        ref(x, (2, 2, 2))


def test_count_padding_must_be_a_bool():
    with pytest.raises(TypeError, match=r"mean_pool: `count_padding` must be True or False, got 'no'"):
        ops.mean_pool(jnp.zeros((1, 4, 4, 1), jnp.float32), 2, count_padding="no")


# --------------------------------------------------------------------------- PyTorch's options


def _torch_out(n, k, s, p, d, ceil):
    """PyTorch's pooling output size (pooling_output_shape): floor or ceil, then the rule that
    the last window must start inside the input or its left padding."""
    numerator = n + 2 * p - d * (k - 1) - 1
    out = (-(-numerator // s) if ceil else numerator // s) + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def _torch_windows(n, k, s, p, d, ceil):
    """Per output position, the input positions its window reads (padding < 0 or >= n)."""
    return [[i * s - p + j * d for j in range(k)] for i in range(_torch_out(n, k, s, p, d, ceil))]


@pytest.mark.parametrize("n, k, s, p, d", [(7, 2, 2, 0, 1), (8, 3, 2, 1, 1), (9, 3, 2, 1, 2), (6, 2, 3, 1, 1),
                                           (10, 3, 3, 0, 2)])
def test_max_pool_dilation_ceil_mode_and_indices_are_pytorchs(rng, n, k, s, p, d):
    x = distinct(rng, 2, n, 3)
    for ceil in (False, True):
        windows = _torch_windows(n, k, s, p, d, ceil)
        y, indices = ops.max_pool(x, k, s, p, dilation=d, ceil_mode=ceil, return_indices=True)
        assert y.shape == (2, len(windows), 3)
        for i, positions in enumerate(windows):
            real = [q for q in positions if 0 <= q < n]
            best = np.asarray(real)[np.argmax(x[:, real, :], axis=1)]  # (N, C) input positions
            np.testing.assert_array_equal(y[:, i], np.take_along_axis(x, best[:, None], 1)[:, 0])
            np.testing.assert_array_equal(indices[:, i], best)
        yr, ir = reference.max_pool(x, k, s, p, dilation=d, ceil_mode=ceil, return_indices=True)
        np.testing.assert_array_equal(yr, y)
        np.testing.assert_array_equal(ir, indices)
    opcheck.assert_vjp("max_pool", jnp.asarray(x), window=k, stride=s, padding=p, dilation=d, ceil_mode=True)


def test_max_pool_indices_are_flat_in_the_input_plane(rng):
    x = distinct(rng, 1, 5, 6, 2)
    y, indices = ops.max_pool(x, 2, 2, ceil_mode=True, return_indices=True)
    assert indices.dtype == jnp.int32 and indices.shape == y.shape == (1, 3, 3, 2)
    rows, cols = np.divmod(np.asarray(indices), 6)  # PyTorch: h·W + w in each (n, c) plane
    np.testing.assert_array_equal(y, np.take_along_axis(x.reshape(1, 30, 2), indices.reshape(1, 9, 2), 1)
                                  .reshape(y.shape))
    assert rows.max() == 4 and cols.max() == 5  # the ceil-mode windows reach the last row and column
    g = jax.grad(lambda x: ops.max_pool(x, 2, 2, ceil_mode=True, return_indices=True)[0].sum())(x)
    routed = np.sort(np.flatnonzero(np.asarray(g)[0, :, :, 0]))
    np.testing.assert_array_equal(routed, np.sort(indices[0, :, :, 0].ravel()))


@pytest.mark.parametrize("count_padding", [True, False])
@pytest.mark.parametrize("n, k, s, p", [(7, 2, 2, 0), (8, 3, 2, 1), (6, 2, 3, 1), (5, 3, 3, 1)])
def test_mean_pool_ceil_mode_divisor_is_pytorchs(rng, n, k, s, p, count_padding):
    # torch avg_pool: the divisor counts the window's entries inside [−p, n + p) with count_include_pad,
    # inside [0, n) without; the positions added by ceil_mode never count.
    x = rng.normal(size=(2, n, 3))
    windows = _torch_windows(n, k, s, p, 1, True)
    y = ops.mean_pool(x, k, s, p, count_padding=count_padding, ceil_mode=True)
    assert y.shape == (2, len(windows), 3)
    for i, positions in enumerate(windows):
        real = [q for q in positions if 0 <= q < n]
        divisor = len([q for q in positions if -p <= q < n + p]) if count_padding else len(real)
        np.testing.assert_allclose(y[:, i], x[:, real].sum(axis=1) / divisor, rtol=1e-12)
    np.testing.assert_allclose(reference.mean_pool(x, k, s, p, count_padding, ceil_mode=True), y, rtol=1e-12)
    opcheck.assert_vjp("mean_pool", jnp.asarray(x), window=k, stride=s, padding=p, count_padding=count_padding,
                       ceil_mode=True)


def test_pooling_dilation_and_ceil_mode_under_every_transform(rng):
    x = jnp.asarray(distinct(rng, 2, 7, 6, 2))
    opcheck.assert_all("max_pool", x, window=2, stride=2, dilation=(2, 1), ceil_mode=True)
    opcheck.assert_all("mean_pool", x, window=3, stride=2, padding=1, dilation=2, ceil_mode=True)


def test_pooling_option_errors():
    x = jnp.ones((1, 4, 4, 1))
    with pytest.raises(TypeError, match=r"max_pool: `ceil_mode` must be True or False, got 1"):
        ops.max_pool(x, 2, ceil_mode=1)
    with pytest.raises(TypeError, match=r"max_pool: `return_indices` must be True or False, got 'yes'"):
        ops.max_pool(x, 2, return_indices="yes")
    with pytest.raises(ValueError, match=r"mean_pool: `dilation` has 3 entries but `x` of shape \(1, 4, 4, 1\)"):
        ops.mean_pool(x, 2, dilation=(1, 1, 1))
    with pytest.raises(ValueError, match=r"max_pool: the window \(3 with dilation 2, extent 5\) is larger than the "
                                         r"padded input"):
        ops.max_pool(x, 3, dilation=2)


# --------------------------------------------------------------------------- windows that read padding only


def _blind_window(n, k, s, p, d, ceil):
    """Brute force: the first output position whose window reads no input position, or None."""
    for i, positions in enumerate(_torch_windows(n, k, s, p, d, ceil)):
        if not any(0 <= q < n for q in positions):
            return i, positions
    return None


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pooling_refuses_exactly_the_geometries_with_a_window_of_padding_only(n):
    """Every window size, stride, padding, dilation and rounding on a 1-D input of n: the ops refuse
    a geometry iff a brute-force enumeration of the windows finds one that reads padding only (there
    max_pool gave −inf, mean_pool(count_padding=False) 0/0), and accept every other one, including
    padding sides of k or more that no window reads alone (dilated windows reach past them)."""
    x = jax.ShapeDtypeStruct((1, n, 1), jnp.float32)
    for k, s, p, d, ceil in itertools.product([1, 2, 3], [1, 2, 3], [0, 1, 2, 3], [1, 2, 3, 4], [False, True]):
        if n + 2 * p < d * (k - 1) + 1:  # no window fits: refused with its own message
            continue
        blind = _blind_window(n, k, s, p, d, ceil)
        ops_ = (lambda x: ops.max_pool(x, k, s, p, dilation=d, ceil_mode=ceil),
                lambda x: ops.mean_pool(x, k, s, p, count_padding=False, dilation=d, ceil_mode=ceil))
        for op in ops_:
            if blind is None:
                assert jax.eval_shape(op, x).shape == (1, len(_torch_windows(n, k, s, p, d, ceil)), 1)
                continue
            read = re.escape(str(blind[1]))
            with pytest.raises(ValueError, match=rf"a window covers padding only: with padding {p} .* window \({k},\), "
                                                 rf"dilation \({d},\) and stride \({s},\) on an input of spatial size "
                                                 rf"\({n},\), output position {blind[0]} along spatial axis 0 reads "
                                                 rf"input positions {read}, none inside \[0, {n}\)"):
                jax.eval_shape(op, x)


def test_pooling_padding_only_windows_are_refused_on_any_axis_and_by_the_references():
    x = jnp.ones((1, 5, 3, 2), jnp.float32)  # axis 1 (size 3): entries −1 and 3 with dilation 4 and padding 1
    for op in (ops.max_pool, ops.mean_pool, reference.max_pool, reference.mean_pool):
        with pytest.raises(ValueError, match=r"output position 0 along spatial axis 1 reads input positions \[-1, 3\]"):
            op(x, 2, 1, 1, dilation=(1, 4))
    with pytest.raises(ValueError, match=r"MaxPool: a window covers padding only"):
        nn.MaxPool(2, 3, padding=((3, 0),)).init(jax.random.key(0), (1, 4, 1))


@pytest.mark.parametrize("n, k, s, p, d", [(5, 2, 1, 2, 3), (6, 2, 2, 3, 4), (7, 3, 2, 3, 2), (4, 2, 3, 2, 3)])
def test_pooling_with_padding_sides_of_a_window_or_more_that_dilation_reaches_past(rng, n, k, s, p, d):
    # padding p ≥ k, accepted since every window reads an input element: values are PyTorch's definitions
    assert p >= k and _blind_window(n, k, s, p, d, False) is None
    x = distinct(rng, 2, n, 3)
    windows = _torch_windows(n, k, s, p, d, False)
    y = ops.max_pool(x, k, s, p, dilation=d)
    m = ops.mean_pool(x, k, s, p, count_padding=False, dilation=d)
    for i, positions in enumerate(windows):
        real = [q for q in positions if 0 <= q < n]
        np.testing.assert_array_equal(y[:, i], x[:, real].max(axis=1))
        np.testing.assert_allclose(m[:, i], x[:, real].mean(axis=1), rtol=1e-12)
    np.testing.assert_array_equal(reference.max_pool(x, k, s, p, dilation=d), y)
    opcheck.assert_vjp("mean_pool", jnp.asarray(x), window=k, stride=s, padding=p, count_padding=False, dilation=d)
    opcheck.assert_vjp("max_pool", jnp.asarray(x), window=k, stride=s, padding=p, dilation=d)


@pytest.mark.parametrize("d, ceil", [(2, False), (3, True), ((2, 1), True)])
def test_max_pool_ties_go_to_the_first_maximum_with_dilation_in_rule_and_reference(rng, d, ceil):
    """torch.nn.functional.max_pool2d with dilation routes a window's δ to its first maximum in
    window order (the CPU kernel keeps the first strict maximum), as jaxcnn's rule; the reference
    used to split δ among tied maxima (autodiff of jnp.max). Brute force over the windows."""
    x = rng.integers(0, 2, size=(2, 7, 6, 2)).astype(np.float64)  # ties in nearly every window
    k, s, p = 2, 1, 1
    dh, dw = (d, d) if isinstance(d, int) else d
    rows, cols = _torch_windows(7, k, s, p, dh, ceil), _torch_windows(6, k, s, p, dw, ceil)
    g = rng.normal(size=(2, len(rows), len(cols), 2))
    expected = np.zeros_like(x)
    for b, c in itertools.product(range(2), range(2)):
        for i, j in itertools.product(range(len(rows)), range(len(cols))):
            entries = [(q, r) for q in rows[i] for r in cols[j] if 0 <= q < 7 and 0 <= r < 6]  # window order
            q, r = max(entries, key=lambda e: (x[b, e[0], e[1], c], -entries.index(e)))  # the first maximum
            expected[b, q, r, c] += g[b, i, j, c]
    for op in (ops.max_pool, reference.max_pool):
        dx = _grad(op, jnp.asarray(x), g, window=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
        np.testing.assert_allclose(dx, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- forward mode

FORWARD_CASES = [
    ((2, 4, 6, 3), dict(window=2)),  # tiled
    ((2, 5, 6, 3), dict(window=3, stride=1, padding="SAME")),  # overlapping, padded
    ((1, 7, 6, 2), dict(window=2, stride=2, dilation=2, ceil_mode=True)),
    ((2, 7, 3), dict(window=3, stride=2, padding=1)),  # 1-D
    ((1, 3, 4, 4, 2), dict(window=2, stride=(1, 2, 2))),  # 3-D
]


@pytest.mark.parametrize("shape, settings", FORWARD_CASES)
@pytest.mark.parametrize("name", ["max_pool", "mean_pool"])
def test_forward_mode_matches_the_reference(rng, name, shape, settings):
    x = jnp.asarray(rng.standard_normal(shape))  # tie-free
    opcheck.assert_forward_mode(name, x, **settings)


@pytest.mark.parametrize("settings", [dict(count_padding=False, padding=1, stride=2, ceil_mode=True),
                                      dict(count_padding=True, padding=((1, 0), (0, 1)), stride=1)])
def test_mean_pool_forward_mode_divisors(rng, settings):
    opcheck.assert_forward_mode("mean_pool", jnp.asarray(rng.standard_normal((2, 5, 4, 2))), 3, **settings)


def test_mean_pool_forward_mode_block_sum(rng):  # the tiled forward that sums reshaped blocks (≥ 8 channels)
    opcheck.assert_forward_mode("mean_pool", jnp.asarray(rng.standard_normal((2, 4, 4, 8))), 2)


@pytest.mark.parametrize("settings", [dict(window=2), dict(window=3, stride=1, padding="SAME"),
                                      dict(window=2, stride=1, dilation=2, ceil_mode=True)])
def test_max_pool_tangent_at_a_tie_is_the_vjps_maximum(rng, settings):
    """Exact ties everywhere (values in {0, 1}): the JVP and the VJP route through the same maximum."""
    x = jnp.asarray(rng.integers(0, 2, (2, 6, 6, 2)), jnp.float64)
    opcheck.assert_adjoint_identity(lambda x: ops.max_pool(x, **settings), x)


def test_max_pool_tangent_of_an_all_equal_window_is_its_first_entry():
    x, t = jnp.ones((1, 2, 2, 1)), jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    _, t_y = jax.jvp(lambda x: ops.max_pool(x, 2), (x,), (t,))
    assert t_y.ravel().tolist() == [1.0]  # the first entry in window order, as the VJP's δ
    assert _grad(ops.max_pool, x, jnp.ones((1, 1, 1, 1)), window=2).ravel().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("op", [lambda x: ops.max_pool(x, 3, 2, padding=1), lambda x: ops.mean_pool(x, 3, 2, 1)],
                         ids=["max_pool", "mean_pool"])
def test_forward_mode_under_vmap_and_float32(rng, op):
    opcheck.assert_jvp_vmaps_and_keeps_float32(op, jnp.asarray(rng.standard_normal((3, 1, 5, 5, 2))))


@pytest.mark.parametrize("op", [lambda x: ops.max_pool(x, 2, return_indices=True),
                                lambda x: ops.adaptive_max_pool(x, 3, return_indices=True)], ids=["max", "adaptive"])
def test_forward_mode_with_return_indices(rng, op):
    x = jnp.asarray(rng.standard_normal((2, 4, 5, 3)))
    (y, indices), (t_y, t_indices) = jax.jvp(op, (x,), (x,))
    np.testing.assert_array_equal(t_y, y)  # max(x + εx) = (1 + ε) max(x): the tangent along x is y itself
    assert t_indices.dtype == jax.dtypes.float0 and t_indices.shape == indices.shape
