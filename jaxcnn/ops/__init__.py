"""Hand-derived ops: every function here is a ``jax.custom_vjp`` whose backward rule is
the formula derived in the lecture notes (see each function's docstring).

Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``, ``jax.linearize``) does not apply to
``custom_vjp`` functions and raises ``TypeError``; use reverse mode (``jax.grad``,
``jax.vjp``, ``jax.jacrev``), or the same function from :mod:`jaxcnn.reference`, which
supports both modes.

Each op family lives in a private module (``_conv.py``, ``_pooling.py``, ...; read
``jaxcnn/ops/_conv.py`` for the convolution's forward and backward), and this package
exports the functions; the same names in :mod:`jaxcnn.reference` are the autodiff
references, and :data:`jaxcnn._certify.registry.REGISTRY` certifies each of them.
"""

from jaxcnn.ops._activations import leaky_relu, log_softmax, relu, sigmoid, softmax, tanh
from jaxcnn.ops._adaptive_pooling import adaptive_max_pool, adaptive_mean_pool
from jaxcnn.ops._conv import LENET5_C3_TABLE, conv, conv1d, conv2d, conv3d
from jaxcnn.ops._conv_plan import Plan as ConvPlan
from jaxcnn.ops._conv_plan import Problem as ConvProblem
from jaxcnn.ops._conv_transpose import conv_transpose
from jaxcnn.ops._dense import dense
from jaxcnn.ops._dropout import dropout
from jaxcnn.ops._flatten import flatten
from jaxcnn.ops._global_pooling import global_max_pool, global_mean_pool
from jaxcnn.ops._im2col import im2col
from jaxcnn.ops._losses import euclidean_loss, l2_penalty, softmax_cross_entropy
from jaxcnn.ops._mean_subtraction import mean_subtraction
from jaxcnn.ops._normalization import batch_norm, group_norm, layer_norm
from jaxcnn.ops._pooling import max_pool, mean_pool
from jaxcnn.ops._resample import downsample, upsample

__all__ = [
    "ConvPlan",
    "ConvProblem",
    "LENET5_C3_TABLE",
    "adaptive_max_pool",
    "adaptive_mean_pool",
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
