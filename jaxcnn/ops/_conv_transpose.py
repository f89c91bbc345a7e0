"""Transposed ("fractionally strided") convolution with its hand-derived backward.

Lecture: Raj, "The Upsampling Layer": "upsampling layers followed by a convolutional
layer are also often viewed as convolving with a fractional stride — upsampling by
factor S is the same as striding by factor 1/S — also called transpose convolutions".
The op is exactly that: insert ``S − 1`` zeros between neighbours, pad, correlate. It
is the input-gradient of the strided convolution with the same window, stride and
padding, which is why its own backward is built from strided correlations (Raj's
"derivative maps upsampled if stride > 1", read backwards).
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


def conv_transpose(
    x: jax.Array, w: jax.Array, b: Optional[jax.Array] = None, *, stride=1, padding: Padding = "VALID"
) -> jax.Array:
    r"""Transposed convolution: upsample ``x`` by ``S``, pad, correlate with ``w``.

    Forward, along each spatial axis (channels contracted as in a convolution):

    * ``u = pad(upsample(x, S), (p_lo, p_hi))`` — ``S − 1`` zeros between neighbours
      (:func:`jaxcnn.ops.upsample`), then ``p`` zeros at each end;
    * ``y[o, c_out] = Σ_j Σ_{c_in} u[o + j, c_in] w[j, c_in, c_out] + b[c_out]``.

    ``padding`` is the padding ``(lo, hi)`` of the strided convolution that this op
    transposes (so ``p_lo = k − 1 − lo``, ``p_hi = k − 1 − hi``; the default ``"VALID"``,
    ``lo = hi = 0``, pads the upsampled input "FULL" by ``k − 1``). The op equals
    ``lax.conv_transpose(x, w, stride, padding, transpose_kernel=False,
    use_consistent_padding=True)`` (Flax's ``ConvTranspose`` for ``"VALID"``/``"SAME"``;
    PyTorch's ``ConvTranspose`` with its kernel flipped) and is the input-gradient of the
    strided convolution ``conv(·, flip(w)ᵀ)`` with that stride and padding.

    Output size along each spatial axis, for input ``n``, window ``k`` and stride ``S``:

    * an int ``p`` or pairs ``(lo, hi)`` (each at most ``k − 1``): ``(n − 1) S + k − lo − hi``;
    * ``"VALID"``: ``n S + max(k − S, 0)``, i.e. ``(n − 1) S + k`` when ``k ≥ S``;
    * ``"SAME"``: ``n S``;
    * ``"FULL"`` (``lo = hi = k − 1``): ``(n − 1) S − k + 2``.

    For ``k < S`` the strings ``"VALID"`` and ``"SAME"`` follow ``lax``/Keras and end with
    ``S − k`` output positions that only the bias reaches (``p_hi`` grows by ``S − k``).

    Backward, with ``(lo, hi)`` the padding of the transposed conv as above, written as the
    strided convolution it transposes (Raj's convolution backward with the roles of
    "forward" and "backward" exchanged):

    * ``dx[i] = Σ_j g[S·i − lo + j] · flip(w)[j]ᵀ`` — a stride-``S`` correlation of ``g``
      with the spatially flipped kernel, channels swapped;
    * ``dw[j] = Σ_o u[o + j] ⊗ g[o]`` — the upsampled, padded input correlated with δ
      (Raj's filter derivative ``dDiv/dz ⊗ y``), evaluated without touching the inserted
      zeros as ``flip(Σ_i g[S·i − lo + j'] ⊗ x[i])``, a correlation of ``g`` with ``x``
      dilated by ``S``;
    * ``db = Σ g`` over the batch and spatial axes.

    Args:
      x: input of shape ``(N, *spatial, C_in)`` (channels last), 1 to 3 spatial axes.
      w: kernel of shape ``(*window, C_in, C_out)`` (the layout of ``lax``'s ``HWIO``).
      b: optional bias of shape ``(C_out,)``.
      stride: the upsampling factor ``S ≥ 1``, an int or one per spatial axis.
      padding: ``"VALID"``, ``"SAME"``, ``"FULL"``, an int, or one ``(lo, hi)`` pair per
        spatial axis, read as the padding of the convolution being transposed.

    Returns:
      ``y`` of shape ``(N, *out_spatial, C_out)`` and the dtype of ``x``.

    Raises:
      TypeError: an argument is not floating point, the dtypes differ, or ``stride`` is
        not an int/sequence of ints.
      ValueError: ``w`` does not have 3 to 5 dimensions, ``x`` does not have as many
        spatial axes as ``w``, ``C_in`` differs, ``b`` is not ``(C_out,)``, ``stride`` has
        the wrong number of entries or is < 1, the padding is malformed, negative or
        larger than ``k − 1``, or the output would be empty.

    >>> import jax.numpy as jnp
    >>> from jaxcnn import ops
    >>> x = jnp.array([1.0, 2.0]).reshape(1, 2, 1)
    >>> w = jnp.array([1.0, 10.0, 100.0]).reshape(3, 1, 1)
    >>> ops.conv_transpose(x, w, stride=2)[0, :, 0].tolist()  # (2 − 1)·2 + 3 = 5 outputs
    [100.0, 10.0, 201.0, 20.0, 2.0]
    """
    x, w, b, geom = _validate(x, w, b, stride, padding)
    return _conv_transpose(x, w, b, geom, b is not None)


class ConvTransposeResiduals(NamedTuple):
    x: jax.Array  # the input, for dw
    w: jax.Array  # the kernel, for dx


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv_transpose(x, w, b, geom: Geometry, bias: bool):
    nd = w.ndim - 2
    y = lax.conv_general_dilated(
        x, w, (1,) * nd, geom.pads, lhs_dilation=geom.stride, dimension_numbers=canonical_numbers(nd)
    )
    return y if b is None else y + b


def _conv_transpose_fwd(x, w, b, geom: Geometry, bias: bool):
    return _conv_transpose(x, w, b, geom, bias), ConvTransposeResiduals(x, w)


def _conv_transpose_bwd(geom: Geometry, bias: bool, res: ConvTransposeResiduals, g):
    x, w = res.x, res.w
    nd = w.ndim - 2
    spatial = tuple(range(nd))
    # (lo, hi): the padding of the strided conv being transposed (hi < 0 crops g's tail).
    pads = tuple((k - 1 - p_lo, k - 1 - p_hi) for k, (p_lo, p_hi) in zip(geom.window, geom.pads))
    # Every convolution below is in XLA:CPU's canonical form (channels last, kernel
    # (*window, in, out)), its operands moved there explicitly: read through swapped
    # dimension numbers instead, XLA:CPU runs them far slower inside a loop body
    # (performance.md, "Canonical convolution form").
    # dx[i] = Σ_j g[S·i − lo + j] · flip(w)[j]ᵀ: a stride-S correlation of δ.
    w_swapped = jnp.swapaxes(lax.rev(w, spatial), -1, -2)  # flip(w)[j]ᵀ: (*window, C_out, C_in)
    dx = lax.conv_general_dilated(g, w_swapped, geom.stride, pads, dimension_numbers=canonical_numbers(nd))
    # dw[j] = Σ_o u[o + j] ⊗ g[o] = flip(Σ_i g[S·i − lo + j'] ⊗ x[i]): δ against x dilated by S,
    # contracted over the batch.
    dw_flipped = correlate_over_batch(g, x, (1,) * nd, pads, geom.stride)  # (*window, C_out, C_in)
    dw = lax.rev(jnp.swapaxes(dw_flipped, -1, -2), spatial)
    db = jnp.sum(g, axis=tuple(range(nd + 1))) if bias else None
    return dx, dw, db


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def _validate(x, w, b, stride, padding):
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
    if x.shape[-1] != w.shape[-2]:
        raise ValueError(
            f"conv_transpose: `w` must have shape (*window, C_in, C_out) with C_in = "
            f"x.shape[-1] = {x.shape[-1]}, got `w` of shape {tuple(w.shape)}."
        )
    if b is not None:
        _checks.shape(op, "b", b, (w.shape[-1],), "(C_out,) with C_out = w.shape[-1]")
    _checks.same_dtype(op, x=x, w=w, b=b)
    source = f"`w` of shape {tuple(w.shape)} (*window, C_in, C_out) has {nd}"
    _shapes.spatial_length(op, "stride", stride, nd, source)
    geom = _shapes.transpose_geometry(op, x.shape[1:-1], w.shape[:-2], stride, padding)
    return x, w, b, geom


# --------------------------------------------------------------------------- reference


def conv_transpose_reference(x, w, b=None, *, stride=1, padding: Padding = "VALID"):
    """Autodiff reference for :func:`conv_transpose`: ``lax.conv_transpose`` with
    ``transpose_kernel=False`` and ``use_consistent_padding=True``."""
    x, w, b, geom = _validate(x, w, b, stride, padding)
    nd = w.ndim - 2
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        lax_padding = padding.upper()
    elif isinstance(padding, str):  # "FULL": the conv being transposed pads k − 1
        lax_padding = tuple((k - 1, k - 1) for k in geom.window)
    elif isinstance(padding, (int, np.integer)):
        lax_padding = ((padding, padding),) * nd
    else:
        lax_padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    layout = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[nd]
    y = lax.conv_transpose(
        x, w, geom.stride, lax_padding, dimension_numbers=layout,
        transpose_kernel=False, use_consistent_padding=True,
    )
    return y if b is None else y + b
