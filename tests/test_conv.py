"""Convolution: the lectures' worked examples, the gradient checks, the classic mistakes, the errors."""

import ast
import collections
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import opcheck
from conftest import covering
from jaxcnn import _shapes, _xla_cpu, _xla_cpu_conv, nn, ops, reference, verify
from jaxcnn.ops import _conv, _conv_formulas
from jaxcnn.ops._conv import FORMULAS, METHODS
from jaxcnn.ops._conv_plan import Plan, Problem
from jaxcnn._certify import mutants

#: The methods for every geometry (Winograd's F(2×2, 3×3), for 3 × 3 at stride 1 only, has its own tests).
GENERAL_METHODS = tuple(m for m in METHODS if m != "winograd")


def _plan(x_shape, w_shape, dtype=jnp.float32, **settings):
    """The plan ``ops.conv`` resolves for these shapes and settings (``method``, ``platform`` among them)."""
    return _conv._validate("conv", None, jnp.zeros(x_shape, dtype), jnp.zeros(w_shape, dtype), None,
                           settings.pop("stride", 1), settings.pop("padding", "VALID"), settings.pop("dilation", 1),
                           settings.pop("connections", None), settings.pop("groups", 1),
                           settings.pop("method", "auto"), settings.pop("platform", None))[3].plan


def _normal(rng, *shape, dtype=jnp.float64):
    return jnp.asarray(rng.normal(size=shape), dtype)


def _as_1d(seq):
    """A sequence as one example with one channel, (1, len, 1)."""
    return jnp.asarray(seq, jnp.float64).reshape(1, -1, 1)


def _kernel_1d(seq):
    return jnp.asarray(seq, jnp.float64).reshape(-1, 1, 1)


# --------------------------------------------------------------------------- worked examples: forward


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_hu_1d_sequences_valid_full_same(method):
    # Hu & Zhu: f = [0, 1, 2, −1, 3], g = [1, 1, 0]; convolution is correlation with the
    # flipped kernel (rot180), so the kernel handed to the op is g reversed.
    f, g = _as_1d([0, 1, 2, -1, 3]), _kernel_1d([1, 1, 0][::-1])
    expected = {"VALID": [3, 1, 2], "FULL": [0, 1, 3, 1, 2, 3, 0], "SAME": [1, 3, 1, 2, 3]}
    for padding, values in expected.items():
        np.testing.assert_array_equal(ops.conv(f, g, padding=padding, method=method).ravel(), values)


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_hu_conv2_matlab_example(method):
    # Hu & Zhu's MATLAB example: conv2(A, B, 'full' | 'valid' | 'same') as printed.
    A = jnp.array([[0, 0, 1, 2], [2, 2, 0, 0], [2, 1, 2, 2], [3, 0, 1, 1]], jnp.float64)
    B = jnp.array([[0, 0, -1], [1, -1, 1], [-1, 1, 1]], jnp.float64)
    full = [[0, 0, 0, 0, -1, -2], [0, 0, -1, -1, -1, 2], [2, 0, -3, 0, 1, 0],
            [0, -1, 4, 3, -1, 1], [1, -2, 5, 1, 4, 3], [-3, 3, 2, 0, 2, 1]]
    valid = [[-3, 0], [4, 3]]
    same = [[0, -1, -1, -1], [0, -3, 0, 1], [-1, 4, 3, -1], [-2, 5, 1, 4]]
    x, rot180_B = A[None, :, :, None], B[::-1, ::-1, None, None]
    for padding, printed in [("FULL", full), ("VALID", valid), ("SAME", same)]:
        y = ops.conv(x, rot180_B, padding=padding, method=method)
        np.testing.assert_array_equal(y[0, :, :, 0], printed)


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_forward_is_the_raj_loop(rng, method):
    # Raj's pseudocode: z(n, m, x', y') = Σ W(n, :, i, j) · Y(:, x'·S + i, y'·S + j) + b,
    # over the zero-padded, dilated input; written here as plain loops.
    x, w, b = _normal(rng, 2, 7, 6, 3), _normal(rng, 3, 2, 3, 4), _normal(rng, 4)
    stride, dilation, pads = (2, 1), (1, 2), ((1, 2), (0, 1))
    xp = np.pad(np.asarray(x), ((0, 0), *pads, (0, 0)))
    y = ops.conv(x, w, b, stride=stride, padding=pads, dilation=dilation, method=method)
    expected = np.zeros(y.shape)
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            for ki in range(3):
                for kj in range(2):
                    patch = xp[:, i * 2 + ki * 1, j * 1 + kj * 2, :]
                    expected[:, i, j, :] += patch @ np.asarray(w)[ki, kj]
    np.testing.assert_allclose(y, expected + np.asarray(b), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- worked examples: backward


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_hu_1d_local_sensitivities(method):
    # Hu & Zhu "Local sensitivity in the example": y (5) ⋆ w (3) → 3 outputs.
    y = jnp.array([0.5, -1.0, 2.0, 3.0, -0.25], jnp.float64)
    w1, w2, w3 = 2.0, 3.0, 5.0
    d1, d2, d3 = 7.0, 11.0, 13.0
    _, vjp = jax.vjp(lambda y, w, b: ops.conv(y, w, b, method=method),
                     _as_1d(y), _kernel_1d([w1, w2, w3]), jnp.zeros(1, jnp.float64))
    dy, dw, db = vjp(_as_1d([d1, d2, d3]))
    np.testing.assert_array_equal(
        dy.ravel(), [d1 * w1, d1 * w2 + d2 * w1, d1 * w3 + d2 * w2 + d3 * w1, d2 * w3 + d3 * w2, d3 * w3]
    )
    np.testing.assert_array_equal(dy.ravel(), np.convolve([d1, d2, d3], [w1, w2, w3], "full"))  # δ *full w
    # ∂E/∂w_k = Σ_i δ_i y_{i+k−1} = y *valid rot180(δ); ∂E/∂b = Σ δ_i
    np.testing.assert_array_equal(dw.ravel(), [d1 * y[0] + d2 * y[1] + d3 * y[2],
                                              d1 * y[1] + d2 * y[2] + d3 * y[3],
                                              d1 * y[2] + d2 * y[3] + d3 * y[4]])
    np.testing.assert_array_equal(dw.ravel(), np.convolve(y, [d3, d2, d1], "valid"))
    np.testing.assert_array_equal(db, [d1 + d2 + d3])


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_hu_2d_local_sensitivity_table(method):
    # Hu & Zhu: a 3×3 map, a 2×2 filter, the 2×2 δ; the nine δ⁽ˡ⁻¹⁾ entries as printed.
    w11, w12, w21, w22 = 2.0, 3.0, 5.0, 7.0
    d11, d12, d21, d22 = 11.0, 13.0, 17.0, 19.0
    y = jnp.asarray(np.arange(9.0).reshape(1, 3, 3, 1) - 4)
    w = jnp.array([[w11, w12], [w21, w22]], jnp.float64)[:, :, None, None]
    _, vjp = jax.vjp(lambda y, w: ops.conv(y, w, method=method), y, w)
    dy, _ = vjp(jnp.array([[d11, d12], [d21, d22]], jnp.float64)[None, :, :, None])
    expected = [
        [d11 * w11, d11 * w12 + d12 * w11, d12 * w12],
        [d11 * w21 + d21 * w11, d11 * w22 + d12 * w21 + d21 * w12 + d22 * w11, d12 * w22 + d22 * w12],
        [d21 * w21, d21 * w22 + d22 * w21, d22 * w22],
    ]
    np.testing.assert_array_equal(dy[0, :, :, 0], expected)


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_hu_feature_combination_quiz(rng, method):
    # Hu & Zhu, case 2: y₁ = y₁' ⋆ w₁₁ + y₂' ⋆ w₁₂ + b₁, y₂ = y₂' ⋆ w₂₂ + b₂, i.e. the
    # connection table M₁ = {1, 2}, M₂ = {2}. Quiz answer: δ₁' = δ₁ *full w₁₁ and
    # δ₂' = δ₁ *full w₁₂ + δ₂ *full w₂₂; ∂E/∂w_qp = y_p *valid rot180(δ_q); w₂₁ is absent.
    table = np.array([[True, False], [True, True]])  # table[p, q]: input p feeds output q
    y_prev, w, b = _normal(rng, 1, 8, 2), _normal(rng, 3, 2, 2), _normal(rng, 2)
    delta = _normal(rng, 1, 6, 2)
    _, vjp = jax.vjp(lambda *a: ops.conv(*a, connections=table, method=method), y_prev, w, b)
    dy, dw, db = vjp(delta)
    d, wn, yn = np.asarray(delta[0]), np.asarray(w), np.asarray(y_prev[0])
    w_qp = lambda q, p: wn[:, p, q]  # noqa: E731  (lecture index order: to q from p)
    np.testing.assert_allclose(dy[0, :, 0], np.convolve(d[:, 0], w_qp(0, 0), "full"), rtol=1e-12)
    np.testing.assert_allclose(
        dy[0, :, 1], np.convolve(d[:, 0], w_qp(0, 1), "full") + np.convolve(d[:, 1], w_qp(1, 1), "full"), rtol=1e-12
    )
    for q, p in [(0, 0), (0, 1), (1, 1)]:
        np.testing.assert_allclose(dw[:, p, q], np.convolve(yn[:, p], d[::-1, q], "valid"), rtol=1e-12)
    np.testing.assert_array_equal(dw[:, 0, 1], 0.0)  # w₂₁ is not a parameter: exactly zero
    np.testing.assert_allclose(db, d.sum(0), rtol=1e-12)
    # and the forward ignores whatever w₂₁ holds
    np.testing.assert_array_equal(
        ops.conv(y_prev, w, b, connections=table, method=method),
        ops.conv(y_prev, w.at[:, 0, 1].set(1e3), b, connections=table, method=method),
    )


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_raj_stride_upsamples_delta_and_crops_padding(rng, method):
    # Raj: with stride S, insert S − 1 zeros between the entries of δ, pad by K − 1,
    # convolve with the filter, then delete the forward's zero-padding (here 1 and 2).
    x, w = _normal(rng, 1, 11, 1), _normal(rng, 4, 1, 1)
    _, vjp = jax.vjp(lambda x: ops.conv(x, w, stride=3, padding=((1, 2),), method=method), x)
    delta = _normal(rng, 1, 4, 1)  # ⌊(11 + 3 − 4) / 3⌋ + 1 = 4
    (dx,) = vjp(delta)
    upsampled = np.zeros(10)  # (4 − 1)·3 + 1
    upsampled[::3] = np.asarray(delta).ravel()
    padded_map_derivative = np.convolve(upsampled, np.asarray(w).ravel(), "full")  # 13 of the 14 padded inputs
    padded_map_derivative = np.append(padded_map_derivative, 0.0)  # the last one no window reached
    np.testing.assert_allclose(dx.ravel(), padded_map_derivative[1:-2], rtol=1e-12)


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_park_index_formulas_multichannel(rng, method):
    # Park: ∂L/∂w_ijcd = Σ_kl L_kld x_{k+i,l+j,c} and ∂L/∂x = Σ L_mn w_{m−i,n−j} summed over
    # the output channels d, written as explicit scatter loops over the forward's terms.
    x, w, L = _normal(rng, 2, 5, 6, 3), _normal(rng, 3, 2, 3, 4), _normal(rng, 2, 3, 5, 4)
    _, vjp = jax.vjp(lambda x, w: ops.conv(x, w, method=method), x, w)
    dx, dw = vjp(L)
    xn, wn, Ln = map(np.asarray, (x, w, L))
    dx_loop, dw_loop = np.zeros(x.shape), np.zeros(w.shape)
    for k in range(3):
        for l in range(5):
            for i in range(3):
                for j in range(2):
                    dw_loop[i, j] += np.einsum("nc,nd->cd", xn[:, k + i, l + j], Ln[:, k, l])
                    dx_loop[:, k + i, l + j] += Ln[:, k, l] @ wn[i, j].T
    np.testing.assert_allclose(dw, dw_loop, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_loop, rtol=1e-12)


# --------------------------------------------------------------------------- LeNet-5's table


def test_lenet5_c3_table_is_the_lecture_table():
    # Hu & Zhu's slide (LeCun et al. 1998, Table I): the C3 maps each S2 map feeds.
    feeds = {
        0: [0, 4, 5, 6, 9, 10, 11, 12, 14, 15],
        1: [0, 1, 5, 6, 7, 10, 11, 12, 13, 15],
        2: [0, 1, 2, 6, 7, 8, 11, 13, 14, 15],
        3: [1, 2, 3, 6, 7, 8, 9, 12, 14, 15],
        4: [2, 3, 4, 7, 8, 9, 10, 12, 13, 15],
        5: [3, 4, 5, 8, 9, 10, 11, 13, 14, 15],
    }
    table = ops.LENET5_C3_TABLE
    assert table.shape == (6, 16) and table.dtype == np.bool_ and int(table.sum()) == 60
    for p, qs in feeds.items():
        assert np.flatnonzero(table[p]).tolist() == qs
    assert table.sum(0).tolist() == [3] * 6 + [4] * 9 + [6]
    assert not table.flags.writeable
    assert reference.LENET5_C3_TABLE is table


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_lenet5_c3_absent_connections_get_exactly_zero_gradient(rng, method):
    x, w, b = _normal(rng, 2, 9, 9, 6), _normal(rng, 5, 5, 6, 16), _normal(rng, 16)
    settings = dict(connections=ops.LENET5_C3_TABLE, method=method)
    verify.check_vjp(ops.conv, reference.conv, x, w, b, **settings).assert_ok()
    dw = jax.grad(lambda w: jnp.sum(ops.conv(x, w, b, **settings) ** 2))(w)
    absent = ~ops.LENET5_C3_TABLE
    assert np.all(np.asarray(dw)[:, :, absent] == 0.0)
    assert np.all(np.asarray(dw)[:, :, ~absent] != 0.0)


# --------------------------------------------------------------------------- gradient checks


@st.composite
def conv_cases(draw):
    rank = draw(st.integers(1, 3))
    if rank < 3:
        window = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    else:  # any axis may reach 5, at most 30 taps (the im2col route compiles one slice per tap)
        sizes = [draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 2))]
        window = tuple(draw(st.permutations(sizes)))
    per_axis = lambda lo, hi: st.one_of(st.integers(lo, hi), st.tuples(*[st.integers(lo, hi)] * rank))  # noqa: E731
    stride, dilation = draw(per_axis(1, 3)), draw(per_axis(1, 2))
    padding = draw(st.one_of(
        st.sampled_from(["VALID", "SAME", "FULL"]),
        st.integers(0, 2),
        st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2))] * rank),
    ))
    dil = (dilation,) * rank if isinstance(dilation, int) else dilation
    extent = [(k - 1) * d + 1 for k, d in zip(window, dil)]
    if isinstance(padding, str):
        total = [2 * (k - 1) if padding == "FULL" else (k - 1 if padding == "SAME" else 0) for k in extent]
        total = [0] * rank if padding == "SAME" else total  # SAME always fits: keep sizes free
    elif isinstance(padding, int):
        total = [2 * padding] * rank
    else:
        total = [lo + hi for lo, hi in padding]
    spread = 4 if rank < 3 else 2
    spatial = tuple(
        draw(st.integers(max(1, k - t) if padding != "SAME" else 1, max(1, k - t) + spread))
        for k, t in zip(extent, total)
    )
    n, c_in, c_out = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    connections = draw(st.one_of(
        st.none(), st.lists(st.booleans(), min_size=c_in * c_out, max_size=c_in * c_out)
    ))
    if connections is not None:
        connections = np.array(connections).reshape(c_in, c_out)
    return dict(
        x_shape=(n, *spatial, c_in), w_shape=(*window, c_in, c_out), bias=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
        settings=dict(stride=stride, padding=padding, dilation=dilation, connections=connections),
    )


