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
    method: str = "lectures",
    dtype: Any = jnp.float32,
    ops: Optional[ModuleType] = None,
) -> Layer:
    """Fully connected layer ``y = x Wᵀ + b`` with ``W`` of shape ``(n_out, n_in)``.

    Params: ``{"w": (n_out, n_in), "b": (n_out,)}`` (no ``"b"`` when ``use_bias=False``).
    ``method`` is :func:`jaxcnn.ops.dense`'s (``"transposed"``: Flax's rounding).
    """
    ops = _backend(ops)
    if not isinstance(n_out, (int, np.integer)) or n_out < 1:
        raise ValueError(f"Dense: `n_out` must be a positive int, got {n_out!r}.")

    def init(key, input_shape):
        if len(input_shape) < 1:
            raise ValueError(f"Dense: input shape must be (..., n_in), got {tuple(input_shape)}.")
        n_in = input_shape[-1]
        kw, kb = jax.random.split(key)
        params = {"w": initializers.draw(w_init, kw, (n_out, n_in), dtype, n_in, n_out, transposed=True)}
        if use_bias:
            params["b"] = initializers.draw(b_init, kb, (n_out,), dtype, n_in, n_out)
        return params, (*input_shape[:-1], n_out)

    def apply(params, x):
        return ops.dense(x, params["w"], params.get("b"), method=method)

    return Layer.stateless(init, apply, name=f"Dense({n_out})")


