"""jaxcnn: convolutional networks in JAX whose gradients are derived by hand and proven right.

* :mod:`jaxcnn.ops`: the ops, each a ``jax.custom_vjp`` with the lectures' backward rule.
* :mod:`jaxcnn.reference`: the same forwards, differentiated by JAX's autodiff.
* :mod:`jaxcnn.verify`: the gradient checker that proves the rules right.
"""

from jaxcnn import ops, reference, verify

__version__ = "0.1.0"

__all__ = ["ops", "reference", "verify", "__version__"]
