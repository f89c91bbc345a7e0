"""im2col (image to columns) with its hand-derived backward, col2im (overlap-add).

Lecture: Park, "Training CNN" (``Im2col(A, [2,2], ...)``; convolution via im2col: the
forward is one matrix product with the column matrix, ``dW`` comes from ``im2col(x)`` and
``dx`` from col2im of the "row version" of ``dL/dx``). The map is linear: its JVP is
``im2col(ṫ)``, its VJP col2im. The convolution op's ``method="im2col"`` is built on
:func:`patches` and :func:`col2im` from this module.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxcnn import _checks, _shapes, _xla_cpu
from jaxcnn.ops import _rule


def im2col(x: jax.Array, window, *, stride=1, padding: _shapes.Padding = "VALID", dilation=1,
           platform: Optional[str] = None) -> jax.Array:
    r"""Every window of ``x`` unrolled into one row (Park's ``Im2col``), channels-last.

    Forward, with ``x_pad`` the input zero-padded by ``(lo, hi)`` per spatial axis,
    window offset ``k`` (row-major over the window) and output position ``o``:

        ``cols[n, o, k·C + c] = x_pad[n, o·s + k·d, c]``

    so that ``cols @ w.reshape(-1, C_out)`` is the convolution with a kernel ``w`` of
    shape ``(*window, C_in, C_out)``. Output size per spatial axis:
    ``⌊(n + lo + hi − k_d) / s⌋ + 1`` with ``k_d = (k − 1) d + 1``.

    Backward (col2im, Park's "row version of dL/dx" folded back): every entry of the
    cotangent is added to the input element it was copied from (overlap-add; an input
    element covered by ``m`` windows receives the sum of ``m`` entries), then the
    padding is cropped (Raj: the zero-padding regions are deleted before further
    backprop). On XLA:CPU a long overlap-add is computed into a buffer of its own
    (:func:`jaxcnn._xla_cpu.materializes`), the same values.

    Forward mode: im2col is linear, so the tangent is the tangent's columns, ``im2col(ṫ_x)``.

    Park's slides print MATLAB's layout: patches and positions in column-major order.
    This layout is row-major with channels fastest, the layout of ``w.reshape(-1, C_out)``.
    MATLAB's ``'distinct'`` blocks are ``stride=window``; its ``'sliding'`` is ``stride=1``.

    Args:
      x: input ``(N, *spatial, C)`` with 1 or more spatial axes.
      window: window size, an int or one per spatial axis.
      stride: an int or one per spatial axis, each ``>= 1``.
      padding: ``"VALID"``, ``"SAME"``, ``"FULL"``, an int, or one ``(low, high)`` pair per
        spatial axis (see :mod:`jaxcnn._shapes`).
      dilation: spacing of the window taps, an int or one per spatial axis, ``>= 1``.
      platform: the platform to tune the backward for (``"cpu"``, ``"gpu"``, ...); None:
        ``jax.default_backend()`` at trace time (:func:`jaxcnn._xla_cpu.resolve_platform`).

    Returns:
      ``cols`` of shape ``(N, *out_spatial, prod(window) · C)`` and the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or a setting has the wrong type.
      ValueError: ``x`` has fewer than 3 dimensions, a stride or dilation is below 1, the
        padding is unknown or negative, or the window is larger than the padded input.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> A = jnp.array([[3., 2, 3, 1], [0, 5, 3, 4], [1, 2, 2, 2], [7, 3, 1, 7]])
    >>> ops.im2col(A[None, :, :, None], 2, stride=2)[0].reshape(4, 4).tolist()  # 'distinct'
    [[3.0, 2.0, 0.0, 5.0], [3.0, 1.0, 3.0, 4.0], [1.0, 2.0, 7.0, 3.0], [2.0, 2.0, 1.0, 7.0]]
    """
    x, geom = _validate(x, window, stride, padding, dilation)
    materialize = _xla_cpu.materializes(geom, _xla_cpu.resolve_platform(platform))
    return _im2col(x, geom, tuple(x.shape[1:-1]), materialize)


@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2, 3))
def _im2col(x, geom, spatial_shape, materialize):
    return patches(x, geom)


def _im2col_fwd(x, geom, spatial_shape, materialize):
    return _im2col(x, geom, spatial_shape, materialize), None  # linear: no residuals


def _im2col_bwd(geom, spatial_shape, materialize, _, g):
    return (col2im(g, geom, spatial_shape, materialize),)


def _im2col_jvp(geom, spatial_shape, materialize, primals, tangents):
    (x,), (t,) = primals, tangents
    return patches(x, geom), patches(t, geom)  # linear: the tangent's columns


_im2col.defvjp(_im2col_fwd, _im2col_bwd)
_im2col.defjvp(_im2col_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_im2col = jax.jit(_im2col, static_argnums=(1, 2, 3))


# --------------------------------------------------------------------------- the two maps


def taps(x: jax.Array, geom: _shapes.Geometry) -> list[jax.Array]:
    """One strided slice of the zero-padded ``x`` per window offset ``k`` (row-major):
    ``x_pad[:, o·s + k·d, :]`` of shape ``(N, *out_spatial, C)``, the inputs tap ``k`` sees."""
    x_pad = jnp.pad(x, ((0, 0), *geom.pads, (0, 0)))
    n, c = x.shape[0], x.shape[-1]
    strides = (1, *geom.stride, 1)
    slices = []
    for offset in _shapes.offsets(geom.window):
        start = (0, *(o * d for o, d in zip(offset, geom.dilation)), 0)
        limit = (n, *(st + (m - 1) * s + 1 for st, m, s in zip(start[1:], geom.out_shape, geom.stride)), c)
        slices.append(lax.slice(x_pad, start, limit, strides))
    return slices


def whole_window(geom: _shapes.Geometry, spatial_shape: Sequence[int]) -> bool:
    """Whether the single window position covers the whole unpadded input (LeNet-5's C5):
    then the column matrix is ``x`` itself, reshaped, and convolution is a dense layer."""
    return geom.window == tuple(spatial_shape) and all(p == (0, 0) for p in geom.pads) and all(
        d == 1 for d in geom.dilation)


@functools.partial(jax.jit, static_argnums=(1,))
def patches(x: jax.Array, geom: _shapes.Geometry) -> jax.Array:
    """The column matrix of ``x`` ``(N, *spatial, C)``: the :func:`taps`, stacked per position.

    Built one spatial axis at a time, the last first: each stage stacks the ``k_d``
    strided slices along axis ``d`` of what the previous stage built, so a 5 × 5 window
    is two stacks of 5 rather than one of 25, which XLA:CPU fuses into loops instead of
    copying every slice out first (performance.md, "Column matrix one axis at a time").
    Columns are ordered as the stacked taps: window offsets row-major, then channels, as
    in ``w.reshape(-1, C_out)``.

    Plain JAX with no custom rule (used inside hand-derived rules, and differentiable
    again for grad-of-grad). Jitted so that eager calls compile once, not once per slice.
    """
    n, features = x.shape[0], math.prod(geom.window) * x.shape[-1]  # explicit sizes: N or C may be 0
    if whole_window(geom, x.shape[1:-1]):
        return x.reshape(n, *geom.out_shape, features)  # one window: no copy
    cols = jnp.pad(x, ((0, 0), *geom.pads, (0, 0)))[..., None, :]  # (N, *padded, K = 1, C)
    for axis in reversed(range(len(geom.window))):  # (N, *padded[:d], *out[d:], K_d, C)
        k, s, d, m = geom.window[axis], geom.stride[axis], geom.dilation[axis], geom.out_shape[axis]
        cols = jnp.concatenate([lax.slice_in_dim(cols, o * d, o * d + (m - 1) * s + 1, s, axis=1 + axis)
                                for o in range(k)], axis=-2)
    return cols.reshape(n, *geom.out_shape, features)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def col2im(cols: jax.Array, geom: _shapes.Geometry, spatial_shape: tuple[int, ...], materialize: bool = False
           ) -> jax.Array:
    """Overlap-add of a column matrix back onto the input grid ``(N, *spatial, C)``.

    The transpose of :func:`patches`: the entries of window offset ``k`` are spread onto
    the padded grid at ``o·s + k·d`` (a zero pad with ``s − 1`` interior zeros, Raj's
    upsampling), the offsets are summed, and the padding is cropped. With ``materialize``
    the sum is computed into a buffer of its own (:func:`jaxcnn._xla_cpu.materialized`, an
    XLA:CPU tuning its policies pick). Jitted like :func:`patches`; ``spatial_shape`` must be a tuple.
    """
    n, c = cols.shape[0], cols.shape[-1] // math.prod(geom.window)  # explicit sizes: N or C may be 0
    if whole_window(geom, spatial_shape):
        return cols.reshape(n, *spatial_shape, c)
    parts = cols.reshape(n, *geom.out_shape, math.prod(geom.window), c)
    padded = [size + lo + hi for size, (lo, hi) in zip(spatial_shape, geom.pads)]
    zero = jnp.zeros((), cols.dtype)
    total = None
    for i, offset in enumerate(_shapes.offsets(geom.window)):
        config = [(0, 0, 0)]
        for o, d, s, m, p in zip(offset, geom.dilation, geom.stride, geom.out_shape, padded):
            config.append((o * d, p - o * d - (m - 1) * s - 1, s - 1))
        config.append((0, 0, 0))
        term = lax.pad(parts[..., i, :], zero, config)
        total = term if total is None else total + term
    start = (0, *(lo for lo, _ in geom.pads), 0)
    limit = (n, *(lo + size for (lo, _), size in zip(geom.pads, spatial_shape)), c)
    dx = lax.slice(total, start, limit)
    return _xla_cpu.materialized(dx) if materialize else dx


# --------------------------------------------------------------------------- validation


def _validate(x, window, stride, padding, dilation):
    op = "im2col"
    x = _checks.float_array(op, "x", x)
    _checks.min_rank(op, "x", x, 3, "(N, *spatial, C)")
    geom = _shapes.geometry(op, x.shape[1:-1], window, stride, padding, dilation)
    return x, geom


# --------------------------------------------------------------------------- reference


def im2col_reference(x, window, *, stride=1, padding="VALID", dilation=1, platform=None):
    """Autodiff reference for :func:`im2col`: ``lax.conv_general_dilated_patches`` (``platform`` is ignored).

    That function orders each patch channel-major (``c · K + k``); the features are
    reordered to this module's offset-major layout (``k · C + c``).
    """
    x, geom = _validate(x, window, stride, padding, dilation)
    if x.shape[-1] == 0:  # lax's patches need a channel; the columns of no channels are empty
        return jnp.zeros((x.shape[0], *geom.out_shape, 0), x.dtype)
    numbers = _xla_cpu.canonical_numbers(len(geom.window))
    cols = lax.conv_general_dilated_patches(
        x, geom.window, geom.stride, geom.pads, rhs_dilation=geom.dilation, dimension_numbers=numbers
    )
    channel_major = cols.reshape(*cols.shape[:-1], x.shape[-1], math.prod(geom.window))
    return jnp.swapaxes(channel_major, -1, -2).reshape(cols.shape)
