"""Convolution (1-D, 2-D, 3-D) with the lectures' hand-derived backward.

Lectures: Hu & Zhu, "CNN-I/II" (``y_q = Σ_{p∈M_q} y_p *valid rot180(w_qp) + b_q``,
``δ_p⁽ˡ⁻¹⁾ = Σ_q δ_q⁽ˡ⁾ *full w_qp``, ``∂E/∂w_qp = y_p *valid rot180(δ_q)``, ``∂E/∂b_q = Σ δ_q``,
LeNet-5's connection table); Raj, "Convolutional networks: backpropagation" (zero-padding
by ``K − 1``, flipped and transposed filter planes, stride handled by upsampling the
derivative maps, padding regions deleted before further backprop); Park, "Training CNN"
(``∂L/∂x_ij = Σ_mn L_mn w_{m−i,n−j}``, ``∂L/∂w_ijcd = Σ_kl L_kld x_{k+i,l+j,c}``, and
convolution via im2col); Bell (filters are 4-D: window × input depth × output depth).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, _shapes, _xla_cpu
from jaxcnn.ops._im2col import col2im, patches, taps, whole_window

#: LeNet-5's S2 → C3 connection table (LeCun et al. 1998, Table I; Hu & Zhu's slide
#: "Feature map selection"): ``LENET5_C3_TABLE[p, q]`` is true when input map ``p`` of
#: S2 feeds output map ``q`` of C3. 6 × 16, 60 connections; read-only.
LENET5_C3_TABLE = np.array(
    [
        [c == "X" for c in row]
        for row in (
            "X...XXX..XXXX.XX",
            "XX...XXX..XXXX.X",
            "XXX...XXX..X.XXX",
            ".XXX..XXXX..X.XX",
            "..XXX..XXXX.XX.X",
            "...XXX..XXXX.XXX",
        )
    ]
)
LENET5_C3_TABLE.flags.writeable = False

METHODS = ("auto", "xla", "im2col", "taps", "rows")


class Plan(NamedTuple):
    """Which exact formula computes each of the three products (see :func:`conv`)."""

    forward: str  # "xla" | "im2col" | "taps" | "rows"
    weight: str  # dW: "xla" | "im2col" | "taps" | "rows"
    input: str  # dx: "xla" | "col2im"


_PLANS = {
    "xla": Plan("xla", "xla", "xla"),
    "im2col": Plan("im2col", "im2col", "col2im"),
    "taps": Plan("taps", "taps", "col2im"),
    "rows": Plan("rows", "rows", "col2im"),
}

_LAYOUTS = {1: "(kw, C_in, C_out)", 2: "(kh, kw, C_in, C_out)", 3: "(kd, kh, kw, C_in, C_out)"}


def conv(
    x: jax.Array,
    w: jax.Array,
    b: Optional[jax.Array] = None,
    *,
    stride=1,
    padding: _shapes.Padding = "VALID",
    dilation=1,
    connections=None,
    method: str = "auto",
) -> jax.Array:
    r"""Convolution layer over 1, 2 or 3 spatial axes (chosen by ``w.ndim``), channels-last.

    Forward: the cross-correlation every lecture writes as a convolution with the
    rotated kernel (Hu & Zhu: ``y_q = Σ_{p∈M_q} y_p *valid rot180(w_qp) + b_q``), with
    stride ``s``, dilation ``d`` and the input zero-padded by ``(lo, hi)`` per axis:

        ``y[n, o, q] = b_q + Σ_{k, p} x_pad[n, o·s + k·d, p] · w[k, p, q]``

    (``o`` and ``k`` are spatial multi-indices, the products taken per axis; ``p`` runs
    over the input maps in ``M_q``). Output size per spatial axis (:mod:`jaxcnn._shapes`):
    ``⌊(n + lo + hi − k_d) / s⌋ + 1`` with the dilated window ``k_d = (k − 1) d + 1``.

    Backward, given ``g = δ⁽ˡ⁾ = ∂E/∂y``:

    * ``dx = δ⁽ˡ⁻¹⁾``: ``δ_p⁽ˡ⁻¹⁾ = Σ_q δ_q *full w_qp`` (Hu & Zhu; Park:
      ``∂L/∂x_ij = Σ_mn L_mn w_{m−i,n−j}``), by Raj's recipe: upsample δ by inserting
      ``s − 1`` zeros, zero-pad it by ``k_d − 1``, correlate it with the flipped (rot180),
      in/out-transposed filter planes, then crop the forward's padding. Input elements
      no window reached (:func:`jaxcnn._shapes.unreached`) get zero.
    * ``dw``: ``∂E/∂w_qp = x_p *valid rot180(δ_q)`` (Hu & Zhu; Park:
      ``∂L/∂w_ijcd = Σ_kl L_kld x_{k+i,l+j,c}``), the valid correlation of the padded
      input with the stride-upsampled δ, taps ``d`` apart, summed over the batch.
    * ``db_q = Σ δ_q`` over the batch and every position.
    * Connections absent from ``M`` act as zero weights: they are zero in the forward
      and in ``dx``, and their ``dw`` is exactly zero.

    The same sums can be ordered four ways, all exact; ``method`` picks one:

    * ``"xla"``: the forward and both gradients as ``lax.conv_general_dilated`` calls (the
      same convolutions JAX's own transpose rules emit).
    * ``"im2col"`` (Park): ``y = im2col(x) · W`` with ``W = w.reshape(-1, C_out)``,
      ``dW = im2col(x)ᵀ · δ`` and ``dx = col2im(δ · Wᵀ)`` (overlap-add, then crop).
    * ``"taps"``: ``y = Σ_k Σ_p x_pad[:, o·s + k·d, p] · w[k, p, :]``, the window's strided
      slices scaled and summed in one fused loop (per output map when there are few
      channel pairs; fast for few input channels), ``dW`` as one matrix product of the
      taps with δ, and ``dx`` by col2im.
    * ``"rows"``: im2col over the leading spatial axes only, and along the last axis
      blocks of ``J`` outputs with the ``U`` input columns they read: ``y`` is that column
      matrix times a banded matrix built from ``w``, ``dW`` its transpose times δ with the
      band's diagonals summed (``U / k`` times the minimal multiply-adds; see
      :func:`_weight_gradient_rows`), ``dx`` by col2im. Fast for few input channels.
      With a bias, the column matrix gets a column of ones and the banded matrix the row
      ``b``, so ``y + b`` and ``[dW; db]`` come out of the same two products.
    * ``"auto"`` (default): per product, the fastest of these for the shapes at hand
      (:func:`auto_plan`).

    All are hand-derived ``custom_vjp`` rules; the residuals are ``x`` and the connected ``w``.

    Args:
      x: input ``(N, *spatial, C_in)``: ``(N, W, C)``, ``(N, H, W, C)`` or ``(N, D, H, W, C)``.
      w: kernel ``(*window, C_in, C_out)`` (HWIO); its rank picks the spatial rank.
      b: optional bias ``(C_out,)``.
      stride: an int or one per spatial axis, each ``>= 1``.
      padding: ``"VALID"``, ``"SAME"`` (``out = ⌈n / s⌉``, extra padding at the end),
        ``"FULL"`` (``k_d − 1`` on each side), an int, or one ``(low, high)`` pair per axis.
      dilation: spacing of the kernel taps, an int or one per spatial axis, ``>= 1``.
      connections: optional boolean table ``M`` of shape ``(C_in, C_out)``, ``M[p, q]``
        true when input map ``p`` feeds output map ``q`` (e.g. :data:`LENET5_C3_TABLE`).
        A concrete array, fixed at trace time.
      method: ``"auto"``, ``"xla"``, ``"im2col"``, ``"taps"`` or ``"rows"``.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C_out)`` and the dtype of ``x``.

    Raises:
      TypeError: an array is not floating point, the dtypes differ, a setting has the
        wrong type, or ``connections`` is not a concrete boolean table.
      ValueError: ``w`` does not have 3 to 5 dimensions, ``x`` does not have two more,
        the channels differ, ``b`` is not ``(C_out,)``, a stride or dilation is below 1,
        the padding is unknown or negative, the kernel is larger than the padded input,
        ``connections`` is not ``(C_in, C_out)``, or ``method`` is unknown.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> f = jnp.array([0.0, 1.0, 2.0, -1.0, 3.0]).reshape(1, 5, 1)
    >>> g = jnp.array([1.0, 1.0, 0.0])
    >>> k = g[::-1].reshape(3, 1, 1)  # convolution = correlation with the flipped kernel
    >>> ops.conv(f, k, padding="FULL").ravel().tolist()
    [0.0, 1.0, 3.0, 1.0, 2.0, 3.0, 0.0]
    """
    x, w, b, spec = _validate("conv", None, x, w, b, stride, padding, dilation, connections, method)
    return _conv(x, w, b, spec)


def conv1d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, method="auto"):
    """:func:`conv` over one spatial axis: ``x (N, W, C_in)``, ``w (kw, C_in, C_out)``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.conv1d(jnp.ones((1, 4, 2)), jnp.ones((3, 2, 1))).shape
    (1, 2, 1)
    """
    x, w, b, spec = _validate("conv1d", 1, x, w, b, stride, padding, dilation, connections, method)
    return _conv(x, w, b, spec)


def conv2d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, method="auto"):
    """:func:`conv` over two spatial axes: ``x (N, H, W, C_in)``, ``w (kh, kw, C_in, C_out)``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.conv2d(jnp.ones((2, 32, 32, 3)), jnp.ones((5, 5, 3, 6)), stride=2, padding="SAME").shape
    (2, 16, 16, 6)
    """
    x, w, b, spec = _validate("conv2d", 2, x, w, b, stride, padding, dilation, connections, method)
    return _conv(x, w, b, spec)


def conv3d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, method="auto"):
    """:func:`conv` over three spatial axes: ``x (N, D, H, W, C_in)``, ``w (kd, kh, kw, C_in, C_out)``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.conv3d(jnp.ones((1, 4, 4, 4, 1)), jnp.ones((2, 2, 2, 1, 3)), padding="FULL").shape
    (1, 5, 5, 5, 3)
    """
    x, w, b, spec = _validate("conv3d", 3, x, w, b, stride, padding, dilation, connections, method)
    return _conv(x, w, b, spec)


class ConvSpec(NamedTuple):
    """The static settings of one call (hashable: the custom_vjp's nondiff argument)."""

    geometry: _shapes.Geometry  # window, stride, dilation, resolved pads, output shape
    connections: Optional[tuple[tuple[bool, ...], ...]]  # M[p][q], or None for all
    plan: Plan  # the formula for y, dW and dx (method resolved against the shapes)
    bias: bool  # whether b was given (db is None otherwise)


class ConvResiduals(NamedTuple):
    x: jax.Array  # the unpadded input, for dW (padding is re-expressed in the bwd)
    w: jax.Array  # the connected kernel (absent connections zeroed), for dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv(x, w, b, spec):
    return _forward(x, _connected(w, spec.connections), b, spec)


def _conv_fwd(x, w, b, spec):
    w = _connected(w, spec.connections)
    return _forward(x, w, b, spec), ConvResiduals(x, w)


def _conv_bwd(spec: ConvSpec, res: ConvResiduals, g):
    geom, in_shape, plan = spec.geometry, res.x.shape[1:-1], spec.plan
    db = None
    if plan.input == "xla":
        dx = _input_gradient(g, res.w, geom, in_shape)  # Σ_q δ_q *full w_qp, cropped
    else:
        dx = col2im(g @ res.w.reshape(-1, res.w.shape[-1]).T, geom, in_shape)  # col2im(δ Wᵀ)
    if plan.weight == "xla":
        dw = _weight_gradient(res.x, g, geom, in_shape)  # x_p *valid rot180(δ_q)
    elif plan.weight == "im2col":
        dw = _xla_cpu.contract_leading(patches(res.x, geom), g).reshape(res.w.shape)  # im2col(x)ᵀ δ
    elif plan.weight == "rows":
        dw, db = _weight_gradient_rows(res.x, g, geom, bias=_bias_in_rows(spec))
        dw = dw.reshape(res.w.shape)
    else:
        dw = _weight_gradient_taps(res.x, g, geom).reshape(res.w.shape)
    dw = _connected(dw, spec.connections)  # absent connections: exactly zero
    if spec.bias and db is None:  # unless it came with dW from the row blocks' column of ones
        db = jnp.sum(g, axis=tuple(range(g.ndim - 1)))  # Σ δ_q
    return dx, dw, db


def _bias_in_rows(spec: ConvSpec) -> bool:
    """Whether ``b`` rides in the row-block products (a column of ones in the column
    matrix): ``y = [cols 1] [T; b]`` and ``[dM; db] = [cols 1]ᵀ δ``, no separate pass."""
    return spec.bias and spec.plan.forward == spec.plan.weight == "rows"


_conv.defvjp(_conv_fwd, _conv_bwd)


# --------------------------------------------------------------------------- the formulas


def _forward(x, w, b, spec: ConvSpec):
    geom, formula = spec.geometry, spec.plan.forward
    if formula == "xla":
        y = lax.conv_general_dilated(
            x, w, geom.stride, geom.pads, rhs_dilation=geom.dilation, dimension_numbers=_xla_cpu.canonical_numbers(len(geom.window))
        )
    elif formula == "im2col":
        y = patches(x, geom) @ w.reshape(-1, w.shape[-1])  # im2col(x) · W
    elif formula == "rows":
        if _bias_in_rows(spec):  # y + b straight from the product
            return _forward_rows(x, w, geom, b)
        y = _forward_rows(x, w, geom)
    else:  # y = Σ_k Σ_p x_pad[n, o·s + k·d, p] w[k, p, :]: scaled taps, one fused loop
        w_taps, x_taps = w.reshape(-1, *w.shape[-2:]), taps(x, geom)
        c_in, c_out = w.shape[-2:]
        if c_in * c_out <= 32:  # one loop per output map vectorises best (a broadcast minor axis of 6 does not)
            y = jnp.stack([sum(x_k[..., p] * w_k[p, q] for x_k, w_k in zip(x_taps, w_taps) for p in range(c_in))
                           for q in range(c_out)], axis=-1)
        else:  # K · C_in broadcast products: compile time stays linear in the channels
            y = sum(x_k[..., p, None] * w_k[p] for x_k, w_k in zip(x_taps, w_taps) for p in range(c_in))
    return y if b is None else y + b


def _weight_gradient_taps(x, g, geom: _shapes.Geometry):
    """``dW[k, p, q] = Σ_{n,o} x_pad[n, o·s + k·d, p] δ[n, o, q]``: one matrix product whose
    contraction runs over the batch and every position (im2col with positions last)."""
    cols = jnp.stack([jnp.moveaxis(x_k, -1, 0) for x_k in taps(x, geom)])  # (K, C_in, N, *out)
    return lax.dot_general(cols, g, ((tuple(range(2, cols.ndim)), tuple(range(g.ndim - 1))), ((), ())))


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


def _forward_rows(x, w, geom: _shapes.Geometry, b=None):
    """``y = cols · T`` with the row-block columns and the banded matrix
    ``T[(k', u, p), (v, q)] = w[k', b, p, q]`` where ``u = v·s_L + b·d_L`` (else 0): the
    taps of one block's ``J`` outputs in one product, ``U / k_L`` times the minimal
    multiply-adds. Shares its column matrix with :func:`_weight_gradient_rows`."""
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


def _weight_gradient_rows(x, g, geom: _shapes.Geometry, bias: bool = False):
    """``dW[k, p, q] = Σ_{n,o} x_pad[n, o·s + k·d, p] δ[n, o, q]`` as one well-shaped matrix
    product of the row-block columns (:func:`_row_block_columns`) with δ in blocks of
    ``J`` outputs: with ``t`` the block and ``v < J`` the output in it,
    ``M[k', u, p, v, q] = Σ_{n,o',t} x_pad[n, o'·s' + k'·d', t·J·s_L + u, p] δ[n, o', t·J + v, q]``
    and ``dW[k', k_L, p, q] = Σ_v M[k', v·s_L + k_L·d_L, p, v, q]`` sums its diagonals.

    It spends ``U / k_L`` times the minimal multiply-adds (LeNet-5's C1: ``J = 4``, 8/5)
    to avoid a column matrix ``k_L`` times larger than the input; one block of the whole
    width spent ``W / k_L`` (C1: 32/5) and took about 0.7 ms more of a 12 ms LeNet-5
    step, ``J = 5`` about 0.6 ms more."""
    rb = _row_blocks(geom)
    lead_taps, c_in, c_out = math.prod(geom.window[:-1]), x.shape[-1], g.shape[-1]
    g_pad = lax.pad(g, jnp.zeros((), g.dtype),  # δ = 0 for the padded outputs
                    [(0, 0, 0)] * (g.ndim - 2) + [(0, rb.blocks * rb.block - geom.out_shape[-1], 0), (0, 0, 0)])
    m = _xla_cpu.contract_leading(_row_block_columns(x, geom, ones=bias), g_pad.reshape(-1, rb.block * c_out))
    db = m[-1].reshape(rb.block, c_out).sum(0) if bias else None  # the ones column: Σ δ per block output
    m = (m[:-1] if bias else m).reshape(lead_taps, rb.span, c_in, rb.block, c_out)
    return jnp.einsum("kupvq,uvb->kbpq", m, _row_block_diagonals(geom, np.dtype(m.dtype))), db  # (K', k_L, C_in, C_out)


def _input_gradient(g, w, geom: _shapes.Geometry, in_shape):
    """``δ⁽ˡ⁻¹⁾``: the upsampled δ, padded by ``k_d − 1`` less the forward padding, ⋆ rot180(wᵀ)."""
    n = len(geom.window)
    extent = _shapes.dilated(geom.window, geom.dilation)
    tail = _shapes.unreached(in_shape, geom)
    # full padding k_d − 1 on each side, minus the forward's padding (Raj's crop; a
    # negative pad crops), plus the unreached tail, which gets zero gradient
    pads = [(k - 1 - lo, k - 1 - hi + r) for k, (lo, hi), r in zip(extent, geom.pads, tail)]
    flipped = jnp.swapaxes(lax.rev(w, tuple(range(n))), -1, -2)  # rot180 over the spatial axes, (C_out, C_in) planes
    return lax.conv_general_dilated(  # lhs_dilation inserts the s − 1 zeros between δ's entries
        g, flipped, (1,) * n, pads, lhs_dilation=geom.stride, rhs_dilation=geom.dilation,
        dimension_numbers=_xla_cpu.canonical_numbers(n),
    )


def _weight_gradient(x, g, geom: _shapes.Geometry, in_shape):
    """``∂E/∂w``: the padded input ⋆ the stride-upsampled δ, with the batch as the contracted axis."""
    tail = _shapes.unreached(in_shape, geom)
    pads = [(lo, hi - r) for (lo, hi), r in zip(geom.pads, tail)]  # drop the unreached tail
    return _xla_cpu.correlate_over_batch(x, g, geom.dilation, pads, geom.stride)


def _connected(w, connections):
    """``w`` with the absent connections (``M[p, q]`` false) set to zero."""
    if connections is None:
        return w
    return jnp.where(np.asarray(connections), w, jnp.zeros((), w.dtype))


# --------------------------------------------------------------------------- validation


def _validate(op, rank, x, w, b, stride, padding, dilation, connections, method):
    x = _checks.float_array(op, "x", x)
    w = _checks.float_array(op, "w", w)
    b = None if b is None else _checks.float_array(op, "b", b)
    if rank is None:
        _checks.rank(op, "w", w, (3, 4, 5), "(*window, C_in, C_out) for 1, 2 or 3 spatial axes")
        rank = w.ndim - 2
    else:
        _checks.rank(op, "w", w, rank + 2, _LAYOUTS[rank])
    if x.ndim != rank + 2:
        raise ValueError(
            f"{op}: `x` must have {rank + 2} dimensions (N, *spatial, C_in) to match the "
            f"{rank}-D kernel `w` of shape {tuple(w.shape)}, got x of shape {tuple(x.shape)}. "
            f"Give x a batch axis (x[None]) or use a kernel with one window size per spatial axis."
        )
    if w.shape[-2] != x.shape[-1]:
        raise ValueError(
            f"{op}: `w` must have C_in = x.shape[-1] = {x.shape[-1]} input channels in its "
            f"second-to-last axis, (*window, C_in, C_out), got w of shape {tuple(w.shape)}. "
            f"Kernels are channels-last (HWIO); an OIHW kernel needs jnp.moveaxis(w, (0, 1), (-1, -2))."
        )
    if b is not None:
        _checks.shape(op, "b", b, (w.shape[-1],), "(C_out,) with C_out = w.shape[-1]")
    _checks.same_dtype(op, x=x, w=w, b=b)
    if method not in METHODS:
        raise ValueError(f"{op}: unknown `method` {method!r}; use one of {', '.join(map(repr, METHODS))}.")
    geom = _shapes.geometry(op, x.shape[1:-1], w.shape[:-2], stride, padding, dilation)
    table = None if connections is None else _connection_table(op, connections, w.shape[-2:])
    plan = auto_plan(geom, x.shape[1:-1], *w.shape[-2:]) if method == "auto" else _PLANS[method]
    return x, w, b, ConvSpec(geom, table, plan, b is not None)


def auto_plan(geom: _shapes.Geometry, in_shape, c_in: int, c_out: int, backend: Optional[str] = None) -> Plan:
    """The formulas ``method="auto"`` picks: all exact, chosen by shape for speed.

    Off the CPU, XLA's own convolutions (cuDNN on GPUs). On the CPU, from the crossovers
    ``experiments/bench.py`` measures: a window covering the whole input (LeNet-5's C5)
    is a dense layer, im2col without a copy; few input channels (LeNet-5's C1, RGB
    images) use row blocks for ``y`` and ``dW``, whose column matrix the two share inside
    one jitted step (fwd + bwd, 2 cores: C1 4.0 ms vs taps 5.0, im2col 7.9, XLA 19.3; RGB
    3×3 → 16 on 64×64 9.4 vs XLA 16.8; 7×7/2 → 32 on 128×128 57 vs 74; even with XLA at
    4 input channels); few channel pairs (C3's 6 × 16) use im2col, shared the same way.
    1-D convolutions use taps for at most 4 input channels, im2col while a sample's
    forward is small (under 16,384 multiply-adds: MNIST-1D's conv3, 5 · 75 · 25, fwd + bwd
    1.2× faster than XLA's convolutions at batch 100), and XLA's convolutions above (its
    conv2, 10 · 75 · 25: 1.15–1.2× faster than im2col; 32 × 32 on length 256 1.1–1.35×).
    ``dx`` overlap-adds ``δ Wᵀ`` (col2im) where XLA's transposed convolution would
    multiply the zeros of a strided δ or the channels are too few to vectorise.
    Elsewhere XLA's own convolutions win. All of them are written in XLA:CPU's canonical
    form (channels last, kernel ``(*window, in, out)``), which it also runs fast inside
    the loop of :func:`jaxcnn.train.make_epoch`.
    """
    if (backend or jax.default_backend()) != "cpu":
        return _PLANS["xla"]
    if whole_window(geom, in_shape):
        return _PLANS["im2col"]
    if len(geom.window) == 1:
        macs = int(np.prod(geom.out_shape)) * int(np.prod(geom.window)) * c_in * c_out  # per sample, forward
        products = "taps" if c_in <= 4 else "im2col" if macs < 16_384 else "xla"
    else:
        products = "rows" if c_in <= 4 else "im2col" if c_in * c_out <= 128 else "xla"
    return Plan(
        forward=products,
        weight=products,
        input="col2im" if max(geom.stride) > 1 or c_in * c_out <= 1024 else "xla",
    )


def _connection_table(op, connections, expected):
    """``connections`` as a hashable tuple of rows of Python bools, or a clear error."""
    try:
        table = np.asarray(connections)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(
            f"{op}: `connections` must be a concrete boolean table (a NumPy array or nested "
            f"lists) fixed at trace time, got a traced value; pass it as a static setting, "
            f"not as an argument of a jitted or vmapped function."
        ) from e
    if table.dtype != np.bool_:
        raise TypeError(
            f"{op}: `connections` must be a boolean table, got dtype {table.dtype}; "
            f"use e.g. `np.asarray(table, dtype=bool)`."
        )
    if table.shape != tuple(expected):
        raise ValueError(
            f"{op}: `connections` must have shape (C_in, C_out) = {tuple(expected)} "
            f"(M[p, q] true when input map p feeds output map q), got {table.shape}."
        )
    return tuple(tuple(bool(v) for v in row) for row in table)


# --------------------------------------------------------------------------- references


def conv_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, method="auto"):
    """Autodiff reference for :func:`conv`: ``lax.conv_general_dilated``, no custom rule.

    The absent connections are multiplied by zero. ``"VALID"`` and ``"SAME"`` are handed
    to ``lax`` as strings (so its own padding arithmetic checks :mod:`jaxcnn._shapes`).
    ``method`` is validated and otherwise ignored.
    """
    x, w, b, spec = _validate("conv", None, x, w, b, stride, padding, dilation, connections, method)
    return _reference(x, w, b, spec, padding)


