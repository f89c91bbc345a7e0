"""The op registry: for every op in :mod:`jaxcnn.ops`, its reference and sample inputs.

Samples are drawn away from kinks (no ReLU input near 0, no ties in a pooling window)
and cover every option an op has. Arrays are float64 NumPy here; :func:`cast` turns
them into the dtype under test, leaving integer leaves (labels) alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import ops, reference


@dataclasses.dataclass(frozen=True)
class Sample:
    """One input of an op: positional ``args`` (arrays or pytrees) and keyword ``settings``."""

    args: tuple
    settings: dict = dataclasses.field(default_factory=dict)
    label: str = ""

    def describe(self) -> str:
        shapes = ", ".join(_describe(a) for a in self.args)
        extra = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return self.label or f"({shapes}{', ' if extra else ''}{extra})"


def _describe(arg: Any) -> str:
    leaves = jax.tree_util.tree_leaves(arg)
    if len(leaves) == 1 and leaves[0] is arg:
        kind = "int" if np.issubdtype(np.asarray(arg).dtype, np.integer) else ""
        return f"{kind}{tuple(np.shape(arg))}"
    return "{" + ", ".join(str(tuple(np.shape(l))) for l in leaves) + "}"


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """An op, its autodiff reference, and a catalogue of sample inputs."""

    name: str
    samples: Callable[[np.random.Generator], list[Sample]]
    quick: int = 2  # how many samples ``--quick`` keeps

    @property
    def op(self) -> Callable:
        return getattr(ops, self.name)

    @property
    def reference(self) -> Callable:
        return getattr(reference, self.name)


def cast(tree: Any, dtype: Any) -> Any:
    """Floating leaves to ``dtype`` (JAX arrays); integer leaves unchanged."""
    def leaf(a):
        a = np.asarray(a)
        return jnp.asarray(a, dtype) if np.issubdtype(a.dtype, np.floating) else jnp.asarray(a)

    return jax.tree_util.tree_map(leaf, tree)


def _normal(rng, *shape, scale=1.0):
    return rng.normal(size=shape) * scale


def _away_from_zero(rng, *shape, low=0.1, high=2.0):
    return rng.uniform(low, high, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def _dense(rng):
    return [
        Sample((_normal(rng, 4, 3), _normal(rng, 5, 3), _normal(rng, 5))),
        Sample((_normal(rng, 4, 3), _normal(rng, 2, 3))),
        Sample((_normal(rng, 2, 3, 6), _normal(rng, 4, 6), _normal(rng, 4))),
        Sample((_normal(rng, 7), _normal(rng, 1, 7), _normal(rng, 1))),
    ]


def _elementwise(rng):
    return [
        Sample((_away_from_zero(rng, 4, 5),)),
        Sample((_away_from_zero(rng, 2, 3, 4, 2),)),
        Sample((_away_from_zero(rng, 9),)),
    ]


def _softmax(rng):
    return [
        Sample((_normal(rng, 4, 5, scale=2),)),
        Sample((_normal(rng, 4, 5, scale=2),), {"axis": 0}),
        Sample((_normal(rng, 2, 3, 4, scale=2),), {"axis": 1}),
    ]


def _softmax_cross_entropy(rng):
    logits = _normal(rng, 6, 4, scale=2)
    probs = np.exp(_normal(rng, 6, 4))
    return [
        Sample((logits, rng.integers(0, 4, size=6)), label="integer labels (6,)"),
        Sample((logits, np.eye(4)[rng.integers(0, 4, size=6)]), label="one-hot labels (6, 4)"),
        Sample((logits, probs / probs.sum(-1, keepdims=True)), label="probability labels (6, 4)"),
        Sample((_normal(rng, 2, 3, 5, scale=2), rng.integers(0, 5, size=(2, 3))), label="leading axes (2, 3, 5)"),
    ]


def _euclidean_loss(rng):
    return [
        Sample((_normal(rng, 4, 3), _normal(rng, 4, 3))),
        Sample((_normal(rng, 2, 3, 2), _normal(rng, 2, 3, 2))),
    ]


def _mean_subtraction(rng):
    return [
        Sample((_normal(rng, 4, 5),)),
        Sample((_normal(rng, 2, 3, 4),), {"axis": (1, 2)}),
        Sample((_normal(rng, 3, 4),), {"axis": 0}),
    ]


def _flatten(rng):
    return [Sample((_normal(rng, 2, 3, 4, 2),)), Sample((_normal(rng, 3, 5),))]


def _l2_penalty(rng):
    params = {"conv": {"w": _normal(rng, 3, 3, 2, 4)}, "dense": [_normal(rng, 5, 4), _normal(rng, 5)]}
    return [Sample((params, np.float64(0.3)), label="nested dict/list params, lam=0.3")]


#: Every op in :mod:`jaxcnn.ops`, by name.
REGISTRY: dict[str, OpInfo] = {
    info.name: info
    for info in [
        OpInfo("dense", _dense),
        OpInfo("relu", _elementwise),
        OpInfo("sigmoid", _elementwise),
        OpInfo("tanh", _elementwise),
        OpInfo("softmax", _softmax),
        OpInfo("softmax_cross_entropy", _softmax_cross_entropy),
        OpInfo("euclidean_loss", _euclidean_loss),
        OpInfo("mean_subtraction", _mean_subtraction),
        OpInfo("flatten", _flatten),
        OpInfo("l2_penalty", _l2_penalty, quick=1),
    ]
}
