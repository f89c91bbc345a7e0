"""Functional model composition over :mod:`jaxcnn.ops`.

A layer is ``init(key, input_shape) -> (params, state, output_shape)`` and
``apply(params, state, x, *, training=False, key=None) -> (y, new_state)``; see
:mod:`jaxcnn.nn.core`.

>>> import jax, jax.numpy as jnp
>>> from jaxcnn import nn
>>> model = nn.serial(nn.Conv(4, 3, padding="SAME"), nn.BatchNorm(), nn.Relu(), nn.MaxPool(2),
...                   nn.Flatten(), nn.Dropout(0.5), nn.Dense(10))
>>> params, state, shape = model.init(jax.random.PRNGKey(0), (-1, 8, 8, 1))
>>> shape
(-1, 10)
>>> y, state = model.apply(params, state, jnp.ones((2, 8, 8, 1)), training=True, key=jax.random.PRNGKey(1))
>>> y, _ = model.apply(params, state, jnp.ones((2, 8, 8, 1)))   # evaluation: running statistics, no dropout
>>> y.shape
(2, 10)
"""

from jaxcnn.nn import initializers
from jaxcnn.nn.bound import bind
from jaxcnn.nn.core import (
    Layer,
    dense_block,
    fan_in_concat,
    from_stax,
    fan_in_sum,
    fan_out,
    identity,
    parallel,
    residual,
    serial,
)
from jaxcnn.nn.layers import (
    AdaptiveMaxPool,
    AdaptiveMeanPool,
    BatchNorm,
    Conv,
    ConvTranspose,
    Dense,
    Downsample,
    Dropout,
    Flatten,
    GlobalMaxPool,
    GlobalMeanPool,
    GroupNorm,
    LayerNorm,
    LeakyRelu,
    LogSoftmax,
    MaxPool,
    MeanPool,
    MeanSubtraction,
    Relu,
    Sigmoid,
    Softmax,
    Tanh,
    Upsample,
)
from jaxcnn.nn.summary import summary

__all__ = [
    "AdaptiveMaxPool",
    "AdaptiveMeanPool",
    "BatchNorm",
    "Conv",
    "ConvTranspose",
    "Dense",
    "Downsample",
    "Dropout",
    "Flatten",
    "GlobalMaxPool",
    "GlobalMeanPool",
    "GroupNorm",
    "Layer",
    "LayerNorm",
    "LeakyRelu",
    "LogSoftmax",
    "MaxPool",
    "MeanPool",
    "MeanSubtraction",
    "Relu",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "Upsample",
    "bind",
    "dense_block",
    "fan_in_concat",
    "fan_in_sum",
    "fan_out",
    "from_stax",
    "identity",
    "initializers",
    "parallel",
    "residual",
    "serial",
    "summary",
]
