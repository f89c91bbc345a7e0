"""Layers over :mod:`jaxcnn.ops`: constructors that close over their settings.

Every constructor takes a keyword ``ops`` (default :mod:`jaxcnn.ops`, the hand-derived
rules; pass :mod:`jaxcnn.reference` for plain autodiff), so whole models can be
differentiated both ways and compared. Shapes include the batch axis. Shape inference
uses the ops' own geometry helpers (:mod:`jaxcnn._shapes`), so a bad kernel, stride or
padding fails at ``init``, before any training, with the op's message.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import _shapes
from jaxcnn.nn import initializers
from jaxcnn.nn.core import Layer, Shape


def _backend(ops: Optional[ModuleType]) -> ModuleType:
    if ops is None:
        import jaxcnn.ops as ops
    return ops


def _rank_check(layer: str, input_shape: Shape, ndim: int, layout: str) -> None:
    if len(input_shape) != ndim:
        raise ValueError(
            f"{layer}: input shape must have {ndim} dimensions {layout}, got {tuple(input_shape)}."
        )


def _spatial_rank(layer: str, window, input_shape: Shape) -> int:
    """The number of spatial axes: from a window tuple, else from the input shape."""
    if isinstance(window, (int, np.integer)):
        n = len(input_shape) - 2
        if n not in (1, 2, 3):
            raise ValueError(
                f"{layer}: input shape must be (N, *spatial, C) with 1 to 3 spatial axes, "
                f"got {tuple(input_shape)}."
            )
        return n
    n = len(tuple(window))
    _rank_check(layer, input_shape, n + 2, f"(N, *spatial, C) for a {n}-D window {tuple(window)}")
    return n


# --------------------------------------------------------------------------- parametric


def Dense(
    n_out: int,
    *,
    use_bias: bool = True,
    w_init: initializers.Initializer = initializers.lecun_normal(),
    b_init: initializers.Initializer = initializers.zeros(),
    dtype: Any = jnp.float32,
    ops: Optional[ModuleType] = None,
) -> Layer:
    """Fully connected layer ``y = x Wᵀ + b`` with ``W`` of shape ``(n_out, n_in)``.

    Params: ``{"w": (n_out, n_in), "b": (n_out,)}`` (no ``"b"`` when ``use_bias=False``).
    """
    ops = _backend(ops)
    if not isinstance(n_out, (int, np.integer)) or n_out < 1:
        raise ValueError(f"Dense: `n_out` must be a positive int, got {n_out!r}.")

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Dense: input shape must be (..., n_in), got {tuple(input_shape)}.")
        n_in = input_shape[-1]
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (n_out, n_in), dtype, n_in, n_out)}
        if use_bias:
            params["b"] = b_init(kb, (n_out,), dtype, n_in, n_out)
        return params, (*input_shape[:-1], n_out)

    def apply(params, x):
        return ops.dense(x, params["w"], params.get("b"))

    return Layer(init, apply, name=f"Dense({n_out})")


def Conv(
    features: int,
    window: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: _shapes.Padding = "VALID",
    dilation: int | Sequence[int] = 1,
    connections: Optional[np.ndarray] = None,
    method: str = "auto",
    use_bias: bool = True,
    w_init: initializers.Initializer = initializers.lecun_normal(),
    b_init: initializers.Initializer = initializers.zeros(),
    dtype: Any = jnp.float32,
    ops: Optional[ModuleType] = None,
) -> Layer:
    """Convolution layer (:func:`jaxcnn.ops.conv`), 1-D to 3-D by the input's rank.

    Params: ``{"w": (*window, C_in, features), "b": (features,)}``. With a connection
    table ``M`` (``(C_in, features)``, e.g. LeNet-5's C3) the absent weights are
    initialised to zero and never receive a gradient; the fan-in and the parameter
    count include only the connected ones.
    """
    ops = _backend(ops)
    if not isinstance(features, (int, np.integer)) or features < 1:
        raise ValueError(f"Conv: `features` must be a positive int, got {features!r}.")
    table = None if connections is None else np.asarray(connections, bool)

    def init(key, input_shape):
        _spatial_rank("Conv", window, input_shape)
        geom = _shapes.geometry("Conv", input_shape[1:-1], window, stride, padding, dilation)
        c_in = input_shape[-1]
        if table is not None and table.shape != (c_in, features):
            raise ValueError(
                f"Conv: `connections` must have shape (C_in, C_out) = ({c_in}, {features}), "
                f"got {table.shape}."
            )
        taps = math.prod(geom.window)
        links = c_in * features if table is None else int(table.sum())
        fan_in, fan_out = taps * links / features, taps * links / c_in
        kw, kb = jax.random.split(key)
        w = w_init(kw, (*geom.window, c_in, features), dtype, fan_in, fan_out)
        if table is not None:
            w = w * jnp.asarray(table, dtype)
        params = {"w": w}
        if use_bias:
            params["b"] = b_init(kb, (features,), dtype, fan_in, fan_out)
        return params, (input_shape[0], *geom.out_shape, features)

    def apply(params, x):
        return ops.conv(x, params["w"], params.get("b"), stride=stride, padding=padding,
                        dilation=dilation, connections=table, method=method)

    def count(params):
        taps = math.prod(params["w"].shape[:-2])
        links = math.prod(params["w"].shape[-2:]) if table is None else int(table.sum())
        return taps * links + (params["b"].size if "b" in params else 0)

    return Layer(init, apply, name=f"Conv({features}, {window})", count=count)


def ConvTranspose(
    features: int,
    window: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: _shapes.Padding = "VALID",
    use_bias: bool = True,
    w_init: initializers.Initializer = initializers.lecun_normal(),
    b_init: initializers.Initializer = initializers.zeros(),
    dtype: Any = jnp.float32,
    ops: Optional[ModuleType] = None,
) -> Layer:
    """Transposed ("fractionally strided") convolution layer (:func:`jaxcnn.ops.conv_transpose`).

    Params: ``{"w": (*window, C_in, features), "b": (features,)}``.
    """
    ops = _backend(ops)
    if not isinstance(features, (int, np.integer)) or features < 1:
        raise ValueError(f"ConvTranspose: `features` must be a positive int, got {features!r}.")

    def init(key, input_shape):
        _spatial_rank("ConvTranspose", window, input_shape)
        geom = _shapes.transpose_geometry("ConvTranspose", input_shape[1:-1], window, stride, padding)
        c_in = input_shape[-1]
        taps = math.prod(geom.window)
        kw, kb = jax.random.split(key)
        params = {"w": w_init(kw, (*geom.window, c_in, features), dtype, taps * c_in, taps * features)}
        if use_bias:
            params["b"] = b_init(kb, (features,), dtype, taps * c_in, taps * features)
        return params, (input_shape[0], *geom.out_shape, features)

    def apply(params, x):
        return ops.conv_transpose(x, params["w"], params.get("b"), stride=stride, padding=padding)

    return Layer(init, apply, name=f"ConvTranspose({features}, {window})")


# --------------------------------------------------------------------------- pooling and resampling


def _spatial(name: str, setting, out_spatial, apply) -> Layer:
    """A parameter-free layer on ``(N, *spatial, C)`` whose spatial output shape is
    ``out_spatial(spatial)``; ``setting`` (a window or factor) fixes the spatial rank."""

    def init(key, input_shape):
        _spatial_rank(name, setting, input_shape)
        return (), (input_shape[0], *out_spatial(tuple(input_shape[1:-1])), input_shape[-1])

    return Layer(init, lambda params, x: apply(x), name=f"{name}({setting})")


def MaxPool(window, stride=None, padding: _shapes.Padding = "VALID", *, ops: Optional[ModuleType] = None) -> Layer:
    """Max pooling (:func:`jaxcnn.ops.max_pool`); ``stride`` defaults to ``window``."""
    ops = _backend(ops)
    return _spatial("MaxPool", window,
                    lambda n: _shapes.pool_geometry("MaxPool", n, window, stride, padding).out_shape,
                    lambda x: ops.max_pool(x, window, stride, padding))


def MeanPool(window, stride=None, padding: _shapes.Padding = "VALID", count_padding: bool = True, *,
             ops: Optional[ModuleType] = None) -> Layer:
    """Mean pooling (:func:`jaxcnn.ops.mean_pool`); ``stride`` defaults to ``window``."""
    ops = _backend(ops)
    return _spatial("MeanPool", window,
                    lambda n: _shapes.pool_geometry("MeanPool", n, window, stride, padding).out_shape,
                    lambda x: ops.mean_pool(x, window, stride, padding, count_padding))


def Upsample(factor, *, ops: Optional[ModuleType] = None) -> Layer:
    """Zero-insertion upsampling (:func:`jaxcnn.ops.upsample`)."""
    ops = _backend(ops)
    return _spatial("Upsample", factor, lambda n: _shapes.upsampled_shape("Upsample", n, factor),
                    lambda x: ops.upsample(x, factor))


def Downsample(factor, *, ops: Optional[ModuleType] = None) -> Layer:
    """Keeps every ``factor``-th row/column (:func:`jaxcnn.ops.downsample`)."""
    ops = _backend(ops)
    return _spatial("Downsample", factor, lambda n: _shapes.downsampled_shape("Downsample", n, factor),
                    lambda x: ops.downsample(x, factor))


# --------------------------------------------------------------------------- parameter-free


def _elementwise(name: str, op_name: str, ops: Optional[ModuleType], **settings) -> Layer:
    ops = _backend(ops)
    op = getattr(ops, op_name)
    return Layer(lambda key, s: ((), tuple(s)), lambda params, x: op(x, **settings), name=name)


def Relu(*, derivative_at_zero: float = 1.0, ops: Optional[ModuleType] = None) -> Layer:
    """``max(0, x)`` (:func:`jaxcnn.ops.relu`).

    ``derivative_at_zero``: ``1.0`` (default, the lectures: the gradient passes at
    ``x = 0``) or ``0.0`` (``jax.nn.relu``, Flax, PyTorch). Use ``0.0`` when porting a
    model and comparing its gradients: with zero biases, ``x = 0`` is common.
    """
    if derivative_at_zero == 1.0:
        return _elementwise("Relu", "relu", ops)
    return _elementwise(f"Relu(derivative_at_zero={derivative_at_zero!r})", "relu", ops,
                        derivative_at_zero=derivative_at_zero)


def Sigmoid(*, ops: Optional[ModuleType] = None) -> Layer:
    """``1 / (1 + e⁻ˣ)`` (:func:`jaxcnn.ops.sigmoid`)."""
    return _elementwise("Sigmoid", "sigmoid", ops)


def Tanh(*, ops: Optional[ModuleType] = None) -> Layer:
    """``tanh x`` (:func:`jaxcnn.ops.tanh`)."""
    return _elementwise("Tanh", "tanh", ops)


def Softmax(axis: int = -1, *, ops: Optional[ModuleType] = None) -> Layer:
    """Softmax along ``axis`` (:func:`jaxcnn.ops.softmax`); train on logits with
    :func:`jaxcnn.ops.softmax_cross_entropy` instead where you can."""
    return _elementwise(f"Softmax(axis={axis})", "softmax", ops, axis=axis)


def MeanSubtraction(axis: int | tuple[int, ...] = -1, *, ops: Optional[ModuleType] = None) -> Layer:
    """``x − mean(x)`` along ``axis`` (:func:`jaxcnn.ops.mean_subtraction`)."""
    return _elementwise(f"MeanSubtraction(axis={axis})", "mean_subtraction", ops, axis=axis)


def Flatten(*, ops: Optional[ModuleType] = None) -> Layer:
    """``(N, …) → (N, ∏…)`` (:func:`jaxcnn.ops.flatten`)."""
    ops = _backend(ops)

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Flatten: input shape must be (N, ...), got {tuple(input_shape)}.")
        return (), (input_shape[0], math.prod(input_shape[1:]))

    return Layer(init, lambda params, x: ops.flatten(x), name="Flatten")
