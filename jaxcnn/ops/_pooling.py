"""Max and mean pooling with hand-derived backward rules, for 1 to 3 spatial axes.

Lectures: Park (2×2 max-pool and ``Maxpool_back``); Jearanaitanakij (the gradient of a
pooling neuron "will flow through the neuron which has the largest activation value";
the others get zero); Raj (max pooling keeps the arg-max ``P(l, m, i, j)`` and routes δ
there with ``+=`` "because this entry may be selected in multiple adjacent overlapping
windows"; mean pooling spreads ``δ / K²`` over the window, again with ``+=``).

Forward: both ops visit the window one offset ``j`` at a time — ``x[:, s·i + j, :]``
over all output positions ``i`` is one strided slice of the padded input (for mean
pooling with ``stride == window`` and at least 8 channels, one block sum of a reshaped
view instead: faster there — 2×2 on 64 channels 0.92 vs 1.47 ms fwd + bwd — but with
LeNet-5's 6 channels its minor axis is too short to vectorise, and the slices, added in
one loop, made the LeNet-5 step 0.3–0.9 ms faster).

Backward: the transpose of those slices, summed (``+=``), built from output-sized
pieces. Along each axis write the padded input position as ``s·b + r`` (block ``b``,
*phase* ``0 ≤ r < s``). Offset ``j = r + s·m`` of output ``i`` is block ``i + m`` of
phase ``r``, so its contribution lands in one phase, shifted by ``m`` blocks (a plain
zero pad of an output-sized array). Each phase sums the offsets that land in it — with
``stride < window`` an element is in up to ``⌈k / s⌉`` windows per axis, the lectures'
``+=`` — and the phases interleave into the input-sized gradient with one stack and a
reshape, the only input-sized buffer written. When the windows tile the input
(``stride == window``) nothing overlaps and each window is one block of a reshaped view:
the backward spreads δ over its block with a broadcast (mean) or a comparison with the
arg-max (max). The phase form would compute the same values, but in a network XLA:CPU
then fuses the producer of δ into the interleave (LeNet-5's step: 5 ms slower).
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
    xp = _pad(x, geom.pads, -jnp.inf)
    index = jnp.int8 if np.prod(geom.window) <= 127 else jnp.int32
    y, argmax = None, None
    for j, offset in enumerate(_offsets(geom.window)):
        v = _window_entry(xp, offset, geom)  # x[s·i − lo + j] for every i
        if y is None:
            y, argmax = v, jnp.zeros(v.shape, index)
        else:
            argmax = jnp.where(v > y, index(j), argmax)  # strict >: the first maximum stays
            y = jnp.maximum(y, v)  # NaN-propagating, as lax.max
    return y, MaxPoolResiduals(argmax)


def _max_pool_bwd(geom: Geometry, in_shape, res: MaxPoolResiduals, g):
    zero = jnp.zeros((), g.dtype)
    if geom.stride == geom.window:  # the windows tile the input: no overlap, no += needed
        blocks = jnp.where(_per_block(res.argmax) == _offset_index(geom.window), _per_block(g), zero)
        return (_unblock(blocks, geom, in_shape),)
    # dx[s·i − lo + P(i)] += g[i]: offset j receives g[i] where P(i) = j.
    return (_place_all(lambda j: jnp.where(res.argmax == j, g, zero), geom, in_shape),)


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


_BLOCK_SUM_CHANNELS = 8  # a float32 vector: fewer channels, and XLA:CPU's block sum runs scalar


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _mean_pool(x, geom: Geometry, in_shape, count_padding):
    xp = _pad(x, geom.pads, 0)
    if geom.stride == geom.window and x.shape[-1] >= _BLOCK_SUM_CHANNELS:  # tiled: sum each block
        total = jnp.sum(_into_blocks(xp, geom), axis=tuple(range(2, 2 * len(in_shape) + 1, 2)))
    else:
        total = sum(_window_entry(xp, offset, geom) for offset in _offsets(geom.window))
    return total / _divisor(geom, in_shape, count_padding, x.dtype)


def _mean_pool_fwd(x, geom: Geometry, in_shape, count_padding):
    return _mean_pool(x, geom, in_shape, count_padding), ()  # linear: no residual


def _mean_pool_bwd(geom: Geometry, in_shape, count_padding, res, g):
    share = g / _divisor(geom, in_shape, count_padding, g.dtype)  # δ / K
    if geom.stride == geom.window:  # the windows tile the input: each block gets its share
        blocks = jnp.broadcast_to(_per_block(share), _blocks_shape(g.shape, geom))
        return (_unblock(blocks, geom, in_shape),)
    # dx[s·i − lo + j] += g[i] / K for every offset j of the window.
    return (_place_all(lambda j: share, geom, in_shape),)


_mean_pool.defvjp(_mean_pool_fwd, _mean_pool_bwd)


# --------------------------------------------------------------------------- window helpers


def _offsets(window):
    """The window offsets ``j`` in window order (row-major: the last axis varies fastest)."""
    return itertools.product(*(range(k) for k in window))


def _pad(x, pads, value):
    """Pads the spatial axes of a channels-last array with ``value``."""
    if not any(lo or hi for lo, hi in pads):
        return x
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def _window_entry(xp, offset, geom: Geometry):
    """``xp[:, j + s·i, :]`` for every output position ``i``: one strided slice."""
    start = (0, *offset, 0)
    limit = (
        xp.shape[0],
        *(j + (o - 1) * s + 1 for j, o, s in zip(offset, geom.out_shape, geom.stride)),
        xp.shape[-1],
    )
    return lax.slice(xp, start, limit, (1, *geom.stride, 1))


def _into_blocks(xp, geom: Geometry):
    """Tiled windows (stride = window): the padded input as ``(N, o₁, k₁, …, o_d, k_d, C)``,
    without the tail that no window reaches."""
    covered = (xp.shape[0], *(o * k for o, k in zip(geom.out_shape, geom.window)), xp.shape[-1])
    return lax.slice(xp, (0,) * xp.ndim, covered).reshape(_blocks_shape(xp.shape, geom))


def _blocks_shape(shape, geom: Geometry):
    """``(N, o₁, k₁, …, o_d, k_d, C)`` for an array of shape ``(N, …, C)``."""
    return (shape[0], *(d for o, k in zip(geom.out_shape, geom.window) for d in (o, k)), shape[-1])


def _per_block(a):
    """``(N, o₁, …, o_d, C)`` viewed as ``(N, o₁, 1, …, o_d, 1, C)``: one value per block."""
    return a.reshape((a.shape[0], *(d for o in a.shape[1:-1] for d in (o, 1)), a.shape[-1]))


def _offset_index(window):
    """The index ``j`` of each window offset, shaped ``(1, 1, k₁, …, 1, k_d, 1)`` to meet
    :func:`_per_block`."""
    index = np.arange(np.prod(window)).reshape(window)  # row-major: window order
    return index.reshape((1, *(d for k in window for d in (1, k)), 1))


def _unblock(blocks, geom: Geometry, in_shape):
    """The transpose of :func:`_into_blocks` and :func:`_pad`: blocks ``(N, o₁, k₁, …, C)``
    merged, zeros for the tail that no window reached, the padding cropped."""
    merged = blocks.reshape((blocks.shape[0], *(o * k for o, k in zip(geom.out_shape, geom.window)), blocks.shape[-1]))
    config = [(0, 0, 0)]
    for size, (lo, _), o, k in zip(in_shape, geom.pads, geom.out_shape, geom.window):
        config.append((-lo, size + lo - o * k, 0))  # crop the padding; zeros at the unreached tail
    config.append((0, 0, 0))
    return lax.pad(merged, jnp.zeros((), merged.dtype), config)


def _place_all(contribution, geom: Geometry, in_shape):
    """``Σ_j c_j[i]`` placed at ``s·i + j − lo`` over the window offsets ``j`` — the
    transpose of the window slices, with ``+=`` where windows overlap — as an array of
    ``(N, *in_shape, C)``; ``c_j = contribution(j)`` is output-sized, ``j`` the offset's
    window-order index.

    Offset ``j = r + s·m`` lands in phase ``r`` (``x[s·b + r]`` is block ``b``, phase
    ``r``), shifted by ``m`` blocks: a zero pad of ``c_j`` to the ``B = o + ⌈k / s⌉ − 1``
    blocks of a phase. Each phase sums its offsets, and the phases interleave into one
    array by a stack and a reshape, so every buffer but the result is output-sized."""
    blocks = tuple(o + -(-k // s) - 1 for o, k, s in zip(geom.out_shape, geom.window, geom.stride))
    per_phase: dict[tuple[int, ...], jax.Array] = {}
    for j, offset in enumerate(_offsets(geom.window)):
        m, r = zip(*(divmod(t, s) for t, s in zip(offset, geom.stride)))
        c = contribution(j)
        config = [(0, 0, 0), *((mi, b - o - mi, 0) for mi, b, o in zip(m, blocks, geom.out_shape)), (0, 0, 0)]
        shifted = lax.pad(c, jnp.zeros((), c.dtype), config)  # c[i] at block i + m
        per_phase[r] = per_phase[r] + shifted if r in per_phase else shifted  # +=
    some = next(iter(per_phase.values()))
    n, channels = some.shape[0], some.shape[-1]

    def interleave(r):  # the phases r + (q, …) stacked after block axis len(r)
        if len(r) == len(blocks):
            return per_phase[r] if r in per_phase else jnp.zeros_like(some)  # no offset lands here
        return jnp.stack([interleave((*r, q)) for q in range(geom.stride[len(r)])], axis=len(r) + 2)

    xp = interleave(()).reshape((n, *(b * s for b, s in zip(blocks, geom.stride)), channels))
    config = [(0, 0, 0)]
    for size, (lo, _), b, s in zip(in_shape, geom.pads, blocks, geom.stride):
        config.append((-lo, size + lo - b * s, 0))  # crop the padding; zeros (or a cut) at the tail
    config.append((0, 0, 0))
    return lax.pad(xp, jnp.zeros((), xp.dtype), config)


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
