"""Degenerate shapes, every op against its reference: an empty batch, no channels, no
classes, a size-0 spatial axis. Each is either computed (an empty result, gradients of the
right shapes, the same values as autodiff of the reference) or refused with the same clear
error by the op and its reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import ops, reference
from jaxcnn._certify.registry import REGISTRY, cast, cast_settings

WITH_CHANNELS = ("conv", "conv_transpose", "im2col", "max_pool", "mean_pool", "upsample", "downsample")


def _samples(name):
    """The first two samples of each op, and every `method` of conv."""
    samples = REGISTRY[name].samples(np.random.default_rng(0))
    return [s for i, s in enumerate(samples) if i < 2 or "method" in s.settings]


def _value_and_grads(f, args, settings):
    floating = tuple(i for i, a in enumerate(args)
                     if jnp.issubdtype(jax.tree_util.tree_leaves(a)[0].dtype, jnp.floating))

    @jax.jit  # one program, not one per primitive
    def value_and_grads(*args):
        return f(*args, **settings), jax.grad(lambda *a: jnp.sum(f(*a, **settings)), argnums=floating)(*args)

    y, grads = value_and_grads(*args)
    return y, grads, [args[i] for i in floating]


def _assert_matches_reference(name, args, settings):
    y, grads, primals = _value_and_grads(getattr(ops, name), args, settings)
    y_ref, grads_ref, _ = _value_and_grads(getattr(reference, name), args, settings)
    np.testing.assert_array_equal(y, y_ref)  # NaN == NaN here (the mean loss of no example)
    for g, g_ref, a in zip(grads, grads_ref, primals):
        assert jax.tree_util.tree_map(jnp.shape, g) == jax.tree_util.tree_map(jnp.shape, a)
        for leaf, leaf_ref in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
            np.testing.assert_allclose(leaf, leaf_ref, rtol=1e-6, atol=1e-6)
    return y


@pytest.mark.parametrize("name", sorted(set(REGISTRY) - {"l2_penalty"}))
def test_empty_batch_gives_an_empty_result_and_zero_gradients(name):
    info = REGISTRY[name]
    for sample in _samples(name):
        args = list(sample.args)
        if np.ndim(args[0]) < 2 or sample.settings.get("axis") in (0, -np.ndim(args[0])):
            continue  # no batch axis to empty
        for i in info.batched:
            args[i] = np.asarray(args[i])[:0]
        if name == "batch_norm" and sample.settings.get("mean") is None:  # no batch statistics of no values
            for f in (ops.batch_norm, reference.batch_norm):
                with pytest.raises(ValueError, match=r"batch_norm: training mode needs more than one value per ch"):
                    f(*cast(tuple(args), "float32"), **sample.settings)
            continue
        y = _assert_matches_reference(name, cast(tuple(args), "float32"), cast_settings(sample.settings, "float32"))
        if np.ndim(y):
            assert y.shape[0] == 0


@pytest.mark.parametrize("name", WITH_CHANNELS + ("dense",))
def test_no_channels(name):
    for sample in _samples(name):
        if "connections" in sample.settings:
            continue
        x, *rest = sample.args
        args = [np.asarray(x)[..., :0]]
        if rest:  # the weights lose their input channels: (*window, 0, C_out) or (n_out, 0)
            w = np.asarray(rest[0])
            args += [w[:, :0] if name == "dense" else w[..., :0, :], *rest[1:]]
        y = _assert_matches_reference(name, cast(tuple(args), "float32"), cast_settings(sample.settings, "float32"))
        if name in ("conv", "conv_transpose", "dense"):  # no input: the output is the bias (or 0)
            bias = np.asarray(args[2], np.float32) if len(args) > 2 else 0.0
            np.testing.assert_allclose(y, np.broadcast_to(bias, y.shape), rtol=1e-6)


@pytest.mark.parametrize("name", ["upsample", "downsample"])
def test_resample_of_an_empty_spatial_axis_is_empty(name):
    x = jnp.ones((2, 0, 5, 3), jnp.float32)
    y = _assert_matches_reference(name, (x,), {"factor": 2})
    assert y.shape == (2, 0, 9 if name == "upsample" else 3, 3)


def test_conv_transpose_refuses_an_empty_spatial_axis():
    x, w = jnp.ones((2, 0, 4, 3), jnp.float32), jnp.ones((3, 3, 3, 2), jnp.float32)
    for op in (ops.conv_transpose, reference.conv_transpose):
        with pytest.raises(ValueError, match=r"conv_transpose: the input has size 0 along spatial axis 0 \(spatial "
                                             r"shape \(0, 4\)\); a transposed convolution needs at least one input "
                                             r"position per axis"):
            op(x, w, stride=2)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_over_an_empty_axis_is_empty_like_jax_nn(name, axis):
    x = jnp.ones((3, 0), jnp.float32) if axis == -1 else jnp.ones((0, 3), jnp.float32)
    y = _assert_matches_reference(name, (x,), {"axis": axis})
    assert y.shape == x.shape == getattr(jax.nn, name)(x, axis=axis).shape


@pytest.mark.parametrize("name", ["max_pool", "mean_pool"])
def test_pooling_an_empty_spatial_axis_is_refused_since_every_window_reads_padding_only(name):
    # with padding the padded axis is long enough for a window, but there is nothing to take the max or mean of
    for op in (getattr(ops, name), getattr(reference, name)):
        with pytest.raises(ValueError, match=rf"{name}: a window covers padding only: with padding 1 .* input of "
                                             rf"spatial size \(4, 0\), output position 0 along spatial axis 1"):
            op(jnp.ones((2, 4, 0, 3), jnp.float32), 2, 1, 1)


def test_cross_entropy_refuses_zero_classes():
    for op in (ops.softmax_cross_entropy, reference.softmax_cross_entropy):
        with pytest.raises(ValueError, match=r"softmax_cross_entropy: `logits` must have at least one class \(K = "
                                             r"logits.shape\[-1\] >= 1\), got shape \(3, 0\)"):
            op(jnp.ones((3, 0), jnp.float32), jnp.zeros(3, jnp.int32))
