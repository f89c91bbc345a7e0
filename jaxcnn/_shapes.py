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

from typing import NamedTuple, Sequence, Union

import numpy as np

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
            pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError):
            pairs = ()
        if len(pairs) != n:
            raise ValueError(
                f"{op}: `padding` must be 'VALID', 'SAME', 'FULL', an int, or {n} (low, high) "
                f"pairs (one per spatial axis), got {padding!r}."
            )
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
