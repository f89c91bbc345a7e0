"""Transposed convolution: Raj's "upsample, then convolve", the input-gradient of a strided
conv, agreement with lax/Flax, the gradient checks, the classic mistakes, the errors."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from jax import lax

import opcheck
from conftest import covering, examples
from jaxcnn import _shapes, nn, ops, reference, verify
from jaxcnn.ops import _conv_transpose as _conv_transpose_module
from jaxcnn.ops._conv_plan import Plan

LAYOUT = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


def _normal(rng, *shape, dtype=jnp.float64):
    return jnp.asarray(rng.normal(size=shape), dtype)


# --------------------------------------------------------------------------- forward


def test_hand_computed_1d():
    # upsample [1, 2] by 2 → [1, 0, 2], pad k − 1 = 2 zeros each side, correlate with w.
    x = jnp.asarray([1.0, 2.0], jnp.float64).reshape(1, 2, 1)
    w = jnp.asarray([1.0, 10.0, 100.0], jnp.float64).reshape(3, 1, 1)
    np.testing.assert_array_equal(ops.conv_transpose(x, w, stride=2)[0, :, 0], [100, 10, 201, 20, 2])
    np.testing.assert_array_equal(ops.conv_transpose(x, w, stride=2, padding=1)[0, :, 0], [10, 201, 20])
    np.testing.assert_array_equal(ops.conv_transpose(x, w, stride=2, padding="FULL")[0, :, 0], [201])


@pytest.mark.parametrize("padding", ["VALID", ((1, 0), (0, 1)), 1])
def test_forward_is_upsample_then_correlate(rng, padding):
    # Raj: upsampling followed by a convolution is the transposed convolution. Written as
    # ops.upsample, zero padding (k − 1 − p) and a plain loop over window offsets.
    x, w, b = _normal(rng, 2, 3, 4, 3), _normal(rng, 3, 2, 3, 4), _normal(rng, 4)
    stride = (3, 2)  # ≤ window: "VALID" is the pairs (0, 0), see the output-size test
    pads = {"VALID": ((0, 0), (0, 0)), 1: ((1, 1), (1, 1))}.get(padding, padding)
    u = np.asarray(ops.upsample(x, stride))
    u = np.pad(u, ((0, 0), *((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((3, 2), pads)), (0, 0)))
    y = ops.conv_transpose(x, w, b, stride=stride, padding=padding)
    expected = np.zeros(y.shape) + np.asarray(b)
    for i, j in itertools.product(range(3), range(2)):
        expected += u[:, i:i + y.shape[1], j:j + y.shape[2], :] @ np.asarray(w)[i, j]
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)


GRADIENT_OF_CONV_CASES = [
    (window, stride, padding)
    for window, stride in [(3, 2), (2, 3), (4, 1), (1, 2)]
    for padding in ["VALID", "SAME", "FULL", 0, ((window - 1, 0),)]
]


@pytest.mark.parametrize("window,stride,padding", GRADIENT_OF_CONV_CASES)
def test_is_the_input_gradient_of_a_strided_conv(rng, window, stride, padding):
    # conv_transpose(x, w) = ∂/∂z ⟨conv(z, flip(w)ᵀ; stride, padding), x⟩ for the input z
    # of the op's output size: the transposed conv "is" the conv's backward.
    x, w = _normal(rng, 2, 4, 3), _normal(rng, window, 3, 2)
    y = ops.conv_transpose(x, w, stride=stride, padding=padding)
    lax_padding = {"FULL": ((window - 1, window - 1),), 0: ((0, 0),)}.get(padding, padding)
    v = jnp.flip(w, 0).swapaxes(1, 2)  # (k, C_out, C_in): the conv maps C_out → C_in
    z = jnp.zeros((2, y.shape[1], 2), jnp.float64)
    def conv(z):
        return lax.conv_general_dilated(z, v, (stride,), lax_padding, dimension_numbers=LAYOUT[1])
    out, vjp = jax.vjp(conv, z)
    assert out.shape == x.shape
    np.testing.assert_allclose(y, vjp(x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("window,stride", [(3, 2), (2, 3), (3, 1), (4, 2)])
def test_string_paddings_equal_lax_and_flax_conv_transpose(rng, padding, window, stride):
    # Flax's ConvTranspose calls lax.conv_transpose(..., transpose_kernel=False) like this.
    x, w = _normal(rng, 2, 5, 4, 3), _normal(rng, window, 2, 3, 2)
    expected = lax.conv_transpose(x, w, (stride, stride), padding, dimension_numbers=LAYOUT[2])
    np.testing.assert_allclose(ops.conv_transpose(x, w, stride=stride, padding=padding), expected, rtol=1e-12)


@pytest.mark.parametrize("window", [1, 2, 3, 4])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_output_shape_formula(window, stride):
    n = 5
    x, w = jnp.zeros((1, n, 2), jnp.float32), jnp.zeros((window, 2, 3), jnp.float32)
    expected = {
        "VALID": n * stride + max(window - stride, 0),
        "SAME": n * stride,
        "FULL": (n - 1) * stride - window + 2,
        0: (n - 1) * stride + window,
        ((window - 1, 0),): (n - 1) * stride + 1,
    }
    if window >= stride:
        assert expected["VALID"] == (n - 1) * stride + window
    for padding, size in expected.items():
        shape = jax.eval_shape(functools.partial(ops.conv_transpose, stride=stride, padding=padding), x, w).shape
        assert shape == (1, size, 3), padding
        assert _shapes.transpose_geometry("t", (n,), window, stride, padding).out_shape == (size,)


# --------------------------------------------------------------------------- gradient checks


@st.composite
def conv_transpose_cases(draw):
    rank = draw(st.integers(1, 3))
    window = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    kind = draw(st.sampled_from(["VALID", "SAME", "FULL", "int", "pairs"]))
    if kind == "int":
        padding = draw(st.integers(0, min(window) - 1))
    elif kind == "pairs":
        padding = tuple((draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))) for k in window)
    else:
        padding = kind
    spatial = tuple(draw(st.integers(1, 4 if rank < 3 else 3)) for _ in range(rank))
    try:
        _shapes.transpose_geometry("case", spatial, window, stride, padding)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x, w = _normal(rng, 2, *spatial, 2), _normal(rng, *window, 2, 3)
    args = (x, w, _normal(rng, 3)) if draw(st.booleans()) else (x, w)
    return args, dict(stride=stride, padding=padding)


@examples(8, 30)
@given(case=conv_transpose_cases())
def test_vjp_matches_autodiff_and_finite_differences(case):
    args, settings_ = case
    verify.check_vjp(ops.conv_transpose, reference.conv_transpose, *args, **settings_).assert_ok()
    verify.check_numerical(ops.conv_transpose, *args, **settings_).assert_ok()


TRANSFORM_CASES = [
    ((2, 5, 3), (3, 3, 2), dict(stride=2)),
    ((2, 3, 4, 2), (2, 3, 2, 3), dict(stride=(3, 2), padding="SAME")),
    ((1, 2, 3, 2, 2), (2, 2, 3, 2, 2), dict(stride=(2, 1, 2), padding=((1, 0), (0, 1), (2, 2)))),
]


@covering("transform", opcheck.TRANSFORMS, "x_shape,w_shape,settings_", TRANSFORM_CASES, ["1d", "2d", "3d"])
def test_under_jit_vmap_and_grad_of_grad(rng, transform, x_shape, w_shape, settings_):
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    opcheck.assert_transform(transform, "conv_transpose", x, w, b, vmap_axes=(0, None, None), **settings_)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vjp_low_precision(rng, dtype):
    x, w, b = _normal(rng, 2, 4, 5, 3, dtype=dtype), _normal(rng, 3, 3, 3, 4, dtype=dtype), _normal(rng, 4, dtype=dtype)
    assert ops.conv_transpose(x, w, b, stride=2).dtype == x.dtype
    opcheck.assert_vjp("conv_transpose", x, w, b, stride=2, padding="SAME")


# --------------------------------------------------------------------------- PyTorch's options: dilation,
# output_padding, groups


def _pytorch_conv_transpose(x, w, stride, padding, dilation, output_padding, groups):
    """PyTorch's ConvTranspose1d from its definition, in NumPy loops: every input position
    ``i`` scatters ``x[i] · W[j]`` to output ``i·s − p + j·d`` (``W`` = PyTorch's kernel,
    jaxcnn's flipped); the output has ``(n − 1)·s − 2p + d·(k − 1) + a + 1`` positions;
    channel group ``j`` scatters only into output group ``j``."""
    x, w_torch = np.asarray(x), np.asarray(w)[::-1]
    (n_batch, n, _), (k, c_in_g, c_out) = x.shape, w_torch.shape
    out = (n - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1
    y = np.zeros((n_batch, out, c_out))
    c_out_g = c_out // groups
    for i in range(n):
        for j in range(k):
            o = i * stride - padding + j * dilation
            if 0 <= o < out:
                for grp in range(groups):
                    xs = x[:, i, grp * c_in_g:(grp + 1) * c_in_g]
                    y[:, o, grp * c_out_g:(grp + 1) * c_out_g] += xs @ w_torch[j, :, grp * c_out_g:(grp + 1) * c_out_g]
    return y


PYTORCH_CASES = [  # (n, k, stride, padding, dilation, output_padding, C_in, C_out, groups)
    (4, 3, 2, 1, 1, 1, 2, 3, 1),  # the ×2 upsampling: output 2n
    (3, 3, 3, 2, 2, 2, 4, 8, 4),  # depthwise, multiplier 2, output_padding < stride
    (4, 2, 1, 0, 3, 2, 2, 2, 2),  # stride 1: output_padding < dilation
    (5, 4, 2, 3, 1, 0, 6, 4, 2),
]


@pytest.mark.parametrize("n,k,s,p,d,a,c_in,c_out,g", PYTORCH_CASES)
def test_pytorch_conv_transpose_semantics(rng, n, k, s, p, d, a, c_in, c_out, g):
    x, w, b = _normal(rng, 2, n, c_in), _normal(rng, k, c_in // g, c_out), _normal(rng, c_out)
    settings_ = dict(stride=s, padding=p, dilation=d, output_padding=a, groups=g)
    y = ops.conv_transpose(x, w, b, **settings_)
    assert y.shape == (2, (n - 1) * s - 2 * p + d * (k - 1) + a + 1, c_out)  # PyTorch's output-size formula
    np.testing.assert_allclose(y, _pytorch_conv_transpose(x, w, s, p, d, a, g) + np.asarray(b), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(reference.conv_transpose(x, w, b, **settings_), y, rtol=1e-12, atol=1e-12)
    opcheck.assert_vjp("conv_transpose", x, w, b, **settings_)
    opcheck.assert_numerical("conv_transpose", x, w, b, **settings_)


def test_output_padding_positions_are_real_outputs(rng):
    # The extra position of output_padding is reached by the last input (k_d > s): its δ must
    # reach x (the classic mistake drops it, as if only the bias were there).
    x, w = _normal(rng, 1, 3, 1), _normal(rng, 3, 1, 1)
    y = ops.conv_transpose(x, w, stride=2, padding=1, output_padding=1)
    g = jnp.zeros_like(y).at[0, -1, 0].set(1.0)
    dx = jax.vjp(lambda x: ops.conv_transpose(x, w, stride=2, padding=1, output_padding=1), x)[1](g)[0]
    np.testing.assert_allclose(dx[0, :, 0], [0.0, 0.0, w[0, 0, 0]], atol=1e-15)


OPTION_CASES = [
    ((2, 4, 4), (3, 1, 8), dict(stride=3, padding=2, dilation=2, output_padding=2, groups=4)),
    ((2, 3, 4, 4), (3, 2, 2, 6),
     dict(stride=2, padding=((1, 1), (0, 0)), dilation=(1, 2), output_padding=1, groups=2)),
    ((1, 2, 3, 2, 2), (2, 2, 2, 1, 2), dict(stride=(1, 2, 1), padding="SAME", dilation=(2, 1, 1),
                                             output_padding=(1, 1, 0), groups=2)),
]


@covering("transform", opcheck.TRANSFORMS, "x_shape,w_shape,settings_", OPTION_CASES[::-1], ["3d", "2d", "1d"])
def test_new_options_under_every_transform(rng, transform, x_shape, w_shape, settings_):
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    opcheck.assert_transform(transform, "conv_transpose", x, w, b, vmap_axes=(0, None, None), **settings_)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_new_options_low_precision(rng, dtype):
    x, w, b = _normal(rng, 2, 4, 5, 4, dtype=dtype), _normal(rng, 3, 3, 2, 6, dtype=dtype), _normal(rng, 6, dtype=dtype)
    settings_ = dict(stride=2, padding=1, dilation=2, output_padding=1, groups=2)
    assert ops.conv_transpose(x, w, b, **settings_).dtype == x.dtype
    opcheck.assert_vjp("conv_transpose", x, w, b, **settings_)


# --------------------------------------------------------------------------- the checker catches wrong rules


def _with_rules(flip_dx=True, flip_dw=True):
    """A 2-D "VALID" conv_transpose whose backward is the hand rule, optionally without a flip."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def op(x, w, b, stride):
        return reference.conv_transpose(x, w, b, stride=stride)

    def bwd(stride, res, g):
        x, w = res
        kernel = jnp.flip(w, (0, 1)) if flip_dx else w
        dx = lax.conv_general_dilated(g, kernel, stride, "VALID", dimension_numbers=("NHWC", "HWOI", "NHWC"))
        dw = lax.conv_general_dilated(g, x, (1, 1), "VALID", rhs_dilation=stride,
                                      dimension_numbers=("CHWN", "IHWO", "HWCN"))
        dw = jnp.flip(dw, (0, 1)) if flip_dw else dw
        return dx, dw, g.sum(axis=(0, 1, 2))

    op.defvjp(lambda x, w, b, stride: (op(x, w, b, stride), (x, w)), bwd)
    return lambda x, w, b, stride: op(x, w, b, tuple(stride))


@pytest.fixture
def args(rng):
    return _normal(rng, 2, 3, 4, 2), _normal(rng, 3, 3, 2, 3), _normal(rng, 3)


def test_checker_accepts_the_rule(args):
    result = verify.check_vjp(_with_rules(), reference.conv_transpose, *args, stride=(2, 2))
    result.assert_ok()


def test_checker_catches_missing_kernel_flip_in_dx(args):
    result = verify.check_vjp(_with_rules(flip_dx=False), reference.conv_transpose, *args, stride=(2, 2))
    assert result.forward.ok and not result["x"].ok and result["w"].ok and result["b"].ok
    assert not verify.check_numerical(_with_rules(flip_dx=False), *args, stride=(2, 2))["x"].ok


def test_checker_catches_unflipped_filter_gradient(args):
    result = verify.check_vjp(_with_rules(flip_dw=False), reference.conv_transpose, *args, stride=(2, 2))
    assert result.forward.ok and result["x"].ok and not result["w"].ok and result["b"].ok
    assert not verify.check_numerical(_with_rules(flip_dw=False), *args, stride=(2, 2))["w"].ok


# --------------------------------------------------------------------------- errors


def test_errors():
    x, w, b = jnp.zeros((2, 4, 4, 3), jnp.float32), jnp.zeros((3, 3, 3, 5), jnp.float32), jnp.zeros((5,), jnp.float32)
    op = ops.conv_transpose
    with pytest.raises(ValueError, match=r"conv_transpose: `w` must have 3 or 4 or 5 dimensions \(\*window, C_in, "
                                         r"C_out\): 1 to 3 spatial axes, got 2 dimensions"):
        op(x, w[0, 0], b)
    with pytest.raises(ValueError, match=r"conv_transpose: `x` must have 4 dimensions \(N, \*spatial, C_in\) to "
                                         r"match the 2 spatial axes of `w` with shape \(3, 3, 3, 5\) \(\*window, "
                                         r"C_in, C_out\), got `x` of shape \(2, 4, 3\)"):
        op(x[:, 0], w, b)
    with pytest.raises(ValueError, match=r"conv_transpose: `w` must have shape \(\*window, C_in, C_out\) with C_in = "
                                         r"x.shape\[-1\] = 2, got `w` of shape \(3, 3, 3, 5\)"):
        op(x[..., :2], w, b)
    with pytest.raises(ValueError, match=r"conv_transpose: `b` must have shape \(5,\) \(C_out,\) with C_out = "
                                         r"w.shape\[-1\], got \(3,\)"):
        op(x, w, b[:3])
    with pytest.raises(TypeError, match=r"conv_transpose: all floating arguments must share one dtype, but `x` is "
                                        r"float32, `w` is float64"):
        op(x, w.astype(jnp.float64), b)
    with pytest.raises(TypeError, match=r"conv_transpose: `w` must be a floating-point array .* got dtype int32"):
        op(x, w.astype(jnp.int32), b)
    with pytest.raises(ValueError, match=r"conv_transpose: `stride` must be >= 1 on every axis, got \(2, 0\)"):
        op(x, w, b, stride=(2, 0))
    with pytest.raises(ValueError, match=r"conv_transpose: `stride` has 3 entries but `w` of shape \(3, 3, 3, 5\) "
                                         r"\(\*window, C_in, C_out\) has 2 spatial axes"):
        op(x, w, b, stride=(2, 2, 2))
    with pytest.raises(ValueError, match=r"conv_transpose: unknown `padding` 'same-ish'"):
        op(x, w, b, padding="same-ish")
    with pytest.raises(ValueError, match=r"conv_transpose: `padding` must not be negative, got \(\(0, -1\), \(0, "
                                         r"0\)\)"):
        op(x, w, b, padding=((0, -1), (0, 0)))
    with pytest.raises(ValueError, match=r"conv_transpose: `padding` is the padding of the convolution being "
                                         r"transposed and must be at most k_d − 1 = \(2, 2\) on every axis "
                                         r"\(k_d = \(k − 1\)·d \+ 1, the dilated window\), got 3"):
        op(x, w, b, padding=3)
    with pytest.raises(ValueError, match=r"conv_transpose: `output_padding` must be smaller than the stride or the "
                                         r"dilation on every axis \(PyTorch's rule\), got output_padding 2 with "
                                         r"stride 2 and dilation 1 on spatial axis 1"):
        op(x, w, b, stride=2, output_padding=(1, 2))
    with pytest.raises(ValueError, match=r"conv_transpose: `output_padding` must be >= 0 on every axis, got -1"):
        op(x, w, b, stride=2, output_padding=-1)
    with pytest.raises(ValueError, match=r"conv_transpose: `dilation` has 3 entries but `w` of shape"):
        op(x, w, b, dilation=(1, 2, 1))
    with pytest.raises(ValueError, match=r"conv_transpose: `groups` = 2 must divide C_in = x.shape\[-1\] = 3; each "
                                         r"group takes C_in / groups input and C_out / groups output channels"):
        op(x, w, b, groups=2)
    with pytest.raises(ValueError, match=r"conv_transpose: `groups` = 5 must divide C_out = w.shape\[-1\] = 4"):
        op(jnp.ones((1, 4, 4, 5)), jnp.ones((3, 3, 1, 4)), groups=5)
    with pytest.raises(ValueError, match=r"conv_transpose: with `groups` = 2, `w` must have C_in / groups = 4 / 2 = "
                                         r"2 input channels in its second-to-last axis, \(\*window, C_in / groups, "
                                         r"C_out\), got w of shape \(3, 3, 4, 4\) for x of shape \(1, 4, 4, 4\)"):
        op(jnp.ones((1, 4, 4, 4)), jnp.ones((3, 3, 4, 4)), groups=2)
    with pytest.raises(ValueError, match=r"conv_transpose: `groups` must be an int >= 1 \(the number of channel "
                                         r"groups that do not mix\), got 0"):
        op(x, w, b, groups=0)
    with pytest.raises(TypeError, match=r"conv_transpose: `groups` must be an int >= 1 .* got 1.0 of type float"):
        op(x, w, b, groups=1.0)
    with pytest.raises(ValueError, match=r"conv_transpose: the output would be empty along spatial axis 0: an input "
                                         r"of size 1 upsampled by 1 and padded by \(0, 0\) is smaller than the "
                                         r"window 3 \(padding 'FULL'\)"):
        op(x[:, :1, :1], w, b, padding="FULL")
    with pytest.raises(TypeError, match=r"conv_transpose: `padding` must be 2 \(low, high\) pairs of ints, got "
                                        r"\(\(1.5, 1\), \(1, 1\)\)"):
        op(x, w, b, padding=((1.5, 1), (1, 1)))
    with pytest.raises(ValueError, match=r"conv_transpose: `stride` has 3 entries"):  # the reference validates alike
        reference.conv_transpose(x, w, b, stride=(2, 2, 2))


def test_the_layer_passes_method_and_platform(rng):
    # nn.ConvTranspose exposes the op's `method` and `platform`: the same table, the same errors
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 3)), jnp.float32)
    layer = nn.ConvTranspose(4, 3, stride=2, padding=1, method=Plan("im2col", "taps", "rows"), platform="cpu")
    params, state, shape = layer.init(jax.random.PRNGKey(0), x.shape)
    y, _ = layer.apply(params, state, x)
    assert y.shape == shape
    np.testing.assert_allclose(y, reference.conv_transpose(x, params["w"], params["b"], stride=2, padding=1),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"conv_transpose: `method='winograd'` needs a 2-D 3 × 3 window at stride 1"):
        nn.ConvTranspose(4, 3, stride=2, method="winograd").apply(params, state, x)


