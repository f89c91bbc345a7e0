"""Trace-time input validation shared by the ops, the references and the layers.

Every check looks only at static shapes and dtypes, so it runs while JAX traces and
fails before XLA sees anything. Each message says the rule, what was received and how
to fix it, naming the op and the argument.
"""

from __future__ import annotations

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
