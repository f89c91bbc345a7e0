"""The two helpers every check is built on (as ``jax._src.public_test_util`` builds its
checks on ``numerical_jvp`` and ``check_close``):

* :class:`Leaves`, the one model of what is differentiated: the floating leaves of the
  positional arguments (integer leaves, labels and keys, are held fixed), their names,
  and a call as a function of them alone;
* :func:`collect`, the one engine: a check yields :func:`~jaxcnn.verify._report.compare`
  reports of its rule side against its expected side, and :func:`collect` files them per
  argument, keeps the worst, and turns an exception into the result's ``error``.

Beside them the plumbing they share: the projection ``φ = Σ⟨f(x), v⟩``, a compiled VJP,
and central differences of ``φ``, all in one compiled program per check.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.verify._report import ArgumentReport, CheckResult, worst


def is_float(leaf: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)


def name_of(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


class Leaves:
    """The floating leaves of ``op``'s positional ``args``: what every check differentiates.

    ``names[k]`` is leaf ``k``'s argument name and path (``"params['conv']['w']"``), from
    ``op``'s signature (``arg0, arg1, ...`` where it has none); ``arrays[k]`` the leaf.
    """

    def __init__(self, op: Callable, args: Sequence[Any]):
        self.op, self.args = op, tuple(args)
        self.flat, self.tree = jax.tree_util.tree_flatten(self.args)
        self.where = [k for k, leaf in enumerate(self.flat) if is_float(leaf)]
        paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(self.args)[0]]
        names = _arg_names(op, len(self.args))
        self.names = [names[paths[k][0].idx] + jax.tree_util.keystr(paths[k][1:]) for k in self.where]
        self.argument = [path[0].idx for path in paths]  # of every leaf, floating or fixed
        self.arrays = [self.flat[k] for k in self.where]

    def rebuild(self, floats: Sequence[Any], flat: Optional[Sequence[Any]] = None) -> tuple:
        """The positional arguments with these floating leaves (in ``flat``, all leaves, if given)."""
        return _rebuild(self.tree, tuple(self.where), floats, self.flat if flat is None else flat)

    def bind(self, fn: Callable, settings: dict) -> Callable:
        """``g(*floats) = fn(*args, **settings)`` with the floating leaves replaced."""
        return lambda *floats: fn(*self.rebuild(floats), **settings)

    def call(self, fn: Callable, settings: dict) -> Callable:
        """``g(floats, flat) = fn(*args, **settings)`` with every leaf given (to map or place them all)."""
        return lambda floats, flat: fn(*self.rebuild(floats, flat), **settings)

    def cast(self, dtype: Any) -> "Leaves":
        """The same arguments with the floating leaves in ``dtype``."""
        # on the host: an eager conversion (even jnp.asarray of a NumPy array) compiles a program per shape
        return Leaves(self.op, self.rebuild([jax.device_put(np.asarray(a).astype(dtype)) for a in self.arrays]))

    @property
    def dtype(self) -> str:
        return "/".join(sorted({str(jnp.result_type(a)) for a in self.arrays})) or "none"


def _rebuild(tree, where: tuple, floats: Sequence[Any], flat: Sequence[Any]) -> tuple:
    flat = list(flat)
    for k, x in zip(where, floats):
        flat[k] = x
    return jax.tree_util.tree_unflatten(tree, flat)


def _arg_names(op: Callable, n: int) -> list[str]:
    """Names of the first n positional parameters of op (arg0, arg1, ... where unknown)."""
    try:
        params = list(inspect.signature(op).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [positional[i] if i < len(positional) else f"arg{i}" for i in range(n)]


def signed(arrays: Sequence[Any]) -> list[bool]:
    """Which leaves take both signs: those the probes beyond the sample scale (a leaf of one
    sign may be held to it by its domain: a probability, a variance, a scale)."""
    return [bool(np.any(np.asarray(x) < 0) and np.any(np.asarray(x) > 0)) for x in arrays]


def scaled(floats: Sequence[Any], which: Sequence[bool], s: float) -> list:
    """``floats`` with the leaves ``which`` picks times ``s``, in their own dtype."""
    return [x * jnp.asarray(s, jnp.result_type(x)) if w else x for x, w in zip(floats, which)]


def random_like(rng: np.random.Generator, tree: Any) -> Any:
    """A standard-normal pytree with the shapes and dtypes of ``tree``'s leaves."""
    return jax.tree_util.tree_map(
        lambda t: jax.device_put(np.asarray(rng.standard_normal(np.shape(t))).astype(jnp.result_type(t))), tree)