# --------------------------------------------------------------------------- forward mode (bilinearity)

FORWARD_CASES = [  # tiny (jacfwd and the Hessian run on each); the option cases' output_padding needs "xla"
    ((1, 3, 2), (3, 2, 2), dict(stride=2, padding="SAME"),
     ("xla", "im2col", "taps", "rows", Plan("xla", "im2col", "taps"))),
    ((1, 2, 3, 2), (2, 3, 2, 2), dict(stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2)),
     ("xla", "im2col", "taps", "rows")),
    ((1, 3, 3, 2), (3, 3, 2, 2), dict(padding=1), ("winograd",)),
    ((1, 3, 4), (3, 1, 4), dict(stride=3, padding=2, dilation=2, output_padding=2, groups=4), ("xla", "auto")),
    ((1, 2, 2, 4), (3, 2, 2, 2), dict(stride=2, padding=((1, 1), (0, 0)), dilation=(1, 2), output_padding=1,
                                      groups=2), ("xla",)),
    ((1, 2, 2, 1, 2), (2, 2, 2, 1, 2), dict(stride=(1, 2, 1), padding="SAME", dilation=(2, 1, 1),
                                            output_padding=(1, 1, 0), groups=2), ("auto",)),
]
FORWARD_PARAMS = [pytest.param(*case[:3], method, id=f"{i}-{method if isinstance(method, str) else 'plan'}")
                  for i, case in enumerate(FORWARD_CASES) for method in case[3]]


