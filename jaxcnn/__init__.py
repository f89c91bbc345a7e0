"""jaxcnn: convolutional networks in JAX whose gradients are derived by hand and proven right.

* :mod:`jaxcnn.ops`: the ops, each a ``jax.custom_vjp`` with the lectures' backward rule.
* :mod:`jaxcnn.reference`: the same forwards, differentiated by JAX's autodiff.
* :mod:`jaxcnn.verify`: the gradient checker that proves the rules right.
* :mod:`jaxcnn.nn` (layers and combinators), :mod:`jaxcnn.models` (the zoo),
  :mod:`jaxcnn.train` (the optax loop), :mod:`jaxcnn.data` (datasets),
  :mod:`jaxcnn.reporting` (metrics and plots), :mod:`jaxcnn.checkpoint`,
  :mod:`jaxcnn.interop` (PyTorch ``state_dict`` import and export),
  :mod:`jaxcnn.distributed` (several processes and hosts), :mod:`jaxcnn.launch` (the
  one-machine launcher).

Every submodule, the ops included, is imported on first use (``jaxcnn.ops`` or
``from jaxcnn import ops``), so that the command line prints before JAX has loaded.
"""

import importlib

__version__ = "0.1.0"

# Even ops, reference and verify: the command line prints before JAX is imported.
_LAZY = ("checkpoint", "data", "distributed", "interop", "launch", "models", "nn", "ops", "reference", "reporting",
         "train", "verify")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"jaxcnn.{name}")
    raise AttributeError(f"module 'jaxcnn' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = [*_LAZY, "__version__"]
