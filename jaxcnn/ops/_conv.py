"""Convolution (1-D, 2-D, 3-D) with the lectures' hand-derived backward.

Lectures: Hu & Zhu, "CNN-I/II" (``y_q = Σ_{p∈M_q} y_p *valid rot180(w_qp) + b_q``,
``δ_p⁽ˡ⁻¹⁾ = Σ_q δ_q⁽ˡ⁾ *full w_qp``, ``∂E/∂w_qp = y_p *valid rot180(δ_q)``, ``∂E/∂b_q = Σ δ_q``,
LeNet-5's connection table); Raj, "Convolutional networks: backpropagation" (zero-padding
by ``K − 1``, flipped and transposed filter planes, stride handled by upsampling the
derivative maps, padding regions deleted before further backprop); Park, "Training CNN"
(``∂L/∂x_ij = Σ_mn L_mn w_{m−i,n−j}``, ``∂L/∂w_ijcd = Σ_kl L_kld x_{k+i,l+j,c}``, and
convolution via im2col); Bell (filters are 4-D: window × input depth × output depth).

Grouped convolution (``groups = g``; depthwise at ``g = C_in``) is the same lecture applied
to each group of channels on its own: with ``x_j``, ``w_j``, ``δ_j`` group ``j``'s slices,
``y_j = x_j *valid rot180(w_j)`` and the grouped forms of Park's formulas,
``dx_j = δ_j *full w_j`` and ``dW_j = x_j *valid rot180(δ_j)`` — no product reaches across
groups, so each costs ``1/g`` of the dense one (:mod:`jaxcnn.ops._conv_groups`).

Forward mode is bilinearity: ``y`` is linear in ``x`` and in ``w`` separately, so its tangent is
``ṫ_y = ṫ_x *valid rot180(w) + x *valid rot180(ṫ_w) + ṫ_b``, two forward convolutions by the
same formula as ``y`` (the same ``method``), the absent connections of ``ṫ_w`` masked as ``w``'s.

This file is the lecture: :func:`conv`, its hand rules (the VJP, then the JVP) and right after
them the three formulas, the first row of the table :data:`FORMULAS`. The other rows, faster
exact formulas ``method`` may pick instead, live in :mod:`jaxcnn.ops._conv_formulas` and
:mod:`jaxcnn.ops._conv_winograd`; what ``method`` may be, in :mod:`jaxcnn.ops._conv_plan`; the
default policy and its thresholds, with the other XLA:CPU workarounds, in :mod:`jaxcnn._xla_cpu_conv`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, _shapes, _xla_cpu, _xla_cpu_conv
from jaxcnn.ops._conv_formulas import IM2COL, ROWS, TAPS, Formula, input_gradient_col2im
from jaxcnn.ops._conv_groups import check_kernel_channels, checked_groups, per_group
from jaxcnn.ops._conv_plan import Plan, Problem
from jaxcnn.ops._conv_winograd import WINOGRAD
from jaxcnn.ops import _rule

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
    groups: int = 1,
    method="auto",
    platform: Optional[str] = None,
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
    * With ``groups = g`` every formula above runs per group ``j`` on its own channels:
      ``y_j = x_j *valid rot180(w_j)``, ``dx_j = δ_j *full w_j``,
      ``dW_j = x_j *valid rot180(δ_j)`` (``1/g`` of the dense multiply-adds, whichever
      ``method``). It is the block-diagonal connection table without its zero blocks, so
      ``groups`` and ``connections`` are not given together.

    Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``), by bilinearity:
    ``ṫ_y = ṫ_x *valid rot180(w) + x *valid rot180(ṫ_w) + ṫ_b``, both products by the plan's
    forward formula (per group with ``groups``; ``ṫ_w``'s absent connections zeroed as ``w``'s).

    ``method`` picks how the three products are computed, all exactly, from the table
    :data:`FORMULAS` (the alternatives and why they exist: :mod:`jaxcnn.ops._conv_formulas`,
    ``docs/performance.md``): ``"xla"``, the formulas above as ``lax.conv_general_dilated``
    calls (the convolutions JAX's own transpose rules emit; no platform rewrite: the
    reproducible reference route); ``"im2col"`` (Park: ``y = im2col(x) W``,
    ``dW = im2col(x)ᵀ δ``, ``dx = col2im(δ Wᵀ)``); ``"taps"`` (the window's strided slices);
    ``"rows"`` (row blocks: im2col over the leading axes, a banded matrix along the last);
    ``"winograd"`` (Lavin & Gray's F(2×2, 3×3), 2-D 3 × 3 windows at stride 1 without
    dilation only: :mod:`jaxcnn.ops._conv_winograd`). A name runs its formula as written for
    every product; a :class:`~jaxcnn.ops._conv_plan.Plan` names one per product (and its
    tunings); a policy, ``policy(problem) -> Plan``, chooses from the geometry, shapes, dtype
    and platform (:class:`~jaxcnn.ops._conv_plan.Problem`); ``"auto"`` (default) is the policy
    :func:`jaxcnn._xla_cpu_conv.auto_policy`: XLA's convolutions off the CPU, per product the
    fastest formula for the shapes at hand on XLA:CPU (never Winograd: name it to run it).
    The residuals are ``x`` and the connected ``w``.

    Args:
      x: input ``(N, *spatial, C_in)``: ``(N, W, C)``, ``(N, H, W, C)`` or ``(N, D, H, W, C)``.
      w: kernel ``(*window, C_in / groups, C_out)`` (HWIO); its rank picks the spatial rank.
      b: optional bias ``(C_out,)``.
      stride: an int or one per spatial axis, each ``>= 1``.
      padding: ``"VALID"``, ``"SAME"`` (``out = ⌈n / s⌉``, extra padding at the end),
        ``"FULL"`` (``k_d − 1`` on each side), an int, or one ``(low, high)`` pair per axis.
      dilation: spacing of the kernel taps, an int or one per spatial axis, ``>= 1``.
      connections: optional boolean table ``M`` of shape ``(C_in, C_out)``, ``M[p, q]``
        true when input map ``p`` feeds output map ``q`` (e.g. :data:`LENET5_C3_TABLE`).
        A concrete array, fixed at trace time.
      groups: ``g >= 1`` dividing ``C_in`` and ``C_out``; input channels ``j·C_in/g`` to
        ``(j+1)·C_in/g − 1`` feed only output channels ``j·C_out/g`` to ``(j+1)·C_out/g − 1``
        (``lax``'s ``feature_group_count``, PyTorch's ``groups``); then ``w`` is
        ``(*window, C_in / g, C_out)``. ``g = C_in`` is a depthwise convolution with channel
        multiplier ``C_out / C_in``.
      method: ``"auto"``, a formula's name (:data:`METHODS`: ``"xla"``, ``"im2col"``,
        ``"taps"``, ``"rows"``, ``"winograd"``), a ``Plan`` or a policy.
      platform: the platform the policy tunes for (``"cpu"``, ``"gpu"``, ...); None (default):
        ``jax.default_backend()`` at trace time, resolved once here by
        :func:`jaxcnn._xla_cpu.resolve_platform`. Only policies read it.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C_out)`` and the dtype of ``x``.

    Raises:
      TypeError: an array is not floating point, the dtypes differ, a setting has the
        wrong type (``groups`` not an int), or ``connections`` is not a concrete boolean table.
      ValueError: ``w`` does not have 3 to 5 dimensions, ``x`` does not have two more,
        the channels differ, ``b`` is not ``(C_out,)``, a stride or dilation is below 1,
        the padding is unknown or negative, the kernel is larger than the padded input,
        ``connections`` is not ``(C_in, C_out)``, ``groups`` is below 1, does not divide
        ``C_in`` and ``C_out``, does not match ``w``'s ``C_in / groups`` or comes with
        ``connections``, ``method`` is unknown, or names a formula that does not apply to
        the geometry (``"winograd"`` for another window).

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> f = jnp.array([0.0, 1.0, 2.0, -1.0, 3.0]).reshape(1, 5, 1)
    >>> g = jnp.array([1.0, 1.0, 0.0])
    >>> k = g[::-1].reshape(3, 1, 1)  # convolution = correlation with the flipped kernel
    >>> ops.conv(f, k, padding="FULL").ravel().tolist()
    [0.0, 1.0, 3.0, 1.0, 2.0, 3.0, 0.0]
    >>> ops.conv(jnp.ones((1, 5, 4)), jnp.ones((3, 1, 8)), groups=4).shape  # depthwise, multiplier 2
    (1, 3, 8)
    """
    x, w, b, spec = _validate("conv", None, x, w, b, stride, padding, dilation, connections, groups, method,
                              platform)
    return _conv(x, w, b, spec)


