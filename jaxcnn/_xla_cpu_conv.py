"""Convolution's default policy, ``method="auto"``: per product the formula, and the XLA:CPU
tunings, that are fastest for the shapes at hand. Every threshold lives here.

Every formula gives the same sums (the table :data:`jaxcnn.ops._conv.FORMULAS`); the policy only
chooses among them, from an explicit :class:`~jaxcnn.ops._conv_plan.Problem` (geometry, shapes,
dtype, platform). The thresholds are the crossovers ``experiments/bench.py --only conv-methods``
measures (performance.md, "auto_plan crossovers").
"""

from __future__ import annotations

import math

import numpy as np

from jaxcnn import _shapes, _xla_cpu
from jaxcnn.ops._conv_formulas import IM2COL
from jaxcnn.ops._conv_plan import Plan, Problem
from jaxcnn.ops._im2col import whole_window

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
#: 1-D: ``dx`` by col2im at stride 1 for at most this many channel pairs, beside taps or im2col
#: products only (beside XLA's, XLA's transposed convolution; strided: always col2im).
COL2IM_MAX_PAIRS = 1024
#: XLA's weight gradient (:func:`jaxcnn._xla_cpu.correlate_over_batch`) sums the batch in chunks
#: when it contracts more than this many terms per output (batch × positions), of at most this
#: many multiply-adds per kernel tap and this many bytes of ``x`` and ``δ``, a power of two
#: samples each (performance.md, "Weight gradient in batch chunks"); over at most
#: :data:`CORRELATE_CHUNK_MAX_RANK` spatial axes (a 3-D ``dW`` runs slower in chunks).
CORRELATE_CHUNK_MAX_RANK = 2
#: 1-D: chunks of at least this many samples, or none (a long window's few-sample chunks are slower).
CORRELATE_CHUNK_MIN_SAMPLES_1D = 8
CORRELATE_CHUNK_MIN_TERMS = 8192
CORRELATE_CHUNK_MACS = 1 << 21
CORRELATE_CHUNK_BYTES = 1 << 20
#: Winograd's weight gradient sums the batch in chunks of about this many bytes of input
#: (performance.md, "Winograd F(2×2, 3×3)").
WINOGRAD_CHUNK_BYTES = 1 << 20


def auto_policy(problem: Problem) -> Plan:
    """``method="auto"``: XLA's own convolutions (cuDNN on GPUs) off the CPU, and on the CPU
    the formulas of :func:`cpu_formulas` with the tunings of :func:`tuned`."""
    if problem.platform != "cpu":
        return Plan.of("xla")
    return tuned(cpu_formulas(problem), problem)


def transpose_policy(problem: Problem) -> Plan:
    """``method="auto"`` of :func:`jaxcnn.ops.conv_transpose`: XLA's convolutions off the CPU; on
    the CPU im2col in 1-D where it applies (col2im's ``y`` multiplies none of the upsampled
    input's zeros), XLA's convolutions otherwise, tuned."""
    if problem.platform != "cpu":
        return Plan.of("xla")
    if len(problem.geometry.window) == 1 and IM2COL.refuses(problem.geometry) is None:
        return tuned(Plan.of("im2col"), problem)
    return tuned(Plan.of("xla"), problem)


