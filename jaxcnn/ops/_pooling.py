"""Max and mean pooling with hand-derived backward rules, for 1 to 3 spatial axes.

Lectures: Park (2×2 max-pool and ``Maxpool_back``); Jearanaitanakij (the gradient of a
pooling neuron "will flow through the neuron which has the largest activation value";
the others get zero); Raj (max pooling keeps the arg-max ``P(l, m, i, j)`` and routes δ
there with ``+=`` "because this entry may be selected in multiple adjacent overlapping
windows"; mean pooling spreads ``δ / K²`` over the window, again with ``+=``).

Both ops visit the window one offset at a time (a strided slice of the padded input per
offset), and their backward is the transpose of those slices with ``+=`` where windows
overlap; the slices, their transposes and the tiled (``stride == window``) shortcuts are
in :mod:`jaxcnn.ops._windows`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, _shapes
from jaxcnn._shapes import Geometry, Padding
from jaxcnn.ops import _windows

# --------------------------------------------------------------------------- max pooling


def max_pool(x: jax.Array, window, stride=None, padding: Padding = "VALID") -> jax.Array:
    r"""Max pooling over 1 to 3 spatial axes, channel by channel.

    Forward (Raj, "Max pooling with downsampling"), for every window position ``i``:

    * ``P(i) = argmax_{j ∈ window} x[s·i − lo + j]`` (the arg-max, a window offset),
    * ``y[i] = x[s·i − lo + P(i)]``.

    Backward (Raj: ``dy(l−1, P(l, m, i, j)) += dy(l, m, i, j)``; Jearanaitanakij: only
    the largest neuron of a window gets gradient):

    * ``dx[s·i − lo + P(i)] += g[i]``, every other element gets nothing.

    ``+=`` because an entry that is the maximum of several overlapping windows
    (``stride < window``) receives the sum of their δ. The residual is the arg-max alone,
    one small integer per output element (int8 when the window has at most 127 entries,
    else int32) — not a copy of the input.

    Ties: the gradient goes to the *first* maximum in window order (row-major over the
    window offsets: smallest offset along the first spatial axis, then the next axis), so
    in a window of equal values exactly one element receives δ. A NaN in a window makes
    its output NaN (as ``lax.max`` does); its δ then goes to one element of the window.

    Padding is with −∞, so a padded position never wins; a window that would cover only
    padding is rejected.

    Output size along each spatial axis, for input ``n``, window ``k``, stride ``s`` and
    padding ``(lo, hi)``: ``⌊(n + lo + hi − k) / s⌋ + 1``.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes.
      window: window size ``k``, an int or one per spatial axis.
      stride: an int or one per spatial axis; ``None`` (default) means ``window``
        (non-overlapping windows). ``stride < window`` gives overlapping windows.
      padding: ``"VALID"`` (none), ``"SAME"`` (output ``⌈n / s⌉``), ``"FULL"``
        (``k − 1`` each side), an int, or one ``(lo, hi)`` pair per spatial axis; each
        side smaller than the window.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C)`` and the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or a setting is not an int/sequence of ints.
      ValueError: ``x`` does not have 3 to 5 dimensions, a setting has the wrong number
        of entries, ``window``/``stride`` < 1, the padding is malformed, negative or not
        smaller than the window, or the window is larger than the padded input.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([[3., 2, 3, 1], [0, 5, 3, 4], [1, 2, 2, 2], [7, 3, 1, 7]])  # Park
    >>> ops.max_pool(x[None, :, :, None], 2)[0, :, :, 0].tolist()
    [[5.0, 4.0], [7.0, 7.0]]
    >>> jax.grad(lambda x: ops.max_pool(x, 2).sum())(x[None, :, :, None])[0, :, :, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]]
    """
    x, geom = _validate("max_pool", x, window, stride, padding)
    return _max_pool(x, geom, x.shape[1:-1])


class MaxPoolResiduals(NamedTuple):
    argmax: jax.Array  # P: window offset (row-major) of each output's maximum, shape of y


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool(x, geom: Geometry, in_shape):
    return _max_pool_fwd(x, geom, in_shape)[0]


def _max_pool_fwd(x, geom: Geometry, in_shape):
    xp = _windows.pad(x, geom.pads, -jnp.inf)
    index = jnp.int8 if np.prod(geom.window) <= 127 else jnp.int32
    y, argmax = None, None
    for j, offset in enumerate(_shapes.offsets(geom.window)):
        v = _windows.window_entry(xp, offset, geom)  # x[s·i − lo + j] for every i
        if y is None:
            y, argmax = v, jnp.zeros(v.shape, index)
        else:
            argmax = jnp.where(v > y, index(j), argmax)  # strict >: the first maximum stays
            y = jnp.maximum(y, v)  # NaN-propagating, as lax.max
    return y, MaxPoolResiduals(argmax)


def _max_pool_bwd(geom: Geometry, in_shape, res: MaxPoolResiduals, g):
    zero = jnp.zeros((), g.dtype)
    if geom.stride == geom.window:  # the windows tile the input: no overlap, no += needed
        winner = _windows.per_block(res.argmax) == _windows.offset_index(geom.window)
        blocks = jnp.where(winner, _windows.per_block(g), zero)
        return (_windows.unblock(blocks, geom, in_shape),)
    # dx[s·i − lo + P(i)] += g[i]: offset j receives g[i] where P(i) = j.
    return (_windows.place_all(lambda j: jnp.where(res.argmax == j, g, zero), geom, in_shape),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# --------------------------------------------------------------------------- mean pooling


def mean_pool(
    x: jax.Array, window, stride=None, padding: Padding = "VALID", count_padding: bool = True
) -> jax.Array:
    r"""Mean (average) pooling over 1 to 3 spatial axes, channel by channel.

    Forward (Raj, "Mean pooling"), for every window position ``i``:

    * ``y[i] = (1 / K) Σ_{j ∈ window} x[s·i − lo + j]``, ``K = Π k`` the window size
      (``K²`` for Raj's square 2-D windows).

    Backward (Raj: ``dy(l−1, m, k, n) += (1 / K²) dy(l, m, i, j)`` over the window):

    * ``dx[s·i − lo + j] += g[i] / K`` for every offset ``j`` of the window.

    ``+=`` because overlapping windows (``stride < window``) share entries. The op is
    linear, so it keeps no residual.

    Padding is with zeros. With ``count_padding=True`` (default, as ``lax``/Flax
    ``avg_pool``) every window divides by ``K``; with ``count_padding=False`` a window
    divides by the number of real (unpadded) elements it covers, ``K_i``, and the
    backward spreads ``g[i] / K_i``.

    Output size along each spatial axis, for input ``n``, window ``k``, stride ``s`` and
    padding ``(lo, hi)``: ``⌊(n + lo + hi − k) / s⌋ + 1``.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes.
      window: window size ``k``, an int or one per spatial axis.
      stride: an int or one per spatial axis; ``None`` (default) means ``window``.
      padding: ``"VALID"``, ``"SAME"``, ``"FULL"``, an int, or one ``(lo, hi)`` pair
        per spatial axis, each side smaller than the window (as in :func:`max_pool`).
      count_padding: whether padded zeros count in the divisor.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C)`` and the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or a setting is not an int/sequence of ints.
      ValueError: as :func:`max_pool`.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> ops.mean_pool(x, 2)[0, :, :, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    >>> jax.grad(lambda x: ops.mean_pool(x, 2).sum())(x)[0, 0, :, 0].tolist()  # δ / K²
    [0.25, 0.25, 0.25, 0.25]
    """
    x, geom = _validate("mean_pool", x, window, stride, padding)
    if not isinstance(count_padding, (bool, np.bool_)):
        raise TypeError(f"mean_pool: `count_padding` must be True or False, got {count_padding!r}.")
    return _mean_pool(x, geom, x.shape[1:-1], bool(count_padding))


# Tiled mean pooling sums blocks of a reshaped view from this many channels on (a float32
# vector); with fewer, XLA:CPU runs the block sum scalar (performance.md, "Pooling block sums").
_BLOCK_SUM_CHANNELS = 8


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _mean_pool(x, geom: Geometry, in_shape, count_padding):
    xp = _windows.pad(x, geom.pads, 0)
    if geom.stride == geom.window and x.shape[-1] >= _BLOCK_SUM_CHANNELS:  # tiled: sum each block
        total = jnp.sum(_windows.into_blocks(xp, geom), axis=tuple(range(2, 2 * len(in_shape) + 1, 2)))
    else:
        total = sum(_windows.window_entry(xp, offset, geom) for offset in _shapes.offsets(geom.window))
    return total / _divisor(geom, in_shape, count_padding, x.dtype)


def _mean_pool_fwd(x, geom: Geometry, in_shape, count_padding):
    return _mean_pool(x, geom, in_shape, count_padding), ()  # linear: no residual


def _mean_pool_bwd(geom: Geometry, in_shape, count_padding, res, g):
    share = g / _divisor(geom, in_shape, count_padding, g.dtype)  # δ / K
    if geom.stride == geom.window:  # the windows tile the input: each block gets its share
        blocks = jnp.broadcast_to(_windows.per_block(share), _windows.blocks_shape(g.shape, geom))
        return (_windows.unblock(blocks, geom, in_shape),)
    # dx[s·i − lo + j] += g[i] / K for every offset j of the window.
    return (_windows.place_all(lambda j: share, geom, in_shape),)


_mean_pool.defvjp(_mean_pool_fwd, _mean_pool_bwd)


def _divisor(geom: Geometry, in_shape, count_padding, dtype):
    """``K`` (a scalar) or, without counting padding, ``K_i`` per output position."""
    if count_padding:
        return jnp.asarray(np.prod(geom.window), dtype)
    counts = np.ones((1,) * (len(in_shape) + 2), np.int64)
    for axis, (n, k, s, o, (lo, _)) in enumerate(
        zip(in_shape, geom.window, geom.stride, geom.out_shape, geom.pads)
    ):
        starts = np.arange(o) * s - lo  # first input index of each window, padding < 0
        real = np.minimum(starts + k, n) - np.maximum(starts, 0)
        counts = counts * real.reshape((1,) * (axis + 1) + (o,) + (1,) * (len(in_shape) - axis))
    return jnp.asarray(counts, dtype)


def _validate(op, x, window, stride, padding):
    x = _checks.float_array(op, "x", x)
    _checks.rank(op, "x", x, (3, 4, 5), "(N, *spatial, C): 1 to 3 spatial axes, channels last")
    n = x.ndim - 2
    source = f"`x` of shape {tuple(x.shape)} (N, *spatial, C) has {n}"
    _shapes.spatial_length(op, "window", window, n, source)
    _shapes.spatial_length(op, "stride", stride, n, source)
    return x, _shapes.pool_geometry(op, x.shape[1:-1], window, stride, padding)


# --------------------------------------------------------------------------- references


def max_pool_reference(x, window, stride=None, padding: Padding = "VALID"):
    """Autodiff reference for :func:`max_pool`: ``lax.reduce_window`` with ``lax.max``.

    Same validation and geometry; −∞ as the initial value and padding. On ties its
    autodiff gradient is whatever XLA's ``select_and_scatter`` picks (on CPU, today, also
    the first maximum) — a backend detail, not a contract — so compare on tie-free inputs.
    """
    x, geom = _validate("max_pool", x, window, stride, padding)
    return lax.reduce_window(x, -np.inf, lax.max, _full(geom.window), _full(geom.stride), _full_pads(geom.pads))


def mean_pool_reference(x, window, stride=None, padding: Padding = "VALID", count_padding=True):
    """Autodiff reference for :func:`mean_pool`: a ``lax.reduce_window`` sum divided by
    ``K``, or by a second ``reduce_window`` sum over ones (the real-element count)."""
    x, geom = _validate("mean_pool", x, window, stride, padding)
    dims, strides, pads = _full(geom.window), _full(geom.stride), _full_pads(geom.pads)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads)
    if count_padding:
        return total / jnp.asarray(np.prod(geom.window), x.dtype)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    return total / lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads)


def _full(spatial: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *spatial, 1)


def _full_pads(pads: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return ((0, 0), *pads, (0, 0))
