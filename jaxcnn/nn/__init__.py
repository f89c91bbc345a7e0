"""Functional model composition over :mod:`jaxcnn.ops`.

A layer is ``init(key, input_shape) -> (params, output_shape)`` and ``apply(params, x)``;
see :mod:`jaxcnn.nn.core`.

>>> import jax, jax.numpy as jnp
>>> from jaxcnn import nn
>>> model = nn.serial(nn.Conv(4, 3, padding="SAME"), nn.Relu(), nn.MaxPool(2), nn.Flatten(), nn.Dense(10))
>>> params, shape = model.init(jax.random.PRNGKey(0), (-1, 8, 8, 1))
>>> shape
(-1, 10)
>>> model.apply(params, jnp.ones((2, 8, 8, 1))).shape
(2, 10)
"""

from jaxcnn.nn import initializers
from jaxcnn.nn.bound import bind
from jaxcnn.nn.core import (
    Layer,
    dense_block,
    fan_in_concat,
    fan_in_sum,
    fan_out,
    identity,
    parallel,
    residual,
    serial,
)
from jaxcnn.nn.layers import (
    Conv,
    ConvTranspose,
    Dense,
    Downsample,
    Flatten,
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
    "Conv",
    "ConvTranspose",
    "Dense",
    "Downsample",
    "Flatten",
    "Layer",
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
    "identity",
    "initializers",
    "parallel",
    "residual",
    "serial",
    "summary",
]
