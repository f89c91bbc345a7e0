"""Transposed ("fractionally strided") convolution with its hand-derived backward.

Lecture: Raj, "The Upsampling Layer": "upsampling layers followed by a convolutional
layer are also often viewed as convolving with a fractional stride — upsampling by
factor S is the same as striding by factor 1/S — also called transpose convolutions".
The op is exactly that: insert ``S − 1`` zeros between neighbours, pad, correlate. It
is the input-gradient of the strided convolution with the same window, stride and
padding, which is why its own backward is built from strided correlations (Raj's
"derivative maps upsampled if stride > 1", read backwards). So its three products are the
convolution's, from the same table (:data:`jaxcnn.ops._conv.FORMULAS`) with the roles exchanged:
its ``y`` is the input gradient of the convolution it transposes, its ``dx`` that
convolution's forward and its ``dw`` that convolution's weight gradient, flipped. With
``groups = g`` each group of channels is a transposed convolution of its own
(:mod:`jaxcnn.ops._conv_groups`), and so are its derivatives: ``dx_j`` from ``δ_j`` and
``w_j``, ``dw_j`` from ``x_j`` and ``δ_j``. Forward mode is bilinearity, the tangent two
products by ``y``'s formula: ``ṫ_y = pad(upsample(ṫ_x)) ⋆ w + pad(upsample(x)) ⋆ ṫ_w + ṫ_b``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, _shapes, _xla_cpu, _xla_cpu_conv
from jaxcnn._shapes import Geometry, Padding
from jaxcnn.ops._conv import FORMULAS, resolve_plan, tuned_products
from jaxcnn.ops._conv_groups import check_kernel_channels, checked_groups, per_group
from jaxcnn.ops._conv_plan import Plan, Problem
from jaxcnn.ops import _rule


def conv_transpose(
    x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *, stride=1, padding: Padding = "VALID",
    dilation=1, output_padding=0, groups: int = 1, method="auto", platform: Optional[str] = None,
) -> jax.Array:
    r"""Transposed convolution: upsample ``x`` by ``S``, pad, correlate with ``w``.

    Forward, along each spatial axis (channels contracted as in a convolution):

    * ``u = pad(upsample(x, S), (p_lo, p_hi))`` — ``S − 1`` zeros between neighbours
      (:func:`jaxcnn.ops.upsample`), then ``p`` zeros at each end;
    * ``y[o, c_out] = Σ_j Σ_{c_in} u[o + j·d, c_in] w[j, c_in, c_out] + b[c_out]``, the
      kernel's taps ``d`` apart (``dilation``; extent ``k_d = (k − 1) d + 1``).

    ``padding`` is the padding ``(lo, hi)`` of the strided convolution that this op
    transposes (so ``p_lo = k_d − 1 − lo``, ``p_hi = k_d − 1 − hi + a`` with ``a`` the
    ``output_padding``; the default ``"VALID"``, ``lo = hi = 0``, pads the upsampled input
    "FULL" by ``k_d − 1``). The op equals ``lax.conv_transpose(x, w, stride, padding,
    rhs_dilation=dilation, transpose_kernel=False, use_consistent_padding=True)`` (Flax's
    ``ConvTranspose`` for ``"VALID"``/``"SAME"``; PyTorch's ``ConvTranspose`` with its
    kernel flipped, its ``padding``, ``dilation``, ``output_padding`` and ``groups`` meaning
    the same) and is the input-gradient of the strided convolution ``conv(·, flip(w)ᵀ)``
    with that stride, dilation and padding.

    Output size along each spatial axis, for input ``n``, window ``k``, stride ``S``,
    dilation ``d`` and output padding ``a``:

    * an int ``p`` or pairs ``(lo, hi)`` (each at most ``k_d − 1``):
      ``(n − 1) S + k_d − lo − hi + a``, PyTorch's ``(n − 1) S − 2p + d (k − 1) + a + 1``;
    * ``"VALID"``: ``n S + max(k_d − S, 0) + a``, i.e. ``(n − 1) S + k_d + a`` when ``k_d ≥ S``;
    * ``"SAME"``: ``n S + a``;
    * ``"FULL"`` (``lo = hi = k_d − 1``): ``(n − 1) S − k_d + 2 + a``.

    For ``k_d < S`` the strings ``"VALID"`` and ``"SAME"`` follow ``lax``/Keras and end with
    ``S − k_d`` output positions that only the bias reaches (``p_hi`` grows by ``S − k_d``).
    The ``a`` positions of ``output_padding`` are real outputs: windows that reach past the
    last input still cover inputs there (PyTorch requires ``a < S`` or ``a < d``).

    Backward, with ``(lo, hi)`` the padding of the transposed conv as above (``hi`` lowered
    by ``a``), written as the strided convolution it transposes (Raj's convolution backward
    with the roles of "forward" and "backward" exchanged):

    * ``dx[i] = Σ_j g[S·i − lo + j·d] · flip(w)[j]ᵀ`` — a stride-``S`` correlation of ``g``
      with the spatially flipped kernel, channels swapped, taps ``d`` apart; ``g``'s
      output-padding positions take part like any other;
    * ``dw[j] = Σ_o u[o + j·d] ⊗ g[o]`` — the upsampled, padded input correlated with δ
      (Raj's filter derivative ``dDiv/dz ⊗ y``), evaluated without touching the inserted
      zeros as ``flip(Σ_i g[S·i − lo + j'·d] ⊗ x[i])``, a correlation of ``g`` with ``x``
      dilated by ``S``;
    * ``db = Σ g`` over the batch and spatial axes;
    * with ``groups = g``, each of these per group ``j``: ``dx_j`` from ``δ_j`` and ``w_j``,
      ``dw_j`` from ``x_j`` and ``δ_j`` (``1/g`` of the dense multiply-adds).

    Forward mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``), by bilinearity:
    ``ṫ_y = pad(upsample(ṫ_x)) ⋆ w + pad(upsample(x)) ⋆ ṫ_w + ṫ_b``, both products by the
    plan's formula for ``y`` (per group with ``groups``).

    Each product is a row of convolution's table, for the convolution ``conv(·, flip(w)ᵀ)``
    being transposed: ``y`` its input gradient, ``dx`` its forward, ``dw`` its weight
    gradient flipped. ``method`` names them as :func:`jaxcnn.ops.conv`'s does (a formula's
    name, a ``Plan`` whose ``forward`` computes this op's ``dx`` and ``input`` its ``y``, or a
    policy, told about the convolution being transposed); ``"auto"`` is XLA's convolutions,
    their ``dw`` summed in batch chunks on XLA:CPU (:func:`jaxcnn._xla_cpu_conv.transpose_policy`).

    Args:
      x: input of shape ``(N, *spatial, C_in)`` (channels last), 1 to 3 spatial axes.
      w: kernel of shape ``(*window, C_in / groups, C_out)`` (the layout of ``lax``'s ``HWIO``).
      b: optional bias of shape ``(C_out,)``.
      stride: the upsampling factor ``S ≥ 1``, an int or one per spatial axis.
      padding: ``"VALID"``, ``"SAME"``, ``"FULL"``, an int, or one ``(lo, hi)`` pair per
        spatial axis, read as the padding of the convolution being transposed.
      dilation: spacing of the kernel taps, an int or one per spatial axis, ``>= 1``.
      output_padding: ``a >= 0`` more output positions at the high end, an int or one per
        spatial axis, each below the stride or the dilation (PyTorch's ``output_padding``:
        it tells apart the input sizes a strided convolution maps to the same size).
      groups: ``g >= 1`` dividing ``C_in`` and ``C_out``: input channel group ``j`` feeds only
        output channel group ``j`` (as :func:`jaxcnn.ops.conv`'s ``groups``).
      method: ``"auto"``, a formula's name, a ``Plan`` or a policy (see above).
      platform: the platform the policy tunes for; None: ``jax.default_backend()`` at trace
        time (:func:`jaxcnn._xla_cpu.resolve_platform`).

    Returns:
      ``y`` of shape ``(N, *out_spatial, C_out)`` and the dtype of ``x``.

    Raises:
      TypeError: an argument is not floating point, the dtypes differ, ``stride``,
        ``dilation`` or ``output_padding`` is not an int/sequence of ints, or ``groups`` is
        not an int.
      ValueError: ``w`` does not have 3 to 5 dimensions, ``x`` does not have as many
        spatial axes as ``w``, ``C_in`` (``/ groups``) differs, ``b`` is not ``(C_out,)``,
        ``stride``/``dilation``/``output_padding`` has the wrong number of entries or is
        out of range (``output_padding`` below neither stride nor dilation), ``groups`` is
        below 1 or does not divide ``C_in`` and ``C_out``, the padding is malformed,
        negative or larger than ``k_d − 1``, the output would be empty, or ``method`` is
        unknown or names a formula that does not apply (``"im2col"``, ``"taps"``, ``"rows"``
        and ``"winograd"`` need ``output_padding`` at most the high padding).

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([1.0, 2.0]).reshape(1, 2, 1)
    >>> w = jnp.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    >>> ops.conv_transpose(x, w, stride=2)[0, :, 0].tolist()  # (2 − 1)·2 + 3 = 5 outputs
    [100.0, 10.0, 201.0, 20.0, 2.0]
    >>> ops.conv_transpose(jnp.ones((1, 4, 2)), jnp.ones((3, 1, 2)), stride=2, padding=1, output_padding=1,
    ...                    groups=2).shape  # PyTorch's (4 − 1)·2 − 2·1 + (3 − 1) + 1 + 1
    (1, 8, 2)
    """
    x, w, b, geom, groups = _validate(x, w, b, stride, padding, dilation, output_padding, groups)
    spec = _spec(x, w, b, geom, groups, method, _xla_cpu.resolve_platform(platform, "conv_transpose"))
    return _conv_transpose(x, w, b, spec)


class ConvTransposeSpec(NamedTuple):
    """The static settings of one call, in terms of the convolution being transposed."""

    geometry: Geometry  # that convolution's: pads (lo, hi), out_shape = x's spatial shape
    out_shape: tuple[int, ...]  # y's spatial shape, that convolution's input
    groups: int
    plan: Plan  # y by plan.input, dx by plan.forward, dw by plan.weight
    bias: bool


def _spec(x, w, b, geom: Geometry, groups: int, method, platform: str) -> ConvTransposeSpec:
    """The convolution being transposed (pads ``k_d − 1 − p`` of this op's ``p``; a negative
    high pad crops ``output_padding``'s positions) and its plan."""
    pads = tuple((k - 1 - p_lo, k - 1 - p_hi)
                 for k, (p_lo, p_hi) in zip(_shapes.dilated(geom.window, geom.dilation), geom.pads))
    conv_geom, out_shape = geom._replace(pads=pads, out_shape=tuple(x.shape[1:-1])), geom.out_shape
    problem = Problem(conv_geom, (x.shape[0], *out_shape, w.shape[-1]), (*geom.window, w.shape[-1] // groups,
                      x.shape[-1]), groups, np.dtype(x.dtype), platform)
    plan = resolve_plan("conv_transpose", method, problem, _xla_cpu_conv.transpose_policy)
    return ConvTransposeSpec(conv_geom, out_shape, groups, plan, b is not None)


class ConvTransposeResiduals(NamedTuple):
    x: jax.Array  # the input, for dw
    w: jax.Array  # the kernel, for dx


def _flipped_transposed(w):
    """``flip(w)ᵀ``: the kernel reversed over its spatial axes, its two channel axes swapped."""
    return lax.rev(jnp.swapaxes(w, -1, -2), tuple(range(w.ndim - 2)))


@functools.partial(_rule.custom_rule, nondiff_argnums=(3,))
def _conv_transpose(x, w, b, spec: ConvTransposeSpec):
    y = _upsampled_correlation(x, w, spec)
    return y if b is None else y + b


def _upsampled_correlation(x, w, spec: ConvTransposeSpec):
    # one group: u = pad(upsample(x, S)), y = u ⋆ w, the input gradient of conv(·, flip(w)ᵀ) at δ = x
    input_gradient, _ = tuned_products(spec.plan, spec.geometry, spec.out_shape, False)
    return per_group(lambda x, w: input_gradient(x, _flipped_transposed(w)), spec.groups, x, w)


def _conv_transpose_fwd(x, w, b, spec: ConvTransposeSpec):
    return _conv_transpose(x, w, b, spec), ConvTransposeResiduals(x, w)


def _conv_transpose_bwd(spec: ConvTransposeSpec, res: ConvTransposeResiduals, g):
    # Raj's convolution backward with "forward" and "backward" exchanged, per group j (δ_j meets
    # only w_j and x_j), for the convolution conv(·, flip(w)ᵀ) with pads (lo, hi) that this op transposes:
    #   dx[i] = Σ_j g[S·i − lo + j·d] · flip(w)[j]ᵀ      that convolution's forward on g
    #   dw[j] = flip(Σ_i g[S·i − lo + j'·d] ⊗ x[i])ᵀ     its weight gradient, g against x dilated by S
    forward = FORMULAS[spec.plan.forward].forward
    _, weight_gradient = tuned_products(spec.plan, spec.geometry, spec.out_shape, False)
    window = spec.geometry.window

    def dw(x, g):
        dw_flipped, _ = weight_gradient(g, x)
        return _flipped_transposed(dw_flipped.reshape(*window, g.shape[-1], x.shape[-1]))

    def dx(g, w):  # flip(w)ᵀ flipped first, then transposed: the same values, the program as it always was
        return forward(g, jnp.swapaxes(lax.rev(w, tuple(range(w.ndim - 2))), -1, -2), spec.geometry)

    dx = per_group(dx, spec.groups, g, res.w)
    dw = per_group(dw, spec.groups, res.x, g)
    db = jnp.sum(g, axis=tuple(range(g.ndim - 1))) if spec.bias else None
    return dx, dw, db


def _conv_transpose_jvp(spec: ConvTransposeSpec, primals, tangents):
    # bilinearity, by the plan's formula for y: ṫ_y = pad(upsample(ṫ_x)) ⋆ w + pad(upsample(x)) ⋆ ṫ_w + ṫ_b
    (x, w, b), (tx, tw, tb) = primals, tangents
    y = _upsampled_correlation(x, w, spec)
    ty = _upsampled_correlation(tx, w, spec) + _upsampled_correlation(x, tw, spec)
    return (y, ty) if b is None else (y + b, ty + tb)


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
_conv_transpose.defjvp(_conv_transpose_jvp)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_conv_transpose = jax.jit(_conv_transpose, static_argnums=3)


def _validate(x, w, b, stride, padding, dilation, output_padding, groups):
    op = "conv_transpose"
    x = _checks.float_array(op, "x", x)
    w = _checks.float_array(op, "w", w)
    b = None if b is None else _checks.float_array(op, "b", b)
    _checks.rank(op, "w", w, (3, 4, 5), "(*window, C_in, C_out): 1 to 3 spatial axes")
    nd = w.ndim - 2
    if x.ndim != nd + 2:
        raise ValueError(
            f"conv_transpose: `x` must have {nd + 2} dimensions (N, *spatial, C_in) to match "
            f"the {nd} spatial axes of `w` with shape {tuple(w.shape)} (*window, C_in, C_out), "
            f"got `x` of shape {tuple(x.shape)}."
        )
    groups = checked_groups(op, groups, x.shape[-1], w.shape[-1])
    if groups == 1 and x.shape[-1] != w.shape[-2]:
        raise ValueError(
            f"conv_transpose: `w` must have shape (*window, C_in, C_out) with C_in = "
            f"x.shape[-1] = {x.shape[-1]}, got `w` of shape {tuple(w.shape)}."
        )
    check_kernel_channels(op, groups, x, w)
    if b is not None:
        _checks.shape(op, "b", b, (w.shape[-1],), "(C_out,) with C_out = w.shape[-1]")
    _checks.same_dtype(op, x=x, w=w, b=b)
    source = f"`w` of shape {tuple(w.shape)} (*window, C_in, C_out) has {nd}"
    for name, value in (("stride", stride), ("dilation", dilation), ("output_padding", output_padding)):
        _shapes.spatial_length(op, name, value, nd, source)
    geom = _shapes.transpose_geometry(op, x.shape[1:-1], w.shape[:-2], stride, padding, dilation, output_padding)
    return x, w, b, geom, groups


# --------------------------------------------------------------------------- reference


def conv_transpose_reference(x, w, b=None, *, stride=1, padding: Padding = "VALID", dilation=1, output_padding=0,
                             groups=1, method="auto", platform=None):
    """Autodiff reference for :func:`conv_transpose`: ``lax.conv_transpose`` with
    ``transpose_kernel=False`` and ``use_consistent_padding=True``, once per group on that
    group's channel slices, the outputs concatenated; ``output_padding`` lowers the high
    padding of the convolution being transposed (so ``lax`` pads the upsampled input more).
    ``method`` and ``platform`` are validated and otherwise ignored."""
    x, w, b, geom, groups = _validate(x, w, b, stride, padding, dilation, output_padding, groups)
    _spec(x, w, b, geom, groups, method, _xla_cpu.resolve_platform(platform, "conv_transpose"))
    nd = w.ndim - 2
    extent = _shapes.dilated(geom.window, geom.dilation)
    extra = _shapes.spatial_tuple("conv_transpose", "output_padding", output_padding, nd, minimum=0)
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME") and not any(extra):
        lax_padding = padding.upper()
    elif isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):  # the pairs the strings stand for
        lax_padding = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(extent, geom.pads))
    else:
        if isinstance(padding, str):  # "FULL": the conv being transposed pads k_d − 1
            pairs = tuple((k - 1, k - 1) for k in extent)
        elif isinstance(padding, (int, np.integer)):
            pairs = ((int(padding), int(padding)),) * nd
        else:
            pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
        lax_padding = tuple((lo, hi - a) for (lo, hi), a in zip(pairs, extra))
    layout = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[nd]
    c_in, c_out = x.shape[-1] // groups, w.shape[-1] // groups
    y = jnp.concatenate([
        lax.conv_transpose(x[..., j * c_in:(j + 1) * c_in], w[..., j * c_out:(j + 1) * c_out], geom.stride,
                           lax_padding, rhs_dilation=geom.dilation, dimension_numbers=layout,
                           transpose_kernel=False, use_consistent_padding=True)
        for j in range(groups)], axis=-1)
    return y if b is None else y + b
