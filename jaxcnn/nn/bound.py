"""Every layer with one ``ops`` backend bound: models read like their diagrams.

>>> import jax
>>> from jaxcnn import nn, reference
>>> L = nn.bind(reference)                 # every layer below on plain autodiff
>>> model = L.serial(L.Conv(4, (3, 3)), L.Relu(), L.MaxPool((2, 2)), L.Flatten(), L.Dense(10))
>>> model.init(jax.random.PRNGKey(0), (-1, 8, 8, 1))[2]
(-1, 10)
"""

from __future__ import annotations

import functools
import types
from types import ModuleType
from typing import Optional

from jaxcnn.nn import core, initializers, layers

#: The layer constructors that take ``ops=``.
LAYERS = ("AdaptiveMaxPool", "AdaptiveMeanPool", "BatchNorm", "Conv", "ConvTranspose", "Dense", "Downsample",
          "Dropout", "Flatten", "GlobalMaxPool", "GlobalMeanPool", "GroupNorm", "LayerNorm", "LeakyRelu", "LogSoftmax",
          "MaxPool", "MeanPool", "MeanSubtraction", "Relu", "Sigmoid", "Softmax", "Tanh", "Upsample")
#: The combinators, passed through unchanged (they take layers, not ops).
COMBINATORS = ("dense_block", "fan_in_concat", "fan_in_sum", "fan_out", "identity", "parallel", "residual", "serial")


def bind(ops: Optional[ModuleType] = None) -> types.SimpleNamespace:
    """A namespace of every layer constructor with ``ops=ops`` bound (``None``: :mod:`jaxcnn.ops`),
    plus the combinators and :mod:`jaxcnn.nn.initializers`, so that a model is written once and
    switched between the hand-derived rules and :mod:`jaxcnn.reference` by one argument.

    A keyword given at a call still wins: ``bind(ops).Conv(6, 5, ops=other)`` uses ``other``.
    """
    bound = {name: functools.partial(getattr(layers, name), ops=ops) for name in LAYERS}
    return types.SimpleNamespace(**bound, **{name: getattr(core, name) for name in COMBINATORS},
                                 initializers=initializers, ops=ops)
