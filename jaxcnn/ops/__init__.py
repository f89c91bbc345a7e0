"""Hand-derived ops: every function here carries two hand rules, the backward (VJP) derived
in the lecture notes and a hand-derived JVP beside it (see each op's module docstring).

Every op supports both modes: reverse mode (``jax.grad``, ``jax.vjp``, ``jax.jacrev``) runs
the lectures' backward formulas, forward mode (``jax.jvp``, ``jax.jacfwd``,
``jax.linearize``) the hand JVPs, and ``jax.hessian`` and forward-over-reverse
Hessian-vector products combine them; each op is a :class:`jaxcnn.ops._rule.custom_rule`
(``jax.custom_vjp``'s interface plus ``defjvp``). Which rule runs under which transform:
docs/ops.md, "Forward mode".

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