def Conv(
    features: int,
    window: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: _shapes.Padding = "VALID",
    dilation: int | Sequence[int] = 1,
    connections: Optional[np.ndarray] = None,
    groups: int = 1,
    method="auto",
    platform: Optional[str] = None,
    use_bias: bool = True,
    w_init: initializers.Initializer = initializers.lecun_normal(),
    b_init: initializers.Initializer = initializers.zeros(),
    dtype: Any = jnp.float32,
    ops: Optional[ModuleType] = None,
) -> Layer:
    """Convolution layer (:func:`jaxcnn.ops.conv`), 1-D to 3-D by the input's rank.

    Params: ``{"w": (*window, C_in / groups, features), "b": (features,)}``. With a
    connection table ``M`` (``(C_in, features)``, e.g. LeNet-5's C3) the absent weights
    are initialised to zero and never receive a gradient; the fan-in and the parameter
    count include only the connected ones. With ``groups=g`` the channels split into
    ``g`` groups that do not mix (PyTorch's and ``lax``'s layout; ``g = C_in`` is a
    depthwise convolution); the fan-in is ``taps · C_in / g``. ``method`` and ``platform`` are
    :func:`jaxcnn.ops.conv`'s: which exact formulas compute the three products, and the
    platform ``"auto"`` tunes them for (None: ``jax.default_backend()`` when traced;
    ``platform="cpu"`` traces XLA:CPU's program in any process).
    """
    ops = _backend(ops)
    if not isinstance(features, (int, np.integer)) or features < 1:
        raise ValueError(f"Conv: `features` must be a positive int, got {features!r}.")
    if not isinstance(groups, (int, np.integer)) or groups < 1 or features % groups:
        raise ValueError(f"Conv: `groups` must be a positive int dividing `features` {features}, got {groups!r}.")
    if groups != 1 and connections is not None:
        raise ValueError(f"Conv: give `connections` or `groups`, not both (got groups={groups} and a table).")
    table = None if connections is None else np.asarray(connections, bool)
    grouping = {"groups": groups} if groups != 1 else {}

    def init(key, input_shape):
        _spatial_rank("Conv", window, input_shape)
        geom = _shapes.geometry("Conv", input_shape[1:-1], window, stride, padding, dilation)
        c_in = input_shape[-1]
        if table is not None and table.shape != (c_in, features):
            raise ValueError(
                f"Conv: `connections` must have shape (C_in, C_out) = ({c_in}, {features}), "
                f"got {table.shape}."
            )
        if c_in % groups:
            raise ValueError(f"Conv: `groups` {groups} must divide the input channels, got input shape "
                             f"{tuple(input_shape)} with {c_in} channels.")
        taps = math.prod(geom.window)
        links = c_in * features // groups if table is None else int(table.sum())
        fan_in, fan_out = taps * links / features, taps * links / c_in
        kw, kb = jax.random.split(key)
        w = initializers.draw(w_init, kw, (*geom.window, c_in // groups, features), dtype, fan_in, fan_out)
        if table is not None:
            w = w * jnp.asarray(table, dtype)
        params = {"w": w}
        if use_bias:
            params["b"] = initializers.draw(b_init, kb, (features,), dtype, fan_in, fan_out)
        return params, (input_shape[0], *geom.out_shape, features)

    def apply(params, x):
        return ops.conv(x, params["w"], params.get("b"), stride=stride, padding=padding,
                        dilation=dilation, connections=table, method=method, platform=platform, **grouping)

    def count(params):
        taps = math.prod(params["w"].shape[:-2])
        links = math.prod(params["w"].shape[-2:]) if table is None else int(table.sum())
        return taps * links + (params["b"].size if "b" in params else 0)

    return Layer.stateless(init, apply, name=f"Conv({features}, {window})", count=count)


def ConvTranspose(
    features: int,
    window: int | Sequence[int],
    *,
    stride: int | Sequence[int] = 1,
    padding: _shapes.Padding = "VALID",
    dilation: int | Sequence[int] = 1,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    method="auto",
    platform: Optional[str] = None,
    use_bias: bool = True,
    w_init: initializers.Initializer = initializers.lecun_normal(),
    b_init: initializers.Initializer = initializers.zeros(),
    dtype: Any = jnp.float32,
    ops: Optional[ModuleType] = None,
) -> Layer:
    """Transposed ("fractionally strided") convolution layer (:func:`jaxcnn.ops.conv_transpose`).

    Params: ``{"w": (*window, C_in / groups, features), "b": (features,)}``; ``dilation``,
    ``output_padding`` and ``groups`` as in PyTorch's ``ConvTranspose`` (output size
    ``(n − 1)·s − 2p + d·(k − 1) + output_padding + 1`` for an int padding ``p``); ``method`` and
    ``platform`` as in :func:`jaxcnn.ops.conv_transpose`.
    """
    ops = _backend(ops)
    if not isinstance(features, (int, np.integer)) or features < 1:
        raise ValueError(f"ConvTranspose: `features` must be a positive int, got {features!r}.")
    if not isinstance(groups, (int, np.integer)) or groups < 1 or features % groups:
        raise ValueError(f"ConvTranspose: `groups` must be a positive int dividing `features` {features}, "
                         f"got {groups!r}.")

    def init(key, input_shape):
        _spatial_rank("ConvTranspose", window, input_shape)
        geom = _shapes.transpose_geometry("ConvTranspose", input_shape[1:-1], window, stride, padding, dilation,
                                          output_padding)
        c_in = input_shape[-1]
        if c_in % groups:
            raise ValueError(f"ConvTranspose: `groups` {groups} must divide the input channels, got input shape "
                             f"{tuple(input_shape)} with {c_in} channels.")
        taps = math.prod(geom.window)
        fan_in, fan_out = taps * c_in // groups, taps * features // groups
        kw, kb = jax.random.split(key)
        params = {"w": initializers.draw(w_init, kw, (*geom.window, c_in // groups, features), dtype, fan_in,
                                         fan_out)}
        if use_bias:
            params["b"] = initializers.draw(b_init, kb, (features,), dtype, fan_in, fan_out)
        return params, (input_shape[0], *geom.out_shape, features)

    def apply(params, x):
        return ops.conv_transpose(x, params["w"], params.get("b"), stride=stride, padding=padding,
                                  dilation=dilation, output_padding=output_padding, groups=groups, method=method,
                                  platform=platform)

    return Layer.stateless(init, apply, name=f"ConvTranspose({features}, {window})")


# --------------------------------------------------------------------------- pooling and resampling


def _spatial(name: str, setting, out_spatial, apply) -> Layer:
    """A parameter-free layer on ``(N, *spatial, C)`` whose spatial output shape is
    ``out_spatial(spatial)``; ``setting`` (a window or factor) fixes the spatial rank."""

    def init(key, input_shape):
        _spatial_rank(name, setting, input_shape)
        return (), (input_shape[0], *out_spatial(tuple(input_shape[1:-1])), input_shape[-1])

    return Layer.stateless(init, lambda params, x: apply(x), name=f"{name}({setting})")


def MaxPool(window, stride=None, padding: _shapes.Padding = "VALID", *, dilation=1, ceil_mode: bool = False,
            ops: Optional[ModuleType] = None) -> Layer:
    """Max pooling (:func:`jaxcnn.ops.max_pool`, every option but ``return_indices``: a layer
    passes one array on); ``stride`` defaults to ``window``."""
    ops = _backend(ops)
    return _spatial("MaxPool", window,
                    lambda n: _shapes.pool_geometry("MaxPool", n, window, stride, padding, dilation,
                                                    ceil_mode).out_shape,
                    lambda x: ops.max_pool(x, window, stride, padding, dilation=dilation, ceil_mode=ceil_mode))


def MeanPool(window, stride=None, padding: _shapes.Padding = "VALID", count_padding: bool = True, *,
             dilation=1, ceil_mode: bool = False, ops: Optional[ModuleType] = None) -> Layer:
    """Mean pooling (:func:`jaxcnn.ops.mean_pool`, every option); ``stride`` defaults to ``window``."""
    ops = _backend(ops)
    return _spatial("MeanPool", window,
                    lambda n: _shapes.pool_geometry("MeanPool", n, window, stride, padding, dilation,
                                                    ceil_mode).out_shape,
                    lambda x: ops.mean_pool(x, window, stride, padding, count_padding, dilation=dilation,
                                            ceil_mode=ceil_mode))


def AdaptiveMeanPool(output_size, *, ops: Optional[ModuleType] = None) -> Layer:
    """Adaptive mean pooling to ``output_size`` (:func:`jaxcnn.ops.adaptive_mean_pool`, PyTorch's
    ``AdaptiveAvgPool1d/2d/3d``): an int for every spatial axis, or one int or ``None`` (keep) per axis."""
    ops = _backend(ops)
    return _spatial("AdaptiveMeanPool", output_size,
                    lambda n: _shapes.adaptive_output_shape("AdaptiveMeanPool", n, output_size),
                    lambda x: ops.adaptive_mean_pool(x, output_size))


def AdaptiveMaxPool(output_size, *, ops: Optional[ModuleType] = None) -> Layer:
    """Adaptive max pooling to ``output_size`` (:func:`jaxcnn.ops.adaptive_max_pool`, PyTorch's
    ``AdaptiveMaxPool1d/2d/3d`` without ``return_indices``: a layer passes one array on)."""
    ops = _backend(ops)
    return _spatial("AdaptiveMaxPool", output_size,
                    lambda n: _shapes.adaptive_output_shape("AdaptiveMaxPool", n, output_size),
                    lambda x: ops.adaptive_max_pool(x, output_size))


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
    return Layer.stateless(lambda key, s: ((), tuple(s)), lambda params, x: op(x, **settings), name=name)


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

    return Layer.stateless(init, lambda params, x: ops.flatten(x), name="Flatten")


def LeakyRelu(negative_slope: float = 0.01, *, derivative_at_zero: float = 1.0,
              ops: Optional[ModuleType] = None) -> Layer:
    """``x`` for ``x ≥ 0``, ``negative_slope · x`` below (:func:`jaxcnn.ops.leaky_relu`).

    ``derivative_at_zero``: ``1.0`` (default: the lectures, ``jax.nn.leaky_relu``, Flax) or
    ``negative_slope`` (PyTorch).
    """
    if derivative_at_zero == 1.0:
        return _elementwise(f"LeakyRelu({negative_slope})", "leaky_relu", ops, negative_slope=negative_slope)
    return _elementwise(f"LeakyRelu({negative_slope}, derivative_at_zero={derivative_at_zero!r})", "leaky_relu",
                        ops, negative_slope=negative_slope, derivative_at_zero=derivative_at_zero)


def LogSoftmax(axis: int = -1, *, ops: Optional[ModuleType] = None) -> Layer:
    """``x − log Σ eˣ`` along ``axis`` (:func:`jaxcnn.ops.log_softmax`)."""
    return _elementwise(f"LogSoftmax(axis={axis})", "log_softmax", ops, axis=axis)


def _global_pool(name: str, op_name: str, ops: Optional[ModuleType]) -> Layer:
    op = getattr(_backend(ops), op_name)

    def init(key, input_shape):
        if len(input_shape) < 3:
            raise ValueError(f"{name}: input shape must be (N, *spatial, C) with at least one spatial axis, "
                             f"got {tuple(input_shape)}.")
        return (), (input_shape[0], input_shape[-1])

    return Layer.stateless(init, lambda params, x: op(x), name=name)


def GlobalMeanPool(*, ops: Optional[ModuleType] = None) -> Layer:
    """``(N, *spatial, C) → (N, C)``: the mean over every spatial position
    (:func:`jaxcnn.ops.global_mean_pool`; ResNet's "global average pooling")."""
    return _global_pool("GlobalMeanPool", "global_mean_pool", ops)


def GlobalMaxPool(*, ops: Optional[ModuleType] = None) -> Layer:
    """``(N, *spatial, C) → (N, C)``: the maximum over every spatial position
    (:func:`jaxcnn.ops.global_max_pool`)."""
    return _global_pool("GlobalMaxPool", "global_max_pool", ops)


# --------------------------------------------------------------------------- normalisation and dropout


def _eps(layer: str, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"{layer}: `eps` must be a number >= 0, got {eps!r}.")
    return float(eps)


def _scale_shift(shape: Shape, use_scale: bool, use_bias: bool, dtype) -> dict:
    params = {}
    if use_scale:
        params["gamma"] = jnp.ones(shape, dtype)
    if use_bias:
        params["beta"] = jnp.zeros(shape, dtype)
    return params


def BatchNorm(
    momentum: float = 0.9,
    eps: float = 1e-5,
    *,
    axis: int = -1,
    use_scale: bool = True,
    use_bias: bool = True,
    dtype: Any = jnp.float32,
    ops: Optional[ModuleType] = None,
) -> Layer:
    """Batch normalisation (Ioffe & Szegedy; :func:`jaxcnn.ops.batch_norm`) over every axis
    but the channel ``axis``, with running statistics.

    Params: ``{"gamma": (C,), "beta": (C,)}`` (ones, zeros). State: ``{"mean": (C,),
    "var": (C,)}`` (zeros, ones). In training (``apply(..., training=True)``) the layer
    normalises with the batch's mean and biased variance and updates the state::

        mean ← momentum · mean + (1 − momentum) · μ_batch
        var  ← momentum · var  + (1 − momentum) · σ²_batch · n / (n − 1)

    (``n`` elements per channel: the unbiased variance, as PyTorch keeps; no gradient
    flows into the state). In evaluation it normalises with the state and returns it
    unchanged. ``momentum`` is the weight of the old value, as in Flax, Keras and
    Equinox (Flax's ``BatchNorm(momentum=0.9)`` ports as it is); PyTorch's
    ``BatchNorm2d(momentum=m)`` weighs the *new* value, so it is ``momentum=1 − m`` here
    (PyTorch's default 0.1 is this default 0.9). Under data parallelism (a batch split
    over a :class:`jax.sharding.Mesh` inside ``jit``) ``μ`` and ``σ²`` are those of the
    global batch: XLA adds the cross-device reductions.

    The layer normalises in its state's dtype (``dtype``): an input of another floating dtype
    (``train.mixed_precision``'s bfloat16) is cast to it, with ``gamma`` and ``beta``, and the
    output cast back, so the statistics stay in float32 under a mixed-precision policy.
    """
    ops = _backend(ops)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"BatchNorm: `momentum` is the weight of the old running value and must be in [0, 1), "
                         f"got {momentum!r} (PyTorch's momentum m is 1 - m here).")
    eps = _eps("BatchNorm", eps)
    name = f"BatchNorm(momentum={momentum}, eps={eps})"

    def init(key, input_shape):
        if len(input_shape) < 2 or not -len(input_shape) <= axis < len(input_shape):
            raise ValueError(f"BatchNorm: input shape must have at least 2 dimensions and the channel axis {axis}, "
                             f"got {tuple(input_shape)}.")
        c = input_shape[axis]
        state = {"mean": jnp.zeros((c,), dtype), "var": jnp.ones((c,), dtype)}
        return _scale_shift((c,), use_scale, use_bias, dtype), state, tuple(input_shape)

    def apply(params, state, x, *, training=False, key=None):
        compute, stats = x.dtype, state["mean"].dtype
        if compute != stats:  # the statistics' dtype: cast in here, out at the end
            x, params = x.astype(stats), {k: v.astype(stats) for k, v in params.items()}
        gamma, beta = params.get("gamma"), params.get("beta")
        if not training:
            y = ops.batch_norm(x, gamma, beta, axis=axis, eps=eps, mean=state["mean"], var=state["var"])
            return y.astype(compute), state
        y, mean, var = ops.batch_norm(x, gamma, beta, axis=axis, eps=eps)
        n = x.size // x.shape[axis]
        mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var * (n / max(n - 1, 1)))
        new = {"mean": momentum * state["mean"] + (1 - momentum) * mean.astype(state["mean"].dtype),
               "var": momentum * state["var"] + (1 - momentum) * var.astype(state["var"].dtype)}
        return y.astype(compute), new

    return Layer(init, apply, name=name)


def LayerNorm(eps: float = 1e-5, *, axis: int | tuple[int, ...] = -1, use_scale: bool = True, use_bias: bool = True,
              dtype: Any = jnp.float32, ops: Optional[ModuleType] = None) -> Layer:
    """Layer normalisation (Ba et al.; :func:`jaxcnn.ops.layer_norm`) of each example over
    ``axis`` (default: the channels, as Flax's ``LayerNorm`` and PyTorch's
    ``LayerNorm(C)`` on channels-last input). Params: ``{"gamma", "beta"}`` of the shape
    of the normalised axes. No state: training and evaluation compute the same."""
    ops = _backend(ops)
    eps = _eps("LayerNorm", eps)
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)

    def init(key, input_shape):
        ndim = len(input_shape)
        if not axes or any(not -ndim <= a < ndim for a in axes) or any(a % ndim == 0 for a in axes):
            raise ValueError(f"LayerNorm: `axis` {axis} must name non-batch axes of the input shape "
                             f"{tuple(input_shape)}.")
        shape = tuple(input_shape[a] for a in sorted(a % ndim for a in axes))
        return _scale_shift(shape, use_scale, use_bias, dtype), tuple(input_shape)

    def apply(params, x):
        return ops.layer_norm(x, params.get("gamma"), params.get("beta"), axis=axis, eps=eps)

    return Layer.stateless(init, apply, name=f"LayerNorm(axis={axis})")


