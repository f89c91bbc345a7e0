"""Which exact formula computes each of convolution's three products: ``method`` and ``auto_plan``.

Every formula gives the same sums (see :mod:`jaxcnn.ops._conv` for the lecture's and
:mod:`jaxcnn.ops._conv_formulas` for the alternatives); ``method="auto"`` picks, per product,
the one that is fastest for the shapes at hand. The thresholds below are the crossovers
``experiments/bench.py --only conv-methods`` measures (performance.md, "auto_plan crossovers").
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import numpy as np

from jaxcnn import _shapes
from jaxcnn.ops._conv_winograd import applies as winograd_applies
from jaxcnn.ops._im2col import whole_window

METHODS = ("auto", "xla", "im2col", "taps", "rows")
#: Formulas for some geometries only (a clear error elsewhere): Winograd's F(2×2, 3×3) for
#: 2-D 3 × 3 windows at stride 1 without dilation (:mod:`jaxcnn.ops._conv_winograd`).
GEOMETRY_METHODS = ("winograd",)


class Plan(NamedTuple):
    """Which exact formula computes each of the three products (see :func:`jaxcnn.ops.conv`)."""

    forward: str  # "xla" | "im2col" | "taps" | "rows" | "winograd"
    weight: str  # dW: "xla" | "im2col" | "taps" | "rows" | "winograd"
    input: str  # dx: "xla" | "col2im" | "winograd"


PLANS = {
    "xla": Plan("xla", "xla", "xla"),
    "im2col": Plan("im2col", "im2col", "col2im"),
    "taps": Plan("taps", "taps", "col2im"),
    "rows": Plan("rows", "rows", "col2im"),
    "winograd": Plan("winograd", "winograd", "winograd"),
}

#: 1-D: taps for at most this many input channels.
TAPS_MAX_C_IN = 4
#: 1-D: im2col while one sample's forward has fewer multiply-adds than this, XLA's convolution above.
IM2COL_1D_MAX_MACS = 16_384
#: 2-D and 3-D: row blocks for at most this many input channels.
ROWS_MAX_C_IN = 4
#: Grouped (``groups > 1``), at most this many input channels per group: taps for ``y``, row
#: blocks for ``dW``, col2im for ``dx``; XLA:CPU's grouped convolutions are slow
#: (performance.md, "Grouped and depthwise convolution").
GROUPED_MAX_C_IN = 8
#: 2-D 3 × 3, stride 1, no dilation: Winograd's F(2×2, 3×3) for ``y`` from this many input
#: channels (per group) and for ``dx`` from this many output channels, where the outputs (for
#: ``dx`` the inputs) are at least :data:`WINOGRAD_MIN_OUT` on each axis. ``dW`` stays XLA's,
#: summed in batch chunks (:func:`jaxcnn._xla_cpu.correlate_over_batch`).
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MIN_OUT = 6
#: 1-D: ``dx`` by col2im at stride 1 for at most this many channel pairs (strided: always col2im).
COL2IM_MAX_PAIRS = 1024


def auto_plan(geom: _shapes.Geometry, in_shape, c_in: int, c_out: int, backend: Optional[str] = None, *,
              groups: int = 1) -> Plan:
    """The formulas ``method="auto"`` picks: all exact, chosen by shape for speed.

    Off the CPU, XLA's own convolutions (cuDNN on GPUs). On the CPU: a window covering the
    whole input (LeNet-5's C5) is a dense layer, im2col without a copy; few input channels
    (LeNet-5's C1, RGB images) use row blocks for ``y`` and ``dW``, whose column matrix the
    two share inside one jitted step; more input channels (C3's 6) use XLA's convolutions,
    which need no ``K``-times larger column matrix; 3 × 3 windows at stride 1 (a ResNet's or
    VGG's) use Winograd's F(2×2, 3×3) for ``y`` and ``dx`` from 32 channels
    (:func:`_winograd_where_faster`). 1-D convolutions use taps for few input channels,
    im2col while a sample's forward is small, and XLA's convolutions above. A 1 × 1
    window without padding (a pointwise convolution) is one matrix product per product,
    im2col and col2im. ``dx`` overlap-adds ``δ Wᵀ`` (col2im) in 1-D where XLA's transposed
    convolution would multiply the zeros of a strided δ or the channels are few; in 2-D and
    3-D only where the channels are too few to vectorise (the ``K``-times larger ``δ Wᵀ``
    costs more than the zeros there). Elsewhere XLA's own convolutions win. All of them are
    written in XLA:CPU's canonical form, which it also runs fast inside the loop of
    :func:`jaxcnn.train.make_epoch`. The crossovers: performance.md, "auto_plan
    crossovers".

    Grouped convolutions (``groups > 1``; ``c_in``, ``c_out`` count all channels) run every
    product per group; with few input channels per group (depthwise: one) the forward is
    the window's scaled taps, ``dW`` row blocks and ``dx`` col2im, since XLA:CPU's grouped
    convolutions (and above all autodiff's ``batch_group_count`` weight gradient) are slow;
    wider groups follow the dense rule for one group's channels.
    """
    if (backend or jax.default_backend()) != "cpu":
        return PLANS["xla"]
    if whole_window(geom, in_shape) or _pointwise(geom):
        return PLANS["im2col"]
    if groups > 1 and c_in // groups <= GROUPED_MAX_C_IN:  # depthwise and narrow groups
        return Plan("taps", "rows", "col2im")
    if groups > 1:  # wide groups: the dense rule for one group's channels
        c_in, c_out = c_in // groups, c_out // groups
    if len(geom.window) == 1:
        macs = int(np.prod(geom.out_shape)) * int(np.prod(geom.window)) * c_in * c_out  # per sample, forward
        products = "taps" if c_in <= TAPS_MAX_C_IN else "im2col" if macs < IM2COL_1D_MAX_MACS else "xla"
        col2im = max(geom.stride) > 1 or c_in * c_out <= COL2IM_MAX_PAIRS
    else:
        few = c_in <= ROWS_MAX_C_IN
        products = "rows" if few else "xla"
        col2im = few
    plan = Plan(forward=products, weight=products, input="col2im" if col2im else "xla")
    return _winograd_where_faster(plan, geom, in_shape, c_in, c_out) if winograd_applies(geom) else plan


def _winograd_where_faster(plan: Plan, geom: _shapes.Geometry, in_shape, c_in: int, c_out: int) -> Plan:
    """``plan`` with Winograd's F(2×2, 3×3) for ``y`` over many input channels and for
    ``dx`` (the same forward on δ) over many output channels, each with enough tiles."""
    if c_in >= WINOGRAD_MIN_CHANNELS and min(geom.out_shape) >= WINOGRAD_MIN_OUT:
        plan = plan._replace(forward="winograd")
    if c_out >= WINOGRAD_MIN_CHANNELS and min(in_shape) >= WINOGRAD_MIN_OUT:
        plan = plan._replace(input="winograd")
    return plan


def _pointwise(geom: _shapes.Geometry) -> bool:
    """A 1 × 1 window without padding: the column matrix is ``x`` (strided), ``y = x W``."""
    return all(k == 1 for k in geom.window) and all(p == (0, 0) for p in geom.pads)
