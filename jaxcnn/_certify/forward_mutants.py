"""Deliberately wrong forward rules: the real op but for its hand JVP, to prove that the
forward-mode checks catch them and blame the broken argument.

Each :class:`ForwardMutant` is a :class:`~jaxcnn.ops._rule.custom_rule` with the real op's
forward and backward (``jax.vjp`` of the public op: the lectures' VJP) and a wrong JVP
written from the real op: the right tangent at a wrong operand (a conv's tangent without
``conv(x, ṫ_w)`` is the real JVP with ``ṫ_w = 0``; batch norm's without the statistics'
tangents is the real evaluation-mode JVP at the batch's statistics). The checks that must
catch them are :data:`TRANSFORMS`: the JVP against the hand VJP by the adjoint identity,
then against the reference's JVP, in float64; :mod:`jaxcnn._certify.mutants` runs them
beside the backward mutants (``jaxcnn verify --mutants``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxcnn import ops
from jaxcnn.ops._rule import custom_rule
from jaxcnn.verify import Sample

#: The checks a forward mutant goes through, in order, until one catches it.
TRANSFORMS = ("adjoint", "jvp")


@dataclasses.dataclass(frozen=True)
class ForwardMutant:
    """A wrong hand JVP for one op of :mod:`jaxcnn.ops` (its VJP the real one).

    Attributes:
      name: ``"<op>.<mistake>"``, the op as in the registry.
      argument: the argument whose tangent is mishandled (what the report must blame).
      description: the mistake, in words.
      wrong: ``(real, primals, tangents, settings) -> (out, tangent_out)``: the wrong JVP,
        ``real`` the public op with the sample's settings bound.
      applies: whether a registry sample can show the mistake.
    """

    name: str
    argument: str
    description: str
    wrong: Callable
    applies: Callable[[Sample], bool] = lambda sample: True
    transforms: tuple[str, ...] = TRANSFORMS

    @property
    def op(self) -> str:
        return self.name.split(".")[0]

    def build(self) -> Callable:
        """The mutated op, ``f(*args, **settings)``: the real forward and VJP, this JVP."""
        real_op = getattr(ops, self.op)

        @functools.wraps(real_op)
        def mutated(*args, **settings):
            real = functools.partial(real_op, **settings)

            def fun(*a):
                return real(*a)

            def bwd(a, g):
                return tuple(None if getattr(c, "dtype", None) == jax.dtypes.float0 else c
                             for c in jax.vjp(real, *a)[1](g))

            fun.__name__ = self.name
            rule = custom_rule(fun).defvjp(lambda *a: (real(*a), a), bwd)
            rule.defjvp(lambda primals, tangents: self.wrong(real, primals, tangents, settings))
            return rule(*args)

        mutated.__name__ = self.name
        return mutated


def _conv_without_x_tw(real, primals, tangents, settings):
    """``ṫ_y = conv(ṫ_x, w) + ṫ_b``: the real JVP with ``ṫ_w = 0``."""
    tx, tw, *tb = tangents
    return jax.jvp(real, tuple(primals), (tx, jnp.zeros_like(tw), *tb))


def _batch_norm_without_statistics(real, primals, tangents, settings):
    """``y``'s tangent from the real JVP in evaluation mode at the batch's own statistics (held
    fixed); the returned statistics' tangents the real ones."""
    x = primals[0]
    axis = settings.get("axis", -1) % x.ndim
    over = tuple(i for i in range(x.ndim) if i != axis)
    held = functools.partial(real, mean=jax.lax.stop_gradient(jnp.mean(x, over)),
                             var=jax.lax.stop_gradient(jnp.var(x, over)))
    out, (_, t_mean, t_var) = jax.jvp(real, tuple(primals), tuple(tangents))
    return out, (jax.jvp(held, tuple(primals), tuple(tangents))[1], t_mean, t_var)


def _flipped(x):
    return jnp.flip(x, tuple(range(1, x.ndim - 1)))


def _max_pool_to_last_maximum(real, primals, tangents, settings):
    """The real JVP of the spatially flipped input, flipped back: ties go to the last maximum."""
    (x,), (tx,) = primals, tangents
    out, t = jax.jvp(real, (_flipped(x),), (_flipped(tx),))
    return _flipped(out), _flipped(t)


def _tiled_tie(sample: Sample) -> bool:
    """A tie pinned on purpose, in windows that tile the input (flipping keeps the windows)."""
    s, x = sample.settings, sample.args[0]
    window = s.get("window")
    sizes = (window,) * (x.ndim - 2) if isinstance(window, int) else tuple(window)
    return (bool(sample.kink) and s.get("stride") in (None, window) and s.get("padding", "VALID") == "VALID"
            and not s.get("ceil_mode") and s.get("dilation", 1) == 1
            and all(n % k == 0 for n, k in zip(x.shape[1:-1], sizes)))


def _relu_other_convention(real, primals, tangents, settings):
    """The JVP at ``x = 0`` with the other convention than the VJP's (``x > 0`` for ``x >= 0``)."""
    other = 1.0 - settings.get("derivative_at_zero", 1.0)
    return jax.jvp(functools.partial(real, derivative_at_zero=other), tuple(primals), tuple(tangents))


FORWARD_MUTANTS = [
    ForwardMutant("conv.tangent_without_conv_x_tw", "w", "ṫ_y = conv(ṫ_x, w) + ṫ_b: the conv(x, ṫ_w) term lost",
                  _conv_without_x_tw),
    ForwardMutant("batch_norm.tangent_without_statistics", "x",
                  "ṫ_y = γ ṫ_x / σ + ṫ_γ x̂ + ṫ_β: the tangents of the batch mean and variance lost",
                  _batch_norm_without_statistics, lambda s: "mean" not in s.settings),
    ForwardMutant("max_pool.tangent_to_last_maximum", "x",
                  "the tangent routed to the last tied maximum, the VJP's δ to the first", _max_pool_to_last_maximum,
                  _tiled_tie),
    ForwardMutant("relu.tangent_other_convention_at_zero", "x",
                  "the JVP's derivative at x = 0 not the VJP's (x > 0 against x >= 0)", _relu_other_convention,
                  lambda s: bool(s.kink)),
]
