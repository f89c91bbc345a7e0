"""Weight initialisers (the lectures' "weight initialization": LeCun, Glorot/Xavier, He).

An initialiser is a callable ``init(key, shape, dtype, fan_in, fan_out) -> array``. The
layer computes the fans from its own layout, so one initialiser serves dense weights
``(n_out, n_in)`` and conv kernels ``(*window, C_in, C_out)`` alike, and a connection
table (LeNet-5's C3) counts only the inputs that really feed an output map.

Layers also take ``jax.nn.initializers`` functions, ``init(key, shape, dtype)``, directly
(:func:`draw` tells the two apart by how many arguments they require). Those compute the
fans from the shape themselves, assuming ``(..., in, out)``: a conv kernel
``(*window, C_in, C_out)`` already is, and a dense weight is drawn as ``(n_in, n_out)``
and transposed, so ``jax.nn.initializers.he_normal()`` means fan-in ``n_in`` in both.

Variance scaling draws with variance ``scale / n`` where ``n`` is ``fan_in``,
``fan_out`` or their mean:

=================  ======  ========
initialiser        scale   n
=================  ======  ========
``lecun_*``        1       fan_in
``glorot_*``       1       (fan_in + fan_out) / 2
``he_*``           2       fan_in
=================  ======  ========

``*_normal`` draws from a normal distribution truncated at two standard deviations
(rescaled so the variance is exact, as in ``jax.nn.initializers``); ``*_uniform`` from
``U(−√(3 scale/n), √(3 scale/n))``.

>>> import jax
>>> w = glorot_uniform()(jax.random.PRNGKey(0), (4, 3), "float32", 3, 4)
>>> bool(abs(w).max() <= (6 / 7) ** 0.5)
True
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp


class Initializer(Protocol):
    def __call__(self, key: jax.Array, shape: tuple[int, ...], dtype: Any, fan_in: int, fan_out: int) -> jax.Array: ...


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """Draws with variance ``scale / n`` (see the module docstring)."""
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"variance_scaling: `mode` must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}.")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"variance_scaling: `distribution` must be 'normal' or 'uniform', got {distribution!r}.")

    def init(key, shape, dtype, fan_in, fan_out):
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(n, 1)
        if distribution == "uniform":
            limit = math.sqrt(3 * variance)
            return jax.random.uniform(key, shape, dtype, -limit, limit)
        # a normal truncated at ±2, divided by its own standard deviation (≈ 0.8796)
        std = math.sqrt(variance) / 0.87962566103423978
        return jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype) * jnp.asarray(std, dtype)

    return init


def lecun_normal() -> Initializer:
    return variance_scaling(1.0, "fan_in", "normal")


def lecun_uniform() -> Initializer:
    return variance_scaling(1.0, "fan_in", "uniform")


def glorot_normal() -> Initializer:
    return variance_scaling(1.0, "fan_avg", "normal")


def glorot_uniform() -> Initializer:
    return variance_scaling(1.0, "fan_avg", "uniform")


def he_normal() -> Initializer:
    return variance_scaling(2.0, "fan_in", "normal")


def he_uniform() -> Initializer:
    return variance_scaling(2.0, "fan_in", "uniform")


xavier_normal, xavier_uniform = glorot_normal, glorot_uniform


def normal(stddev: float = 1e-2) -> Initializer:
    """``N(0, stddev²)``, ignoring the fans."""
    return lambda key, shape, dtype, fan_in, fan_out: jax.random.normal(key, shape, dtype) * jnp.asarray(stddev, dtype)


def uniform(limit: float) -> Initializer:
    """``U(−limit, limit)``, ignoring the fans."""
    return lambda key, shape, dtype, fan_in, fan_out: jax.random.uniform(key, shape, dtype, -limit, limit)


def constant(value: float) -> Initializer:
    return lambda key, shape, dtype, fan_in, fan_out: jnp.full(shape, value, dtype)


def zeros() -> Initializer:
    return constant(0.0)


def from_jax(init: Callable[[jax.Array, tuple, Any], jax.Array]) -> Initializer:
    """Adapts a ``jax.nn.initializers`` style ``init(key, shape, dtype)`` (fans ignored)."""
    return lambda key, shape, dtype, fan_in, fan_out: init(key, shape, dtype)


def draw(init: Callable, key: jax.Array, shape: tuple[int, ...], dtype: Any, fan_in: float, fan_out: float, *,
         transposed: bool = False) -> jax.Array:
    """Calls a jaxcnn initialiser with the fans, or a ``jax.nn.initializers`` one without.

    ``transposed=True`` says that ``shape`` is ``(out, in)`` (a dense weight): a jax
    initialiser, which reads ``(..., in, out)``, then draws the transpose.

    Raises:
      TypeError: ``init`` is not callable.
    """
    if not callable(init):
        raise TypeError(f"initializer must be callable as init(key, shape, dtype[, fan_in, fan_out]), got {init!r}.")
    if _takes_fans(init):
        return init(key, shape, dtype, fan_in, fan_out)
    if transposed:
        return jnp.swapaxes(init(key, (*shape[:-2], shape[-1], shape[-2]), dtype), -1, -2)
    return init(key, shape, dtype)


def _takes_fans(init: Callable) -> bool:
    """Whether ``init`` requires the five arguments of a jaxcnn initialiser (jax's require
    two: ``key, shape``; ``dtype`` and ``out_sharding`` have defaults)."""
    try:
        parameters = inspect.signature(init).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    return len(required) >= 4
