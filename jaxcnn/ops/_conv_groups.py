"""Grouped convolution: ``g`` independent convolutions, one per group of channels.

With ``groups = g`` the input channels split into ``g`` consecutive groups of ``C_in / g``
and the output channels into ``g`` groups of ``C_out / g``; output group ``j`` reads input
group ``j`` only (``lax.conv_general_dilated(feature_group_count=g)``'s and PyTorch's
layout), so the kernel is ``(*window, C_in / g, C_out)``: ``w[..., p, j·(C_out/g) + q]``
connects input ``j·(C_in/g) + p`` to output ``j·(C_out/g) + q``. In the lectures'
notation each group is a layer of its own, and so are its derivatives:

    ``y_j = x_j *valid rot180(w_j)``, ``δx_j = δ_j *full w_j``, ``dW_j = x_j *valid rot180(δ_j)``.

:func:`per_group` computes any of convolution's formulas that way: it maps the dense formula
over a group axis with ``jax.vmap``, so each product spends ``1 / g`` of the dense one's
multiply-adds (XLA's convolutions become ``feature_group_count = g`` convolutions, matrix
products become ``g`` batched products), and no product ever mixes two groups.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def split(a: jax.Array, groups: int) -> jax.Array:
    """``(..., C)`` as ``(..., g, C / g)``: channel ``j·(C/g) + c`` at ``[..., j, c]``."""
    return a.reshape(*a.shape[:-1], groups, a.shape[-1] // groups)


def merge(a: jax.Array) -> jax.Array:
    """The inverse of :func:`split`: ``(..., g, c)`` as ``(..., g·c)``."""
    return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1])


def per_group(formula: Callable, groups: int, *arrays):
    """``formula`` applied to each group's channels, its results joined along their channels.

    Every array is split along its last axis into ``g`` groups (activations and δ by their
    channels, the kernel ``(*window, C_in / g, C_out)`` by its ``C_out``; its in-channel
    axis is already one group's). Every result, whose last axis is one group's channels
    (``y``, ``dx``, ``db``, and ``dW`` as ``(..., C_in / g, C_out / g)``), comes back with
    the groups joined there: ``(..., g · c)``. ``None`` results stay ``None``.
    """
    if groups == 1:
        return formula(*arrays)
    parts = [None if a is None else split(a, groups) for a in arrays]
    axes = tuple(None if a is None else a.ndim - 2 for a in parts)
    out = jax.vmap(formula, in_axes=axes, out_axes=-2)(*parts)
    return jax.tree_util.tree_map(merge, out)


def checked_groups(op: str, groups, c_in: int, c_out: int) -> int:
    """``groups`` as a Python int ``>= 1`` dividing ``C_in`` and ``C_out``, or a clear error."""
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(
            f"{op}: `groups` must be an int >= 1 (the number of channel groups that do not mix), "
            f"got {groups!r} of type {type(groups).__name__}."
        )
    if groups < 1:
        raise ValueError(
            f"{op}: `groups` must be an int >= 1 (the number of channel groups that do not mix), got {groups}."
        )
    for name, channels in (("C_in = x.shape[-1]", c_in), ("C_out = w.shape[-1]", c_out)):
        if channels % groups:
            raise ValueError(
                f"{op}: `groups` = {groups} must divide {name} = {channels}; each group takes "
                f"C_in / groups input and C_out / groups output channels."
            )
    return int(groups)


def check_kernel_channels(op: str, groups: int, x, w) -> None:
    """A grouped kernel has ``C_in / groups`` input channels: ``(*window, C_in / groups, C_out)``."""
    if w.shape[-2] * groups != x.shape[-1]:
        raise ValueError(
            f"{op}: with `groups` = {groups}, `w` must have C_in / groups = {x.shape[-1]} / {groups} = "
            f"{x.shape[-1] // groups} input channels in its second-to-last axis, (*window, C_in / groups, "
            f"C_out), got w of shape {tuple(w.shape)} for x of shape {tuple(x.shape)}."
        )
