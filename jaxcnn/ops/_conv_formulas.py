"""Convolution's alternative exact formulas: each a :class:`Formula` of the table.

:mod:`jaxcnn.ops._conv` holds the lecture's formulas (Hu & Zhu: ``y = x *valid rot180(w)``,
``dW = x *valid rot180(δ)``, ``dx = δ *full w``); these order the same sums differently, and
``method`` (:mod:`jaxcnn.ops._conv_plan`) picks among them. Why each is there, measured:
``docs/performance.md``.

* ``"im2col"`` (Park): ``y = im2col(x) · W`` with ``W = w.reshape(-1, C_out)``,
  ``dW = im2col(x)ᵀ · δ`` and ``dx = col2im(δ · Wᵀ)`` (:func:`input_gradient_col2im`:
  overlap-add, then crop), the input gradient the two below share.
* ``"taps"``: ``y = Σ_k Σ_p x_pad[:, o·s + k·d, p] · w[k, p, :]``, the window's strided slices
  scaled and summed in one fused loop, and ``dW`` as one matrix product of the taps with δ.
* ``"rows"``: im2col over the leading spatial axes only, and along the last axis blocks of
  ``J`` outputs with the ``U`` input columns they read: ``y`` is that column matrix times a
  banded matrix built from ``w``, ``dW`` its transpose times δ with the band's diagonals
  summed. With a bias, the column matrix gets a column of ones and the banded matrix the
  row ``b``, so ``y + b`` and ``[dW; db]`` come out of the same two products.

Every forward is ``(x, w, geom, b) -> y`` (``b`` None or added), every weight gradient
``(x, g, geom, bias) -> (dW, db)``, ``dW`` in any shape that reshapes to ``w``'s and ``db``
None unless the formula computes it on the way (``"rows"`` with ``bias``), and every input
gradient ``(g, w, geom, in_shape) -> dx``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _shapes, _xla_cpu
from jaxcnn.ops._im2col import col2im, patches, taps

#: taps: at most this many channel pairs ``C_in · C_out`` are summed per output map (one
#: fused loop each); more use ``K · C_in`` broadcast products, whose compile time stays
#: linear in the channels.
TAPS_PER_MAP_MAX_PAIRS = 32


class Formula(NamedTuple):
    """One exact way to compute convolution's three products: a row of the table
    :data:`jaxcnn.ops._conv.FORMULAS`, named by ``method``."""

    name: str
    refuses: Callable[[_shapes.Geometry], Optional[str]]  # why it does not apply to a geometry, or None
    forward: Callable  # (x, w, geom, b) -> y
    weight_gradient: Callable  # (x, g, geom, bias) -> (dW, db or None)
    input_gradient: Callable  # (g, w, geom, in_shape) -> dx


def refuses_negative_padding(geom: _shapes.Geometry) -> Optional[str]:
    """Why a formula that pads with ``jnp.pad`` refuses ``geom``: a negative padding (a crop; only
    the convolution a :func:`jaxcnn.ops.conv_transpose` with ``output_padding`` transposes has one)."""
    if any(p < 0 for pair in geom.pads for p in pair):
        return f"needs a non-negative padding, got {geom.pads}"
    return None


def _plus(y, b):
    return y if b is None else y + b


# --------------------------------------------------------------------------- im2col (Park)


def forward_im2col(x, w, geom: _shapes.Geometry, b=None):
    """``y = im2col(x) · W + b``."""
    return _plus(patches(x, geom) @ w.reshape(-1, w.shape[-1]), b)


def weight_gradient_im2col(x, g, geom: _shapes.Geometry, bias: bool = False):
    """``dW = im2col(x)ᵀ · δ``."""
    return _xla_cpu.contract_leading(patches(x, geom), g), None


def input_gradient_col2im(g, w, geom: _shapes.Geometry, in_shape, materialize: bool = False):
    """``dx = col2im(δ · Wᵀ)``: every window's share of ``δ Wᵀ`` added back where it was read
    (``materialize``: into a buffer of its own, :func:`jaxcnn.ops._im2col.col2im`)."""
    return col2im(g @ w.reshape(-1, w.shape[-1]).T, geom, in_shape, materialize)


# --------------------------------------------------------------------------- taps


def forward_taps(x, w, geom: _shapes.Geometry, b=None):
    """``y = Σ_k Σ_p x_pad[n, o·s + k·d, p] w[k, p, :] + b``: scaled taps, one fused loop."""
    w_taps, x_taps = w.reshape(-1, *w.shape[-2:]), taps(x, geom)
    c_in, c_out = w.shape[-2:]
    if c_in * c_out <= TAPS_PER_MAP_MAX_PAIRS:  # one loop per output map vectorises best
        y = jnp.stack([sum(x_k[..., p] * w_k[p, q] for x_k, w_k in zip(x_taps, w_taps) for p in range(c_in))
                       for q in range(c_out)], axis=-1)
    else:
        y = sum(x_k[..., p, None] * w_k[p] for x_k, w_k in zip(x_taps, w_taps) for p in range(c_in))
    return _plus(y, b)


def weight_gradient_taps(x, g, geom: _shapes.Geometry, bias: bool = False):
    """``dW[k, p, q] = Σ_{n,o} x_pad[n, o·s + k·d, p] δ[n, o, q]``: one matrix product whose
    contraction runs over the batch and every position (im2col with positions last)."""
    cols = jnp.stack([jnp.moveaxis(x_k, -1, 0) for x_k in taps(x, geom)])  # (K, C_in, N, *out)
    return lax.dot_general(cols, g, ((tuple(range(2, cols.ndim)), tuple(range(g.ndim - 1))), ((), ()))), None


# --------------------------------------------------------------------------- row blocks


class _RowBlocks(NamedTuple):
    """Along the last spatial axis, blocks of ``J`` outputs (``T`` of them), each reading
    the ``U = (J − 1)·s_L + (k_L − 1)·d_L + 1`` input columns its windows cover."""

    block: int  # J
    blocks: int  # T
    span: int  # U


def _row_blocks(geom: _shapes.Geometry) -> _RowBlocks:
    """``J``: the largest divisor of ``o_L`` up to ``k_L`` (no padded outputs), or ``k_L``
    when that divisor is under half of it (LeNet-5's C1: 4 of 28)."""
    k, s, d, o = geom.window[-1], geom.stride[-1], geom.dilation[-1], geom.out_shape[-1]
    block = max(j for j in range(1, min(k, o) + 1) if o % j == 0)
    if 2 * block < min(k, o):  # too small to be worth it: pad δ with zero outputs instead
        block = min(k, o)
    return _RowBlocks(block, -(-o // block), (block - 1) * s + (k - 1) * d + 1)


def _row_block_columns(x, geom: _shapes.Geometry, ones: bool = False):
    """The column matrix of row blocks, ``(N·Πo'·T, K'·U·C_in)``: row ``(n, o', t)``,
    column ``(k', u, p)`` holds ``x_pad[n, o'·s' + k'·d', t·J·s_L + u, p]`` — taps over
    the leading axes only, and along the last axis the ``U`` columns block ``t`` reads."""
    rb, lead = _row_blocks(geom), len(geom.window) - 1
    width = (rb.blocks - 1) * rb.block * geom.stride[-1] + rb.span  # the padded width the last block reaches
    lo = geom.pads[-1][0]
    config = [(0, 0, 0), *((a, b, 0) for a, b in geom.pads[:-1]), (lo, width - x.shape[-2] - lo, 0), (0, 0, 0)]
    x_pad = lax.pad(x, jnp.zeros((), x.dtype), config)  # a negative high pad cuts columns no window reads
    n, c_in = x.shape[0], x.shape[-1]
    lead_geom = geom._replace(window=geom.window[:lead], stride=geom.stride[:lead], dilation=geom.dilation[:lead],
                              pads=((0, 0),) * lead, out_shape=geom.out_shape[:lead])
    rows = taps(x_pad.reshape(n, *x_pad.shape[1:-2], width * c_in), lead_geom)  # K' × (N, *o', W·C)
    step = rb.block * geom.stride[-1]
    cols = jnp.stack([  # (N, *o', T, K', U, C): block t of row tap k' at column u
        jnp.stack([lax.slice_in_dim(r.reshape(*r.shape[:-1], width, c_in), u, u + (rb.blocks - 1) * step + 1, step,
                                    axis=-2) for u in range(rb.span)], axis=-2)
        for r in rows], axis=-3)
    cols = cols.reshape(-1, len(rows) * rb.span * c_in)
    return jnp.concatenate([cols, jnp.ones((cols.shape[0], 1), cols.dtype)], axis=1) if ones else cols


def _row_block_diagonals(geom: _shapes.Geometry, dtype) -> np.ndarray:
    """``E[u, v, b] = 1`` where block column ``u`` is tap ``b`` of block output ``v``:
    ``u = v·s_L + b·d_L``."""
    rb, k = _row_blocks(geom), geom.window[-1]
    u, v, b = np.ix_(np.arange(rb.span), np.arange(rb.block), np.arange(k))
    return (u == v * geom.stride[-1] + b * geom.dilation[-1]).astype(dtype)


def forward_rows(x, w, geom: _shapes.Geometry, b=None):
    """``y = cols · T`` with the row-block columns and the banded matrix
    ``T[(k', u, p), (v, q)] = w[k', b, p, q]`` where ``u = v·s_L + b·d_L`` (else 0): the
    taps of one block's ``J`` outputs in one product, ``U / k_L`` times the minimal
    multiply-adds. Shares its column matrix with :func:`weight_gradient_rows`."""
    rb = _row_blocks(geom)
    lead_taps, c_in, c_out = math.prod(geom.window[:-1]), w.shape[-2], w.shape[-1]
    banded = jnp.einsum("uvb,kbpq->kupvq", _row_block_diagonals(geom, np.dtype(w.dtype)),
                        w.reshape(lead_taps, geom.window[-1], c_in, c_out))
    banded = banded.reshape(lead_taps * rb.span * c_in, rb.block * c_out)
    if b is not None:  # the bias as one more row, against the column of ones
        banded = jnp.concatenate([banded, jnp.tile(b, rb.block)[None]])
    y = _row_block_columns(x, geom, ones=b is not None) @ banded
    y = y.reshape(x.shape[0], *geom.out_shape[:-1], rb.blocks * rb.block, c_out)
    return lax.slice_in_dim(y, 0, geom.out_shape[-1], axis=-2)  # drop the padded outputs


def weight_gradient_rows(x, g, geom: _shapes.Geometry, bias: bool = False):
    """``dW[k, p, q] = Σ_{n,o} x_pad[n, o·s + k·d, p] δ[n, o, q]`` as one well-shaped matrix
    product of the row-block columns (:func:`_row_block_columns`) with δ in blocks of
    ``J`` outputs: with ``t`` the block and ``v < J`` the output in it,
    ``M[k', u, p, v, q] = Σ_{n,o',t} x_pad[n, o'·s' + k'·d', t·J·s_L + u, p] δ[n, o', t·J + v, q]``
    and ``dW[k', k_L, p, q] = Σ_v M[k', v·s_L + k_L·d_L, p, v, q]`` sums its diagonals.

    It spends ``U / k_L`` times the minimal multiply-adds (LeNet-5's C1: ``J = 4``, 8/5)
    to avoid a column matrix ``k_L`` times larger than the input; a block of the whole
    width would spend ``W / k_L`` (performance.md, "Row-block width")."""
    rb = _row_blocks(geom)
    lead_taps, c_in, c_out = math.prod(geom.window[:-1]), x.shape[-1], g.shape[-1]
    g_pad = lax.pad(g, jnp.zeros((), g.dtype),  # δ = 0 for the padded outputs
                    [(0, 0, 0)] * (g.ndim - 2) + [(0, rb.blocks * rb.block - geom.out_shape[-1], 0), (0, 0, 0)])
    m = _xla_cpu.contract_leading(_row_block_columns(x, geom, ones=bias), g_pad.reshape(-1, rb.block * c_out))
    db = m[-1].reshape(rb.block, c_out).sum(0) if bias else None  # the ones column: Σ δ per block output
    m = (m[:-1] if bias else m).reshape(lead_taps, rb.span, c_in, rb.block, c_out)
    return jnp.einsum("kupvq,uvb->kbpq", m, _row_block_diagonals(geom, np.dtype(m.dtype))), db  # (K', k_L, C_in, C_out)


IM2COL = Formula("im2col", refuses_negative_padding, forward_im2col, weight_gradient_im2col, input_gradient_col2im)
TAPS = Formula("taps", refuses_negative_padding, forward_taps, weight_gradient_taps, input_gradient_col2im)
ROWS = Formula("rows", refuses_negative_padding, forward_rows, weight_gradient_rows, input_gradient_col2im)
