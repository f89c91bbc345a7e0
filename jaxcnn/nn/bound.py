"""Every layer with one ``ops`` backend (and one set of conventions) bound: models read like their diagrams.

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


#: The conventions ``bind`` takes. ``"lectures"`` (the default): ReLU′(0) = LeakyReLU′(0) = 1 and
#: the convolution formulas tuned per platform (``method="auto"``). ``"flax"``: what autodiff of
#: Flax's layers computes, rounding included: ReLU′(0) = 0, LeakyReLU′(0) = 1 (``jax.nn``), the
#: three plain convolutions (``method="xla"``) and dense's products on Flax's ``(n_in, n_out)``
#: kernel layout (``method="transposed"``). ``"pytorch"``: PyTorch's derivatives, ReLU′(0) = 0 and
#: LeakyReLU′(0) = ``negative_slope``, and the plain convolutions; dense as stored (PyTorch's layout).
CONVENTIONS = ("lectures", "flax", "pytorch")

_SETTINGS = {
    "lectures": {},
    "flax": {"Relu": {"derivative_at_zero": 0.0}, "Conv": {"method": "xla"}, "ConvTranspose": {"method": "xla"},
             "Dense": {"method": "transposed"}},
    "pytorch": {"Relu": {"derivative_at_zero": 0.0}, "Conv": {"method": "xla"}, "ConvTranspose": {"method": "xla"}},
}


def _pytorch_leaky_relu(negative_slope: float = 0.01, **kwargs) -> core.Layer:
    return layers.LeakyRelu(negative_slope, **{"derivative_at_zero": negative_slope, **kwargs})


def bind(ops: Optional[ModuleType] = None, *, conventions: str = "lectures") -> types.SimpleNamespace:
    """A namespace of every layer constructor with ``ops=ops`` bound (``None``: :mod:`jaxcnn.ops`),
    plus the combinators and :mod:`jaxcnn.nn.initializers`, so that a model is written once and
    switched between the hand-derived rules and :mod:`jaxcnn.reference` by one argument.

    ``conventions`` (:data:`CONVENTIONS`) sets the keywords where the ecosystems differ from the
    lectures: ``"flax"`` makes a port of a Flax model compute what Flax computes, step for step
    (ReLU′(0) = 0, ``Conv(method="xla")``, ``Dense(method="transposed")``); ``"pytorch"`` takes
    PyTorch's derivatives at 0 (ReLU′(0) = 0, LeakyReLU′(0) = ``negative_slope``) and the plain
    convolutions. A keyword given at a call still wins: ``bind(ops).Conv(6, 5, ops=other)`` uses
    ``other``; ``bind(conventions="flax").Relu(derivative_at_zero=1.0)`` the lectures' ReLU.

    >>> from jaxcnn import nn
    >>> nn.bind(conventions="flax").Relu().name
    'Relu(derivative_at_zero=0.0)'
    """
    if not isinstance(conventions, str) or conventions not in CONVENTIONS:
        raise ValueError(f"bind: `conventions` must be one of {', '.join(map(repr, CONVENTIONS))}, "
                         f"got {conventions!r}.")
    settings = _SETTINGS[conventions]
    bound = {name: functools.partial(getattr(layers, name), **{"ops": ops, **settings.get(name, {})})
             for name in LAYERS}
    if conventions == "pytorch":
        bound["LeakyRelu"] = functools.partial(_pytorch_leaky_relu, ops=ops)
    return types.SimpleNamespace(**bound, **{name: getattr(core, name) for name in COMBINATORS},
                                 initializers=initializers, ops=ops, conventions=conventions)