def GroupNorm(groups: int = 32, eps: float = 1e-5, *, use_scale: bool = True, use_bias: bool = True,
              dtype: Any = jnp.float32, ops: Optional[ModuleType] = None) -> Layer:
    """Group normalisation (Wu & He; :func:`jaxcnn.ops.group_norm`) of channels-last input:
    each example's ``C`` channels in ``groups`` groups, normalised over the spatial axes
    and the group's channels (Flax's ``GroupNorm(num_groups=32)``, PyTorch's
    ``GroupNorm(groups, C)``). Params: ``{"gamma": (C,), "beta": (C,)}``. No state."""
    ops = _backend(ops)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"GroupNorm: `groups` must be a positive int, got {groups!r}.")
    eps = _eps("GroupNorm", eps)

    def init(key, input_shape):
        if len(input_shape) < 2 or input_shape[-1] % groups:
            raise ValueError(f"GroupNorm: {groups} groups must divide the channels (last axis) of the input, "
                             f"got input shape {tuple(input_shape)}.")
        return _scale_shift((input_shape[-1],), use_scale, use_bias, dtype), tuple(input_shape)

    def apply(params, x):
        return ops.group_norm(x, params.get("gamma"), params.get("beta"), groups, eps=eps)

    return Layer.stateless(init, apply, name=f"GroupNorm({groups})")


