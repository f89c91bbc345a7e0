"""Hand-derived ops: every function here is a ``jax.custom_vjp`` whose backward rule is
the formula derived in the lecture notes (see each function's docstring).

Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) does not apply to
``custom_vjp`` functions and raises ``TypeError``; use reverse mode (``jax.grad``,
``jax.vjp``, ``jax.jacrev``), or the same function from :mod:`jaxcnn.reference`, which
supports both modes.
"""

from jaxcnn.ops.activations import leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from jaxcnn.ops.conv import LENET5_C3_TABLE, conv, conv1d, conv2d, conv3d
from jaxcnn.ops.conv_transpose import conv_transpose
from jaxcnn.ops.dense import dense
from jaxcnn.ops.flatten import flatten
from jaxcnn.ops.im2col import im2col
from jaxcnn.ops.losses import euclidean_loss, l2_penalty, softmax_cross_entropy
from jaxcnn.ops.mean_subtraction import mean_subtraction
from jaxcnn.ops._dropout import dropout
from jaxcnn.ops._global_pooling import global_max_pool, global_mean_pool
from jaxcnn.ops._normalization import batch_norm, group_norm, layer_norm
from jaxcnn.ops.pooling import max_pool, mean_pool
from jaxcnn.ops.resample import downsample, upsample

__all__ = [
    "LENET5_C3_TABLE",
    "batch_norm",
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose",
    "dense",
    "downsample",
    "dropout",
    "euclidean_loss",
    "flatten",
    "global_max_pool",
    "global_mean_pool",
    "group_norm",
    "im2col",
    "l2_penalty",
    "layer_norm",
    "leaky_relu",
    "log_softmax",
    "max_pool",
    "mean_pool",
    "mean_subtraction",
    "relu",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "tanh",
    "upsample",
]
