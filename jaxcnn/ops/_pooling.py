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

Forward mode transposes the backward: max pooling's tangent is the input tangent at the
saved arg-max (``ṫ_y[i] = ṫ_x[s·i − lo + d·P(i)]``, the same first maximum the VJP routes δ
to); mean pooling is linear, so its tangent is the mean pool of the tangent.
"""

from __future__ import annotations

import functools
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, _shapes
from jaxcnn._shapes import Geometry, Padding
from jaxcnn.ops import _windows
from jaxcnn.ops import _rule

# --------------------------------------------------------------------------- max pooling


def max_pool(x: jax.Array, window, stride=None, padding: Padding = "VALID", *, dilation=1, ceil_mode: bool = False,
             return_indices: bool = False):
    r"""Max pooling over 1 to 3 spatial axes, channel by channel.

    Forward (Raj, "Max pooling with downsampling"), for every window position ``i``
    (window offsets ``j``, dilation ``d``; ``d = 1`` is the lectures' window):

    * ``P(i) = argmax_{j ∈ window} x[s·i − lo + d·j]`` (the arg-max, a window offset),
    * ``y[i] = x[s·i − lo + d·P(i)]``.

    Backward (Raj: ``dy(l−1, P(l, m, i, j)) += dy(l, m, i, j)``; Jearanaitanakij: only
    the largest neuron of a window gets gradient):

    * ``dx[s·i − lo + d·P(i)] += g[i]``, every other element gets nothing.

    ``+=`` because an entry that is the maximum of several overlapping windows
    (``stride < window``) receives the sum of their δ. The residual is the arg-max alone,
    one small integer per output element (int8 when the window has at most 127 entries,
    else int32) — not a copy of the input.

    Forward mode (the JVP, the transpose of that routing): ``ṫ_y[i] = ṫ_x[s·i − lo + d·P(i)]``,
    the tangent at the same arg-max (the same tie rule), so ``⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩`` exactly.

    Ties: the gradient goes to the *first* maximum in window order (row-major over the
    window offsets: smallest offset along the first spatial axis, then the next axis), so
    in a window of equal values exactly one element receives δ. A NaN in a window makes
    its output NaN (as ``lax.max`` does); its δ then goes to one element of the window.

    Padding is with −∞, so a padded position never wins; a geometry in which some window
    would cover only padding is rejected at trace time, dilation and ``ceil_mode``
    included (with ``d = 1`` a padding side smaller than the window always passes; a
    dilated window can also step over a short input).

    Output size along each spatial axis, for input ``n``, window ``k`` (extent
    ``k_d = d(k − 1) + 1``), stride ``s`` and padding ``(lo, hi)``:
    ``⌊(n + lo + hi − k_d) / s⌋ + 1``; with ``ceil_mode=True`` (PyTorch's)
    ``⌈(n + lo + hi − k_d) / s⌉ + 1``, less one if the last window would start past the
    input and its low padding, the windows reaching past the padded input seeing −∞.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes.
      window: window size ``k``, an int or one per spatial axis.
      stride: an int or one per spatial axis; ``None`` (default) means ``window``
        (non-overlapping windows). ``stride < window`` gives overlapping windows.
      padding: ``"VALID"`` (none), ``"SAME"`` (output ``⌈n / s⌉``), ``"FULL"``
        (``k − 1`` each side), an int, or one ``(lo, hi)`` pair per spatial axis, such
        that every window reads at least one input element.
      dilation: the spacing ``d`` of the window's entries, an int or one per axis.
      ceil_mode: round the output size up, as PyTorch's ``ceil_mode``.
      return_indices: also return, as PyTorch's ``return_indices``, the flat index of
        each maximum in its input plane (``Σ_a p_a Π_{b>a} n_b`` over the spatial
        position ``p`` in the unpadded input), int32, the shape of ``y``; they carry no
        gradient.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C)`` and the dtype of ``x``; ``(y, indices)``
      with ``return_indices=True``.

    Raises:
      TypeError: ``x`` is not floating point, a setting is not an int/sequence of ints,
        or a flag is not a bool.
      ValueError: ``x`` does not have 3 to 5 dimensions, a setting has the wrong number
        of entries, ``window``/``stride`` < 1, the padding is malformed or negative, some
        window would read padding only, or the window is larger than the padded input.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([[3., 2, 3, 1], [0, 5, 3, 4], [1, 2, 2, 2], [7, 3, 1, 7]])  # Park
    >>> ops.max_pool(x[None, :, :, None], 2)[0, :, :, 0].tolist()
    [[5.0, 4.0], [7.0, 7.0]]
    >>> jax.grad(lambda x: ops.max_pool(x, 2).sum())(x[None, :, :, None])[0, :, :, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]]
    """
    x, geom, _ = _validate("max_pool", x, window, stride, padding, dilation, ceil_mode)
    y = _max_pool(x, geom, x.shape[1:-1])
    if not _checks.flag("max_pool", "return_indices", return_indices):
        return y
    # the forward's own arg-max, recomputed without gradient (XLA merges the two passes)
    argmax = _max_pool_fwd(lax.stop_gradient(x), geom, x.shape[1:-1])[1].argmax
    return y, _flat_indices(argmax, geom, x.shape[1:-1])


def _flat_indices(argmax, geom: Geometry, in_shape):
    """The input position ``s·i − lo + d·P(i)`` of every maximum, flattened row-major over the
    spatial axes (PyTorch's ``return_indices``)."""
    offset = argmax.astype(jnp.int32)
    flat = jnp.zeros(argmax.shape, jnp.int32)
    for axis, (k, s, d, (lo, _), n) in enumerate(zip(geom.window, geom.stride, geom.dilation, geom.pads, in_shape)):
        j = (offset // int(np.prod(geom.window[axis + 1:]))) % k  # this axis' offset in row-major order
        i = lax.broadcasted_iota(jnp.int32, argmax.shape, axis + 1)
        flat = flat * n + i * s - lo + j * d
    return flat


class MaxPoolResiduals(NamedTuple):
    argmax: jax.Array  # P: window offset (row-major) of each output's maximum, shape of y


@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2))
def _max_pool(x, geom: Geometry, in_shape):
    return _max_pool_fwd(x, geom, in_shape)[0]