class ConvSpec(NamedTuple):
    """The static settings of one call (hashable: the custom_vjp's nondiff argument)."""

    geometry: _shapes.Geometry  # window, stride, dilation, resolved pads, output shape
    connections: Optional[tuple[tuple[bool, ...], ...]]  # M[p][q], or None for all
    groups: int  # g: channel groups that do not mix (1: a dense convolution)
    plan: Plan  # the formula for y, dW and dx, and their tunings (method resolved against the problem)
    bias: bool  # whether b was given (db is None otherwise)


class ConvResiduals(NamedTuple):
    x: jax.Array  # the unpadded input, for dW (padding is re-expressed in the bwd)
    w: jax.Array  # the connected kernel (absent connections zeroed), for dx


@functools.partial(_rule.custom_rule, nondiff_argnums=(3,))
def _conv(x, w, b, spec):
    return _forward(x, _connected(w, spec.connections), b, spec)


def _forward(x, w, b, spec: ConvSpec):
    forward = functools.partial(FORMULAS[spec.plan.forward].forward, geom=spec.geometry)
    return per_group(lambda x, w, b: forward(x, w, b=b), spec.groups, x, w, b)  # y_j = x_j *valid rot180(w_j)


def _conv_fwd(x, w, b, spec):
    w = _connected(w, spec.connections)
    return _forward(x, w, b, spec), ConvResiduals(x, w)


