"""Ops to certify: a :class:`Registry` of ops, each with its reference and sample inputs.

``jaxcnn verify --module PKG.MODULE`` certifies the registry found in that module (its
``registry`` attribute, or its only :class:`Registry`) with the same transforms, dtypes,
verdicts and JSON report as jaxcnn's own ops; :meth:`Registry.pytest_cases` turns one
into tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

import jax
import jax.extend
import numpy as np


@dataclasses.dataclass(frozen=True)
class Sample:
    """One input of an op: positional ``args`` (arrays or pytrees) and keyword ``settings``.

    Use float64 NumPy arrays, drawn away from kinks; each check casts them to the dtype
    under test. ``kink`` is empty for the usual samples; otherwise it names the convention
    that the sample pins at a kink on purpose (finite differences must then find the point
    non-smooth).
    """

    args: tuple
    settings: dict = dataclasses.field(default_factory=dict)
    label: str = ""
    kink: str = ""

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


#: How an op's derivative is defined: a ``jax.custom_vjp`` (reverse mode only), a
#: ``jax.custom_jvp`` (forward mode; reverse mode by transposing it), a jaxcnn
#: ``custom_rule`` (a hand VJP and a hand JVP, :mod:`jaxcnn.ops._rule`), or plain autodiff.
RULES = ("custom_vjp", "custom_jvp", "custom_rule", "autodiff")


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """An op, its autodiff reference, and its sample inputs (what :meth:`Registry.register` makes).

    ``samples(rng)`` draws the list from a ``np.random.Generator``; ``batched`` lists the
    per-example arguments (vmapped, and split over devices by the sharding check);
    ``few`` how many samples the costly transforms use, ``quick`` how many ``--quick``
    keeps; ``rule`` one of :data:`RULES`, or ``"auto"``: found by tracing the op.
    """

    name: str
    op: Callable
    reference: Callable
    samples: Callable[[np.random.Generator], list]
    few: int = 2
    quick: int = 1
    batched: tuple[int, ...] = (0,)
    rule: str = "auto"

    def rule_at(self, sample: Sample) -> str:
        """:attr:`rule`, or when ``"auto"``, the rule found by tracing the op at ``sample`` in float32."""
        if self.rule != "auto":
            return self.rule
        cast = lambda a: np.asarray(a, np.float32) if np.issubdtype(np.asarray(a).dtype, np.floating) else a  # noqa: E731
        settings = {k: cast(v) if isinstance(v, np.ndarray) else v for k, v in sample.settings.items()}
        return rule_of(self.op, *jax.tree_util.tree_map(cast, sample.args), **settings)


def rule_of(op: Callable, *args: Any, **settings: Any) -> str:
    """Which of :data:`RULES` defines ``op``'s derivative at ``args``: the outermost kind of
    custom rule in its traced program (a ``custom_vjp`` anywhere makes forward mode
    impossible, so it wins), ``"autodiff"`` if it has none."""
    found = set()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            found.update(kind for kind in RULES[:2] if eqn.primitive.name.startswith(kind))
            if type(eqn.params.get("_prim")).__name__ == "_Call":  # a jaxcnn.ops._rule.custom_rule
                found.add("custom_rule")
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if isinstance(getattr(sub, "jaxpr", sub), jax.extend.core.Jaxpr):
                        visit(getattr(sub, "jaxpr", sub))

    visit(jax.make_jaxpr(lambda *a: op(*a, **settings))(*args).jaxpr)
    return next((rule for rule in RULES if rule in found), "autodiff")


class Registry(dict):
    """Ops to certify, by name: a ``dict`` of :class:`OpInfo` with :meth:`register`.

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> registry = Registry()
    >>> info = registry.register("tanh", jax.nn.tanh, lambda x: (1 - jnp.exp(-2 * x)) / (1 + jnp.exp(-2 * x)),
    ...                          [Sample((np.linspace(-2, 2, 12).reshape(3, 4),))])
    >>> list(registry), info.rule
    (['tanh'], 'auto')
    """

    def __hash__(self) -> int:  # one object, not a value
        return id(self)

    def register(self, name: str, op: Callable, reference: Callable, samples: Any, *,
                 batched: tuple[int, ...] = (0,), rule: str = "auto", few: Optional[int] = None,
                 quick: int = 1) -> OpInfo:
        """Adds an op under ``name`` and returns its :class:`OpInfo`.

        ``op`` is called as ``op(*args, **settings)``; ``reference`` is the same forward written
        for JAX's autodiff; ``samples`` are :class:`Sample` objects (or tuples of positional
        arguments), or a function ``rng -> list[Sample]`` of a ``np.random.Generator``. The
        options are :class:`OpInfo`'s (``few`` defaults to all the samples).

        Raises:
          ValueError: ``name`` is taken, no samples, or an unknown ``rule``.
          TypeError: ``op`` or ``reference`` is not callable, or a sample is not a Sample or tuple.
        """
        if name in self:
            raise ValueError(f"register: an op named {name!r} is already registered; give each op its own name.")
        for what, fn in (("op", op), ("reference", reference)):
            if not callable(fn):
                raise TypeError(f"register: `{what}` of {name!r} must be callable, got {type(fn).__name__}.")
        if rule not in RULES + ("auto",):
            raise ValueError(f"register: `rule` of {name!r} must be one of {', '.join(RULES)} or 'auto', got {rule!r}.")
        if not callable(samples):
            fixed = [Sample(s) if isinstance(s, tuple) else s for s in samples]
            for s in fixed:
                if not isinstance(s, Sample):
                    raise TypeError(f"register: each sample of {name!r} must be a Sample or a tuple of arguments, "
                                    f"got {type(s).__name__}.")
            samples = lambda rng: list(fixed)  # noqa: E731
        count = len(samples(np.random.default_rng(0)))
        if count == 0:
            raise ValueError(f"register: {name!r} needs at least one sample, got none.")
        self[name] = OpInfo(name, op, reference, samples, count if few is None else few, quick, tuple(batched), rule)
        return self[name]

    def pytest_cases(self, dtypes: Optional[Iterable[str]] = None, quick: bool = False,
                     transforms: Optional[Iterable[str]] = None) -> list:
        """One ``pytest.param`` per op × sample × dtype × transform, the plan of ``jaxcnn verify``
        (the same checks), with readable ids (``"tanh-0-float32-vmap"``); each param's value
        has ``assert_ok()``, which raises :class:`~jaxcnn.verify.GradientMismatch` with the
        report and its diagnosis.

        >>> # in a test file:
        >>> # @pytest.mark.parametrize("case", registry.pytest_cases())
        >>> # def test_rule(case):
        >>> #     case.assert_ok()
        """
        from jaxcnn._certify import runner

        return runner.pytest_cases(self, dtypes, quick, transforms)
