"""Downsampling and upsampling: the lecture's definitions, adjointness (the backward of
one is the other), the gradient checks, a classic mistake, the errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import opcheck
from conftest import examples
from jaxcnn import ops, reference, verify


def _line(values):
    return jnp.asarray(values, jnp.float64).reshape(1, -1, 1)


# --------------------------------------------------------------------------- the lecture's definitions


def test_downsample_drops_s_minus_1_of_s_rows_and_columns():
    np.testing.assert_array_equal(ops.downsample(_line(range(7)), 3)[0, :, 0], [0, 3, 6])
    np.testing.assert_array_equal(ops.downsample(_line(range(8)), 3)[0, :, 0], [0, 3, 6])
    x = jnp.arange(30.0, dtype=jnp.float64).reshape(1, 5, 6, 1)
    np.testing.assert_array_equal(ops.downsample(x, (2, 3))[0, :, :, 0], [[0, 3], [12, 15], [24, 27]])


def test_upsample_inserts_s_minus_1_zeros_between_neighbours():
    np.testing.assert_array_equal(ops.upsample(_line([1, 2, 3]), 3)[0, :, 0], [1, 0, 0, 2, 0, 0, 3])
    x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]], jnp.float64).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(ops.upsample(x, (2, 1))[0, :, :, 0], [[1, 2], [0, 0], [3, 4]])
    x = jnp.ones((2, 2, 3, 2, 4), jnp.float32)
    assert ops.upsample(x, (3, 2, 1)).shape == (2, 4, 5, 2, 4)  # (n − 1) S + 1
    np.testing.assert_array_equal(ops.upsample(x, 1), x)


def test_downsample_undoes_upsample(rng):
    x = jnp.asarray(rng.normal(size=(2, 4, 3, 2)))
    np.testing.assert_array_equal(ops.downsample(ops.upsample(x, (3, 2)), (3, 2)), x)


# --------------------------------------------------------------------------- backward: each other's adjoint


@pytest.mark.parametrize("n,factor", [(7, 3), (8, 3), (5, 1), (4, 4)])
def test_backward_of_one_is_the_other(rng, n, factor):
    x = jnp.asarray(rng.normal(size=(2, n, 3)))
    g = jnp.asarray(rng.normal(size=(2, -(-n // factor), 3)))
    _, vjp = jax.vjp(lambda x: ops.downsample(x, factor), x)
    expected = np.zeros(x.shape)
    expected[:, ::factor] = g  # upsample(g), then zeros for the (n − 1) mod S dropped tail
    np.testing.assert_array_equal(vjp(g)[0], expected)
    np.testing.assert_array_equal(vjp(g)[0][:, : (g.shape[1] - 1) * factor + 1], ops.upsample(g, factor))

    y = jnp.asarray(rng.normal(size=(2, n, 3)))
    fine = ops.upsample(y, factor)
    _, vjp = jax.vjp(lambda y: ops.upsample(y, factor), y)
    h = jnp.asarray(rng.normal(size=fine.shape))
    np.testing.assert_array_equal(vjp(h)[0], ops.downsample(h, factor))


def test_adjoint_identity(rng):
    # ⟨upsample(x), y⟩ = ⟨x, downsample(y)⟩ for y on the upsampled grid.
    x = jnp.asarray(rng.normal(size=(2, 3, 4, 2)))
    y = jnp.asarray(rng.normal(size=(2, 7, 10, 2)))
    np.testing.assert_allclose(
        jnp.vdot(ops.upsample(x, (3, 3)), y), jnp.vdot(x, ops.downsample(y, (3, 3))), rtol=1e-13
    )


# --------------------------------------------------------------------------- gradient checks


@st.composite
def resample_cases(draw):
    rank = draw(st.integers(1, 3))
    factor = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    spatial = tuple(draw(st.integers(1, 6 if rank < 3 else 4)) for _ in range(rank))
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).normal(size=(2, *spatial, 2))
    return jnp.asarray(x), (factor if draw(st.booleans()) or len(set(factor)) > 1 else factor[0])


@examples(6, 25)
@given(case=resample_cases(), name=st.sampled_from(["upsample", "downsample"]))
def test_vjp_matches_autodiff_and_finite_differences(case, name):
    x, factor = case
    verify.check_vjp(getattr(ops, name), getattr(reference, name), x, factor=factor).assert_ok()
    verify.check_numerical(getattr(ops, name), x, factor=factor).assert_ok()


@pytest.mark.parametrize("name", ["upsample", "downsample"])
@pytest.mark.parametrize("x_shape,factor", [((2, 7, 3), 2), ((2, 5, 4, 2), (3, 1)), ((1, 3, 4, 5, 2), (2, 1, 3))])
def test_under_jit_vmap_and_grad_of_grad(rng, name, x_shape, factor):
    opcheck.assert_all(name, jnp.asarray(rng.normal(size=x_shape)), factor=factor)


@pytest.mark.parametrize("name", ["upsample", "downsample"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vjp_low_precision(rng, name, dtype):
    x = jnp.asarray(rng.normal(size=(2, 7, 5, 3)), dtype)
    assert getattr(ops, name)(x, 2).dtype == x.dtype
    opcheck.assert_vjp(name, x, factor=2)


# --------------------------------------------------------------------------- the checker catches a wrong rule


def test_checker_catches_block_spread_backward_for_downsample(rng):
    # A slip: taking the backward of downsampling to be "repeat δ over the block of S"
    # (the adjoint of nearest-neighbour upsampling), so the dropped rows get δ too.
    @functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
    def inner(x, factor, n):
        return reference.downsample(x, factor)

    inner.defvjp(lambda x, factor, n: (inner(x, factor, n), ()),
                 lambda factor, n, res, g: (jnp.repeat(g, factor, axis=1)[:, :n],))

    def wrong(x, factor):
        return inner(x, factor, x.shape[1])

    x = jnp.asarray(rng.normal(size=(2, 8, 3)))
    result = verify.check_vjp(wrong, reference.downsample, x, factor=2)
    assert result.forward.ok and not result["x"].ok
    assert not verify.check_numerical(wrong, x, factor=2)["x"].ok
    verify.check_vjp(ops.downsample, reference.downsample, x, factor=2).assert_ok()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["upsample", "downsample"])
def test_errors(name):
    op, ref = getattr(ops, name), getattr(reference, name)
    x = jnp.zeros((2, 5, 5, 3), jnp.float32)
    with pytest.raises(ValueError, match=rf"{name}: `factor` must be >= 1 on every axis, got 0"):
        op(x, 0)
    with pytest.raises(ValueError, match=rf"{name}: `factor` must be >= 1 on every axis, got \(2, -1\)"):
        op(x, (2, -1))
    with pytest.raises(ValueError, match=rf"{name}: `factor` has 3 entries but `x` of shape \(2, 5, 5, 3\) \(N, "
                                         rf"\*spatial, C\) has 2 spatial axes; give one entry per spatial axis, or a "
                                         rf"single int"):
        op(x, (2, 2, 2))
    with pytest.raises(ValueError, match=rf"{name}: `x` must have 3 or 4 or 5 dimensions \(N, \*spatial, C\): 1 to 3 "
                                         rf"spatial axes, channels last, got 6 dimensions"):
        op(jnp.zeros((1, 2, 2, 2, 2, 1), jnp.float32), 2)
    with pytest.raises(TypeError, match=rf"{name}: `factor` must be an int or a sequence of 2 ints \(one per spatial "
                                        rf"axis\), got 1.5"):
        op(x, 1.5)
    with pytest.raises(TypeError, match=rf"{name}: `x` must be a floating-point array .* got dtype int32"):
        op(jnp.zeros((2, 5, 5, 3), jnp.int32), 2)
    with pytest.raises(ValueError, match=rf"{name}: `factor` has 3 entries"):  # the reference validates alike
        ref(x, (2, 2, 2))


# --------------------------------------------------------------------------- forward mode


@pytest.mark.parametrize("shape, factor", [((2, 5, 3), 2), ((2, 5, 6, 2), (2, 3)), ((1, 3, 4, 5, 2), (1, 2, 3))])
@pytest.mark.parametrize("name", ["downsample", "upsample"])
def test_forward_mode_matches_the_reference(rng, name, shape, factor):
    opcheck.assert_forward_mode(name, jnp.asarray(rng.standard_normal(shape)), factor=factor)


@pytest.mark.parametrize("name", ["downsample", "upsample"])
def test_forward_mode_under_vmap_and_float32(rng, name):
    opcheck.assert_jvp_vmaps_and_keeps_float32(lambda x: getattr(ops, name)(x, 2),
                                               jnp.asarray(rng.standard_normal((3, 1, 5, 4, 2))))