def _max_pool_fwd(x, geom: Geometry, in_shape):
    xp = _windows.pad(x, geom.pads, -jnp.inf)
    index = jnp.int8 if np.prod(geom.window) <= 127 else jnp.int32
    y, argmax = None, None
    for j, offset in enumerate(_windows.entries(geom)):
        v = _windows.window_entry(xp, offset, geom)  # x[s·i − lo + d·j] for every i
        if y is None:
            y, argmax = v, jnp.zeros(v.shape, index)
        else:
            argmax = jnp.where(v > y, index(j), argmax)  # strict >: the first maximum stays
            y = jnp.maximum(y, v)  # NaN-propagating, as lax.max
    return y, MaxPoolResiduals(argmax)


def _max_pool_bwd(geom: Geometry, in_shape, res: MaxPoolResiduals, g):
    zero = jnp.zeros((), g.dtype)
    if _windows.tiled(geom):  # the windows tile the input: no overlap, no += needed
        winner = _windows.per_block(res.argmax) == _windows.offset_index(geom.window)
        blocks = jnp.where(winner, _windows.per_block(g), zero)
        return (_windows.unblock(blocks, geom, in_shape),)
    # dx[s·i − lo + d·P(i)] += g[i]: offset j receives g[i] where P(i) = j.
    return (_windows.place_all(lambda j: jnp.where(res.argmax == j, g, zero), geom, in_shape),)


