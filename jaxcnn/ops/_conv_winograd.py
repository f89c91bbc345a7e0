"""Winograd's minimal filtering F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016): an exact alternative formula for 2-D 3 × 3 convolutions at stride 1
without dilation, forward and hand-derived backward.

Per 4 × 4 tile ``d`` of the padded input (tiles 2 apart) and its 2 × 2 tile of outputs,

    ``y = Aᵀ [ (G w Gᵀ) ⊙ (Bᵀ d B) ] A``

with the constant matrices below; over channels the ``⊙`` becomes 16 matrix products, one per
tile position ``(a, b)``: ``M_ab = V_ab U_ab`` with ``V = Bᵀ d B`` (rows: tiles, columns:
``C_in``) and ``U = G w Gᵀ`` (``C_in × C_out``). The identity holds in exact arithmetic
(2.25 times fewer multiplies than the direct sum; rounding differs from it by a few ulp).

The backward is the chain rule through the three linear maps, their transposes written out:

* ``dM_ab = (A δ Aᵀ)_ab`` per output tile (δ zero beyond the output),
* ``dU_ab = V_abᵀ dM_ab``, summed over the tiles, and ``dW = Gᵀ dU G``,
* ``dx = δ *full w`` (Hu & Zhu) is itself a 3 × 3 stride-1 correlation of δ with rot180(wᵀ)
  padded by ``2 − lo`` and ``2 − hi``, so it is this same forward.

Why it is there, and where ``auto`` picks it: ``docs/performance.md``, "Winograd F(2×2, 3×3)".
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _shapes
from jaxcnn.ops._conv_formulas import Formula, refuses_negative_padding

#: U = G w Gᵀ: the filter transform (Lavin & Gray, F(2×2, 3×3)).
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def refuses(geom: _shapes.Geometry):
    """Why F(2×2, 3×3) does not apply to ``geom`` (None where it does: 2-D, a 3 × 3 window, stride 1,
    no dilation, no negative padding)."""
    if geom.window == (3, 3) and geom.stride == (1, 1) and geom.dilation == (1, 1):
        return refuses_negative_padding(geom)
    return (f"needs a 2-D 3 × 3 window at stride 1 without dilation (F(2×2, 3×3)), got window {geom.window}, "
            f"stride {geom.stride}, dilation {geom.dilation}")


def applies(geom: _shapes.Geometry) -> bool:
    """Whether the geometry is F(2×2, 3×3)'s (:func:`refuses` says None)."""
    return refuses(geom) is None


def _input_transform(p):
    """``Bᵀ p`` along one axis, ``Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]``."""
    return [p[0] - p[2], p[1] + p[2], p[2] - p[1], p[1] - p[3]]