def as_cotangent(ct: Any, like: Any) -> Any:
    """A rule's cotangent as an array (None, or a symbolic zero, means zeros)."""
    if ct is None or getattr(ct, "dtype", None) == jax.dtypes.float0:
        return np.zeros(np.shape(like))
    return ct


def projection(fn: Callable, v: Any) -> Callable:
    """``φ(*a) = Σ⟨fn(*a), v⟩`` over the output's leaves."""
    def phi(*a):
        return sum(jnp.vdot(o, w) for o, w in zip(jax.tree_util.tree_leaves(fn(*a)), jax.tree_util.tree_leaves(v)))

    return phi


@functools.lru_cache(maxsize=16)
def _compiled(fn: Callable, tree: Any, where: tuple) -> tuple[Callable, Callable, Callable]:
    def vjp(floats, flat):
        return jax.vjp(lambda *f: fn(*_rebuild(tree, where, f, flat)), *floats)

    def together(floats, flat, stacked):  # the output and the pullback of every cotangent, mapped
        out, pullback = vjp(floats, flat)
        return out, jax.lax.map(pullback, stacked)

    return (jax.jit(lambda floats, flat: vjp(floats, flat)[0]),
            jax.jit(lambda v, floats, flat: vjp(floats, flat)[1](v)), jax.jit(together))


def _bound(fn: Callable, settings: dict) -> Callable:
    return functools.partial(fn, **settings) if settings else fn


def compiled_vjp(fn: Callable, leaves: Leaves, settings: dict) -> tuple[Any, Callable]:
    """``(out, pullback)`` as ``jax.vjp`` gives them for ``fn(*args, **settings)`` over the
    floating leaves, each one compiled program; ``pullback(v)`` is a tuple, one per leaf.

    The last 16 functions keep their programs (``functools.lru_cache`` by identity, never by
    value): the runner's eager, jit and checkpoint checks of one sample, which pass one
    bound reference, trace and compile its expected side once.
    """
    forward, pullback, _ = _compiled(_bound(fn, settings), leaves.tree, tuple(leaves.where))
    return forward(leaves.arrays, leaves.flat), lambda v: pullback(v, leaves.arrays, leaves.flat)


def expected_type(fn: Callable, leaves: Leaves, settings: dict) -> Any:
    """The output's type (``jax.ShapeDtypeStruct`` s) of ``fn(*args, **settings)``, traced once
    per function as :func:`compiled_vjp` keeps its programs."""
    forward, _, _ = _compiled(_bound(fn, settings), leaves.tree, tuple(leaves.where))
    return forward.eval_shape(leaves.arrays, leaves.flat)


def stack(trees: Sequence[Any]) -> Any:
    """The pytrees stacked leaf by leaf along a new leading axis, on the host."""
    return jax.tree_util.tree_map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *trees)


def expected_vjp(fn: Callable, leaves: Leaves, settings: dict, cotangents: Sequence[Any]) -> tuple[Any, list]:
    """``(out, [pullback(v) for v in cotangents])`` of ``jax.vjp`` of ``fn`` over the floating
    leaves, as NumPy values, from one compiled program (kept as :func:`compiled_vjp` keeps
    its own: eager, jit and checkpoint share it)."""
    _, _, together = _compiled(_bound(fn, settings), leaves.tree, tuple(leaves.where))
    out, cts = jax.device_get(together(leaves.arrays, leaves.flat, stack(cotangents)))
    return out, [tuple(c[k] for c in cts) for k in range(len(cotangents))]