def conv1d_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, method="auto"):
    """Autodiff reference for :func:`conv1d`."""
    x, w, b, spec = _validate("conv1d", 1, x, w, b, stride, padding, dilation, connections, method)
    return _reference(x, w, b, spec, padding)


def conv2d_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, method="auto"):
    """Autodiff reference for :func:`conv2d`."""
    x, w, b, spec = _validate("conv2d", 2, x, w, b, stride, padding, dilation, connections, method)
    return _reference(x, w, b, spec, padding)


def conv3d_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, method="auto"):
    """Autodiff reference for :func:`conv3d`."""
    x, w, b, spec = _validate("conv3d", 3, x, w, b, stride, padding, dilation, connections, method)
    return _reference(x, w, b, spec, padding)


def _reference(x, w, b, spec: ConvSpec, padding):
    geom = spec.geometry
    if spec.connections is not None:
        w = w * jnp.asarray(spec.connections, w.dtype)
    lax_padding = padding.upper() if isinstance(padding, str) and padding.upper() in ("VALID", "SAME") else geom.pads
    sp = {1: "W", 2: "HW", 3: "DHW"}[len(geom.window)]
    y = lax.conv_general_dilated(
        x, w, geom.stride, lax_padding, rhs_dilation=geom.dilation, dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C")
    )
    return y if b is None else y + b