def _output_transform(m):
    """``Aᵀ m`` along one axis, ``Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]``."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def _output_transform_transposed(d):
    """``A d`` along one axis: the transpose of :func:`_output_transform`."""
    return [d[0], d[0] + d[1], d[0] - d[1], -d[1]]


def _down_columns(transform, grid):
    """``transform`` applied down every column of a grid (a list of rows of arrays)."""
    columns = [transform([row[j] for row in grid]) for j in range(len(grid[0]))]
    return [[column[i] for column in columns] for i in range(len(columns[0]))]


def _tiles(geom: _shapes.Geometry) -> tuple[int, int]:
    """Output tiles per axis, ``⌈o / 2⌉`` (an odd output gets one padded row or column)."""
    return tuple(-(-o // 2) for o in geom.out_shape)


def _transformed_input(x, geom: _shapes.Geometry, axis: int = 1):
    """``V_ab = (Bᵀ d B)_ab`` for every tile: 16 arrays, ``k = 4a + b``, with the spatial
    axes ``axis`` and ``axis + 1`` of ``x`` replaced by the tiles ``(T_h, T_w)``.

    The padded input, cut to ``2T + 2`` rows and columns, is read as 2 × 2 blocks, so that
    row ``i`` of every tile is one unstrided slice (``block ⌊i/2⌋ on, parity i mod 2``)."""
    th, tw = _tiles(geom)
    config = [(0, 0, 0)] * x.ndim
    for k, ((lo, _), t) in enumerate(zip(geom.pads, (th, tw))):
        config[axis + k] = (lo, 2 * t + 2 - x.shape[axis + k] - lo, 0)
    padded = lax.pad(x, jnp.zeros((), x.dtype), config)
    blocks = padded.reshape(*x.shape[:axis], th + 1, 2, tw + 1, 2, *x.shape[axis + 2:])

    def tap(a, i, along, size):  # rows (or columns) i of every tile: block ⌊i/2⌋ on, parity i mod 2
        return lax.index_in_dim(lax.slice_in_dim(a, i // 2, i // 2 + size, axis=along), i % 2, along + 1, False)

    rows = _input_transform([tap(blocks, i, axis, th) for i in range(4)])
    return [v for r in rows for v in _input_transform([tap(r, j, axis + 1, tw) for j in range(4)])]


def forward(x, w, geom: _shapes.Geometry, b=None):
    """``y = Aᵀ [U ⊙ V] A + b``, the 16 products ``M_ab = V_ab U_ab`` over channels."""
    (th, tw), n = _tiles(geom), x.shape[0]
    u = jnp.einsum("ai,ijpq,bj->abpq", G.astype(w.dtype), w, G.astype(w.dtype)).reshape(16, *w.shape[-2:])
    m = [v @ u[k] for k, v in enumerate(_transformed_input(x, geom))]
    rows = _down_columns(_output_transform, [m[4 * a:4 * a + 4] for a in range(4)])  # Aᵀ M: 2 × 4
    y = jnp.stack([jnp.stack(_output_transform(r), axis=3) for r in rows], axis=2)  # Aᵀ M A: (N, T_h, 2, T_w, 2, C_out)
    y = y.reshape(n, 2 * th, 2 * tw, w.shape[-1])[:, :geom.out_shape[0], :geom.out_shape[1]]
    return y if b is None else y + b


def weight_gradient(x, g, geom: _shapes.Geometry, bias: bool = False):
    """``dW = Gᵀ dU G`` with ``dU_ab = Σ_tiles V_abᵀ dM_ab`` and ``dM = A δ Aᵀ`` per tile.

    ``V`` is taken channels-first, so that each ``dU_ab`` is a plain ``(C_in × tiles) ·
    (tiles × C_out)`` product."""
    du = _weight_products(x, g, geom)
    gt = G.astype(du.dtype)
    return jnp.einsum("ai,abpq,bj->ijpq", gt, du.reshape(4, 4, x.shape[-1], g.shape[-1]), gt), None


def _weight_products(x, g, geom: _shapes.Geometry):
    """``dU_ab = V_abᵀ dM_ab`` summed over the tiles of ``x``'s samples: ``(16, C_in, C_out)``."""
    (th, tw), n, c_in, c_out = _tiles(geom), g.shape[0], x.shape[-1], g.shape[-1]
    g = lax.pad(g, jnp.zeros((), g.dtype),  # δ = 0 for an odd output's padded row and column
                [(0, 0, 0), (0, 2 * th - g.shape[1], 0), (0, 2 * tw - g.shape[2], 0), (0, 0, 0)])
    g = g.reshape(n, th, 2, tw, 2, c_out)
    rows = _output_transform_transposed([g[:, :, r] for r in range(2)])  # (N, T_h, T_w, 2, C_out) each
    dm = [d for r in rows for d in _output_transform_transposed([r[..., s, :] for s in range(2)])]
    v = _transformed_input(jnp.moveaxis(x, -1, 0), geom, axis=2)  # (C_in, N, T_h, T_w) each
    return jnp.stack([v_k.reshape(c_in, -1) @ d_k.reshape(-1, c_out) for v_k, d_k in zip(v, dm)])


def input_gradient(g, w, geom: _shapes.Geometry, in_shape):
    """``dx = δ *full w``: the forward on δ with the flipped, in/out-transposed kernel,
    padded by ``2 − lo`` and ``2 − hi`` (a negative pad crops)."""
    flipped = jnp.swapaxes(w[::-1, ::-1], -1, -2)
    pads = tuple((2 - lo, 2 - hi + r) for (lo, hi), r in zip(geom.pads, _shapes.unreached(in_shape, geom)))
    return forward(g, flipped, geom._replace(pads=pads, out_shape=tuple(in_shape)))


WINOGRAD = Formula("winograd", refuses, forward, weight_gradient, input_gradient)