def central_differences(phi: Callable, arrays: Sequence[Any], directions: Sequence[np.ndarray],
                        steps: Sequence[float]) -> list[np.ndarray]:
    """Per leaf ``k``: ``φ`` at ``x_k ± h·d`` for every step ``h`` and row ``d`` of
    ``directions[k]`` (the other leaves at ``x``), shape ``(len(steps), 2, P)``; then
    ``φ(x)``. One compiled program maps over every direction of every leaf."""
    # numpy out: eager jnp arithmetic on the results would compile a program per primitive and shape
    return jax.device_get(jax.jit(lambda u: differences(phi, arrays, u, steps))(list(directions)))


def differences(phi: Callable, arrays: Sequence[Any], directions: Sequence[Any], steps: Sequence[float]):
    """:func:`central_differences`' values, traceable: to compute them in a check's own program."""
    found = []
    for k, (x, u) in enumerate(zip(arrays, directions)):
        moved = jnp.concatenate([s * h * u for h in steps for s in (1, -1)])
        at = lambda d, k=k, x=x: phi(*arrays[:k], x + d.reshape(x.shape), *arrays[k + 1:])  # noqa: E731
        found.append(jax.lax.map(at, moved, batch_size=64).reshape(len(steps), 2, len(u)))
    return found, phi(*arrays)


def probe_directions(arrays: Sequence[Any], elementwise_max: int, count: int, rng: np.random.Generator):
    """Per leaf: ``(directions, indices, elementwise)``, every element (unit vectors) of a leaf
    of at most ``elementwise_max`` elements, else ``count`` random directions, ``("direction", k)``."""
    for x in arrays:
        if x.size <= elementwise_max:
            yield np.eye(x.size), [tuple(int(j) for j in np.unravel_index(k, x.shape)) for k in range(x.size)], True
        else:
            yield rng.standard_normal((count, x.size)), [("direction", k) for k in range(count)], False


def collect(op: str, against: str, dtype: str,
            reports: Callable[[], Iterable["ArgumentReport | str"]]) -> CheckResult:
    """The engine: ``reports()`` yields the comparisons of one check (``"output…"`` for the
    forward value, an argument's name for its derivative) and, as strings, notes on what it
    left out; per name the worst is kept, in the order first seen. An exception, from the
    rule or either side, is reported as the result's ``error`` in one line, with what was
    compared before it."""
    found: dict[str, list[ArgumentReport]] = {}
    notes, error = [], ""
    try:
        for report in reports():
            if isinstance(report, str):
                notes.append(report)
                continue
            found.setdefault(report.name, []).append(report)
    except Exception as e:  # report, do not crash: the rule may be the culprit
        error = f"{type(e).__name__}: {_first_line(e)}"
    forward = [worst(r) for name, r in found.items() if _is_output(name)]
    arguments = tuple(worst(r) for name, r in found.items() if not _is_output(name))
    return CheckResult(op, against, dtype, worst(forward) if forward else None, arguments, error, tuple(notes))


def _is_output(name: str) -> bool:
    return name == "output" or name.startswith(("output[", "output."))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else repr(e)


def outputs(out: Any, expected: Any) -> Iterator[tuple[str, Any, Any]]:
    """``("output<path>", leaf, expected leaf)`` for every leaf of a forward value."""
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(out), jax.tree_util.tree_leaves(expected)):
        if jax.dtypes.float0 in (getattr(a, "dtype", None), getattr(b, "dtype", None)):
            continue  # the tangent of an integer output (arg-max indices): nothing to compare
        yield "output" + jax.tree_util.keystr(path), a, b
