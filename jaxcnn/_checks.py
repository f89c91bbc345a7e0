"""Trace-time input validation shared by the ops, the references and the layers.

Every check looks only at static shapes and dtypes, so it runs while JAX traces and
fails before XLA sees anything. Each message says the rule, what was received and how
to fix it, naming the op and the argument.
"""

from __future__ import annotations

import math
from typing import Any, Optional

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
# A setting is a Python value fixed at trace time (a stride, an eps, a flag). The NumPy
# scalar of the same kind is accepted wherever the Python one is (np.float32(0.1) for a
# float, np.int64(2) for an int, np.True_ for a flag), bools never count as numbers, and a
# float setting must be finite: an inf or NaN eps, slope or smoothing gives no error later,
# only an output of zeros, β or NaN.


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def integer(op: str, name: str, value: Any, *, low: Optional[int] = None) -> int:
    """An int setting (a Python or NumPy integer, not a bool), at least ``low`` where given."""
    if not _is_int(value):
        raise TypeError(f"{op}: `{name}` must be a Python int (or a NumPy integer), got {value!r} of type "
                        f"{type(value).__name__}.")
    if low is not None and value < low:
        raise ValueError(f"{op}: `{name}` must be >= {low}, got {value!r}.")
    return int(value)


def finite_float(op: str, name: str, value: Any, *, low: Optional[float] = None, high: Optional[float] = None,
                 rule: Optional[str] = None, meaning: str = "") -> float:
    """A float setting (a Python or NumPy real scalar, not a bool) as a Python float: finite and
    in ``[low, high]`` where given.

    ``rule`` replaces the range's wording in the message (``"must be >= 0 (it is added to the
    variance)"``); ``meaning`` says in the type error what the setting is (``" (the drop
    probability)"``).
    """
    if not (_is_int(value) or isinstance(value, (float, np.floating))):
        raise TypeError(f"{op}: `{name}` must be a Python float{meaning} (or a NumPy floating scalar), got "
                        f"{value!r} of type {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{op}: `{name}` must be a finite number, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        if rule is None:
            rule = (f"must be in [{low}, {high}]" if low is not None and high is not None
                    else f"must be >= {low}" if low is not None else f"must be <= {high}")
        raise ValueError(f"{op}: `{name}` {rule}, got {value!r}.")
    return value


def flag(op: str, name: str, value: Any) -> bool:
    """A bool setting (``True``/``False`` or a NumPy bool), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: `{name}` must be True or False, got {value!r}.")
    return bool(value)