def _max_pool_jvp(geom: Geometry, in_shape, primals, tangents):
    (x,), (t,) = primals, tangents
    y, res = _max_pool_fwd(x, geom, in_shape)
    tp = _windows.pad(t, geom.pads, 0)  # a padded position never wins
    # ṫ_y[i] = ṫ_x[s·i − lo + d·P(i)]: the tangent at the arg-max the VJP routes δ to.
    t_y = jnp.zeros(y.shape, t.dtype)
    for j, offset in enumerate(_windows.entries(geom)):
        t_y = jnp.where(res.argmax == j, _windows.window_entry(tp, offset, geom), t_y)
    return y, t_y


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
_max_pool.defjvp(_max_pool_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_max_pool = jax.jit(_max_pool, static_argnums=(1, 2))


# --------------------------------------------------------------------------- mean pooling


def mean_pool(
    x: jax.Array, window, stride=None, padding: Padding = "VALID", count_padding: bool = True, *, dilation=1,
    ceil_mode: bool = False,
) -> jax.Array:
    r"""Mean (average) pooling over 1 to 3 spatial axes, channel by channel.

    Forward (Raj, "Mean pooling"), for every window position ``i``:

    * ``y[i] = (1 / K) Σ_{j ∈ window} x[s·i − lo + j]``, ``K = Π k`` the window size
      (``K²`` for Raj's square 2-D windows).

    Backward (Raj: ``dy(l−1, m, k, n) += (1 / K²) dy(l, m, i, j)`` over the window):

    * ``dx[s·i − lo + j] += g[i] / K`` for every offset ``j`` of the window.

    ``+=`` because overlapping windows (``stride < window``) share entries. The op is
    linear, so it keeps no residual, and its JVP is the op on the tangent:
    ``ṫ_y[i] = (1 / K) Σ_j ṫ_x[s·i − lo + j]`` (the same divisor).

    Padding is with zeros. With ``count_padding=True`` (default, as ``lax``/Flax
    ``avg_pool`` and PyTorch's ``count_include_pad``) every window divides by ``K``; with
    ``count_padding=False`` a window divides by the number of real (unpadded) elements it
    covers, ``K_i``, and the backward spreads ``g[i] / K_i``. With ``ceil_mode=True``
    the windows that reach past the padded input divide, as PyTorch's ``avg_pool``, by
    the entries that lie inside the input and its padding (``count_padding=True``) or
    inside the input alone (``False``): the positions added by rounding up never count.
    With dilation ``d`` a window's entries are ``d`` apart (``x[s·i − lo + d·j]``).

    Output size along each spatial axis: as :func:`max_pool`.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes.
      window: window size ``k``, an int or one per spatial axis.
      stride: an int or one per spatial axis; ``None`` (default) means ``window``.
      padding: ``"VALID"``, ``"SAME"``, ``"FULL"``, an int, or one ``(lo, hi)`` pair
        per spatial axis, such that every window reads at least one input element (as in
        :func:`max_pool`: so ``count_padding=False`` never divides by 0).
      count_padding: whether padded zeros count in the divisor.
      dilation: the spacing ``d`` of the window's entries, an int or one per axis.
      ceil_mode: round the output size up, as PyTorch's ``ceil_mode``.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C)`` and the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, a setting is not an int/sequence of ints,
        or a flag is not a bool.
      ValueError: as :func:`max_pool`.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> ops.mean_pool(x, 2)[0, :, :, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    >>> jax.grad(lambda x: ops.mean_pool(x, 2).sum())(x)[0, 0, :, 0].tolist()  # δ / K²
    [0.25, 0.25, 0.25, 0.25]
    """
    x, geom, explicit = _validate("mean_pool", x, window, stride, padding, dilation, ceil_mode)
    count_padding = _checks.flag("mean_pool", "count_padding", count_padding)
    return _mean_pool(x, geom, x.shape[1:-1], _counted(count_padding, geom, explicit, x.shape[1:-1]))


def _counted(count_padding, geom: Geometry, explicit, in_shape):
    """Where a window's entries count in its divisor: None (all ``K`` of them, the usual
    case), or per axis the counted interval ``[low, high)`` of input positions — the input
    and its explicit padding, or the input alone (``count_padding=False``)."""
    if count_padding and geom.pads == explicit:
        return None
    if count_padding:
        return tuple((-lo, n + hi) for n, (lo, hi) in zip(in_shape, explicit))
    return tuple((0, n) for n in in_shape)


# Tiled mean pooling sums blocks of a reshaped view from this many channels on (a float32
# vector); with fewer, XLA:CPU runs the block sum scalar (performance.md, "Pooling block sums").
_BLOCK_SUM_CHANNELS = 8


@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2, 3))
def _mean_pool(x, geom: Geometry, in_shape, counted):
    xp = _windows.pad(x, geom.pads, 0)
    if _windows.tiled(geom) and x.shape[-1] >= _BLOCK_SUM_CHANNELS:  # tiled: sum each block
        total = jnp.sum(_windows.into_blocks(xp, geom), axis=tuple(range(2, 2 * len(in_shape) + 1, 2)))
    else:
        total = sum(_windows.window_entry(xp, offset, geom) for offset in _windows.entries(geom))
    return total / _divisor(geom, counted, x.dtype)