@pytest.mark.parametrize("method", GENERAL_METHODS)
@settings(max_examples=8, deadline=None)
@given(case=conv_cases())
def test_vjp_matches_autodiff_and_finite_differences(method, case):
    rng = np.random.default_rng(case["seed"])
    x, w = _normal(rng, *case["x_shape"]), _normal(rng, *case["w_shape"])
    args = (x, w, _normal(rng, case["w_shape"][-1])) if case["bias"] else (x, w)
    verify.check_vjp(ops.conv, reference.conv, *args, method=method, **case["settings"]).assert_ok()
    if case["seed"] % 2:  # finite differences on every other example
        verify.check_numerical(ops.conv, *args, method=method, **case["settings"]).assert_ok()


TRANSFORM_CASES = [
    ((2, 9, 2), (3, 2, 3), dict(stride=2, padding="SAME", dilation=2)),
    ((2, 7, 6, 3), (3, 2, 3, 2), dict(stride=(2, 3), padding=((1, 0), (2, 1)))),
    ((2, 6, 7, 6), (5, 5, 6, 16), dict(padding="FULL", connections=ops.LENET5_C3_TABLE)),
    ((1, 5, 4, 6, 2), (2, 3, 2, 2, 3), dict(stride=(1, 2, 2), padding=1, dilation=(2, 1, 1))),
]


@covering("method", GENERAL_METHODS, "x_shape,w_shape,settings", TRANSFORM_CASES, ["1d", "2d", "2d-lenet-c3", "3d"])
def test_gradients_under_jit_vmap_and_grad_of_grad(rng, method, x_shape, w_shape, settings):
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    settings = dict(settings, method=method)
    opcheck.assert_jit("conv", x, w, b, **settings)
    opcheck.assert_vmap("conv", x, w, b, in_axes=(0, 0, None), **settings)  # per-example kernels too
    opcheck.assert_grad_of_grad("conv", x, w, b, **settings)