def _conv_bwd(spec: ConvSpec, res: ConvResiduals, g):
    geom, plan, groups, in_shape = spec.geometry, spec.plan, spec.groups, res.x.shape[1:-1]
    input_gradient, weight_gradient = tuned_products(plan, geom, in_shape, spec.bias)
    # per group j (one dense convolution each): δx_j = δ_j *full w_j, dW_j = x_j *valid rot180(δ_j)
    dx = per_group(input_gradient, groups, g, res.w)
    dw, db = per_group(weight_gradient, groups, res.x, g)
    dw = _connected(dw.reshape(res.w.shape), spec.connections)  # absent connections: exactly zero
    if spec.bias and db is None:  # unless the formula computed it on the way (row blocks)
        db = bias_gradient(g)
    return dx, dw, db


def _conv_jvp(spec: ConvSpec, primals, tangents):
    # bilinearity, by the plan's forward formula: ṫ_y = ṫ_x ⋆ w + x ⋆ ṫ_w + ṫ_b, ṫ_w masked as w is
    (x, w, b), (tx, tw, tb) = primals, tangents
    w, tw = _connected(w, spec.connections), _connected(tw, spec.connections)
    return _forward(x, w, b, spec), _forward(tx, w, tb, spec) + _forward(x, tw, None, spec)


