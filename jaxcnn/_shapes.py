"""Window, stride, padding and output-size arithmetic for sliding-window ops.

One place for the geometry used by the convolution and pooling ops *and* by shape
inference in the layers, so that ``init`` and ``apply`` can never disagree.

Along one spatial axis with input size ``n``, window ``k``, dilation ``d``, stride ``s``
and padding ``(lo, hi)``, the dilated window is ``k_d = (k − 1) d + 1`` and

    out = ⌊(n + lo + hi − k_d) / s⌋ + 1.

Padding forms:

* ``"VALID"``: no padding.
* ``"SAME"``: ``out = ⌈n / s⌉``, total padding ``max((out − 1) s + k_d − n, 0)`` split with
  the extra element at the end (as ``lax`` and TensorFlow do).
* ``"FULL"``: ``k_d − 1`` on each side (the "full" convolution of the lectures).
* an int ``p``: ``(p, p)`` on every axis.
* one ``(lo, hi)`` pair per spatial axis.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple, Sequence, Union

import numpy as np

from jaxcnn import _checks

Padding = Union[str, int, Sequence[Sequence[int]]]


def spatial_tuple(op: str, name: str, value, n: int, minimum: int = 1) -> tuple[int, ...]:
    """An int or a length-n sequence of ints, as a tuple, each at least ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        values = (int(value),) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            values = ()
        if len(values) != n or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
        ):
            raise TypeError(
                f"{op}: `{name}` must be an int or a sequence of {n} ints (one per spatial "
                f"axis), got {value!r}."
            )
        values = tuple(int(v) for v in values)
    if any(v < minimum for v in values):
        raise ValueError(f"{op}: `{name}` must be >= {minimum} on every axis, got {value!r}.")
    return values