def cpu_formulas(problem: Problem) -> Plan:
    """The formulas fastest on XLA:CPU for the shapes at hand.

    A window covering the whole input (LeNet-5's C5) is a dense layer, im2col without a copy;
    few input channels (LeNet-5's C1, RGB images) use row blocks for ``y`` and ``dW``, whose
    column matrix the two share inside one jitted step; more input channels (C3's 6) use XLA's
    convolutions, which need no ``K``-times larger column matrix; so do 3 × 3 windows at stride 1
    (a ResNet's or VGG's): Winograd's F(2×2, 3×3) (``method="winograd"``) no longer beats XLA's
    convolutions with ``dW`` in batch chunks (performance.md, "The convolution family"). 1-D
    convolutions use taps for few input channels, im2col while a sample's forward is small, and
    XLA's convolutions above. A 1 × 1 window without padding (a pointwise convolution) is one
    matrix product per product, im2col and col2im. ``dx`` overlap-adds ``δ Wᵀ`` (col2im) in 1-D
    where XLA's transposed convolution would multiply the zeros of a strided δ, or at stride 1
    beside taps or im2col products with few channel pairs (a long window's ``δ Wᵀ`` costs more
    than XLA's convolution); in 2-D and 3-D only where the channels are too few to vectorise.
    Elsewhere XLA's own convolutions win. All of them are written in XLA:CPU's canonical form,
    which it also runs fast inside the loop of :func:`jaxcnn.train.make_epoch`.

    Grouped convolutions (``groups > 1``) run every product per group; with few input channels
    per group (depthwise: one) the forward is the window's scaled taps, ``dW`` row blocks and
    ``dx`` col2im, since XLA:CPU's grouped convolutions (and above all autodiff's
    ``batch_group_count`` weight gradient) are slow; wider groups follow the dense rule for one
    group's channels.
    """
    geom, groups, in_shape = problem.geometry, problem.groups, problem.x_shape[1:-1]
    c_in, c_out = problem.x_shape[-1], problem.w_shape[-1]
    if whole_window(geom, in_shape) or _pointwise(geom):
        return Plan.of("im2col")
    if groups > 1 and c_in // groups <= GROUPED_MAX_C_IN:  # depthwise and narrow groups
        return Plan("taps", "rows", "im2col")
    c_in, c_out = c_in // groups, c_out // groups  # wide groups: the dense rule for one group's channels
    if len(geom.window) == 1:
        macs = int(np.prod(geom.out_shape)) * int(np.prod(geom.window)) * c_in * c_out  # per sample, forward
        products = "taps" if c_in <= TAPS_MAX_C_IN else "im2col" if macs < IM2COL_1D_MAX_MACS else "xla"
        col2im = max(geom.stride) > 1 or (products != "xla" and c_in * c_out <= COL2IM_MAX_PAIRS)
    else:
        products = "rows" if c_in <= ROWS_MAX_C_IN else "xla"
        col2im = c_in <= ROWS_MAX_C_IN
    return Plan(products, products, "im2col" if col2im else "xla")


def _pointwise(geom: _shapes.Geometry) -> bool:
    """A 1 × 1 window without padding: the column matrix is ``x`` (strided), ``y = x W``."""
    return all(k == 1 for k in geom.window) and all(p == (0, 0) for p in geom.pads)


def tuned(plan: Plan, problem: Problem) -> Plan:
    """``plan`` with XLA:CPU's tunings for its formulas: XLA's and Winograd's ``dW`` summed in
    batch chunks (:func:`weight_chunk`), col2im's long overlap-adds materialised."""
    return plan._replace(weight_chunk=weight_chunk(plan.weight, problem),
                         materialize_input=plan.input == "im2col" and _xla_cpu.materializes(problem.geometry, "cpu"))


def weight_chunk(formula: str, problem: Problem) -> int:
    """Samples per chunk of the batch sum of ``formula``'s ``dW`` on XLA:CPU (0: none).

    XLA's convolution over a long contracted batch runs several times slower than over a few
    samples: a power of two samples within :data:`CORRELATE_CHUNK_MACS` and
    :data:`CORRELATE_CHUNK_BYTES`, once it contracts :data:`CORRELATE_CHUNK_MIN_TERMS` terms, in
    1-D and 2-D (:data:`CORRELATE_CHUNK_MAX_RANK`), in 1-D only chunks of at least
    :data:`CORRELATE_CHUNK_MIN_SAMPLES_1D` samples.
    Winograd's products keep a chunk's transformed tiles in the cache: about
    :data:`WINOGRAD_CHUNK_BYTES` of input. Shapes are one group's (``dW`` runs per group)."""
    n, in_shape, out_shape = problem.x_shape[0], problem.x_shape[1:-1], problem.geometry.out_shape
    c_in, c_out = problem.x_shape[-1] // problem.groups, problem.w_shape[-1] // problem.groups
    itemsize = np.dtype(problem.dtype).itemsize
    if formula == "winograd":
        return max(1, WINOGRAD_CHUNK_BYTES // max(1, math.prod(in_shape) * c_in * itemsize))
    if formula != "xla" or len(out_shape) > CORRELATE_CHUNK_MAX_RANK:
        return 0
    if n * math.prod(out_shape) <= CORRELATE_CHUNK_MIN_TERMS:
        return 0
    macs = max(1, math.prod(out_shape) * c_in * c_out)  # per sample and tap
    size = max(1, (math.prod(in_shape) * c_in + math.prod(out_shape) * c_out) * itemsize)
    fits = max(1, min(CORRELATE_CHUNK_MACS // macs, CORRELATE_CHUNK_BYTES // size))
    chunk = 1 << (fits.bit_length() - 1)
    return 0 if len(out_shape) == 1 and chunk < CORRELATE_CHUNK_MIN_SAMPLES_1D else chunk
