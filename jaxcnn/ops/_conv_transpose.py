"""Transposed ("fractionally strided") convolution with its hand-derived backward.

Lecture: Raj, "The Upsampling Layer": "upsampling layers followed by a convolutional
layer are also often viewed as convolving with a fractional stride — upsampling by
factor S is the same as striding by factor 1/S — also called transpose convolutions".
The op is exactly that: insert ``S − 1`` zeros between neighbours, pad, correlate. It
is the input-gradient of the strided convolution with the same window, stride and
padding, which is why its own backward is built from strided correlations (Raj's
"derivative maps upsampled if stride > 1", read backwards). With ``groups = g`` each group
of channels is a transposed convolution of its own (:mod:`jaxcnn.ops._conv_groups`), and so
are its derivatives: ``dx_j`` from ``δ_j`` and ``w_j``, ``dw_j`` from ``x_j`` and ``δ_j``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcnn import _checks, _shapes
from jaxcnn._shapes import Geometry, Padding
from jaxcnn._xla_cpu import canonical_numbers, correlate_over_batch
from jaxcnn.ops._conv_groups import check_kernel_channels, checked_groups, per_group


def conv_transpose(
    x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *, stride=1, padding: Padding = "VALID",
    dilation=1, output_padding=0, groups: int = 1,
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
        negative or larger than ``k_d − 1``, or the output would be empty.

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
    return _conv_transpose(x, w, b, geom, groups, b is not None)


class ConvTransposeResiduals(NamedTuple):
    x: jax.Array  # the input, for dw
    w: jax.Array  # the kernel, for dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv_transpose(x, w, b, geom: Geometry, groups: int, bias: bool):
    nd = w.ndim - 2

    def forward(x, w):  # one group: u = pad(upsample(x, S)), y = u ⋆ w (taps d apart)
        return lax.conv_general_dilated(x, w, (1,) * nd, geom.pads, lhs_dilation=geom.stride,
                                        rhs_dilation=geom.dilation, dimension_numbers=canonical_numbers(nd))

    y = per_group(forward, groups, x, w)
    return y if b is None else y + b


def _conv_transpose_fwd(x, w, b, geom: Geometry, groups: int, bias: bool):
    return _conv_transpose(x, w, b, geom, groups, bias), ConvTransposeResiduals(x, w)


def _conv_transpose_bwd(geom: Geometry, groups: int, bias: bool, res: ConvTransposeResiduals, g):
    x, w = res.x, res.w
    nd = w.ndim - 2
    spatial = tuple(range(nd))
    # (lo, hi): the padding of the strided conv being transposed (hi < 0 crops g's tail:
    # output_padding's positions are part of it, their δ reaches the inputs whose windows cover them).
    pads = tuple((k - 1 - p_lo, k - 1 - p_hi)
                 for k, (p_lo, p_hi) in zip(_shapes.dilated(geom.window, geom.dilation), geom.pads))
    # Every convolution below is in XLA:CPU's canonical form (channels last, kernel
    # (*window, in, out)), its operands moved there explicitly: read through swapped
    # dimension numbers instead, XLA:CPU runs them far slower inside a loop body
    # (performance.md, "Canonical convolution form"). Each group j is a transposed
    # convolution of its own (per_group): its δ_j meets only w_j and x_j.

    def input_gradient(g, w):  # dx[i] = Σ_j g[S·i − lo + j·d] · flip(w)[j]ᵀ: a stride-S correlation of δ
        w_swapped = jnp.swapaxes(lax.rev(w, spatial), -1, -2)  # flip(w)[j]ᵀ: (*window, C_out, C_in)
        return lax.conv_general_dilated(g, w_swapped, geom.stride, pads, rhs_dilation=geom.dilation,
                                        dimension_numbers=canonical_numbers(nd))

    def weight_gradient(x, g):
        # dw[j] = Σ_o u[o + j·d] ⊗ g[o] = flip(Σ_i g[S·i − lo + j'·d] ⊗ x[i]): δ against x dilated
        # by S, taps d apart, contracted over the batch.
        dw_flipped = correlate_over_batch(g, x, geom.dilation, pads, geom.stride)  # (*window, C_out, C_in)
        return lax.rev(jnp.swapaxes(dw_flipped, -1, -2), spatial)

    dx = per_group(input_gradient, groups, g, w)
    dw = per_group(weight_gradient, groups, x, g)
    db = jnp.sum(g, axis=tuple(range(nd + 1))) if bias else None
    return dx, dw, db


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
# Called outside jit, one compiled program each way, not one per primitive (docs/performance.md).
_conv_transpose = jax.jit(_conv_transpose, static_argnums=(3, 4, 5))


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
                             groups=1):
    """Autodiff reference for :func:`conv_transpose`: ``lax.conv_transpose`` with
    ``transpose_kernel=False`` and ``use_consistent_padding=True``, once per group on that
    group's channel slices, the outputs concatenated; ``output_padding`` lowers the high
    padding of the convolution being transposed (so ``lax`` pads the upsampled input more)."""
    x, w, b, geom, groups = _validate(x, w, b, stride, padding, dilation, output_padding, groups)
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
