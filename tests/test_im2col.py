"""im2col and its backward col2im: Park's worked example, overlap-add, gradients, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops, reference, verify

PARK_A = [[3, 2, 3, 1], [0, 5, 3, 4], [1, 2, 2, 2], [7, 3, 1, 7]]


def _matlab_layout(cols, window):
    """(1, out_h, out_w, kh·kw) row-major → MATLAB's (kh·kw, positions), both column-major."""
    out_h, out_w = cols.shape[1:3]
    patches = np.asarray(cols[0]).reshape(out_h, out_w, *window)
    return patches.transpose(1, 0, 3, 2).reshape(out_h * out_w, -1).T


def test_park_im2col_example():
    A = jnp.asarray(PARK_A, jnp.float64)[None, :, :, None]
    # Im2col(A, [2,2], 'distinct'): the four non-overlapping 2×2 blocks, column-major.
    distinct = _matlab_layout(ops.im2col(A, (2, 2), stride=2), (2, 2))
    np.testing.assert_array_equal(distinct, np.array([[3, 0, 2, 5], [1, 7, 2, 3], [3, 3, 1, 4], [2, 1, 2, 7]]).T)
    # The matrix printed on Park's slides (first four columns, then "...") is the
    # sliding-window one: its second column [0, 1, 5, 2] is the block at rows 2–3, cols 1–2,
    # which only a stride-1 window visits. Reproduced with stride=1 (MATLAB's 'sliding').
    sliding = _matlab_layout(ops.im2col(A, (2, 2), stride=1), (2, 2))
    printed = np.array([[3, 0, 1, 2], [0, 1, 7, 5], [2, 5, 2, 3], [5, 2, 3, 3]])
    assert sliding.shape == (4, 9)
    np.testing.assert_array_equal(sliding[:, :4], printed)
    np.testing.assert_array_equal(_matlab_layout(reference.im2col(A, (2, 2), stride=1), (2, 2)), sliding)


def test_col2im_is_overlap_add_then_crop():
    # The VJP of im2col adds every column entry back where it came from: with a cotangent
    # of ones, each input element receives the number of windows that cover it.
    x = jnp.zeros((1, 4, 4, 1), jnp.float64)

    def coverage(**settings):
        cols, vjp = jax.vjp(lambda x: ops.im2col(x, **settings), x)
        return np.asarray(vjp(jnp.ones_like(cols))[0][0, :, :, 0])

    np.testing.assert_array_equal(coverage(window=2), [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]])
    np.testing.assert_array_equal(coverage(window=2, stride=2), np.ones((4, 4)))
    # SAME 3×3: the padded border is cropped, so corners see 4 windows, edges 6, inside 9
    np.testing.assert_array_equal(coverage(window=3, padding="SAME"),
                                  [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
    # stride 2 with a window of 3 on 4: the last row/column is never reached
    np.testing.assert_array_equal(coverage(window=3, stride=2),
                                  [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("settings", [
    dict(window=3, stride=2, padding="SAME"),
    dict(window=(2, 3), stride=(1, 2), padding=((1, 0), (2, 2)), dilation=(2, 1)),
])
def test_convolution_is_one_matrix_product_with_the_columns(rng, settings):
    # Park: y = W · im2col(x); the column layout matches w.reshape(-1, C_out).
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)))
    window = settings["window"] if isinstance(settings["window"], tuple) else (settings["window"],) * 2
    w = jnp.asarray(rng.normal(size=(*window, 3, 4)))
    conv_settings = {k: v for k, v in settings.items() if k != "window"}
    y = ops.im2col(x, **settings) @ w.reshape(-1, 4)
    np.testing.assert_allclose(y, reference.conv(x, w, **conv_settings), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_shape,settings", [
    ((2, 9, 2), dict(window=3, stride=2, padding="FULL", dilation=2)),
    ((2, 5, 6, 2), dict(window=(2, 3), stride=(2, 1), padding=((0, 1), (1, 2)))),
    ((1, 4, 5, 3, 2), dict(window=2, stride=(1, 2, 1), padding="SAME")),
], ids=["1d", "2d", "3d"])
def test_im2col_gradients_all_transforms(rng, x_shape, settings):
    opcheck.assert_all("im2col", jnp.asarray(rng.normal(size=x_shape)), **settings)


@pytest.mark.parametrize("x_shape,settings", [
    ((1, 7, 2), dict(window=3, stride=2, padding="FULL", dilation=2)),
    ((1, 4, 5, 2), dict(window=(2, 3), stride=(2, 1), padding=((0, 1), (1, 2)))),
    ((1, 3, 4, 2, 1), dict(window=2, stride=(1, 2, 1), padding="SAME")),
    ((1, 3, 3, 2), dict(window=(3, 3))),  # LeNet-5's C5: the one window is the input
], ids=["1d", "2d", "3d", "whole-window"])
def test_im2col_forward_mode(rng, x_shape, settings):
    # linear: the tangent is the tangent's columns, im2col(ṫ)
    x, t = jnp.asarray(rng.normal(size=x_shape)), jnp.asarray(rng.normal(size=x_shape))
    opcheck.assert_forward_mode("im2col", x, **settings)
    np.testing.assert_array_equal(jax.jvp(lambda x: ops.im2col(x, **settings), (x,), (t,))[1],
                                  reference.im2col(t, **settings))


def test_im2col_vmap_of_jvp_and_low_precision(rng):
    x, t = jnp.asarray(rng.normal(size=(3, 5, 4, 2))), jnp.asarray(rng.normal(size=(3, 5, 4, 2)))

    def jvp(im2col):
        return jax.vmap(lambda x, t: jax.jvp(lambda x: im2col(x[None], 2, padding=1)[0], (x,), (t,)))(x, t)

    for got, expected in zip(jvp(ops.im2col), jvp(reference.im2col)):
        np.testing.assert_array_equal(got, expected)
    for dtype in ("float32", "bfloat16"):
        y, ty = jax.jvp(lambda x: ops.im2col(x, 3, stride=2), (x.astype(dtype),), (t.astype(dtype),))
        assert y.dtype == ty.dtype == dtype
        np.testing.assert_array_equal(ty, reference.im2col(t.astype(dtype), 3, stride=2))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_im2col_vjp_low_precision(rng, dtype):
    x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), dtype)
    result = verify.check_vjp(ops.im2col, reference.im2col, x, window=3, stride=2, padding="SAME")
    result.assert_ok()
    assert ops.im2col(x, 3).dtype == dtype


def test_im2col_errors(rng):
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    for im2col in (ops.im2col, reference.im2col):
        with pytest.raises(ValueError, match=r"im2col: `x` must have at least 3 dimensions \(N, \*spatial, C\), got "
                                             r"shape \(6, 3\)"):
            im2col(x[0, 0], 2)
        with pytest.raises(TypeError, match=r"im2col: `window` must be an int or a sequence of 2 ints \(one per "
                                            r"spatial axis\), got \(2, 2, 2\)"):
            im2col(x, (2, 2, 2))
        with pytest.raises(ValueError, match=r"im2col: `stride` must be >= 1 on every axis, got 0"):
            im2col(x, 2, stride=0)
        with pytest.raises(ValueError, match=r"im2col: the window \(7 with dilation 1, extent 7\) is larger than the "
                                             r"padded input \(6 \+ 0 \+ 0 = 6\)"):
            im2col(x, 7)
        with pytest.raises(TypeError, match=r"im2col: `x` must be a floating-point array .* got dtype int32"):
            im2col(x.astype(jnp.int32), 2)