def _mean_pool_fwd(x, geom: Geometry, in_shape, counted):
    return _mean_pool(x, geom, in_shape, counted), ()  # linear: no residual


def _mean_pool_bwd(geom: Geometry, in_shape, counted, res, g):
    share = g / _divisor(geom, counted, g.dtype)  # δ / K
    if _windows.tiled(geom):  # the windows tile the input: each block gets its share
        blocks = jnp.broadcast_to(_windows.per_block(share), _windows.blocks_shape(g.shape, geom))
        return (_windows.unblock(blocks, geom, in_shape),)
    # dx[s·i − lo + d·j] += g[i] / K for every offset j of the window.
    return (_windows.place_all(lambda j: share, geom, in_shape),)


def _mean_pool_jvp(geom: Geometry, in_shape, counted, primals, tangents):
    (x,), (t,) = primals, tangents
    return _mean_pool(x, geom, in_shape, counted), _mean_pool(t, geom, in_shape, counted)  # linear: ṫ_y = pool(ṫ_x)


_mean_pool.defvjp(_mean_pool_fwd, _mean_pool_bwd)
_mean_pool.defjvp(_mean_pool_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_mean_pool = jax.jit(_mean_pool, static_argnums=(1, 2, 3))


def _divisor(geom: Geometry, counted, dtype):
    """``K`` (a scalar) or, per output position, the number of its window's entries inside
    the ``counted`` interval of every axis (see :func:`_counted`)."""
    if counted is None:
        return jnp.asarray(np.prod(geom.window), dtype)
    counts = np.ones((1,) * (len(counted) + 2), np.int64)
    for axis, ((low, high), k, s, d, o, (lo, _)) in enumerate(
        zip(counted, geom.window, geom.stride, geom.dilation, geom.out_shape, geom.pads)
    ):
        entries = np.arange(o)[:, None] * s - lo + np.arange(k)[None, :] * d  # input positions, padding < 0
        real = np.sum((entries >= low) & (entries < high), axis=1)
        counts = counts * real.reshape((1,) * (axis + 1) + (o,) + (1,) * (len(counted) - axis))
    return jnp.asarray(counts, dtype)


def _validate(op, x, window, stride, padding, dilation=1, ceil_mode=False):
    """``x``, the geometry (its ``pads`` extended by ``ceil_mode``) and the explicit pads."""
    x = _checks.float_array(op, "x", x)
    _checks.rank(op, "x", x, (3, 4, 5), "(N, *spatial, C): 1 to 3 spatial axes, channels last")
    n = x.ndim - 2
    source = f"`x` of shape {tuple(x.shape)} (N, *spatial, C) has {n}"
    _shapes.spatial_length(op, "window", window, n, source)
    _shapes.spatial_length(op, "stride", stride, n, source)
    _shapes.spatial_length(op, "dilation", dilation, n, source)
    geom = _shapes.pool_geometry(op, x.shape[1:-1], window, stride, padding, dilation, ceil_mode)
    explicit = _shapes.pool_geometry(op, x.shape[1:-1], window, stride, padding, dilation).pads
    return x, geom, explicit


# --------------------------------------------------------------------------- references


def max_pool_reference(x, window, stride=None, padding: Padding = "VALID", *, dilation=1, ceil_mode=False,
                       return_indices=False):
    """Autodiff reference for :func:`max_pool`: ``lax.reduce_window`` with ``lax.max``.

    Same validation and geometry; −∞ as the initial value and padding. On ties its
    autodiff gradient is whatever XLA's ``select_and_scatter`` picks (on CPU, today, also
    the first maximum) — a backend detail, not a contract — so compare on tie-free inputs.
    With dilation (which ``reduce_window`` cannot differentiate) the maximum is a fold over
    the window's entries in window order, ``y ← v`` only where ``v > y`` (or ``v`` is NaN), so
    on ties δ goes to the first maximum, as in :func:`max_pool` and PyTorch. The indices
    come from a second ``reduce_window`` over (value, flat position) pairs that keeps the
    larger value and, on a tie, the smaller position.
    """
    x, geom, _ = _validate("max_pool", x, window, stride, padding, dilation, ceil_mode)
    dims, strides, pads = _full(geom.window), _full(geom.stride), _full_pads(geom.pads)
    if all(d == 1 for d in geom.dilation):
        y = lax.reduce_window(x, -np.inf, lax.max, dims, strides, pads)
    else:  # JAX has no VJP for a dilated max reduce_window: a fold over the strided slices in window
        # order that replaces y only by a strictly larger value (or a NaN), so that autodiff routes δ to
        # the first maximum (jnp.max over a stack of the slices would split it among tied maxima)
        xp = jnp.pad(x, _full_pads(geom.pads), constant_values=-np.inf)
        y = None
        for start in itertools.product(*(range(0, k * d, d) for k, d in zip(geom.window, geom.dilation))):
            v = xp[(slice(None), *(slice(a, a + (o - 1) * s + 1, s) for a, o, s in
                                   zip(start, geom.out_shape, geom.stride)))]
            y = v if y is None else jnp.where((v > y) | jnp.isnan(v), v, y)
    if not return_indices:
        return y
    plane = np.arange(int(np.prod(x.shape[1:-1])), dtype=np.int32).reshape(1, *x.shape[1:-1], 1)
    positions = jnp.broadcast_to(jnp.asarray(plane), x.shape)

    def larger(a, b):
        (va, ia), (vb, ib) = a, b
        take_b = (vb > va) | ((vb == va) & (ib < ia))
        return jnp.where(take_b, vb, va), jnp.where(take_b, ib, ia)

    init = (jnp.asarray(-np.inf, x.dtype), jnp.asarray(np.iinfo(np.int32).max, jnp.int32))
    _, indices = lax.reduce_window((lax.stop_gradient(x), positions), init, larger, dims, strides, pads,
                                   window_dilation=_full(geom.dilation))
    return y, indices


def mean_pool_reference(x, window, stride=None, padding: Padding = "VALID", count_padding=True, *, dilation=1,
                        ceil_mode=False):
    """Autodiff reference for :func:`mean_pool`: a ``lax.reduce_window`` sum divided by
    ``K``, or by a second ``reduce_window`` sum over ones that mark the counted positions
    (the input, and with ``count_padding`` its explicit padding)."""
    x, geom, explicit = _validate("mean_pool", x, window, stride, padding, dilation, ceil_mode)
    dims, strides, pads = _full(geom.window), _full(geom.stride), _full_pads(geom.pads)
    total = lax.reduce_window(x, 0.0, lax.add, dims, strides, pads, window_dilation=_full(geom.dilation))
    if count_padding and geom.pads == explicit:
        return total / jnp.asarray(np.prod(geom.window), x.dtype)
    ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
    if count_padding:  # explicit padding counts, the ceil-mode extension does not
        ones = jnp.pad(ones, _full_pads(explicit), constant_values=1)
        pads = _full_pads(tuple((0, hi - e_hi) for (_, hi), (_, e_hi) in zip(geom.pads, explicit)))
    return total / lax.reduce_window(ones, 0.0, lax.add, dims, strides, pads, window_dilation=_full(geom.dilation))


def _full(spatial: tuple[int, ...]) -> tuple[int, ...]:
    return (1, *spatial, 1)


def _full_pads(pads: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return ((0, 0), *pads, (0, 0))
