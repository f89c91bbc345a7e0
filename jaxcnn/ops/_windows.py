"""Window slices of a channels-last array and their transposes: pooling's building blocks.

Forward: a pooling op visits the window one offset ``j`` at a time — ``x[:, s·i + j, :]``
over all output positions ``i`` is one strided slice of the padded input
(:func:`window_entry`); tiled windows (``stride == window``) are also blocks of a reshaped
view (:func:`into_blocks`).

Backward: the transpose of those slices, summed (``+=``), built from output-sized pieces
(:func:`place_all`). Along each axis write the padded input position as ``s·b + r`` (block
``b``, *phase* ``0 ≤ r < s``). Offset ``j = r + s·m`` of output ``i`` is block ``i + m`` of
phase ``r``, so its contribution lands in one phase, shifted by ``m`` blocks (a plain zero
pad of an output-sized array). Each phase sums the offsets that land in it — with
``stride < window`` an element is in up to ``⌈k / s⌉`` windows per axis, the lectures'
``+=`` — and the phases interleave into the input-sized gradient with one stack and a
reshape, the only input-sized buffer written. When the windows tile the input nothing
overlaps and each window is one block of a reshaped view: the backward spreads δ over its
block (:func:`per_block`, :func:`unblock`). The phase form would compute the same values,
but in a network XLA:CPU then fuses the producer of δ into the interleave
(performance.md, "Pooling block sums").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _shapes
from jaxcnn._shapes import Geometry


def entries(geom: Geometry):
    """The window's entries ``d·j`` in window order (row-major: the last axis fastest), as
    offsets into the padded input (``d = 1``: :func:`jaxcnn._shapes.offsets`)."""
    return (tuple(j * d for j, d in zip(offset, geom.dilation)) for offset in _shapes.offsets(geom.window))


def tiled(geom: Geometry) -> bool:
    """The windows tile the input: stride = window and no dilation."""
    return geom.stride == geom.window and all(d == 1 for d in geom.dilation)


def pad(x, pads, value):
    """Pads the spatial axes of a channels-last array with ``value``."""
    if not any(lo or hi for lo, hi in pads):
        return x
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)]
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def window_entry(xp, offset, geom: Geometry):
    """``xp[:, j + s·i, :]`` for every output position ``i``: one strided slice."""
    start = (0, *offset, 0)
    limit = (
        xp.shape[0],
        *(j + (o - 1) * s + 1 for j, o, s in zip(offset, geom.out_shape, geom.stride)),
        xp.shape[-1],
    )
    return lax.slice(xp, start, limit, (1, *geom.stride, 1))


def into_blocks(xp, geom: Geometry):
    """Tiled windows (stride = window): the padded input as ``(N, o₁, k₁, …, o_d, k_d, C)``,
    without the tail that no window reaches."""
    covered = (xp.shape[0], *(o * k for o, k in zip(geom.out_shape, geom.window)), xp.shape[-1])
    return lax.slice(xp, (0,) * xp.ndim, covered).reshape(blocks_shape(xp.shape, geom))


def blocks_shape(shape, geom: Geometry):
    """``(N, o₁, k₁, …, o_d, k_d, C)`` for an array of shape ``(N, …, C)``."""
    return (shape[0], *(d for o, k in zip(geom.out_shape, geom.window) for d in (o, k)), shape[-1])


def per_block(a):
    """``(N, o₁, …, o_d, C)`` viewed as ``(N, o₁, 1, …, o_d, 1, C)``: one value per block."""
    return a.reshape((a.shape[0], *(d for o in a.shape[1:-1] for d in (o, 1)), a.shape[-1]))


def offset_index(window):
    """The index ``j`` of each window offset, shaped ``(1, 1, k₁, …, 1, k_d, 1)`` to meet
    :func:`per_block`."""
    index = np.arange(np.prod(window)).reshape(window)  # row-major: window order
    return index.reshape((1, *(d for k in window for d in (1, k)), 1))


def unblock(blocks, geom: Geometry, in_shape):
    """The transpose of :func:`into_blocks` and :func:`pad`: blocks ``(N, o₁, k₁, …, C)``
    merged, zeros for the tail that no window reached, the padding cropped."""
    merged = blocks.reshape((blocks.shape[0], *(o * k for o, k in zip(geom.out_shape, geom.window)), blocks.shape[-1]))
    config = [(0, 0, 0)]
    for size, (lo, _), o, k in zip(in_shape, geom.pads, geom.out_shape, geom.window):
        config.append((-lo, size + lo - o * k, 0))  # crop the padding; zeros at the unreached tail
    config.append((0, 0, 0))
    return lax.pad(merged, jnp.zeros((), merged.dtype), config)


def place_all(contribution, geom: Geometry, in_shape):
    """``Σ_j c_j[i]`` placed at ``s·i + d·j − lo`` over the window offsets ``j`` — the
    transpose of the window slices, with ``+=`` where windows overlap — as an array of
    ``(N, *in_shape, C)``; ``c_j = contribution(j)`` is output-sized, ``j`` the offset's
    window-order index.

    Offset ``j = r + s·m`` lands in phase ``r`` (``x[s·b + r]`` is block ``b``, phase
    ``r``), shifted by ``m`` blocks: a zero pad of ``c_j`` to the ``B = o + ⌈k / s⌉ − 1``
    blocks of a phase. Each phase sums its offsets, and the phases interleave into one
    array by a stack and a reshape, so every buffer but the result is output-sized."""
    extent = _shapes.dilated(geom.window, geom.dilation)
    blocks = tuple(o + -(-k // s) - 1 for o, k, s in zip(geom.out_shape, extent, geom.stride))
    per_phase: dict[tuple[int, ...], jax.Array] = {}
    for j, offset in enumerate(entries(geom)):
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