@pytest.mark.parametrize("x_shape,w_shape,settings_,method", FORWARD_PARAMS)
def test_forward_mode_matches_the_reference(rng, x_shape, w_shape, settings_, method):
    # ṫ_y = pad(upsample(ṫ_x)) ⋆ w + pad(upsample(x)) ⋆ ṫ_w + ṫ_b, by y's own formula
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    args = (x, w) if method == "rows" else (x, w, b)  # one case without the bias
    opcheck.assert_forward_mode("conv_transpose", *args, method=method, **settings_)


@pytest.mark.parametrize("method,convolutions", [("xla", 3), ("im2col", 0), ("taps", 0), ("rows", 0)])
def test_forward_mode_follows_the_method(method, convolutions):
    x, w = jnp.ones((2, 5, 6, 3)), jnp.ones((3, 3, 3, 4))
    settings_ = dict(stride=2, padding=1, method=method)
    jvp = jax.jit(lambda p, t: jax.jvp(lambda x, w: ops.conv_transpose(x, w, **settings_), p, t))
    assert jvp.lower((x, w), (x, w)).as_text().count("stablehlo.convolution") == convolutions
    np.testing.assert_allclose(jvp((x, w), (x, w))[1], 2 * reference.conv_transpose(x, w, **settings_), rtol=1e-12)