@covering("method", GENERAL_METHODS, "dtype", ["float32", "bfloat16"])
def test_vjp_low_precision(rng, method, dtype):
    x, w, b = _normal(rng, 2, 8, 7, 3, dtype=dtype), _normal(rng, 3, 3, 3, 4, dtype=dtype), _normal(rng, 4, dtype=dtype)
    result = verify.check_vjp(ops.conv, reference.conv, x, w, b, stride=2, padding="SAME", method=method)
    result.assert_ok()
    assert result.dtype == dtype
    assert ops.conv(x, w, b, method=method).dtype == dtype


@pytest.mark.parametrize("name,rank", [("conv1d", 1), ("conv2d", 2), ("conv3d", 3)])
def test_rank_aliases(rng, name, rank):
    x, w = _normal(rng, 2, *[6] * rank, 2), _normal(rng, *[3] * rank, 2, 3)
    alias = getattr(ops, name)
    np.testing.assert_array_equal(alias(x, w, stride=2, padding="SAME"), ops.conv(x, w, stride=2, padding="SAME"))
    verify.check_vjp(alias, getattr(reference, name), x, w, stride=2, padding="SAME").assert_ok()
    wrong = _normal(rng, *[3] * (rank % 3 + 1), 2, 3)
    with pytest.raises(ValueError, match=rf"{name}: `w` must have {rank + 2} dimensions"):
        alias(x, wrong)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("padding", ["VALID", "SAME", "FULL", 1, ((2, 0), (0, 3))])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("window", [1, 2, 3, 5])
