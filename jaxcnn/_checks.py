"""Trace-time input validation shared by the ops, the references and the layers.

Every check looks only at static shapes and dtypes, so it runs while JAX traces and
fails before XLA sees anything. Each message says the rule, what was received and how
to fix it, naming the op and the argument.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def float_array(op: str, name: str, x: Any) -> jnp.ndarray:
    """Returns `x` as a JAX array of a real floating dtype, or raises TypeError."""
    try:
        # an array (or tracer) as it is: under eager autodiff, asarray would run a copy per call
        x = x if isinstance(x, jax.Array) else jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"{op}: `{name}` must be an array, got {type(x).__name__}.") from e
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{op}: `{name}` must be a floating-point array (float32, float64 or bfloat16), "
            f"got dtype {x.dtype} with shape {x.shape}. Cast it first, e.g. "
            f"`{name}.astype(jnp.float32)`."
        )
    return x


def same_dtype(op: str, **arrays: Any) -> None:
    """Raises TypeError unless every array given (None skipped) has one dtype."""
    dtypes = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(dtypes.values())) > 1:
        got = ", ".join(f"`{name}` is {dtype}" for name, dtype in dtypes.items())
        raise TypeError(
            f"{op}: all floating arguments must share one dtype, but {got}. "
            f"Cast them to one dtype (jaxcnn never promotes silently)."
        )


def rank(op: str, name: str, x: Any, ndim: int | tuple[int, ...], layout: str) -> None:
    """Raises ValueError unless `x.ndim` is `ndim` (or one of them)."""
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.ndim not in allowed:
        want = " or ".join(str(n) for n in allowed)
        raise ValueError(
            f"{op}: `{name}` must have {want} dimensions {layout}, "
            f"got {x.ndim} dimensions with shape {tuple(x.shape)}."
        )


def min_rank(op: str, name: str, x: Any, ndim: int, layout: str) -> None:
    """Raises ValueError unless `x.ndim >= ndim`."""
    if x.ndim < ndim:
        raise ValueError(
            f"{op}: `{name}` must have at least {ndim} dimension{'s' * (ndim != 1)} {layout}, "
            f"got shape {tuple(x.shape)}."
        )


def shape(op: str, name: str, x: Any, expected: tuple[int, ...], why: str) -> None:
    """Raises ValueError unless `x.shape == expected`; `why` names where it comes from."""
    if tuple(x.shape) != tuple(expected):
        raise ValueError(
            f"{op}: `{name}` must have shape {tuple(expected)} {why}, got {tuple(x.shape)}."
        )


def axis(op: str, name: str, value: Any, ndim: int) -> tuple[int, ...]:
    """Normalises an int or a non-empty tuple of ints to sorted non-negative axes of an ndim array."""
    axes = (value,) if _is_int(value) else value
    if not isinstance(axes, (tuple, list)) or not all(_is_int(a) for a in axes):
        raise TypeError(f"{op}: `{name}` must be an int or a tuple of ints, got {value!r}.")
    if not axes:  # a mean over no axis is the element itself: nothing would be normalised
        raise ValueError(f"{op}: `{name}`={value!r} names no axis; give at least one axis to reduce over.")
    axes = tuple(int(a) for a in axes)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{op}: `{name}`={value!r} is out of range for an array with {ndim} dimensions; "
                f"use values in [{-ndim}, {ndim - 1}]."
            )
    normalised = tuple(sorted(a % ndim for a in axes))
    if len(set(normalised)) != len(normalised):
        raise ValueError(f"{op}: `{name}`={value!r} repeats an axis.")
    return normalised


def single_axis(op: str, name: str, value: Any, ndim: int) -> int:
    """One axis of an ndim array (an int, not a tuple), normalised to be non-negative."""
    if not _is_int(value):
        raise TypeError(f"{op}: `{name}` must be one int (a single axis), got {value!r}.")
    return axis(op, name, value, ndim)[0]


# --------------------------------------------------------------------------- Python settings
# A setting is a Python value fixed at trace time or before a run (an eps, a slope, a seed, a
# flag): the ops' and fit's settings all pass through these three. The NumPy scalar of the same
# kind is accepted wherever the Python one is (np.float32(0.1) for a number, np.int64(2) for an
# int, np.True_ for a flag), a bool never counts as a number, and a number must be finite: an inf
# or NaN eps, slope or smoothing raises no error later, it only makes the outputs 0, β or NaN.

#: PRNG seeds: jax.random.PRNGKey takes a signed 64-bit integer.
SEED_RANGE = (-(2**63), 2**63)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def number(op: str, name: str, value: Any, low: float = -np.inf, high: float = np.inf,
           low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float, or an error naming ``op`` and ``name``: it must be a real
    number (not a bool), finite, ``>= low`` (``> low`` when ``low_open``) and ``< high``
    (``<= high`` unless ``high_open``)."""
    if not (_is_int(value) or isinstance(value, (float, np.floating))):
        raise TypeError(f"{op}: `{name}` must be a number, got {value!r} ({type(value).__name__}).")
    value = value.item() if isinstance(value, np.generic) else value  # shown as 0.1, not np.float32(0.1)
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (np.isfinite(value) and above and below):
        if low == -np.inf and high == np.inf:
            raise ValueError(f"{op}: `{name}` must be a finite number, got {value!r}.")
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{op}: `{name}` must be a finite number in {interval}, got {value!r}.")
    return float(value)