_conv.defvjp(_conv_fwd, _conv_bwd)
_conv.defjvp(_conv_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_conv = jax.jit(_conv, static_argnums=3)


def tuned_products(plan: Plan, geom: _shapes.Geometry, in_shape, bias: bool):
    """The plan's two backward products for one group, tuned as it says:
    ``δx = δ *full w`` and ``(dW, db)`` with ``dW = x *valid rot180(δ)``."""
    input_gradient, weight_gradient = FORMULAS[plan.input].input_gradient, FORMULAS[plan.weight].weight_gradient

    def dx(g, w):  # materialize_input: col2im's tuning (resolve_plan allows it there only)
        return input_gradient(g, w, geom, in_shape, **({"materialize": True} if plan.materialize_input else {}))

    def dw(x, g):
        return _xla_cpu.summed_in_batch_chunks(lambda x, g: weight_gradient(x, g, geom, bias), plan.weight_chunk, x, g)

    return dx, dw


# --------------------------------------------------------------------------- the lecture's formulas
#
# Hu & Zhu: differentiate y[n, o, q] = b_q + Σ_{k,p} x_pad[n, o·s + k·d, p] w[k, p, q] term by term:
#   ∂E/∂x_pad[n, i, p] = Σ_{o,k: o·s + k·d = i} Σ_q δ[n, o, q] w[k, p, q]   δ *full w (Raj: δ upsampled by s,
#                                                                          padded by k_d − 1, then cropped)
#   ∂E/∂w[k, p, q]     = Σ_{n,o} x_pad[n, o·s + k·d, p] δ[n, o, q]          x *valid rot180(δ)
#   ∂E/∂b_q            = Σ_{n,o} δ[n, o, q]                                  Σ δ
# Input elements no window reached (_shapes.unreached) get zero gradient.


def forward(x, w, geom: _shapes.Geometry, b=None):
    """``y = x *valid rot180(w) + b``: the correlation, as XLA's convolution."""
    y = lax.conv_general_dilated(x, w, geom.stride, geom.pads, rhs_dilation=geom.dilation,
                                 dimension_numbers=_xla_cpu.canonical_numbers(len(geom.window)))
    return y if b is None else y + b


def input_gradient(g, w, geom: _shapes.Geometry, in_shape):
    """``dx = δ *full w``: the upsampled δ, padded by ``k_d − 1`` less the forward padding, ⋆ rot180(wᵀ)."""
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


def weight_gradient(x, g, geom: _shapes.Geometry, bias: bool = False):
    """``dW = x *valid rot180(δ)``: the padded input ⋆ the stride-upsampled δ, the batch contracted.
    Returns ``(dW, None)``: ``db`` is :func:`bias_gradient`."""
    tail = _shapes.unreached(x.shape[1:-1], geom)
    pads = [(lo, hi - r) for (lo, hi), r in zip(geom.pads, tail)]  # drop the unreached tail
    return _xla_cpu.correlate_over_batch(x, g, geom.dilation, pads, geom.stride), None


def bias_gradient(g):
    """``db_q = Σ δ_q`` over the batch and every position."""
    return jnp.sum(g, axis=tuple(range(g.ndim - 1)))


# --------------------------------------------------------------------------- the table

XLA = Formula("xla", lambda geom: None, forward, weight_gradient, input_gradient)

#: Every exact formula for convolution's three products, by name: the lecture's first, then the
#: alternatives (:mod:`jaxcnn.ops._conv_formulas`, :mod:`jaxcnn.ops._conv_winograd`). ``method``
#: names a row, a plan one row per product. A new formula is one more row (and one registry sample).
FORMULAS = {f.name: f for f in (XLA, IM2COL, TAPS, ROWS, WINOGRAD)}
#: The names ``method`` takes: ``"auto"`` (the default policy), then the table's.
METHODS = ("auto", *FORMULAS)


def _connected(w, connections):
    """``w`` with the absent connections (``M[p, q]`` false) set to zero."""
    if connections is None:
        return w
    return jnp.where(np.asarray(connections), w, jnp.zeros((), w.dtype))


def conv1d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, groups=1, method="auto",
           platform=None):
    """:func:`conv` over one spatial axis: ``x (N, W, C_in)``, ``w (kw, C_in, C_out)``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.conv1d(jnp.ones((1, 4, 2)), jnp.ones((3, 2, 1))).shape
    (1, 2, 1)
    """
    x, w, b, spec = _validate("conv1d", 1, x, w, b, stride, padding, dilation, connections, groups, method, platform)
    return _conv(x, w, b, spec)