def test_output_shape_formula(padding, stride, window):
    # out = ⌊(n + lo + hi − k) / s⌋ + 1, SAME: ⌈n / s⌉; the reference lets lax pad SAME itself.
    n_h, n_w = 11, 8
    x, w = jnp.ones((1, n_h, n_w, 2), jnp.float32), jnp.ones((window, window, 2, 3), jnp.float32)
    if padding == "SAME":
        expected = (-(-n_h // stride), -(-n_w // stride))
    else:
        pads = {"VALID": ((0, 0),) * 2, "FULL": ((window - 1,) * 2,) * 2, 1: ((1, 1),) * 2}.get(padding, padding)
        expected = tuple((n + lo + hi - window) // stride + 1 for n, (lo, hi) in zip((n_h, n_w), pads))
    for method in GENERAL_METHODS:  # traced, not run: the shapes are the formula's
        assert jax.eval_shape(lambda x, w: ops.conv(x, w, stride=stride, padding=padding, method=method),
                              x, w).shape == (1, *expected, 3)
    assert reference.conv(x, w, stride=stride, padding=padding).shape == (1, *expected, 3)


# --------------------------------------------------------------------------- the checker catches the lectures' mistakes
#
# The wrong rules live once, in jaxcnn._certify.mutants, each with the lecture that warns against it;
# here every conv mistake the lectures name meets the checker at a small case that shows it, must be
# blamed on exactly the argument it breaks, and the right rule passes the same check.

CONV_MISTAKES = [  # (mutant, x shape, w shape, settings)
    ("conv.no_kernel_flip", (2, 6, 7, 2), (3, 3, 2, 3), {}),
    ("conv.no_stride_upsampling", (2, 9, 9, 2), (3, 3, 2, 3), {"stride": 2}),
    ("conv.dw_no_stride_upsampling", (2, 9, 9, 2), (3, 3, 2, 3), {"stride": 2}),
    ("conv.padding_not_cropped", (2, 6, 5, 2), (3, 3, 2, 3), {"padding": "SAME"}),
    ("conv.own_map_only", (2, 6, 7, 3), (3, 3, 3, 3), {}),
    ("conv.dw_flipped_delta", (2, 6, 7, 2), (3, 3, 2, 3), {}),
]


@pytest.mark.parametrize("name, x_shape, w_shape, settings", CONV_MISTAKES)
def test_checker_catches_the_lectures_conv_mistakes(rng, name, x_shape, w_shape, settings):
    mutant = mutants.MUTANTS[name]
    assert mutant.lecture
    args = (_normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1]))
    result = verify.check_vjp(mutant.build(), reference.conv, *args, **settings)
    assert result.forward.ok and not result.ok
    assert [a.name for a in result.arguments if not a.ok] == [mutant.argument], result
    verify.check_vjp(ops.conv, reference.conv, *args, **settings).assert_ok()


# --------------------------------------------------------------------------- errors


def test_errors(rng):
    x, w = _normal(rng, 2, 8, 8, 3, dtype=jnp.float32), _normal(rng, 3, 3, 3, 4, dtype=jnp.float32)
    b = _normal(rng, 4, dtype=jnp.float32)
    for conv in (ops.conv, reference.conv):  # the reference validates identically
        with pytest.raises(ValueError, match=r"conv: `w` must have C_in = x.shape\[-1\] = 3 input channels .* got w "
                                             r"of shape \(3, 3, 2, 4\).*HWIO"):
            conv(x, w[:, :, :2], b)
        with pytest.raises(ValueError, match=r"conv: the window \(3 with dilation 4, extent 9\) is larger than the "
                                             r"padded input \(8 \+ 0 \+ 0 = 8\) along spatial axis 0"):
            conv(x, w, b, dilation=(4, 1))
        with pytest.raises(ValueError, match=r"conv: the window \(9 with dilation 1, extent 9\) is larger than the "
                                             r"padded input \(3 \+ 2 \+ 2 = 7\)"):
            conv(x[:, :3], _normal(rng, 9, 1, 3, 4, dtype=jnp.float32), padding=2)
        with pytest.raises(ValueError, match=r"conv: `stride` must be >= 1 on every axis, got \(1, 0\)"):
            conv(x, w, b, stride=(1, 0))
        with pytest.raises(ValueError, match=r"conv: `dilation` must be >= 1 on every axis, got 0"):
            conv(x, w, b, dilation=0)
        with pytest.raises(TypeError, match=r"conv: `stride` must be an int or a sequence of 2 ints \(one per "
                                            r"spatial axis\), got \(1, 1, 1\)"):
            conv(x, w, b, stride=(1, 1, 1))
        with pytest.raises(ValueError, match=r"conv: unknown `padding` 'HALF'; use 'VALID', 'SAME', 'FULL', an int, "
                                             r"or 2 \(low, high\) pairs"):
            conv(x, w, b, padding="HALF")
        with pytest.raises(ValueError, match=r"conv: `padding` must be 'VALID', 'SAME', 'FULL', an int, or 2 \(low, "
                                             r"high\) pairs .* got \(\(1, 1\),\)"):
            conv(x, w, b, padding=((1, 1),))
        with pytest.raises(ValueError, match=r"conv: `padding` must not be negative, got -1"):
            conv(x, w, b, padding=-1)
        with pytest.raises(TypeError, match=r"conv: `padding` must be 2 \(low, high\) pairs of ints, got "
                                            r"\(\(1.5, 1\), \(1, 1\)\); a fractional \(or bool\) padding is refused "
                                            r"rather than truncated"):
            conv(x, w, b, padding=((1.5, 1), (1, 1)))
        with pytest.raises(TypeError, match=r"conv: `padding` must be 2 \(low, high\) pairs of ints, got "
                                            r"\(\(1, 1\), \(True, 1\)\)"):
            conv(x, w, b, padding=((1, 1), (True, 1)))
        with pytest.raises(ValueError, match=r"conv: `connections` must have shape \(C_in, C_out\) = \(3, 4\) .* got "
                                             r"\(4, 3\)"):
            conv(x, w, b, connections=np.ones((4, 3), bool))
        with pytest.raises(TypeError, match=r"conv: `connections` must be a boolean table, got dtype int64; use"):
            conv(x, w, b, connections=np.ones((3, 4), np.int64))
        with pytest.raises(ValueError, match=r"conv: `x` must have 4 dimensions \(N, \*spatial, C_in\) to match the "
                                             r"2-D kernel `w` of shape \(3, 3, 3, 4\), got x of shape \(8, 8, 3\)"):
            conv(x[0], w, b)
        with pytest.raises(ValueError, match=r"conv: `x` must have 3 dimensions .* 1-D kernel `w` of shape \(3, 3, "
                                             r"4\), got x of shape \(2, 8, 8, 3\)"):
            conv(x, w[0], b)
        with pytest.raises(ValueError, match=r"conv: `w` must have 3 or 4 or 5 dimensions \(\*window, C_in, C_out\) "
                                             r"for 1, 2 or 3 spatial axes, got 2 dimensions"):
            conv(x, w[0, 0], b)
        with pytest.raises(ValueError, match=r"conv: `b` must have shape \(4,\) \(C_out,\) with C_out = "
                                             r"w.shape\[-1\], got \(3,\)"):
            conv(x, w, b[:3])
        with pytest.raises(ValueError, match=r"conv: unknown `method` 'fft'; use one of 'auto', 'xla', 'im2col', "
                                             r"'taps'"):
            conv(x, w, b, method="fft")
        with pytest.raises(TypeError, match=r"conv: all floating arguments must share one dtype, but `x` is float64, "
                                            r"`w` is float32"):
            conv(x.astype(jnp.float64), w, b)
        with pytest.raises(TypeError, match=r"conv: `x` must be a floating-point array .* got dtype int32"):
            conv(x.astype(jnp.int32), w, b)


def test_traced_connection_table_is_rejected(rng):
    x, w = _normal(rng, 1, 5, 5, 2), _normal(rng, 3, 3, 2, 2)
    with pytest.raises(TypeError, match=r"conv: `connections` must be a concrete boolean table .* got a traced value"):
        jax.jit(lambda t: ops.conv(x, w, connections=t))(np.ones((2, 2), bool))
    # closed over (static), a table works under jit
    y = jax.jit(lambda x: ops.conv(x, w, connections=np.eye(2, dtype=bool)))(x)
    np.testing.assert_allclose(y, reference.conv(x, w * jnp.eye(2)[None, None]), rtol=1e-12)


ROW_BLOCK_CASES = [  # (x spatial, window, stride, padding, dilation, C_in, C_out)
    ((12, 12), (5, 5), 1, "VALID", 1, 1, 6),  # LeNet-5's C1 at a smaller size: J = 4 of 8
    ((9, 45), (3, 3), 2, "SAME", 1, 3, 4),  # strided, 23 outputs: prime, so J = k with padded δ
    ((7, 11), (3, 2), (1, 3), ((1, 2), (2, 0)), (2, 1), 2, 3),  # uneven padding, dilation
    ((10, 13), (2, 4), 2, "VALID", (1, 2), 1, 2),  # dilated last axis, an unreached tail
    ((6, 7, 8), (2, 3, 3), (1, 1, 2), "SAME", 1, 2, 2),  # 3-D
    ((5, 6), (5, 6), 1, "VALID", 1, 1, 1),  # one window position
    ((16,), (5,), 2, 1, 1, 1, 4),  # 1-D: no leading taps
    ((9, 9), (3, 3), 1, "FULL", 1, 1, 2),
]


@pytest.mark.parametrize("spatial,window,stride,padding,dilation,c_in,c_out", ROW_BLOCK_CASES)
def test_row_blocks_match_the_reference_and_autodiff(rng, spatial, window, stride, padding, dilation, c_in, c_out):
    # The row-block formulas (blocks of J outputs along the last axis: y by a banded matrix,
    # dW with its diagonals summed) at uneven geometries — prime output widths, dilation,
    # 1-D and 3-D — against the reference and its autodiff.
    geom = _shapes.geometry("conv", spatial, window, stride, padding, dilation)
    x, w = _normal(rng, 2, *spatial, c_in), _normal(rng, *window, c_in, c_out)
    g = _normal(rng, 2, *geom.out_shape, c_out)
    b = _normal(rng, c_out)
    conv = functools.partial(reference.conv, stride=stride, padding=padding, dilation=dilation)

    @jax.jit  # one program, not one per primitive
    def formulas_and_expected(x, w, b, g):
        rows = _conv_formulas
        return (rows.weight_gradient_rows(x, g, geom), rows.weight_gradient_rows(x, g, geom, bias=True),
                rows.forward_rows(x, w, geom), rows.forward_rows(x, w, geom, b),
                jax.vjp(lambda w, b: conv(x, w, b), w, b)[1](g), conv(x, w))

    (dw, db), (dw_1, db_1), y_rows, y_rows_b, (expected_dw, expected_db), y = formulas_and_expected(x, w, b, g)
    np.testing.assert_allclose(dw.reshape(w.shape), expected_dw, rtol=1e-11, atol=1e-11)
    assert db is None
    np.testing.assert_allclose(dw_1.reshape(w.shape), expected_dw, rtol=1e-11, atol=1e-11)  # db: a column of ones
    np.testing.assert_allclose(db_1, expected_db, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(y_rows, y, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(y_rows_b, y + b, rtol=1e-11, atol=1e-11)


AUTO_CASES = [  # (x_shape, w_shape, settings, the plan auto picks on the CPU)
    ((3, 12, 12, 1), (5, 5, 1, 6), {}, ("rows", "rows", "im2col")),  # LeNet-5's C1: one input map
    ((2, 9, 45, 3), (3, 3, 3, 4), dict(stride=2), ("rows", "rows", "im2col")),  # RGB, wide
    ((3, 5, 5, 16), (5, 5, 16, 12), {}, ("im2col", "im2col", "im2col")),  # C5: the window is the input
    ((2, 9, 9, 6), (5, 5, 6, 16), dict(connections=ops.LENET5_C3_TABLE), ("xla", "xla", "xla")),  # C3
    ((2, 9, 9, 24), (3, 3, 24, 48), dict(padding="SAME"), ("xla", "xla", "xla")),  # dx: δ has 48 maps, no Winograd
    ((2, 9, 9, 24), (3, 3, 24, 48), dict(stride=2, padding="SAME"), ("xla", "xla", "xla")),  # strided δ, 2-D
    ((2, 8, 8, 16), (3, 3, 16, 16), dict(padding=1), ("xla", "xla", "xla")),  # ResNet's 16 → 16
    ((2, 8, 8, 32), (3, 3, 32, 32), dict(padding=1), ("xla", "xla", "xla")),  # ResNet's 32 → 32: no Winograd
    ((2, 5, 5, 32), (3, 3, 32, 32), dict(padding=1), ("xla", "xla", "xla")),  # 5 × 5 outputs: too few tiles
    ((2, 8, 8, 32), (3, 3, 32, 32), dict(padding=1, dilation=2), ("xla", "xla", "xla")),  # dilated: no Winograd
    ((2, 6, 6, 12), (1, 1, 12, 20), {}, ("im2col", "im2col", "im2col")),  # pointwise: one matrix product
    ((2, 7, 7, 12), (1, 1, 12, 20), dict(stride=2), ("im2col", "im2col", "im2col")),  # strided pointwise
    ((4, 19, 25), (3, 25, 25), dict(stride=2, padding=1), ("xla", "xla", "im2col")),  # MNIST-1D conv2
    ((4, 9, 25), (3, 25, 25), dict(stride=2, padding=1), ("im2col", "im2col", "im2col")),  # conv3: a small sample
    ((4, 40, 1), (5, 1, 25), dict(stride=2, padding=1), ("taps", "taps", "im2col")),  # MNIST-1D conv1
    ((2, 30, 32), (3, 32, 48), dict(padding="SAME"), ("xla", "xla", "xla")),  # 1-D, many channels
    ((2, 40, 8), (9, 8, 8), dict(padding=4), ("xla", "xla", "xla")),  # 1-D, a long window: no col2im beside XLA
    ((2, 80, 8), (9, 8, 8), dict(stride=2, padding=4), ("xla", "xla", "im2col")),  # strided: col2im
    ((2, 40, 2), (9, 2, 8), dict(padding=4), ("taps", "taps", "im2col")),  # beside taps: col2im
]


AUTO_IDS = ["c1", "rgb-wide", "c5", "c3", "wide", "wide-s2", "resnet", "resnet-32", "resnet-5x5", "dilated",
            "pointwise", "pointwise-s2", "1d", "1d-small",
            "1d-one-input", "1d-wide", "1d-long", "1d-long-s2", "1d-long-taps"]


@pytest.mark.parametrize("x_shape,w_shape,settings,plan", AUTO_CASES, ids=AUTO_IDS)
def test_auto_plan_picks_per_shape_and_stays_exact(rng, x_shape, w_shape, settings, plan):
    assert _plan(x_shape, w_shape, platform="cpu", **settings)[:3] == plan
    assert _plan(x_shape, w_shape, platform="gpu", **settings) == Plan.of("xla")
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    verify.check_vjp(ops.conv, reference.conv, x, w, b, **settings).assert_ok()


@pytest.mark.slow  # every method at every crossover shape; the default suite's method × shape tests are above
@pytest.mark.parametrize("method", GENERAL_METHODS)
@pytest.mark.parametrize("x_shape,w_shape,settings,plan", AUTO_CASES, ids=AUTO_IDS)
def test_every_method_is_exact_at_the_auto_plan_shapes(rng, method, x_shape, w_shape, settings, plan):
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    np.testing.assert_allclose(ops.conv(x, w, b, method=method, **settings), reference.conv(x, w, b, **settings),
                               rtol=1e-10, atol=1e-10)
    verify.check_vjp(ops.conv, reference.conv, x, w, b, method=method, **settings).assert_ok()
    verify.check_numerical(ops.conv, x, w, b, method=method, **settings).assert_ok()


# --------------------------------------------------------------------------- Winograd F(2×2, 3×3)

WINOGRAD_CASES = [  # 3 × 3 at stride 1: odd and even outputs, pads past the window, groups, a table
    ((2, 6, 7, 3), (3, 3, 3, 4), dict(padding=1)),
    ((1, 5, 5, 2), (3, 3, 2, 2), {}),
    ((2, 4, 9, 3), (3, 3, 3, 2), dict(padding=((0, 2), (3, 1)))),
    ((1, 3, 3, 1), (3, 3, 1, 1), dict(padding="FULL")),
    ((1, 7, 6, 4), (3, 3, 2, 4), dict(padding="SAME", groups=2)),
    ((1, 6, 5, 6), (3, 3, 6, 16), dict(padding="SAME", connections=ops.LENET5_C3_TABLE)),
]
WINOGRAD_IDS = ["p1-odd", "valid", "pads-past-window", "full-one-tile", "groups-2", "c3-table"]


@pytest.mark.parametrize("x_shape,w_shape,settings", WINOGRAD_CASES, ids=WINOGRAD_IDS)
def test_winograd_matches_the_reference_autodiff_and_finite_differences(rng, x_shape, w_shape, settings):
    # Lavin & Gray's y = Aᵀ[(G w Gᵀ) ⊙ (Bᵀ d B)]A and its hand-derived transposes, in float64
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    np.testing.assert_allclose(ops.conv(x, w, b, method="winograd", **settings), reference.conv(x, w, b, **settings),
                               rtol=1e-12, atol=1e-12)
    verify.check_vjp(ops.conv, reference.conv, x, w, b, method="winograd", **settings).assert_ok()
    verify.check_numerical(ops.conv, x, w, b, method="winograd", **settings).assert_ok()


def test_winograd_under_transforms_and_in_float32(rng):
    x, w, b = _normal(rng, 2, 6, 7, 3), _normal(rng, 3, 3, 3, 4), _normal(rng, 4)
    opcheck.assert_jit("conv", x, w, b, padding=1, method="winograd")
    opcheck.assert_vmap("conv", x, w, b, in_axes=(0, 0, None), padding=1, method="winograd")
    opcheck.assert_grad_of_grad("conv", x, w, b, padding=1, method="winograd")
    x32, w32, b32 = (a.astype(jnp.float32) for a in (x, w, b))
    result = verify.check_vjp(ops.conv, reference.conv, x32, w32, b32, padding=1, method="winograd")
    result.assert_ok()
    assert result.dtype == "float32"


@pytest.mark.parametrize("formula,settings", [
    ("winograd", dict(padding=1)),
    ("xla", dict(stride=2, padding=1)),
    ("xla", dict(padding="SAME", dilation=2, groups=3)),
    ("rows", dict(stride=2, padding=1)),  # rows' dW computes db on the way: summed per chunk too
])
def test_weight_gradient_in_batch_chunks(rng, formula, settings):
    # a Plan's weight_chunk sums dW over chunks of the batch (2 samples, a zero sample padding the last chunk)
    x, w, b = _normal(rng, 5, 7, 6, 3), _normal(rng, 3, 3, 3 // settings.get("groups", 1), 6), _normal(rng, 6)
    chunked = Plan(formula, formula, formula, weight_chunk=2)
    verify.check_vjp(ops.conv, reference.conv, x, w, b, method=chunked, **settings).assert_ok()

    def grad(plan):
        return jax.jit(jax.grad(lambda w, b: jnp.sum(ops.conv(x, w, b, method=plan, **settings) ** 2), (0, 1)))(w, b)

    for part, whole in zip(grad(chunked), grad(Plan.of(formula))):
        np.testing.assert_allclose(part, whole, rtol=1e-12, atol=1e-12)
    hlo = jax.jit(jax.grad(lambda w: jnp.sum(ops.conv(x, w, b, method=chunked, **settings)))).lower(w).as_text()
    assert "while" in hlo or "scan" in hlo  # the chunks are a loop


def test_the_cpu_policy_chunks_xla_and_winograd_weight_gradients(monkeypatch):
    # the CPU policy's rule: a power of two samples within the budgets, once the batch is long
    x_shape, w_shape = (64, 16, 16, 32), (3, 3, 32, 32)
    assert _plan(x_shape, w_shape, padding=1, platform="cpu").weight_chunk == 8  # 2^21 MACs / (16·16·32·32) = 8
    assert _plan(x_shape, w_shape, padding=1, platform="gpu").weight_chunk == 0
    assert _plan(x_shape, w_shape, padding=1, platform="cpu", method="xla").weight_chunk == 0  # a name: as written
    monkeypatch.setattr(_xla_cpu_conv, "CORRELATE_CHUNK_MIN_TERMS", 64 * 16 * 16)
    assert _plan(x_shape, w_shape, padding=1, platform="cpu").weight_chunk == 0  # a short batch: no chunks
    geom = _shapes.geometry("conv", (6, 5), (3, 3), 1, 1, 1)
    problem = Problem(geom, (5, 6, 5, 3), (3, 3, 3, 2), 1, np.dtype("float32"), "cpu")
    assert _xla_cpu_conv.weight_chunk("winograd", problem) == (1 << 20) // (6 * 5 * 3 * 4)  # about 1 MiB of x


def test_the_cpu_policy_chunks_no_3d_weight_gradient():
    # a 3-D dW runs slower in batch chunks (docs/performance.md, "The convolution family"); 2-D ones chunk
    assert _plan((8, 16, 16, 16, 16), (3, 3, 3, 16, 16), padding=1, platform="cpu") == Plan.of("xla")
    assert _plan((128, 16, 16, 16), (3, 3, 16, 16), padding=1, platform="cpu").weight_chunk == 32  # 2^21 / 16·16·16·16


def test_the_cpu_policy_chunks_1d_weight_gradients_by_at_least_8_samples():
    # a long 1-D window's chunks of 2 or 4 samples run slower than none (docs/performance.md, "The convolution family")
    assert _plan((16, 1000, 32), (63, 32, 32), padding=31, platform="cpu") == Plan.of("xla")  # the budget: 2
    assert _plan((64, 512, 16), (33, 16, 16), padding=16, platform="cpu").weight_chunk == 16


@pytest.mark.parametrize("w_shape,settings,got", [
    ((3, 3, 2, 2), dict(stride=2), "stride (2, 2)"),
    ((3, 3, 2, 2), dict(dilation=2), "dilation (2, 2)"),
    ((5, 5, 2, 2), {}, "window (5, 5)"),
    ((3, 2, 2), {}, "window (3,)"),
])
def test_winograd_rejects_other_geometries_at_trace_time(w_shape, settings, got):
    x = jnp.ones((1, *[7] * (len(w_shape) - 2), 2))
    with pytest.raises(ValueError, match=r"method='winograd'.*needs a 2-D 3 × 3 window at stride 1.*" + re.escape(got)):
        jax.eval_shape(lambda x, w: ops.conv(x, w, method="winograd", **settings), x, jnp.ones(w_shape))


# --------------------------------------------------------------------------- grouped convolution

GROUPED_CASES = [  # (x_shape, w_shape, settings): depthwise, multiplier 2, strided + padded + dilated, 3-D
    ((2, 6, 5, 3), (3, 3, 1, 3), dict(padding="SAME", groups=3)),
    ((2, 9, 2), (3, 1, 4), dict(stride=2, padding=1, groups=2)),
    ((2, 8, 7, 4), (2, 3, 2, 6), dict(stride=2, padding=((1, 2), (0, 1)), dilation=(2, 1), groups=2)),
    ((1, 4, 5, 4, 4), (2, 2, 3, 2, 4), dict(stride=(1, 2, 1), padding="SAME", groups=2)),
]
GROUPED_IDS = ["depthwise-2d", "multiplier-2-1d", "s2-pads-dilation-2d", "3d"]


@covering("method", GENERAL_METHODS, "x_shape,w_shape,settings", GROUPED_CASES, GROUPED_IDS)
def test_grouped_conv_is_g_independent_dense_convs(rng, method, x_shape, w_shape, settings):
    # PyTorch's and lax's definition: input channels [j·C_in/g, (j+1)·C_in/g) and output
    # channels [j·C_out/g, (j+1)·C_out/g) form group j, a dense convolution of its own; the
    # grouped output is the g outputs concatenated (depthwise: output j·M + m reads input j).
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    g, dense = settings["groups"], {k: v for k, v in settings.items() if k != "groups"}
    c_in, c_out = x_shape[-1] // g, w_shape[-1] // g
    parts = [ops.conv(x[..., j * c_in:(j + 1) * c_in], w[..., j * c_out:(j + 1) * c_out], method=method, **dense)
             for j in range(g)]
    y = ops.conv(x, w, b, method=method, **settings)
    np.testing.assert_allclose(y, jnp.concatenate(parts, axis=-1) + b, rtol=1e-11, atol=1e-11)
    # the same as the block-diagonal connection table over the dense kernel
    table = np.kron(np.eye(g, dtype=bool), np.ones((c_in, c_out), bool))
    w_dense = jnp.tile(w, (1,) * (w.ndim - 2) + (g, 1)) * table
    np.testing.assert_allclose(y, ops.conv(x, w_dense, b, connections=table, method=method, **dense),
                               rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(reference.conv(x, w, b, **settings), y, rtol=1e-11, atol=1e-11)
    # and its gradients, the per-group formulas, are the dense table's restricted to the blocks
    dy = _normal(rng, *y.shape)
    dx, dw, db = jax.vjp(lambda *a: ops.conv(*a, method=method, **settings), x, w, b)[1](dy)
    dx_t, dw_t, db_t = jax.vjp(lambda *a: ops.conv(*a, connections=table, method=method, **dense), x, w_dense, b)[1](dy)
    np.testing.assert_allclose(dx, dx_t, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(db, db_t, rtol=1e-11, atol=1e-11)
    blocks = jnp.stack([dw_t[..., j * c_in:(j + 1) * c_in, j * c_out:(j + 1) * c_out] for j in range(g)], axis=-2)
    np.testing.assert_allclose(dw, blocks.reshape(w.shape), rtol=1e-11, atol=1e-11)


@covering("method", GENERAL_METHODS, "x_shape,w_shape,settings", GROUPED_CASES, GROUPED_IDS)
def test_grouped_vjp_matches_autodiff_and_finite_differences(rng, method, x_shape, w_shape, settings):
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    opcheck.assert_vjp("conv", x, w, b, method=method, **settings)
    opcheck.assert_numerical("conv", x, w, b, method=method, **settings)


@covering("method", GENERAL_METHODS, "transform", ["jit", "vmap", "grad-of-grad", "checkpoint"])
def test_grouped_gradients_under_every_transform(rng, method, transform):
    x, w, b = _normal(rng, 2, 7, 6, 4), _normal(rng, 3, 2, 1, 8), _normal(rng, 8)
    settings = dict(stride=2, padding=1, groups=4, method=method)  # depthwise, multiplier 2
    opcheck.assert_transform(transform, "conv", x, w, b, vmap_axes=(0, 0, None), **settings)


@covering("method", GENERAL_METHODS, "dtype", ["float32", "bfloat16"])
def test_grouped_vjp_low_precision(rng, method, dtype):
    x, w, b = _normal(rng, 2, 8, 7, 4, dtype=dtype), _normal(rng, 3, 3, 2, 6, dtype=dtype), _normal(rng, 6, dtype=dtype)
    result = verify.check_vjp(ops.conv, reference.conv, x, w, b, stride=2, padding="SAME", groups=2, method=method)
    result.assert_ok()
    assert result.dtype == dtype and ops.conv(x, w, b, groups=2, method=method).dtype == dtype


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_grouped_conv_costs_one_over_g_of_the_dense_one(method):
    # XLA's own count of the floating-point operations of forward + backward: a grouped conv
    # computed densely and then masked would cost as much as the dense one.
    x = jnp.ones((2, 8, 8, 16), jnp.float32)
    if method == "auto":  # auto picks per shape: cost the dense conv under the grouped conv's formulas
        method = _plan((2, 8, 8, 16), (3, 3, 4, 16), groups=4, platform="cpu")
    flops = {}
    for g in (1, 4):
        w = jnp.ones((3, 3, 16 // g, 16), jnp.float32)
        step = jax.jit(jax.grad(lambda x, w, g=g: jnp.sum(ops.conv(x, w, groups=g, method=method) ** 2), (0, 1)))
        cost = step.lower(x, w).compile().cost_analysis()
        flops[g] = (cost[0] if isinstance(cost, list) else cost)["flops"]
    assert flops[4] < flops[1] / 4 * 1.4, flops


GROUPED_AUTO_CASES = [  # (x_shape, w_shape, settings, the plan auto picks on the CPU)
    ((2, 9, 9, 8), (3, 3, 1, 8), dict(padding="SAME", groups=8), ("taps", "rows", "im2col")),  # depthwise
    ((2, 9, 9, 16), (3, 3, 8, 16), dict(stride=2, groups=2), ("taps", "rows", "im2col")),  # 8 per group
    ((2, 9, 9, 48), (3, 3, 24, 48), dict(padding="SAME", groups=2), ("xla", "xla", "xla")),  # wide groups
    ((2, 5, 5, 8), (5, 5, 4, 8), dict(groups=2), ("im2col", "im2col", "im2col")),  # the window is the input
]


@pytest.mark.parametrize("x_shape,w_shape,settings,plan", GROUPED_AUTO_CASES,
                         ids=["depthwise", "narrow-groups", "wide-groups", "whole-window"])
def test_auto_plan_for_grouped_convs(rng, x_shape, w_shape, settings, plan):
    assert _plan(x_shape, w_shape, platform="cpu", **settings)[:3] == plan
    assert _plan(x_shape, w_shape, platform="gpu", **settings) == Plan.of("xla")
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    np.testing.assert_allclose(ops.conv(x, w, b, **settings), reference.conv(x, w, b, **settings), rtol=1e-10,
                               atol=1e-10)


def test_grouped_conv_errors(rng):
    x, w = _normal(rng, 2, 6, 6, 4, dtype=jnp.float32), _normal(rng, 3, 3, 2, 6, dtype=jnp.float32)
    for conv in (ops.conv, reference.conv):  # the reference validates identically
        with pytest.raises(ValueError, match=r"conv: `groups` = 3 must divide C_in = x.shape\[-1\] = 4; each group "
                                             r"takes C_in / groups input and C_out / groups output channels"):
            conv(x, w, groups=3)
        with pytest.raises(ValueError, match=r"conv: `groups` = 4 must divide C_out = w.shape\[-1\] = 6"):
            conv(x, w[..., :1, :], groups=4)
        with pytest.raises(ValueError, match=r"conv: with `groups` = 2, `w` must have C_in / groups = 4 / 2 = 2 input "
                                             r"channels in its second-to-last axis, \(\*window, C_in / groups, "
                                             r"C_out\), got w of shape \(3, 3, 1, 6\) for x of shape \(2, 6, 6, 4\)"):
            conv(x, w[..., :1, :], groups=2)
        with pytest.raises(ValueError, match=r"conv: `groups` must be an int >= 1 \(the number of channel groups "
                                             r"that do not mix\), got 0"):
            conv(x, w, groups=0)
        with pytest.raises(TypeError, match=r"conv: `groups` must be an int >= 1 .* got 2.0 of type float"):
            conv(x, w, groups=2.0)
        with pytest.raises(TypeError, match=r"conv: `groups` must be an int >= 1 .* got True of type bool"):
            conv(x, w, groups=True)
        with pytest.raises(ValueError, match=r"conv: give `connections` or `groups`, not both \(got groups=2 and a "
                                             r"connection table\); a grouped convolution is the block-diagonal table"):
            conv(x, w, groups=2, connections=np.ones((4, 6), bool))
    with pytest.raises(ValueError, match=r"conv2d: `groups` = 3 must divide C_in"):
        ops.conv2d(x, w, groups=3)


# --------------------------------------------------------------------------- the table, the plan and the platform


def _convolutions(fn, *args):
    """The optimised CPU program's convolutions, each with its operand shapes (metadata and names stripped)."""
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    lines = [re.sub(r",?\s*metadata=\{[^{}]*\}", "", line).strip() for line in hlo.splitlines()]
    shapes = dict(re.findall(r"^(?:ROOT )?(%[\w.\-]+) = (\S+)", "\n".join(lines), re.M))
    return collections.Counter(re.sub(r"%[\w.\-]+", lambda m: shapes.get(m.group(0), "%"), line.split(" = ", 1)[1])
                               for line in lines if " convolution(" in line)


@pytest.mark.parametrize("x_shape,w_shape,settings", [
    ((8, 12, 12, 3), (3, 3, 3, 4), dict(stride=2, padding=1)),
    ((8, 16, 5), (3, 5, 6), dict(padding="SAME", dilation=2)),
    ((2, 5, 6, 4, 2), (2, 3, 2, 2, 3), dict(stride=(1, 2, 1), padding=1)),
    ((64, 16, 16, 32), (3, 3, 32, 32), dict(padding=1)),  # a long batch: XLA:CPU's policy would chunk dW
], ids=["2d-s2", "1d-dilated", "3d", "long-batch"])
def test_xla_compiles_to_the_convolutions_of_autodiff(x_shape, w_shape, settings):
    # method="xla" is the lecture's three convolutions with no platform rewrite: on the CPU the
    # compiled step has exactly the convolutions (shapes, windows, layouts) of autodiff's.
    x, w, b = jnp.ones(x_shape, jnp.float32), jnp.ones(w_shape, jnp.float32), jnp.ones(w_shape[-1], jnp.float32)

    def grad(conv):
        return jax.grad(lambda x, w, b: jnp.sum(jnp.sin(conv(x, w, b, **settings))), (0, 1, 2))

    ours = _convolutions(grad(functools.partial(ops.conv, method="xla", platform="cpu")), x, w, b)
    assert ours == _convolutions(grad(reference.conv), x, w, b)
    assert sum(ours.values()) == 3


def test_the_plan_depends_on_the_platform_only_as_told(monkeypatch):
    x_shape, w_shape, settings = (4, 8, 8, 3), (3, 3, 3, 32), dict(padding=1)
    cpu = _plan(x_shape, w_shape, platform="cpu", **settings)
    layer = nn.Conv(32, (3, 3), padding=1, platform="cpu")
    params, state, _ = layer.init(jax.random.PRNGKey(0), x_shape)
    x = jnp.ones(x_shape, jnp.float32)
    traced = str(jax.make_jaxpr(lambda p, x: layer.apply(p, state, x)[0])(params, x))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # as if traced in a GPU process
    assert _plan(x_shape, w_shape, platform="cpu", **settings) == cpu
    assert "rows" in cpu[:3]
    assert str(jax.make_jaxpr(lambda p, x: layer.apply(p, state, x)[0])(params, x)) == traced
    assert _plan(x_shape, w_shape, **settings) == Plan.of("xla")  # platform=None: the default backend, resolved
    assert _xla_cpu.resolve_platform() == "gpu" and _xla_cpu.resolve_platform("cpu") == "cpu"


def test_the_default_backend_is_read_in_one_place():
    # jax.default_backend() is read by _xla_cpu.resolve_platform only: no op guesses the platform deep inside
    root = pathlib.Path(_conv.__file__).parents[1]
    readers = []
    for path in [*root.glob("ops/*.py"), *root.glob("_xla_cpu*.py"), root / "nn" / "layers.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(n, ast.Attribute) and n.attr == "default_backend" for n in ast.walk(node)):
                readers.append(f"{path.name}:{node.name}")
    assert readers == ["_xla_cpu.py:resolve_platform"]


FORMULA_SAMPLES = [  # (x_shape, w_shape, settings): each formula of the table applies to at least one
    ((2, 9, 8, 3), (3, 2, 3, 4), dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))),
    ((2, 6, 7, 3), (3, 3, 3, 4), dict(padding=1)),
    ((2, 9, 4), (3, 2, 4), dict(stride=2, padding="SAME", groups=2)),
]


@pytest.mark.parametrize("name", list(FORMULAS))
def test_every_formula_of_the_table_is_exact_where_it_applies(rng, name):
    formula = FORMULAS[name]
    assert formula.name == name and METHODS[0] == "auto" and METHODS[1:] == tuple(FORMULAS)
    samples = [s for s in FORMULA_SAMPLES if formula.refuses(_shapes.geometry(
        "conv", s[0][1:-1], s[1][:-2], s[2].get("stride", 1), s[2].get("padding", "VALID"), s[2].get("dilation", 1))
    ) is None]
    assert samples, f"give {name!r} a sample it applies to"
    for x_shape, w_shape, options in samples:
        x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
        verify.check_vjp(ops.conv, reference.conv, x, w, b, method=name, **options).assert_ok()
        mixed = Plan(name, "xla", name) if name != "xla" else Plan("xla", "im2col", "xla")
        verify.check_vjp(ops.conv, reference.conv, x, w, b, method=mixed, **options).assert_ok()
        # conv_transpose's products are the same rows with the roles exchanged
        xt = _normal(rng, *x_shape[:-1], w_shape[-1])
        wt = _normal(rng, *w_shape[:-2], w_shape[-1] // options.get("groups", 1), x_shape[-1])
        transpose = {k: v for k, v in options.items() if k != "padding" or v != "SAME"}
        verify.check_vjp(ops.conv_transpose, reference.conv_transpose, xt, wt, method=name, **transpose).assert_ok()


def test_method_takes_a_name_a_plan_or_a_policy(rng):
    x, w, b = _normal(rng, 2, 8, 8, 4), _normal(rng, 3, 3, 4, 4), _normal(rng, 4)
    seen = []

    def policy(problem):
        seen.append(problem)
        return Plan("winograd", "rows", "im2col", weight_chunk=1, materialize_input=True)

    y = ops.conv(x, w, b, padding=1, method=policy, platform="tpu")
    np.testing.assert_allclose(y, reference.conv(x, w, b, padding=1), rtol=1e-12, atol=1e-12)
    verify.check_vjp(ops.conv, reference.conv, x, w, b, padding=1, method=policy).assert_ok()
    problem = seen[0]
    assert (problem.x_shape, problem.w_shape, problem.groups, problem.dtype, problem.platform) == (
        (2, 8, 8, 4), (3, 3, 4, 4), 1, np.dtype("float64"), "tpu")
    assert problem.geometry.out_shape == (8, 8) and problem.geometry.pads == ((1, 1), (1, 1))
    assert _plan((2, 8, 8, 4), (3, 3, 4, 4), padding=1, method=policy) == policy(problem)


def test_method_errors(rng):
    x, w = _normal(rng, 2, 8, 8, 4, dtype=jnp.float32), _normal(rng, 3, 3, 4, 4, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"conv: `method` Plan\(forward='xla', weight='winograd', input='xla'.*\) "
                                         r"computes dW by 'winograd', which needs a 2-D 3 × 3 window at stride 1 "
                                         r"without dilation \(F\(2×2, 3×3\)\), got window \(3, 3\), stride \(2, 2\)"):
        ops.conv(x, w, stride=2, method=Plan("xla", "winograd", "xla"))
    with pytest.raises(ValueError, match=r"conv: `method` Plan\(.*\) computes dx by the unknown formula 'fft'; the "
                                         r"formulas are 'xla', 'im2col', 'taps', 'rows', 'winograd'"):
        ops.conv(x, w, method=Plan("xla", "xla", "fft"))
    with pytest.raises(ValueError, match=r"computes dx by 'xla', which does not materialize: `materialize_input` "
                                         r"tunes col2im's dx"):
        ops.conv(x, w, method=Plan("xla", "xla", "xla", materialize_input=True))
    with pytest.raises(ValueError, match=r"conv: a Plan's `weight_chunk` must be an int >= 0 \(samples per chunk of "
                                         r"dW's batch sum, 0: none\), got -1"):
        ops.conv(x, w, method=Plan("xla", "xla", "xla", weight_chunk=-1))
    with pytest.raises(TypeError, match=r"conv: `method` must be a formula's name .* a Plan, or a policy returning a "
                                        r"Plan, got 'xla' of type str from the policy"):
        ops.conv(x, w, method=lambda problem: "xla")
    with pytest.raises(TypeError, match=r"conv: `method` must be .* got \('xla', 'xla', 'xla'\) of type tuple\."):
        ops.conv(x, w, method=("xla", "xla", "xla"))
    with pytest.raises(TypeError, match=r"conv: `platform` must be None or a platform name such as 'cpu' or 'gpu', "
                                        r"got 0"):
        ops.conv(x, w, platform=0)
    with pytest.raises(ValueError, match=r"conv_transpose: `method='im2col'` needs a non-negative padding, got "
                                         r"\(\(0, 0\), \(0, -1\)\)"):  # output_padding past the high padding
        ops.conv_transpose(x, w, stride=2, output_padding=(0, 1), method="im2col")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_auto_never_picks_winograd(dtype):
    # F(2×2, 3×3) no longer beats XLA's convolutions with dW in batch chunks on XLA:CPU, at any batch
    # (docs/performance.md, "The convolution family"); in 16 bits its transforms also lose accuracy (issue 36)
    for x_shape, w_shape in [((2, 8, 8, 32), (3, 3, 32, 32)), ((128, 16, 16, 32), (3, 3, 32, 32)),
                             ((128, 14, 14, 32), (3, 3, 32, 64)), ((128, 28, 28, 1), (3, 3, 1, 32))]:
        assert "winograd" not in _plan(x_shape, w_shape, jnp.dtype(dtype), padding=1, platform="cpu")[:3]


def test_the_layer_passes_method_and_platform(rng):
    x = jnp.asarray(rng.normal(size=(2, 8, 8, 32)), jnp.float32)
    plans = []
    layer = nn.Conv(8, (3, 3), padding=1, method=lambda problem: plans.append(problem) or Plan.of("taps"),
                    platform="tpu")
    params, state, _ = layer.init(jax.random.PRNGKey(0), x.shape)
    y, _ = layer.apply(params, state, x)
    assert [p.platform for p in plans] == ["tpu"]
    np.testing.assert_allclose(y, reference.conv(x, params["w"], params["b"], padding=1), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- forward mode (bilinearity)

FORWARD_CASES = [  # tiny (jacfwd and the Hessian run on each): strides, dilation, asymmetric pads, groups, a table
    ((1, 7, 2), (3, 2, 2), dict(stride=2, padding="SAME", dilation=2)),
    ((1, 5, 4, 2), (2, 3, 2, 2), dict(stride=(2, 1), padding=((1, 0), (2, 1)), bias=False)),
    ((1, 4, 4, 4), (2, 2, 2, 4), dict(padding="FULL", groups=2)),
    ((1, 3, 3, 6), (2, 2, 6, 16), dict(connections=ops.LENET5_C3_TABLE, bias=False)),
    ((1, 3, 4, 3, 1), (2, 2, 2, 1, 2), dict(stride=(1, 2, 1), padding=1, dilation=(2, 1, 1))),
]
FORWARD_IDS = ["1d-s2-dilated", "2d-asymmetric", "2d-groups", "2d-lenet-c3", "3d"]


@covering("method", GENERAL_METHODS, "x_shape,w_shape,settings", FORWARD_CASES, FORWARD_IDS)
def test_forward_mode_matches_the_reference(rng, method, x_shape, w_shape, settings):
    # ṫ_y = ṫ_x ⋆ w + x ⋆ ṫ_w + ṫ_b: jvp, linearize, jacfwd, the Hessian, jvp-of-grad and grad-of-jvp
    settings = dict(settings)
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    opcheck.assert_forward_mode("conv", *((x, w, b) if settings.pop("bias", True) else (x, w)), method=method,
                                **settings)


@pytest.mark.parametrize("x_shape,w_shape,settings", [
    ((1, 4, 5, 2), (3, 3, 2, 2), dict(padding=1)),
    ((1, 4, 4, 4), (3, 3, 2, 2), dict(padding="SAME", groups=2)),
    ((1, 3, 3, 6), (3, 3, 6, 16), dict(padding=1, connections=ops.LENET5_C3_TABLE)),
], ids=["p1", "groups-2", "c3-table"])
def test_winograd_forward_mode_matches_the_reference(rng, x_shape, w_shape, settings):
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    opcheck.assert_forward_mode("conv", x, w, b, method="winograd", **settings)


@pytest.mark.parametrize("method", [Plan("taps", "xla", "im2col"), lambda problem: Plan.of("rows")],
                         ids=["plan", "policy"])
def test_forward_mode_takes_a_plan_or_a_policy(rng, method):
    x, w, b = _normal(rng, 1, 5, 4, 2), _normal(rng, 2, 3, 2, 3), _normal(rng, 3)
    opcheck.assert_forward_mode("conv", x, w, b, stride=(2, 1), padding=1, method=method)


@pytest.mark.parametrize("method,platform,convolutions", [
    ("xla", None, 3), ("im2col", None, 0), ("taps", None, 0), ("rows", None, 0), ("winograd", None, 0),
    ("auto", "cpu", 0), ("auto", "gpu", 3),  # MNIST-1D's conv1: taps on XLA:CPU, XLA's convolutions elsewhere
])
def test_forward_mode_follows_the_method_and_the_platform(method, platform, convolutions):
    # the tangent's two products are the forward's formula: XLA's convolutions only where y is one
    x, w = jnp.ones((4, 40, 1)), jnp.ones((5, 1, 25))
    if method == "winograd":
        x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 3))
    settings = dict(padding=1, method=method, platform=platform, **({} if method == "winograd" else dict(stride=2)))
    jvp = jax.jit(lambda p, t: jax.jvp(lambda x, w: ops.conv(x, w, **settings), p, t))
    program = jvp.lower((x, w), (x, w)).as_text()
    assert program.count("stablehlo.convolution") == convolutions  # y, ṫ_x ⋆ w and x ⋆ ṫ_w
    np.testing.assert_allclose(jvp((x, w), (x, w))[1], 2 * reference.conv(x, w, **settings), rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_jvp_in_x_only_and_in_w_only(rng, method):
    # each term of the bilinear tangent on its own: a tangent in x alone is conv(ṫ_x, w), one in
    # w alone is conv(x, ṫ_w), and the two add up to the tangent in both (the bias' tangent apart)
    x, w, b = _normal(rng, 1, 5, 6, 4), _normal(rng, 3, 3, 2, 4), _normal(rng, 4)
    tx, tw, tb = _normal(rng, *x.shape), _normal(rng, *w.shape), _normal(rng, 4)
    zx, zw, zb = jnp.zeros_like(x), jnp.zeros_like(w), jnp.zeros_like(b)
    settings = dict(padding=1, groups=2, method=method)

    def jvp(fn, *tangents):
        return jax.jvp(lambda x, w, b: fn(x, w, b, **settings), (x, w, b), tangents)[1]

    in_x, in_w, in_b = jvp(ops.conv, tx, zw, zb), jvp(ops.conv, zx, tw, zb), jvp(ops.conv, zx, zw, tb)
    np.testing.assert_allclose(in_x, jvp(reference.conv, tx, zw, zb), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(in_w, jvp(reference.conv, zx, tw, zb), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(in_x, reference.conv(tx, w, padding=1, groups=2), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(in_w, reference.conv(x, tw, padding=1, groups=2), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(in_b, jnp.broadcast_to(tb, in_b.shape))
    np.testing.assert_allclose(jvp(ops.conv, tx, tw, tb), in_x + in_w + in_b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_absent_connections_get_no_tangent(rng, method):
    # the table masks ṫ_w as it masks w: a tangent on absent connections alone moves nothing
    x, w = _normal(rng, 1, 5, 5, 6), _normal(rng, 3, 3, 6, 16)
    absent = jnp.asarray(~ops.LENET5_C3_TABLE, w.dtype)
    tw = _normal(rng, *w.shape) * absent
    settings = dict(padding=1, connections=ops.LENET5_C3_TABLE, method=method)
    y, ty = jax.jvp(lambda w: ops.conv(x, w, **settings), (w,), (tw,))
    np.testing.assert_array_equal(ty, jnp.zeros_like(y))
    _, present = jax.jvp(lambda w: ops.conv(x, w, **settings), (w,), (tw + w,))
    np.testing.assert_allclose(present, ops.conv(x, w, **settings), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", GENERAL_METHODS)
def test_vmap_of_jvp(rng, method):
    x, w, b = _normal(rng, 3, 6, 5, 2), _normal(rng, 3, 2, 2, 3), _normal(rng, 3)
    tx, tw = _normal(rng, *x.shape), _normal(rng, 3, *w.shape)  # per-example kernel tangents
    settings = dict(stride=2, padding="SAME", method=method)

    def one(conv):
        return lambda x, tx, tw: jax.jvp(lambda x, w: conv(x[None], w, b, **settings)[0], (x, w), (tx, tw))

    got = jax.vmap(one(ops.conv))(x, tx, tw)
    expected = jax.vmap(one(reference.conv))(x, tx, tw)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@covering("method", METHODS, "dtype", ["float32", "bfloat16"])
def test_forward_mode_low_precision(rng, method, dtype):
    x, w, b = (_normal(rng, *s, dtype=dtype) for s in ((1, 6, 5, 2), (3, 3, 2, 3), (3,)))
    t = tuple(_normal(rng, *a.shape, dtype=dtype) for a in (x, w, b))
    y, ty = jax.jvp(lambda x, w, b: ops.conv(x, w, b, padding=1, method=method), (x, w, b), t)
    assert y.dtype == ty.dtype == dtype
    _, expected = jax.jvp(lambda x, w, b: reference.conv(x, w, b, padding=1), (x, w, b), t)
    tol = 1e-4 if dtype == "float32" else 1e-1
    np.testing.assert_allclose(np.asarray(ty, np.float32), np.asarray(expected, np.float32), rtol=tol, atol=tol)


ADJOINT_CASES = [  # (x_shape, w_shape, settings, methods)
    ((2, 6, 5, 4), (3, 3, 2, 4), dict(padding=1, groups=2), METHODS),
    ((2, 7, 6, 3), (3, 2, 3, 2), dict(stride=(2, 3), padding=((1, 0), (2, 1)), dilation=(1, 2)), GENERAL_METHODS),
    ((2, 5, 5, 6), (5, 5, 6, 16), dict(connections=ops.LENET5_C3_TABLE), GENERAL_METHODS),  # C5-like: one window
]


@pytest.mark.parametrize("x_shape,w_shape,settings,methods", ADJOINT_CASES, ids=["groups", "strided", "one-window"])
def test_jvp_and_vjp_are_adjoint(rng, x_shape, w_shape, settings, methods):
    # the two hand rules tied to each other: ⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩ for random ṫ and g
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    t = tuple(_normal(rng, *a.shape) for a in (x, w, b))
    for method in methods:
        conv = functools.partial(ops.conv, method=method, **settings)
        y, ty = jax.jvp(conv, (x, w, b), t)
        g = _normal(rng, *y.shape)
        cotangents = jax.vjp(conv, x, w, b)[1](g)
        np.testing.assert_allclose(jnp.vdot(ty, g), sum(jnp.vdot(a, c) for a, c in zip(t, cotangents)),
                                   rtol=1e-12, err_msg=method)
