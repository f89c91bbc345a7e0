"""Downsampling and upsampling with hand-derived backward rules: each is the other's adjoint.

Lecture: Raj, "Resampling": a downsampling layer "drops S − 1 of S rows and columns", an
upsampling (or dilation) layer "introduces S − 1 rows and columns" of zeros between
adjacent entries; "upsampling followed by a convolutional layer" is the transposed
("fractionally strided") convolution (:func:`jaxcnn.ops.conv_transpose`), and a strided
conv is a stride-1 conv followed by downsampling. In the backward pass the derivative
maps are upsampled where the forward downsampled, and downsampled where it upsampled.
Both are linear, so in forward mode each resamples the tangent as it does its input.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks, _shapes
from jaxcnn.ops import _rule

# --------------------------------------------------------------------------- downsample


def downsample(x: jax.Array, factor) -> jax.Array:
    r"""Keeps every ``S``-th row/column (Raj: "drops S − 1 of S rows and columns").

    Forward, along each spatial axis: ``y[i] = x[S·i]``, so an axis of size ``n`` becomes
    ``⌈n / S⌉``: ``x[0], x[S], x[2S], …`` are kept, and ``(n − 1) mod S`` of the dropped
    entries lie after the last kept one.

    Backward (the adjoint, an upsampling): ``dx[S·i] = g[i]`` and ``dx = 0`` at every
    dropped position — :func:`upsample` of ``g``, followed by ``(n − 1) mod S`` zeros at
    the end of each axis so that ``dx`` has the input's shape.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes.
      factor: ``S ≥ 1``, an int or one per spatial axis.

    Returns:
      ``y`` of shape ``(N, ⌈n₁ / S₁⌉, …, C)`` and the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or ``factor`` is not an int/sequence of ints.
      ValueError: ``x`` does not have 3 to 5 dimensions, ``factor`` has the wrong number
        of entries or is < 1.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.downsample(jnp.arange(5.0).reshape(1, 5, 1), 2)[0, :, 0].tolist()
    [0.0, 2.0, 4.0]
    """
    x, factor = _validate("downsample", x, factor)
    return _downsample(x, factor, x.shape[1:-1])


# `fine_shape` is the spatial shape of the full-resolution grid: the input of
# `_downsample`, the output of `_upsample`. With it each is exactly the other's adjoint.


def _keep_every(x, factor, fine_shape):
    """``y[i] = x[S·i]``: the forward of :func:`downsample`, the backward of :func:`upsample`."""
    return lax.slice(x, (0,) * x.ndim, x.shape, (1, *factor, 1))


# Each backward is the other op's plain forward, not its rule: jax.hessian (jacfwd over jacrev)
# fails on a rule bound inside another rule's backward.
@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2))
def _downsample(x, factor, fine_shape):
    return _keep_every(x, factor, fine_shape)


def _downsample_fwd(x, factor, fine_shape):
    return _downsample(x, factor, fine_shape), ()  # linear: no residual


def _downsample_bwd(factor, fine_shape, res, g):
    return (_insert_zeros(g, factor, fine_shape),)  # dx[S·i] = g[i], zeros where rows were dropped


def _downsample_jvp(factor, fine_shape, primals, tangents):
    (x,), (t,) = primals, tangents
    return _downsample(x, factor, fine_shape), _downsample(t, factor, fine_shape)  # linear: ṫ_y = downsample(ṫ_x)


_downsample.defvjp(_downsample_fwd, _downsample_bwd)
_downsample.defjvp(_downsample_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_downsample = jax.jit(_downsample, static_argnums=(1, 2))


# --------------------------------------------------------------------------- upsample


def upsample(x: jax.Array, factor) -> jax.Array:
    r"""Inserts ``S − 1`` zeros between adjacent entries (Raj's upsampling, or dilation).

    Forward, along each spatial axis: ``y[S·i] = x[i]`` and ``y = 0`` between, so an axis
    of size ``n`` becomes ``(n − 1) S + 1`` (no zeros after the last entry; this is the
    ``lhs_dilation`` of ``lax.conv_general_dilated``).

    Backward (the adjoint, a downsampling): ``dx[i] = g[S·i]`` — :func:`downsample` of
    ``g``; the δ that reaches the inserted zeros is dropped.

    ``downsample(upsample(x, S), S) == x``; ``upsample(downsample(x, S), S)`` restores
    ``x`` with zeros at the dropped positions, without the ``(n − 1) mod S`` trailing ones.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes.
      factor: ``S ≥ 1``, an int or one per spatial axis.

    Returns:
      ``y`` of shape ``(N, (n₁ − 1) S₁ + 1, …, C)`` and the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or ``factor`` is not an int/sequence of ints.
      ValueError: ``x`` does not have 3 to 5 dimensions, ``factor`` has the wrong number
        of entries or is < 1.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    >>> ops.upsample(x, 2)[0, :, 0].tolist()
    [1.0, 0.0, 2.0, 0.0, 3.0]
    >>> jax.grad(lambda x: (ops.upsample(x, 2) * jnp.arange(5.0)[:, None]).sum())(x)[0, :, 0].tolist()
    [0.0, 2.0, 4.0]
    """
    x, factor = _validate("upsample", x, factor)
    return _upsample(x, factor, _shapes.upsampled_shape("upsample", x.shape[1:-1], factor))


def _insert_zeros(x, factor, fine_shape):
    """``y[S·i] = x[i]``, zeros between and up to ``fine_shape``: the forward of :func:`upsample`,
    the backward of :func:`downsample`."""
    if 0 in x.shape[1:-1]:  # an empty axis stays empty (fine_shape is 0 there too)
        return jnp.zeros((x.shape[0], *fine_shape, x.shape[-1]), x.dtype)
    # S − 1 interior zeros, then zeros at the end up to fine_shape (none for `upsample`).
    tail = (f - ((n - 1) * s + 1) for n, s, f in zip(x.shape[1:-1], factor, fine_shape))
    config = [(0, 0, 0), *((0, t, s - 1) for t, s in zip(tail, factor)), (0, 0, 0)]
    return lax.pad(x, jnp.zeros((), x.dtype), config)


@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2))
def _upsample(x, factor, fine_shape):
    return _insert_zeros(x, factor, fine_shape)


def _upsample_fwd(x, factor, fine_shape):
    return _upsample(x, factor, fine_shape), ()  # linear: no residual


def _upsample_bwd(factor, fine_shape, res, g):
    return (_keep_every(g, factor, fine_shape),)  # dx[i] = g[S·i]


def _upsample_jvp(factor, fine_shape, primals, tangents):
    (x,), (t,) = primals, tangents
    return _upsample(x, factor, fine_shape), _upsample(t, factor, fine_shape)  # linear: ṫ_y = upsample(ṫ_x)


_upsample.defvjp(_upsample_fwd, _upsample_bwd)
_upsample.defjvp(_upsample_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_upsample = jax.jit(_upsample, static_argnums=(1, 2))


def _validate(op, x, factor):
    x = _checks.float_array(op, "x", x)
    _checks.rank(op, "x", x, (3, 4, 5), "(N, *spatial, C): 1 to 3 spatial axes, channels last")
    n = x.ndim - 2
    _shapes.spatial_length(op, "factor", factor, n, f"`x` of shape {tuple(x.shape)} (N, *spatial, C) has {n}")
    return x, _shapes.spatial_tuple(op, "factor", factor, n)


# --------------------------------------------------------------------------- references


def downsample_reference(x, factor):
    """Autodiff reference for :func:`downsample`: NumPy-style strided indexing."""
    x, factor = _validate("downsample", x, factor)
    return x[(slice(None), *(slice(None, None, s) for s in factor), slice(None))]


def upsample_reference(x, factor):
    """Autodiff reference for :func:`upsample`: zeros with ``x`` scattered at every
    ``S``-th position (``.at[::S].set``)."""
    x, factor = _validate("upsample", x, factor)
    shape = (x.shape[0], *_shapes.upsampled_shape("upsample", x.shape[1:-1], factor), x.shape[-1])
    return jnp.zeros(shape, x.dtype).at[(slice(None), *(slice(None, None, s) for s in factor), slice(None))].set(x)
