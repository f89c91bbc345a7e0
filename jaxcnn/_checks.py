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
    """Normalises an int or tuple of ints to sorted non-negative axes of an ndim array."""
    axes = (value,) if isinstance(value, (int, np.integer)) else value
    if not isinstance(axes, (tuple, list)) or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes
    ):
        raise TypeError(f"{op}: `{name}` must be an int or a tuple of ints, got {value!r}.")
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


# --------------------------------------------------------------------------- training settings and data
# Host-side checks of fit's settings and datasets (Python numbers and NumPy arrays), run before any work.

#: PRNG seeds: jax.random.PRNGKey takes a signed 64-bit integer.
SEED_RANGE = (-(2**63), 2**63)


def number(op: str, name: str, value: Any, low: float = -np.inf, high: float = np.inf,
           low_open: bool = False) -> float:
    """``value`` as a float, or an error naming ``op`` and ``name``: it must be a real
    number (not a bool), finite, ``>= low`` (``> low`` when ``low_open``) and ``< high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: `{name}` must be a number, got {value!r} ({type(value).__name__}).")
    interval = f"{'(' if low_open else '['}{low:g}, {high:g})"
    if not (np.isfinite(value) and (value > low if low_open else value >= low) and value < high):
        raise ValueError(f"{op}: `{name}` must be a finite number in {interval}, got {value!r}.")
    return float(value)


def integer(op: str, name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int, or an error naming ``op`` and ``name``: an int (not a bool, not
    a float such as 2.5), ``>= low`` and, when given, ``< high``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: `{name}` must be an int, got {value!r} ({type(value).__name__}).")
    if value < low or high is not None and value >= high:
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{op}: `{name}` must be an int {bound}, got {value}.")
    return int(value)


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
