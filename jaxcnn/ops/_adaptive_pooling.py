r"""Adaptive mean and max pooling to any output size, with hand-derived backward rules, for 1
to 3 spatial axes (PyTorch's ``adaptive_avg_pool1d/2d/3d`` and ``adaptive_max_pool1d/2d/3d``).

The output size ``m`` is given and the windows follow from it. Along an axis of input size
``n``, output position ``i`` reads the input positions ``[start_i, end_i)`` with PyTorch's
window formula

    ``start_i = ⌊i·n / m⌋``,   ``end_i = ⌈(i + 1)·n / m⌉``

(:func:`jaxcnn._shapes.adaptive_windows`). The windows cover the input in order and hold
``⌊n / m⌋`` to ``⌈n / m⌉ + 1`` positions; neighbours overlap by one position where
``(i + 1)·n / m`` is not an integer, and with ``m > n`` (an output larger than the input)
several windows read each position. A window ``W_i`` is the box of its intervals on every
axis, ``|W_i| = Π_a (end − start)``; ``n = k·m`` gives the tiled windows of ``mean_pool`` /
``max_pool`` with window and stride ``k``, ``m = 1`` the global pools.

They are the lectures' window pooling (Raj: mean pooling spreads ``δ / K`` with ``+=``; max
pooling routes ``δ`` to the arg-max with ``+=`` "because this entry may be selected in
multiple adjacent overlapping windows"; Park, Jearanaitanakij) with windows of varying size:

* mean: ``y[i] = (1 / |W_i|) Σ_{p ∈ W_i} x[p]``; backward
  ``dx[p] = Σ_{i : p ∈ W_i} g[i] / |W_i|``: each window's ``δ_i / |W_i|`` spread over its
  window, ``+=`` where windows overlap. Linear: no residual.
* max: ``y[i] = x[P(i)]``, ``P(i)`` the first maximum of ``W_i`` in window order (row-major:
  the first spatial axis slowest); backward ``dx[p] = Σ_{i : P(i) = p} g[i]``: δ routed to the
  maximum, ``+=`` where overlapping windows share it. The residual is ``P``, the flat index of
  each maximum in its input plane (int32, PyTorch's ``return_indices``).

The forward gathers every window at once, padded to the largest window with an entry that
never counts (−∞ for the max, 0 for the sum). The backward is a gather too, not a scatter:
along every axis the windows holding a position ``p`` are a run of consecutive outputs (at
most two when ``m ≤ n``), so ``dx[p]`` sums ``g`` over that run, read through a zero
appended past the run's end.

Forward mode: the mean is linear, its tangent the mean pool of the tangent
(``ṫ_y[i] = (1 / |W_i|) Σ_{p ∈ W_i} ṫ_x[p]``); the max's tangent is the input tangent at the
saved maximum, ``ṫ_y[i] = ṫ_x[P(i)]`` (the transpose of the VJP's routing, the same tie rule).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, _shapes
from jaxcnn.ops import _windows
from jaxcnn.ops import _rule

# --------------------------------------------------------------------------- mean


def adaptive_mean_pool(x: jax.Array, output_size) -> jax.Array:
    r"""Adaptive mean pooling to ``output_size``, channel by channel (PyTorch's
    ``adaptive_avg_pool1d/2d/3d`` on channels-last arrays).

    Forward: ``y[i] = (1 / |W_i|) Σ_{p ∈ W_i} x[p]``, the window ``W_i`` from PyTorch's
    ``start_i = ⌊i·n / m⌋``, ``end_i = ⌈(i + 1)·n / m⌉`` on every axis (module docstring).

    Backward (Raj's mean pooling, each window with its own size):
    ``dx[p] = Σ_{i : p ∈ W_i} g[i] / |W_i|``, ``+=`` where windows overlap. No residual.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes, every
        spatial axis non-empty.
      output_size: the spatial output shape ``m``: an int for every axis, or one entry per
        axis, an int ``>= 1`` or ``None`` (keep that axis' size). It may exceed the input.

    Returns:
      ``y`` of shape ``(N, *output_size, C)`` and the dtype of ``x``.

    Raises:
      TypeError: ``x`` is not floating point, or ``output_size`` is not an int or a sequence of
        ints/None.
      ValueError: ``x`` does not have 3 to 5 dimensions or has an empty spatial axis,
        ``output_size`` has the wrong number of entries or an entry < 1.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([1., 2, 3, 4, 5]).reshape(1, 5, 1)  # windows [0, 2), [1, 4), [3, 5)
    >>> ops.adaptive_mean_pool(x, 3)[0, :, 0].tolist()
    [1.5, 3.0, 4.5]
    >>> jax.grad(lambda x: ops.adaptive_mean_pool(x, 3).sum())(x)[0, :, 0].tolist()  # 1/2, 1/2+1/3, ...
    [0.5, 0.8333333333333333, 0.3333333333333333, 0.8333333333333333, 0.5]
    """
    x, out_shape = _validate("adaptive_mean_pool", x, output_size)
    return _adaptive_mean_pool(x, x.shape[1:-1], out_shape)


@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2))
def _adaptive_mean_pool(x, in_shape, out_shape):
    windows = _gather(_windows.pad(x, _one_past(in_shape), 0), _window_index(in_shape, out_shape))
    return jnp.sum(windows, axis=-1) / _sizes(in_shape, out_shape, x.dtype)


def _adaptive_mean_pool_fwd(x, in_shape, out_shape):
    return _adaptive_mean_pool(x, in_shape, out_shape), ()  # linear: no residual


def _adaptive_mean_pool_bwd(in_shape, out_shape, res, g):
    share = g / _sizes(in_shape, out_shape, g.dtype)  # δ_i / |W_i|
    # dx[p] = Σ_{i : p ∈ W_i} δ_i / |W_i|: the shares of the windows holding p, summed (+=).
    holding = _gather(_windows.pad(share, _one_past(out_shape), 0), _holding_index(in_shape, out_shape))
    return (jnp.sum(holding, axis=-1),)


def _adaptive_mean_pool_jvp(in_shape, out_shape, primals, tangents):
    (x,), (t,) = primals, tangents
    return (_adaptive_mean_pool(x, in_shape, out_shape),
            _adaptive_mean_pool(t, in_shape, out_shape))  # linear: ṫ_y = pool(ṫ_x)


_adaptive_mean_pool.defvjp(_adaptive_mean_pool_fwd, _adaptive_mean_pool_bwd)
_adaptive_mean_pool.defjvp(_adaptive_mean_pool_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_adaptive_mean_pool = jax.jit(_adaptive_mean_pool, static_argnums=(1, 2))


# --------------------------------------------------------------------------- max


def adaptive_max_pool(x: jax.Array, output_size, *, return_indices: bool = False):
    r"""Adaptive max pooling to ``output_size``, channel by channel (PyTorch's
    ``adaptive_max_pool1d/2d/3d`` on channels-last arrays).

    Forward: ``y[i] = x[P(i)]``, ``P(i) = argmax_{p ∈ W_i} x[p]``, the windows ``W_i`` from
    PyTorch's ``start_i = ⌊i·n / m⌋``, ``end_i = ⌈(i + 1)·n / m⌉`` on every axis.

    Backward (Raj, Jearanaitanakij: only the maximum of a window gets its δ):
    ``dx[p] = Σ_{i : P(i) = p} g[i]``, ``+=`` because overlapping windows (sizes that do not
    divide, or an output larger than the input) can share a maximum. The residual is ``P``
    alone, one int32 per output element.

    Ties: δ goes to the *first* maximum in window order (row-major: smallest position along
    the first spatial axis, then the next), so a window of equal values gives it to one
    element. A NaN in a window is its maximum (as PyTorch's kernel): the output is NaN and δ
    goes to the first NaN.

    Args:
      x: input of shape ``(N, *spatial, C)`` (channels last) with 1, 2 or 3 spatial axes, every
        spatial axis non-empty.
      output_size: as :func:`adaptive_mean_pool`.
      return_indices: also return, as PyTorch's ``return_indices``, the flat index of each
        maximum in its input plane (``Σ_a p_a Π_{b>a} n_b``), int32, the shape of ``y``; they
        carry no gradient.

    Returns:
      ``y`` of shape ``(N, *output_size, C)`` and the dtype of ``x``; ``(y, indices)`` with
      ``return_indices=True``.

    Raises:
      TypeError: as :func:`adaptive_mean_pool`, or ``return_indices`` is not a bool.
      ValueError: as :func:`adaptive_mean_pool`.

    >>> import jax, jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([0., 9, 1, 2, 3]).reshape(1, 5, 1)  # windows [0, 2), [1, 4), [3, 5) share the 9
    >>> ops.adaptive_max_pool(x, 3)[0, :, 0].tolist()
    [9.0, 9.0, 3.0]
    >>> jax.grad(lambda x: ops.adaptive_max_pool(x, 3).sum())(x)[0, :, 0].tolist()
    [0.0, 2.0, 0.0, 0.0, 1.0]
    """
    x, out_shape = _validate("adaptive_max_pool", x, output_size)
    y = _adaptive_max_pool(x, x.shape[1:-1], out_shape)
    if not _checks.flag("adaptive_max_pool", "return_indices", return_indices):
        return y
    # the forward's own arg-max, recomputed without gradient (XLA merges the two passes)
    return y, _adaptive_max_pool_fwd(lax.stop_gradient(x), x.shape[1:-1], out_shape)[1].indices


class AdaptiveMaxPoolResiduals(NamedTuple):
    indices: jax.Array  # P: flat index of each output's maximum in its input plane, int32, shape of y


@functools.partial(_rule.custom_rule, nondiff_argnums=(1, 2))
def _adaptive_max_pool(x, in_shape, out_shape):
    return _adaptive_max_pool_fwd(x, in_shape, out_shape)[0]


def _adaptive_max_pool_fwd(x, in_shape, out_shape):
    windows = _gather(_windows.pad(x, _one_past(in_shape), -jnp.inf), _window_index(in_shape, out_shape))
    first = jnp.argmax(windows, axis=-1)  # the first maximum in window order (a NaN counts as one)
    y = jnp.take_along_axis(windows, first[..., None], axis=-1)[..., 0]
    return y, AdaptiveMaxPoolResiduals(_flat_indices(first, in_shape, out_shape))


def _adaptive_max_pool_bwd(in_shape, out_shape, res: AdaptiveMaxPoolResiduals, g):
    # dx[p] = Σ_{i : P(i) = p} g[i]: over the windows holding p, the δ of those whose maximum is p (+=).
    index = _holding_index(in_shape, out_shape)
    winners = _gather(_windows.pad(res.indices, _one_past(out_shape), -1), index)  # P(i), −1 past the run
    deltas = _gather(_windows.pad(g, _one_past(out_shape), 0), index)
    at_max = winners == _plane_positions(in_shape)[..., None]
    return (jnp.sum(jnp.where(at_max, deltas, jnp.zeros((), g.dtype)), axis=-1),)


def _adaptive_max_pool_jvp(in_shape, out_shape, primals, tangents):
    (x,), (t,) = primals, tangents
    y, res = _adaptive_max_pool_fwd(x, in_shape, out_shape)
    # ṫ_y[i] = ṫ_x[P(i)]: the tangent at the maximum the VJP routes δ to, read from its input plane.
    plane, at = (a.reshape(a.shape[0], math.prod(a.shape[1:-1]), a.shape[-1]) for a in (t, res.indices))
    return y, jnp.take_along_axis(plane, at, axis=1).reshape(y.shape)


_adaptive_max_pool.defvjp(_adaptive_max_pool_fwd, _adaptive_max_pool_bwd)
_adaptive_max_pool.defjvp(_adaptive_max_pool_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_adaptive_max_pool = jax.jit(_adaptive_max_pool, static_argnums=(1, 2))


# --------------------------------------------------------------------------- the windows


def _window_index(in_shape, out_shape):
    """Per axis, ``(m, K)``: the input positions of each output's window, ``K`` the largest
    window; ``n`` (the entry appended past the input) beyond a window's end."""
    index = []
    for n, m in zip(in_shape, out_shape):
        start, end = _shapes.adaptive_windows(n, m)
        positions = start[:, None] + np.arange(np.max(end - start))
        index.append(np.where(positions < end[:, None], positions, n))
    return index


def _holding_index(in_shape, out_shape):
    """Per axis, ``(n, L)``: the outputs whose window holds each input position (a run of
    consecutive ones), ``L`` the longest run; ``m`` (the entry appended past the output)
    beyond a run's end."""
    index = []
    for n, m in zip(in_shape, out_shape):
        start, end = _shapes.adaptive_windows(n, m)
        p = np.arange(n)[:, None]
        holds = (start <= p) & (p < end)  # (n, m); every position is in at least one window
        first, count = np.argmax(holds, axis=1), holds.sum(axis=1)
        run = np.arange(np.max(count))
        index.append(np.where(run < count[:, None], first[:, None] + run, m))
    return index


def _gather(a, index):
    """``a`` of ``(N, *s, C)`` read at per-axis index arrays ``(o_a, K_a)``:
    ``(N, *o, C, ΠK)``, the window axes last in row-major (window) order."""
    d = len(index)
    for axis, positions in enumerate(index):
        a = jnp.take(a, positions, axis=1 + 2 * axis, mode="clip")  # in bounds: (N, o₁, K₁, …, s_d, C)
    a = jnp.moveaxis(a, [2 + 2 * axis for axis in range(d)], [a.ndim - d + axis for axis in range(d)])
    return a.reshape(*a.shape[:-d], int(np.prod(a.shape[-d:])))  # no -1: N may be 0


def _one_past(shape):
    """One entry appended past the end of every spatial axis (the never-counted entry)."""
    return ((0, 1),) * len(shape)


def _sizes(in_shape, out_shape, dtype):
    """``|W_i|`` for every output position, shaped ``(1, *out_shape, 1)``."""
    sizes = np.ones((1,) * (len(in_shape) + 2), np.int64)
    for axis, (n, m) in enumerate(zip(in_shape, out_shape)):
        start, end = _shapes.adaptive_windows(n, m)
        sizes = sizes * (end - start).reshape((1,) * (axis + 1) + (m,) + (1,) * (len(in_shape) - axis))
    return jnp.asarray(sizes, dtype)


def _plane_positions(shape):
    """The flat index ``Σ_a p_a Π_{b>a} n_b`` of every position of an input plane, ``(1, *shape, 1)``."""
    return jnp.asarray(np.arange(int(np.prod(shape)), dtype=np.int32).reshape(1, *shape, 1))


def _flat_indices(first, in_shape, out_shape):
    """The flat input-plane index of each window's entry ``first`` (its row-major offset in the
    window): per axis ``start_i + j_a``, flattened row-major over the spatial axes."""
    extents = [index.shape[1] for index in _window_index(in_shape, out_shape)]
    offset = first.astype(jnp.int32)
    flat = jnp.zeros(first.shape, jnp.int32)
    for axis, (n, m, k) in enumerate(zip(in_shape, out_shape, extents)):
        j = (offset // int(np.prod(extents[axis + 1:]))) % k  # this axis' offset in row-major order
        start = _shapes.adaptive_windows(n, m)[0].astype(np.int32)
        flat = flat * n + jnp.asarray(start.reshape((1,) * (axis + 1) + (m,) + (1,) * (len(in_shape) - axis))) + j
    return flat


def _validate(op, x, output_size):
    """``x`` and the spatial output shape."""
    x = _checks.float_array(op, "x", x)
    _checks.rank(op, "x", x, (3, 4, 5), "(N, *spatial, C): 1 to 3 spatial axes, channels last")
    n = x.ndim - 2
    _shapes.spatial_length(op, "output_size", output_size, n,
                           f"`x` of shape {tuple(x.shape)} (N, *spatial, C) has {n}")
    return x, _shapes.adaptive_output_shape(op, x.shape[1:-1], output_size)


# --------------------------------------------------------------------------- references


def adaptive_mean_pool_reference(x, output_size):
    """Autodiff reference for :func:`adaptive_mean_pool`, PyTorch's loop one axis at a time (a
    window is a box): output ``i`` is the ``jnp.mean`` of the slice ``[start_i, end_i)``."""
    x, out_shape = _validate("adaptive_mean_pool", x, output_size)
    for axis, m in enumerate(out_shape, start=1):
        start, end = _shapes.adaptive_windows(x.shape[axis], m)
        x = jnp.stack([jnp.mean(lax.slice_in_dim(x, s, e, axis=axis), axis=axis) for s, e in zip(start, end)],
                      axis=axis)
    return x


def adaptive_max_pool_reference(x, output_size, *, return_indices=False):
    """Autodiff reference for :func:`adaptive_max_pool`: one axis at a time, the last axis
    first, each window's first maximum picked with ``take_along_axis`` (``jnp.max``'s own rule
    would share a tie); reducing the last axis first keeps the first maximum in row-major
    order. The input-plane positions ride along for ``return_indices``."""
    x, out_shape = _validate("adaptive_max_pool", x, output_size)
    return_indices = _checks.flag("adaptive_max_pool", "return_indices", return_indices)
    plane = np.arange(int(np.prod(x.shape[1:-1])), dtype=np.int32).reshape(1, *x.shape[1:-1], 1)
    positions = jnp.broadcast_to(jnp.asarray(plane), x.shape)
    for axis, m in reversed(list(enumerate(out_shape, start=1))):
        start, end = _shapes.adaptive_windows(x.shape[axis], m)
        values, where = [], []
        for s, e in zip(start, end):
            window = lax.slice_in_dim(x, s, e, axis=axis)
            first = lax.stop_gradient(jnp.argmax(window, axis=axis, keepdims=True))
            values.append(jnp.take_along_axis(window, first, axis=axis))
            where.append(jnp.take_along_axis(lax.slice_in_dim(positions, s, e, axis=axis), first, axis=axis))
        x, positions = jnp.concatenate(values, axis=axis), jnp.concatenate(where, axis=axis)
    return (x, positions) if return_indices else x