@pytest.mark.parametrize("method", ["xla", "im2col", "taps", "rows"])
def test_jvp_in_x_only_and_in_w_only(rng, method):
    x, w, b = _normal(rng, 1, 4, 3, 4), _normal(rng, 3, 2, 2, 6), _normal(rng, 6)
    tx, tw, tb = _normal(rng, *x.shape), _normal(rng, *w.shape), _normal(rng, 6)
    zx, zw, zb = jnp.zeros_like(x), jnp.zeros_like(w), jnp.zeros_like(b)
    settings_ = dict(stride=2, padding=1, dilation=(1, 2), groups=2)

    def jvp(fn, *tangents):
        return jax.jvp(lambda x, w, b: fn(x, w, b, method=method, **settings_), (x, w, b), tangents)[1]

    in_x, in_w, in_b = jvp(ops.conv_transpose, tx, zw, zb), jvp(ops.conv_transpose, zx, tw, zb), jvp(
        ops.conv_transpose, zx, zw, tb)
    np.testing.assert_allclose(in_x, reference.conv_transpose(tx, w, **settings_), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(in_w, reference.conv_transpose(x, tw, **settings_), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(in_b, jnp.broadcast_to(tb, in_b.shape))
    np.testing.assert_allclose(jvp(ops.conv_transpose, tx, tw, tb), in_x + in_w + in_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jvp(ops.conv_transpose, tx, tw, tb), jvp(reference.conv_transpose, tx, tw, tb),
                               rtol=1e-12, atol=1e-12)


def test_vmap_of_jvp(rng):
    x, w, b = _normal(rng, 3, 3, 2, 2), _normal(rng, 3, 2, 2, 3), _normal(rng, 3)
    tx, tw = _normal(rng, *x.shape), _normal(rng, 3, *w.shape)  # per-example kernel tangents
    settings_ = dict(stride=2, padding="SAME", output_padding=1)

    def one(conv_transpose):
        return lambda x, tx, tw: jax.jvp(lambda x, w: conv_transpose(x[None], w, b, **settings_)[0], (x, w), (tx, tw))

    for g, e in zip(jax.vmap(one(ops.conv_transpose))(x, tx, tw), jax.vmap(one(reference.conv_transpose))(x, tx, tw)):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,method", [("float32", "auto"), ("float32", "taps"), ("bfloat16", "xla")])
def test_forward_mode_low_precision(rng, dtype, method):
    x, w, b = (_normal(rng, *s, dtype=dtype) for s in ((1, 4, 3, 2), (3, 3, 2, 4), (4,)))
    t = tuple(_normal(rng, *a.shape, dtype=dtype) for a in (x, w, b))
    settings_ = dict(stride=2, padding=1, method=method)
    y, ty = jax.jvp(lambda x, w, b: ops.conv_transpose(x, w, b, **settings_), (x, w, b), t)
    assert y.dtype == ty.dtype == dtype
    _, expected = jax.jvp(lambda x, w, b: reference.conv_transpose(x, w, b, **settings_), (x, w, b), t)
    tol = 1e-4 if dtype == "float32" else 1e-1
    np.testing.assert_allclose(np.asarray(ty, np.float32), np.asarray(expected, np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ["xla", "im2col", "taps", "rows", "auto"])
def test_jvp_and_vjp_are_adjoint(rng, method):
    # the two hand rules tied to each other: ⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩ for random ṫ and g
    x, w, b = _normal(rng, 2, 4, 3, 4), _normal(rng, 3, 2, 2, 6), _normal(rng, 6)
    t = tuple(_normal(rng, *a.shape) for a in (x, w, b))
    conv_transpose = functools.partial(ops.conv_transpose, stride=2, padding=((1, 0), (1, 1)), dilation=(1, 2),
                                       groups=2, method=method)
    y, ty = jax.jvp(conv_transpose, (x, w, b), t)
    g = _normal(rng, *y.shape)
    cotangents = jax.vjp(conv_transpose, x, w, b)[1](g)
    np.testing.assert_allclose(jnp.vdot(ty, g), sum(jnp.vdot(a, c) for a, c in zip(t, cotangents)), rtol=1e-12)


def _auto_plan(x_shape, w_shape, **settings):
    """The plan ``conv_transpose(method="auto")`` resolves on XLA:CPU."""
    x, w = jnp.zeros(x_shape, jnp.float32), jnp.zeros(w_shape, jnp.float32)
    x, w, b, geom, groups = _conv_transpose_module._validate(x, w, None, settings.pop("stride", 1),
                                                             settings.pop("padding", "VALID"), 1,
                                                             settings.pop("output_padding", 0), 1)
    return _conv_transpose_module._spec(x, w, b, geom, groups, "auto", "cpu").plan


@pytest.mark.parametrize("x_shape,w_shape,settings,plan", [
    ((2, 16, 8), (5, 8, 4), dict(stride=2, padding=2, output_padding=1), Plan.of("im2col")),  # 1-D: col2im's y
    ((2, 16, 8), (3, 8, 4), dict(stride=2, output_padding=1), Plan.of("xla")),  # past the high padding: XLA's
    ((2, 6, 6, 8), (3, 3, 8, 4), dict(stride=2, padding=1, output_padding=1), Plan.of("xla")),  # 2-D: XLA's
])
def test_auto_plan_on_the_cpu_stays_exact(rng, x_shape, w_shape, settings, plan):
    # 1-D on XLA:CPU: im2col's three products where they apply (docs/performance.md, "The convolution family")
    assert _auto_plan(x_shape, w_shape, **settings)[:3] == plan[:3]
    x, w, b = _normal(rng, *x_shape), _normal(rng, *w_shape), _normal(rng, w_shape[-1])
    verify.check_vjp(ops.conv_transpose, reference.conv_transpose, x, w, b, **settings, platform="cpu").assert_ok()