def conv2d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, groups=1, method="auto",
           platform=None):
    """:func:`conv` over two spatial axes: ``x (N, H, W, C_in)``, ``w (kh, kw, C_in, C_out)``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.conv2d(jnp.ones((2, 32, 32, 3)), jnp.ones((5, 5, 3, 6)), stride=2, padding="SAME").shape
    (2, 16, 16, 6)
    """
    x, w, b, spec = _validate("conv2d", 2, x, w, b, stride, padding, dilation, connections, groups, method, platform)
    return _conv(x, w, b, spec)


def conv3d(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, groups=1, method="auto",
           platform=None):
    """:func:`conv` over three spatial axes: ``x (N, D, H, W, C_in)``, ``w (kd, kh, kw, C_in, C_out)``.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> ops.conv3d(jnp.ones((1, 4, 4, 4, 1)), jnp.ones((2, 2, 2, 1, 3)), padding="FULL").shape
    (1, 5, 5, 5, 3)
    """
    x, w, b, spec = _validate("conv3d", 3, x, w, b, stride, padding, dilation, connections, groups, method, platform)
    return _conv(x, w, b, spec)


# --------------------------------------------------------------------------- validation


def _validate(op, rank, x, w, b, stride, padding, dilation, connections, groups, method, platform):
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
    groups = _groups(op, groups, x.shape[-1], w.shape[-1], connections)
    if groups == 1 and w.shape[-2] != x.shape[-1]:
        raise ValueError(
            f"{op}: `w` must have C_in = x.shape[-1] = {x.shape[-1]} input channels in its "
            f"second-to-last axis, (*window, C_in, C_out), got w of shape {tuple(w.shape)}. "
            f"Kernels are channels-last (HWIO); an OIHW kernel needs jnp.moveaxis(w, (0, 1), (-1, -2))."
        )
    check_kernel_channels(op, groups, x, w)
    if b is not None:
        _checks.shape(op, "b", b, (w.shape[-1],), "(C_out,) with C_out = w.shape[-1]")
    _checks.same_dtype(op, x=x, w=w, b=b)
    geom = _shapes.geometry(op, x.shape[1:-1], w.shape[:-2], stride, padding, dilation)
    table = None if connections is None else _connection_table(op, connections, w.shape[-2:])
    problem = Problem(geom, tuple(x.shape), tuple(w.shape), groups, np.dtype(x.dtype),
                      _xla_cpu.resolve_platform(platform, op))
    plan = resolve_plan(op, method, problem, _xla_cpu_conv.auto_policy)
    if x.size == 0 or w.size == 0:  # an empty batch or no channels: XLA's convolutions take empty operands
        plan = Plan.of("xla")
    return x, w, b, ConvSpec(geom, table, groups, plan, b is not None)