def Dropout(rate: float, *, ops: Optional[ModuleType] = None) -> Layer:
    """Inverted dropout (:func:`jaxcnn.ops.dropout`): in training each element is dropped
    with probability ``rate`` (PyTorch's and Flax's meaning, unlike stax's) and the kept
    ones are scaled by ``1/(1 − rate)``; in evaluation the identity. Training needs a
    PRNG key: ``apply(params, state, x, training=True, key=key)``; :func:`jaxcnn.train.fit`
    folds a fresh one per step."""
    ops = _backend(ops)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
        raise ValueError(f"Dropout: `rate` is the probability of dropping an element and must be in [0, 1), "
                         f"got {rate!r}.")

    def apply(params, state, x, *, training=False, key=None):
        if not training or rate == 0:
            return x, state
        if key is None:
            raise ValueError(f"Dropout({rate}): training=True needs a PRNG key; call "
                             f"apply(params, state, x, training=True, key=key).")
        return ops.dropout(x, _typed_key(key), rate), state

    return Layer(lambda key, s: ((), (), tuple(s)), apply, name=f"Dropout({rate})")


def _typed_key(key):
    """Raw key data of the default PRNG implementation (``PRNGKey``'s ``uint32`` array:
    shape ``(2,)`` under threefry, ``(4,)`` under ``JAX_DEFAULT_PRNG_IMPL=rbg``) as a typed
    key, which the op takes under any implementation; anything else as it is."""
    raw = jax.eval_shape(jax.random.PRNGKey, 0)
    if getattr(key, "dtype", None) == raw.dtype and getattr(key, "shape", None) == raw.shape:
        return jax.random.wrap_key_data(key)
    return key
