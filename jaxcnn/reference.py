"""Autodiff references: the forwards of :mod:`jaxcnn.ops`, same names and signatures,
written in plain ``jax.numpy``/``lax`` with no custom rule, so that JAX differentiates
them (in both modes). They are what the hand-derived rules are checked against, and a
drop-in backend (``ops=jaxcnn.reference``) for comparing whole models.
"""

from jaxcnn.ops.activations import relu_reference as relu
from jaxcnn.ops.activations import sigmoid_reference as sigmoid
from jaxcnn.ops.activations import softmax_reference as softmax
from jaxcnn.ops.activations import tanh_reference as tanh
from jaxcnn.ops.dense import dense_reference as dense
from jaxcnn.ops.flatten import flatten_reference as flatten
from jaxcnn.ops.losses import euclidean_loss_reference as euclidean_loss
from jaxcnn.ops.losses import l2_penalty_reference as l2_penalty
from jaxcnn.ops.losses import softmax_cross_entropy_reference as softmax_cross_entropy
from jaxcnn.ops.mean_subtraction import mean_subtraction_reference as mean_subtraction

__all__ = [
    "dense",
    "euclidean_loss",
    "flatten",
    "l2_penalty",
    "mean_subtraction",
    "relu",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "tanh",
]
