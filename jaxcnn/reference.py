"""Autodiff references: the forwards of :mod:`jaxcnn.ops`, same names and signatures,
written in plain ``jax.numpy``/``lax`` with no custom rule, so that JAX differentiates
them (in both modes). They are what the hand-derived rules are checked against, and a
drop-in backend (``ops=jaxcnn.reference``) for comparing whole models.
"""

from jaxcnn.ops._activations import leaky_relu_reference as leaky_relu
from jaxcnn.ops._activations import log_softmax_reference as log_softmax
from jaxcnn.ops._activations import relu_reference as relu
from jaxcnn.ops._activations import sigmoid_reference as sigmoid
from jaxcnn.ops._activations import softmax_reference as softmax
from jaxcnn.ops._activations import tanh_reference as tanh
from jaxcnn.ops._adaptive_pooling import adaptive_max_pool_reference as adaptive_max_pool
from jaxcnn.ops._adaptive_pooling import adaptive_mean_pool_reference as adaptive_mean_pool
from jaxcnn.ops._conv import LENET5_C3_TABLE
from jaxcnn.ops._conv_plan import Plan as ConvPlan
from jaxcnn.ops._conv_plan import Problem as ConvProblem
from jaxcnn.ops._conv import conv1d_reference as conv1d
from jaxcnn.ops._conv import conv2d_reference as conv2d
from jaxcnn.ops._conv import conv3d_reference as conv3d
from jaxcnn.ops._conv import conv_reference as conv
from jaxcnn.ops._conv_transpose import conv_transpose_reference as conv_transpose
from jaxcnn.ops._dense import dense_reference as dense
from jaxcnn.ops._dropout import dropout_reference as dropout
from jaxcnn.ops._flatten import flatten_reference as flatten
from jaxcnn.ops._global_pooling import global_max_pool_reference as global_max_pool
from jaxcnn.ops._global_pooling import global_mean_pool_reference as global_mean_pool
from jaxcnn.ops._im2col import im2col_reference as im2col
from jaxcnn.ops._losses import euclidean_loss_reference as euclidean_loss
from jaxcnn.ops._losses import l2_penalty_reference as l2_penalty
from jaxcnn.ops._losses import softmax_cross_entropy_reference as softmax_cross_entropy
from jaxcnn.ops._mean_subtraction import mean_subtraction_reference as mean_subtraction
from jaxcnn.ops._normalization import batch_norm_reference as batch_norm
from jaxcnn.ops._normalization import group_norm_reference as group_norm
from jaxcnn.ops._normalization import layer_norm_reference as layer_norm
from jaxcnn.ops._pooling import max_pool_reference as max_pool
from jaxcnn.ops._pooling import mean_pool_reference as mean_pool
from jaxcnn.ops._resample import downsample_reference as downsample
from jaxcnn.ops._resample import upsample_reference as upsample

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