def resolve_plan(op: str, method, problem: Problem, auto) -> Plan:
    """``method`` (a formula's name, a ``Plan``, a policy, or ``"auto"``: the policy ``auto``)
    as the plan for ``problem``, every product's formula checked to apply to its geometry."""
    if isinstance(method, str) and method == "auto":
        method = auto
    if isinstance(method, str):
        if method not in FORMULAS:
            raise ValueError(f"{op}: unknown `method` {method!r}; use one of {', '.join(map(repr, METHODS))}, "
                             f"a Plan naming one per product, or a policy (problem -> Plan).")
        plan = Plan.of(method)
    elif isinstance(method, Plan) or not callable(method):
        plan = method
    else:
        plan = method(problem)
    if not isinstance(plan, Plan):
        raise TypeError(f"{op}: `method` must be a formula's name ({', '.join(map(repr, METHODS))}), a Plan, or "
                        f"a policy returning a Plan, got {plan!r} of type {type(plan).__name__}"
                        f"{'' if plan is method else f' from the policy {method!r}'}.")
    if isinstance(plan.weight_chunk, bool) or not isinstance(plan.weight_chunk, int) or plan.weight_chunk < 0:
        raise ValueError(f"{op}: a Plan's `weight_chunk` must be an int >= 0 (samples per chunk of dW's batch sum, "
                         f"0: none), got {plan.weight_chunk!r}.")
    for product, name in zip(("y", "dW", "dx"), plan[:3]):
        if name not in FORMULAS:
            raise ValueError(f"{op}: `method` {method!r} computes {product} by the unknown formula {name!r}; "
                             f"the formulas are {', '.join(map(repr, FORMULAS))}.")
        why = FORMULAS[name].refuses(problem.geometry)
        if why is None and product == "dx" and plan.materialize_input and (
                FORMULAS[name].input_gradient is not input_gradient_col2im):
            why = "does not materialize: `materialize_input` tunes col2im's dx (im2col, taps, rows)"
        if why is not None:
            shown = f"`method='{method}'`" if isinstance(method, str) else (
                f"`method` {method!r} computes {product} by {name!r}, which")
            raise ValueError(f"{op}: {shown} {why}; use another method.")
    return plan


def _groups(op, groups, c_in, c_out, connections):
    """``groups`` as a Python int dividing both channel counts and given without a table."""
    groups = checked_groups(op, groups, c_in, c_out)
    if groups > 1 and connections is not None:
        raise ValueError(
            f"{op}: give `connections` or `groups`, not both (got groups={groups} and a connection table); "
            f"a grouped convolution is the block-diagonal table run at 1/groups of the cost, so drop the table."
        )
    return groups


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


def conv_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, groups=1, method="auto",
                   platform=None):
    """Autodiff reference for :func:`conv`: ``lax.conv_general_dilated``, no custom rule.

    The absent connections are multiplied by zero; ``groups`` is ``lax``'s
    ``feature_group_count``. ``"VALID"`` and ``"SAME"`` are handed
    to ``lax`` as strings (so its own padding arithmetic checks :mod:`jaxcnn._shapes`).
    ``method`` and ``platform`` are validated and otherwise ignored.
    """
    x, w, b, spec = _validate("conv", None, x, w, b, stride, padding, dilation, connections, groups, method, platform)
    return _reference(x, w, b, spec, padding)


def conv1d_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, groups=1,
                     method="auto", platform=None):
    """Autodiff reference for :func:`conv1d`."""
    x, w, b, spec = _validate("conv1d", 1, x, w, b, stride, padding, dilation, connections, groups, method, platform)
    return _reference(x, w, b, spec, padding)


def conv2d_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, groups=1,
                     method="auto", platform=None):
    """Autodiff reference for :func:`conv2d`."""
    x, w, b, spec = _validate("conv2d", 2, x, w, b, stride, padding, dilation, connections, groups, method, platform)
    return _reference(x, w, b, spec, padding)


def conv3d_reference(x, w, b=None, *, stride=1, padding="VALID", dilation=1, connections=None, groups=1,
                     method="auto", platform=None):
    """Autodiff reference for :func:`conv3d`."""
    x, w, b, spec = _validate("conv3d", 3, x, w, b, stride, padding, dilation, connections, groups, method, platform)
    return _reference(x, w, b, spec, padding)


def _reference(x, w, b, spec: ConvSpec, padding):
    geom = spec.geometry
    if spec.connections is not None:
        w = w * jnp.asarray(spec.connections, w.dtype)
    lax_padding = padding.upper() if isinstance(padding, str) and padding.upper() in ("VALID", "SAME") else geom.pads
    sp = {1: "W", 2: "HW", 3: "DHW"}[len(geom.window)]
    y = lax.conv_general_dilated(
        x, w, geom.stride, lax_padding, rhs_dilation=geom.dilation, dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
        feature_group_count=spec.groups,
    )
    return y if b is None else y + b