def dilated(window: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """The extent of a dilated window, ``(k − 1) d + 1`` per axis."""
    return tuple((k - 1) * d + 1 for k, d in zip(window, dilation))


def offsets(window: Sequence[int]):
    """The window offsets ``k`` in window order: row-major, the last axis fastest (the
    order of ``w.reshape(-1, C_out)`` and of max pooling's arg-max index)."""
    return itertools.product(*(range(k) for k in window))


def padding_pairs(
    op: str,
    padding: Padding,
    in_shape: Sequence[int],
    window: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
) -> tuple[tuple[int, int], ...]:
    """Resolves a padding form into one ``(lo, hi)`` pair per spatial axis."""
    n = len(in_shape)
    extent = dilated(window, dilation)
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0),) * n
        if mode == "FULL":
            return tuple((k - 1, k - 1) for k in extent)
        if mode == "SAME":
            pairs = []
            for size, k, s in zip(in_shape, extent, stride):
                out = -(-size // s)
                total = max((out - 1) * s + k - size, 0)
                pairs.append((total // 2, total - total // 2))
            return tuple(pairs)
        raise ValueError(
            f"{op}: unknown `padding` {padding!r}; use 'VALID', 'SAME', 'FULL', an int, "
            f"or {n} (low, high) pairs."
        )
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        pairs = ((int(padding), int(padding)),) * n
    else:
        try:
            pairs = tuple((lo, hi) for lo, hi in padding)
        except (TypeError, ValueError):
            pairs = ()
        if len(pairs) != n:
            raise ValueError(
                f"{op}: `padding` must be 'VALID', 'SAME', 'FULL', an int, or {n} (low, high) "
                f"pairs (one per spatial axis), got {padding!r}."
            )
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for pair in pairs for v in pair):
            raise TypeError(  # int(1.5) would truncate silently
                f"{op}: `padding` must be {n} (low, high) pairs of ints, got {padding!r}; a fractional "
                f"(or bool) padding is refused rather than truncated."
            )
        pairs = tuple((int(lo), int(hi)) for lo, hi in pairs)
    if any(lo < 0 or hi < 0 for lo, hi in pairs):
        raise ValueError(f"{op}: `padding` must not be negative, got {padding!r}.")
    return pairs


def output_shape(
    op: str,
    in_shape: Sequence[int],
    window: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
) -> tuple[int, ...]:
    """Spatial output shape; raises ValueError when a window does not fit."""
    out = []
    for axis, (size, k, kd, s, (lo, hi)) in enumerate(
        zip(in_shape, window, dilated(window, dilation), stride, pads)
    ):
        padded = size + lo + hi
        if padded < kd:
            raise ValueError(
                f"{op}: the window ({k} with dilation {dilation[axis]}, extent {kd}) is larger "
                f"than the padded input ({size} + {lo} + {hi} = {padded}) along spatial axis "
                f"{axis}; use a smaller window or more padding."
            )
        out.append((padded - kd) // s + 1)
    return tuple(out)


class Geometry(NamedTuple):
    """Resolved settings of one sliding-window op over ``len(window)`` spatial axes."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    out_shape: tuple[int, ...]


def geometry(
    op: str,
    in_shape: Sequence[int],
    window,
    stride,
    padding: Padding,
    dilation=1,
) -> Geometry:
    """Validates and resolves window/stride/padding/dilation for a spatial input shape."""
    n = len(in_shape)
    window = spatial_tuple(op, "window", window, n)
    stride = spatial_tuple(op, "stride", stride, n)
    dilation = spatial_tuple(op, "dilation", dilation, n)
    pads = padding_pairs(op, padding, in_shape, window, stride, dilation)
    return Geometry(window, stride, dilation, pads, output_shape(op, in_shape, window, stride, dilation, pads))


def unreached(in_shape: Sequence[int], geom: Geometry) -> tuple[int, ...]:
    """Per spatial axis, how many trailing elements of the padded input no window reaches.

    With a stride ``s`` that does not divide ``n + lo + hi − k_d``, the last
    ``(n + lo + hi − k_d) mod s`` padded elements are never read: the forward ignores
    them and the backward gives them zero gradient (the transposed ops must pad or crop
    for them to recover the input's shape).
    """
    return tuple(
        (size + lo + hi - kd) % s
        for size, kd, s, (lo, hi) in zip(in_shape, dilated(geom.window, geom.dilation), geom.stride, geom.pads)
    )


def spatial_length(op: str, name: str, value, n: int, source: str) -> None:
    """Raises ValueError when a per-axis setting is a sequence whose length is not ``n``.

    ``source`` says where ``n`` comes from, e.g. ``"`x` of shape (2, 8, 8, 3) has 2"``.
    Ints (one value for every axis) and non-sequences pass through to
    :func:`spatial_tuple`, which checks the values themselves.
    """
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return
    if len(value) != n:
        raise ValueError(
            f"{op}: `{name}` has {len(value)} entries but {source} spatial axes; give one "
            f"entry per spatial axis, or a single int for all of them, got {value!r}."
        )


def transpose_geometry(op: str, in_shape: Sequence[int], window, stride, padding: Padding, dilation=1,
                       output_padding=0) -> Geometry:
    """Geometry of a transposed ("fractionally strided") convolution of stride ``s``.

    The transposed convolution upsamples its input of size ``n`` to ``(n − 1) s + 1``
    (``s − 1`` zeros between neighbours), pads it by ``(p_lo, p_hi)`` and correlates it
    with a window of size ``k`` dilated by ``d`` (extent ``k_d = (k − 1) d + 1``) at
    stride 1, so its output has size ``(n − 1) s + 1 + p_lo + p_hi − k_d + 1``.

    ``padding`` names the padding of the strided convolution whose input-gradient the
    transposed convolution is, as ``lax.conv_transpose(..., use_consistent_padding=True)``
    (and PyTorch) read it; ``output_padding`` ``a`` (PyTorch's, each ``a < s`` or ``a < d``)
    adds ``a`` more positions at the high end, ``p_hi`` growing by ``a``:

    * an int or ``(lo, hi)`` pairs, each at most ``k_d − 1``: ``(p_lo, p_hi) = (k_d − 1 − lo,
      k_d − 1 − hi + a)``, output ``(n − 1) s + k_d − lo − hi + a`` (PyTorch's
      ``(n − 1) s − 2p + d (k − 1) + a + 1`` for an int ``p``);
    * ``"FULL"``: ``lo = hi = k_d − 1``, so ``p = (0, a)``, output ``(n − 1) s − k_d + 2 + a``;
    * ``"VALID"`` and ``"SAME"``: as ``lax.conv_transpose`` and Keras' ``Conv2DTranspose``,
      outputs ``n s + max(k_d − s, 0) + a`` and ``n s + a``. For ``k_d ≥ s``, ``"VALID"`` is
      the pairs ``(0, 0)`` (output ``(n − 1) s + k_d + a``); for ``k_d < s`` both strings add
      ``s − k_d`` trailing zeros of padding (output elements that only the bias reaches).

    Returns:
      A :class:`Geometry` whose ``pads`` are ``(p_lo, p_hi)``, the padding of the
      *upsampled* input, and whose ``dilation`` is the kernel's.
    """
    n = len(in_shape)
    window = spatial_tuple(op, "window", window, n)
    stride = spatial_tuple(op, "stride", stride, n)
    dilation = spatial_tuple(op, "dilation", dilation, n)
    output_padding = spatial_tuple(op, "output_padding", output_padding, n, minimum=0)
    for axis, (a, s, d) in enumerate(zip(output_padding, stride, dilation)):
        if a >= s and a >= d:
            raise ValueError(
                f"{op}: `output_padding` must be smaller than the stride or the dilation on every axis "
                f"(PyTorch's rule), got output_padding {output_padding[axis]} with stride {s} and dilation {d} "
                f"on spatial axis {axis}; the extra positions would be ones no input reaches."
            )
    extent = dilated(window, dilation)
    if 0 in in_shape:  # (0 − 1)·s + 1 is negative: there is no upsampled input to pad
        raise ValueError(
            f"{op}: the input has size 0 along spatial axis {list(in_shape).index(0)} (spatial shape "
            f"{tuple(in_shape)}); a transposed convolution needs at least one input position per axis."
        )
    if isinstance(padding, str) and padding.upper() in ("VALID", "SAME"):
        conv_pads = []
        for k, s in zip(extent, stride):
            total = max(k - s, 0)  # total padding of the conv of an n·s input ("SAME")
            lo, hi = (total // 2, total - total // 2) if padding.upper() == "SAME" else (0, 0)
            conv_pads.append((lo, hi - max(s - k, 0)))
    else:
        conv_pads = padding_pairs(op, padding, in_shape, window, stride, dilation)
        if any(lo > k - 1 or hi > k - 1 for (lo, hi), k in zip(conv_pads, extent)):
            raise ValueError(
                f"{op}: `padding` is the padding of the convolution being transposed and must "
                f"be at most k_d − 1 = {tuple(k - 1 for k in extent)} on every axis (k_d = (k − 1)·d + 1, "
                f"the dilated window), got {padding!r}; use less padding or a larger window."
            )
    pads = tuple((k - 1 - lo, k - 1 - hi + a) for (lo, hi), k, a in zip(conv_pads, extent, output_padding))
    out = tuple((size - 1) * s + 1 + lo + hi - k + 1 for size, s, k, (lo, hi) in zip(in_shape, stride, extent, pads))
    for axis, size in enumerate(out):
        if size < 1:
            raise ValueError(
                f"{op}: the output would be empty along spatial axis {axis}: an input of size "
                f"{in_shape[axis]} upsampled by {stride[axis]} and padded by {pads[axis]} is "
                f"smaller than the window {window[axis]} (padding {padding!r}); use less "
                f"padding, a smaller window or a larger input."
            )
    return Geometry(window, stride, dilation, pads, out)


def pool_geometry(op: str, in_shape: Sequence[int], window, stride, padding: Padding, dilation=1,
                  ceil_mode: bool = False) -> Geometry:
    """:func:`geometry` for pooling: ``stride=None`` means ``window``, and every window must
    cover at least one input element (:func:`padding_only_window`), so that every max and
    mean is over at least one real element.

    ``ceil_mode`` (PyTorch's): the output size rounds up, ``⌈(n + lo + hi − k_d) / s⌉ + 1``,
    less one where the last window would start past the input and its low padding
    (``(o − 1) s ≥ n + lo``); the windows that then reach beyond the padded input see the
    extra positions as padding, added to ``hi`` in the returned ``pads``."""
    geom = geometry(op, in_shape, window, window if stride is None else stride, padding, dilation)
    if _checks.flag(op, "ceil_mode", ceil_mode):
        pads, out = [], []
        for n, kd, s, (lo, hi) in zip(in_shape, dilated(geom.window, geom.dilation), geom.stride, geom.pads):
            o = -(-(n + lo + hi - kd) // s) + 1
            if (o - 1) * s >= n + lo:
                o -= 1
            pads.append((lo, max(hi, (o - 1) * s + kd - n - lo)))
            out.append(o)
        geom = geom._replace(pads=tuple(pads), out_shape=tuple(out))
    found = padding_only_window(in_shape, geom)
    if found is not None:
        axis, i, positions = found
        raise ValueError(
            f"{op}: a window covers padding only: with padding {padding!r} (pads {geom.pads}), window "
            f"{geom.window}, dilation {geom.dilation} and stride {geom.stride} on an input of spatial size "
            f"{tuple(in_shape)}, output position {i} along spatial axis {axis} reads input positions "
            f"{positions}, none inside [0, {in_shape[axis]}); use less padding or a smaller dilation."
        )
    return geom


def padding_only_window(in_shape: Sequence[int], geom: Geometry):
    """The first window that reads no input element, as ``(axis, output position, its input
    positions)``, or None when every window reads one.

    Along an axis, output ``i`` reads the input positions ``s·i − lo + d·j`` for the window
    offsets ``j < k`` (padding below 0 and from ``n`` on); a window covers padding only if on
    some axis none of its positions lies in ``[0, n)``. For ``d = 1`` that is a padding side
    of at least ``k`` that some window reaches; with dilation also a window whose entries
    step over the input (``n < d``)."""
    for axis, (n, k, s, d, o, (lo, _)) in enumerate(
        zip(in_shape, geom.window, geom.stride, geom.dilation, geom.out_shape, geom.pads)
    ):
        positions = np.arange(o)[:, None] * s - lo + np.arange(k)[None, :] * d
        reads = np.any((positions >= 0) & (positions < n), axis=1)
        if not reads.all():
            i = int(np.argmin(reads))
            return axis, i, positions[i].tolist()
    return None


def upsampled_shape(op: str, in_shape: Sequence[int], factor) -> tuple[int, ...]:
    """Spatial shape after inserting ``S − 1`` zeros between neighbours: ``(n − 1) S + 1``
    (0 for an empty axis)."""
    factor = spatial_tuple(op, "factor", factor, len(in_shape))
    return tuple((n - 1) * s + 1 if n else 0 for n, s in zip(in_shape, factor))  # nothing to spread: empty


def downsampled_shape(op: str, in_shape: Sequence[int], factor) -> tuple[int, ...]:
    """Spatial shape after keeping every ``S``-th element (the first included): ``⌈n / S⌉``."""
    factor = spatial_tuple(op, "factor", factor, len(in_shape))
    return tuple(-(-n // s) for n, s in zip(in_shape, factor))


def adaptive_output_shape(op: str, in_shape: Sequence[int], output_size) -> tuple[int, ...]:
    """The spatial output shape of adaptive pooling (PyTorch's ``output_size``): an int for
    every axis, or one entry per spatial axis, each an int ``>= 1`` or ``None`` (the input's
    size along that axis, as PyTorch's ``None``). Every input axis must be non-empty: an
    empty axis would leave every window empty."""
    n = len(in_shape)
    entries = (output_size,) * n if not hasattr(output_size, "__len__") else tuple(output_size)
    if len(entries) != n or not all(
            e is None or (isinstance(e, (int, np.integer)) and not isinstance(e, bool)) for e in entries):
        raise TypeError(
            f"{op}: `output_size` must be an int or a sequence of {n} ints or None (one per spatial axis), "
            f"got {output_size!r}."
        )
    out = tuple(size if e is None else int(e) for e, size in zip(entries, in_shape))
    if any(m < 1 for m in out):
        raise ValueError(f"{op}: `output_size` must be >= 1 on every axis, got {output_size!r}.")
    if 0 in in_shape:
        raise ValueError(
            f"{op}: the input has size 0 along spatial axis {list(in_shape).index(0)} (spatial shape "
            f"{tuple(in_shape)}); adaptive pooling needs at least one input position per axis."
        )
    return out


def adaptive_windows(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive windows along an axis of input size ``n`` and output size ``m``:
    output ``i`` reads ``[start_i, end_i)``, ``start_i = ⌊i·n / m⌋``, ``end_i = ⌈(i + 1)·n / m⌉``
    (``start_index``/``end_index`` of ATen's ``AdaptiveAveragePooling``), exact in integers.

    The windows cover ``[0, n)`` in order; neighbours overlap by one position where
    ``(i + 1)·n / m`` is not an integer, and when ``m > n`` several windows read one position."""
    i = np.arange(m)
    return i * n // m, -(-(i + 1) * n // m)
