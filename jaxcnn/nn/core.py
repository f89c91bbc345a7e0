"""The layer type and the combinator algebra.

A layer is a pair of pure functions, as in ``jax.example_libraries.stax`` and optax:

* ``init(key, input_shape) -> (params, output_shape)``
* ``apply(params, x) -> y``

Shapes include the batch axis (any int, e.g. ``-1`` for "any batch"). Params are plain
pytrees (dicts, tuples, ``()`` for none), so optax, ``jax.tree_util``, ``jax.jit`` and
checkpointing handle them unchanged. ``Layer`` unpacks like a pair
(``init, apply = serial(...)``); it also carries a ``name``, the ``children`` a
:func:`serial` chain is made of (for :func:`jaxcnn.nn.summary`), and a ``count`` of
trainable parameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]
Params = Any


class _Pair(NamedTuple):
    init: Callable[[jax.Array, Shape], tuple[Params, Any]]
    apply: Callable[[Params, Any], Any]


class Layer(_Pair):
    """``init(key, input_shape) -> (params, output_shape)`` and ``apply(params, x) -> y``."""

    def __new__(cls, init, apply, *, name: str, children: Sequence["Layer"] = (),
                count: Optional[Callable[[Params], int]] = None):
        self = super().__new__(cls, init, apply)
        self.name = name
        self.children = tuple(children)
        self._count = count
        return self

    def count(self, params: Params) -> int:
        """Number of trainable scalars in ``params`` (weights fixed at zero excluded)."""
        if self._count is not None:
            return self._count(params)
        return sum(math.prod(jnp.shape(l)) for l in jax.tree_util.tree_leaves(params))

    def __repr__(self) -> str:
        return f"Layer({self.name})"


def _split(key: jax.Array, n: int):
    return jax.random.split(key, n) if n else []


def serial(*layers: Layer, name: str = "serial") -> Layer:
    """Composes layers left to right: ``apply = fₙ ∘ … ∘ f₁``. Params: a tuple, one per layer."""

    def init(key, input_shape):
        params, shape = [], input_shape
        for layer, k in zip(layers, _split(key, len(layers))):
            p, shape = layer.init(k, shape)
            params.append(p)
        return tuple(params), shape

    def apply(params, x):
        for layer, p in zip(layers, params):
            x = layer.apply(p, x)
        return x

    def count(params):
        return sum(layer.count(p) for layer, p in zip(layers, params))

    return Layer(init, apply, name=name, children=layers, count=count)


def parallel(*layers: Layer, name: str = "parallel") -> Layer:
    """Applies ``layers[i]`` to the i-th element of a tuple input; returns a tuple."""

    def init(key, input_shape):
        _check_tuple_shape("parallel", input_shape, len(layers))
        pairs = [l.init(k, s) for l, k, s in zip(layers, _split(key, len(layers)), input_shape)]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def apply(params, xs):
        return tuple(l.apply(p, x) for l, p, x in zip(layers, params, xs))

    def count(params):
        return sum(layer.count(p) for layer, p in zip(layers, params))

    return Layer(init, apply, name=name, count=count)


def fan_out(n: int) -> Layer:
    """``x ↦ (x, …, x)``, n copies. In the backward pass the n gradients add (Bell)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"fan_out: `n` must be an int >= 1, got {n!r}.")
    return Layer(lambda key, s: ((), (s,) * n), lambda params, x: (x,) * n, name=f"fan_out({n})")


def fan_in_sum() -> Layer:
    """``(x₁, …, xₙ) ↦ Σ xᵢ``; every input must have the same shape."""

    def init(key, input_shapes):
        _check_tuple_shape("fan_in_sum", input_shapes)
        if len({tuple(s) for s in input_shapes}) != 1:
            raise ValueError(
                f"fan_in_sum: every branch must have the same output shape to be added, got "
                f"{', '.join(str(tuple(s)) for s in input_shapes)}."
            )
        return (), input_shapes[0]

    def apply(params, xs):
        return sum(xs[1:], xs[0])

    return Layer(init, apply, name="fan_in_sum")


def fan_in_concat(axis: int = -1) -> Layer:
    """``(x₁, …, xₙ) ↦ concatenate(xᵢ, axis)`` (default: channels, the last axis)."""

    def init(key, input_shapes):
        _check_tuple_shape("fan_in_concat", input_shapes)
        ranks = {len(s) for s in input_shapes}
        ndim = len(input_shapes[0])
        if len(ranks) != 1 or not -ndim <= axis < ndim:
            raise ValueError(f"fan_in_concat: cannot concatenate shapes {list(input_shapes)} along axis {axis}.")
        a = axis % ndim
        rest = {tuple(d for i, d in enumerate(s) if i != a) for s in input_shapes}
        if len(rest) != 1:
            raise ValueError(
                f"fan_in_concat: every branch must agree on all axes but {axis}, got "
                f"{', '.join(str(tuple(s)) for s in input_shapes)}."
            )
        out = list(input_shapes[0])
        out[a] = sum(s[a] for s in input_shapes)
        return (), tuple(out)

    return Layer(init, lambda params, xs: jnp.concatenate(xs, axis), name=f"fan_in_concat(axis={axis})")


def identity() -> Layer:
    """``x ↦ x``."""
    return Layer(lambda key, s: ((), s), lambda params, x: x, name="identity")


def residual(block: Layer) -> Layer:
    """``y = x + block(x)``: ``serial(fan_out(2), parallel(block, identity()), fan_in_sum())``
    written out, with the block's params as its own and a shape check at ``init``.

    The gradient of the skip path adds to the block's ("gradients add at branches", Bell).
    """

    def init(key, input_shape):
        params, shape = block.init(key, input_shape)
        if tuple(shape) != tuple(input_shape):
            raise ValueError(
                f"residual: the block must keep the input shape {tuple(input_shape)} to be added "
                f"to it, but it gives {tuple(shape)}; use SAME padding, stride 1, and as many "
                f"output channels as input channels."
            )
        return params, shape

    def apply(params, x):
        return x + block.apply(params, x)

    return Layer(init, apply, name=f"residual({block.name})", count=block.count)


def dense_block(*layers: Layer) -> Layer:
    """DenseNet-style block (Raj's outline): each layer's output is concatenated, along the
    channels, to everything before it: ``x ← concat(x, layer(x))`` for each layer.
    """
    grow = [
        serial(fan_out(2), parallel(identity(), layer), fan_in_concat(-1), name=f"concat({layer.name})")
        for layer in layers
    ]
    return serial(*grow, name="dense_block")


def _check_tuple_shape(op: str, input_shape, n: Optional[int] = None) -> None:
    ok = isinstance(input_shape, (tuple, list)) and input_shape
    ok = ok and all(isinstance(s, (tuple, list)) for s in input_shape)
    if not ok or (n is not None and len(input_shape) != n):
        want = f"a tuple of {n} shapes" if n is not None else "a tuple of shapes (one per branch)"
        raise ValueError(f"{op}: the input must be {want}, e.g. from fan_out; got input shape {input_shape!r}.")