def integer(op: str, name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int, or an error naming ``op`` and ``name``: an int (not a bool, not
    a float such as 2.5), ``>= low`` and ``< high`` where given."""
    if not _is_int(value):
        raise TypeError(f"{op}: `{name}` must be an int, got {value!r} ({type(value).__name__}).")
    if (low is not None and value < low) or (high is not None and value >= high):
        bound = f">= {low}" if high is None else f"< {high}" if low is None else f"in [{low}, {high})"
        raise ValueError(f"{op}: `{name}` must be an int {bound}, got {value}.")
    return int(value)


def flag(op: str, name: str, value: Any) -> bool:
    """A bool setting (``True``/``False`` or a NumPy bool), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: `{name}` must be True or False, got {value!r}.")
    return bool(value)


# --------------------------------------------------------------------------- training data
# Host-side checks of fit's datasets (NumPy arrays), run before any work.


def examples(op: str, x_name: str, x: Any, y_name: str, y: Any, num_classes: int) -> None:
    """Same number of inputs and labels, at least one, labels 1-D class ids in range, and
    every input value finite (one NaN pixel makes every loss after it NaN)."""
    from jaxcnn.data import check_labels

    if len(x) != len(y):
        raise ValueError(f"{op}: `{x_name}` has {len(x)} examples but `{y_name}` has {len(y)} labels; "
                         f"they must pair one to one.")
    if len(x) == 0:
        raise ValueError(f"{op}: `{x_name}` is empty; it needs at least one example.")
    if np.ndim(y) != 1:
        raise ValueError(f"{op}: `{y_name}` must be a 1-D array of class ids, got shape {np.shape(y)}.")
    check_labels(f"{op}: `{y_name}`", np.asarray(y), num_classes)
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.inexact):
        bad = ~np.isfinite(x)
        if bad.any():
            index = np.unravel_index(np.argmax(bad), x.shape)
            raise ValueError(f"{op}: `{x_name}` holds {int(bad.sum())} non-finite value(s) (the first: "
                             f"{x[index]} at index {tuple(int(i) for i in index)}); every input must be finite. "
                             f"Fix or drop that example.")


def input_shape(op: str, shape: Any, example_shape: tuple[int, ...] | None = None, x_name: str = "x"
                ) -> tuple[int, ...]:
    """``shape`` (``(-1, *dims)``, the batch axis first) as ``(-1, *dims)``, or an error unless
    its ``dims`` are positive ints and, given ``example_shape``, hold as many values as one
    example of ``x_name``."""
    if not isinstance(shape, (tuple, list)) or len(shape) < 2 or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape) or min(shape[1:]) < 1:
        raise ValueError(f"{op}: `input_shape` must be (-1, *dims) with positive int dims, got {shape!r}.")
    if example_shape is not None and math.prod(shape[1:]) != math.prod(example_shape):
        raise ValueError(f"{op}: `input_shape` {tuple(shape)} does not fit the examples of `{x_name}`, each of shape "
                         f"{tuple(example_shape)}: {math.prod(shape[1:])} values per example expected, "
                         f"{math.prod(example_shape)} given.")
    return (-1, *(int(d) for d in shape[1:]))


def run_location(checkpoint_path: str | None, resume: bool, overwrite: bool) -> None:
    """Before any work: the checkpoint can be written there; ``resume`` needs one to exist,
    and an existing one is replaced only with ``overwrite``."""
    import os

    from jaxcnn import checkpoint

    if resume and (checkpoint_path is None or not os.path.exists(checkpoint_path)):
        raise FileNotFoundError(f"fit: resume=True but there is no checkpoint at {checkpoint_path!r}.")
    if checkpoint_path is None:
        return
    checkpoint.check_writable(checkpoint_path)
    if os.path.exists(checkpoint_path) and not resume and not overwrite:
        raise ValueError(
            f"fit: {checkpoint_path} already holds a checkpoint; continue it with resume=True "
            f"(--resume) or start over with overwrite=True (--overwrite)."
        )
