"""The layer type and the combinator algebra, with state and randomness.

A layer is a pair of pure functions, as in ``jax.example_libraries.stax`` and optax, that
also carries non-trainable *state* (batch norm's running statistics) beside the trainable
*params*, and takes a training flag and a PRNG key (dropout):

* ``init(key, input_shape) -> (params, state, output_shape)``
* ``apply(params, state, x, *, training=False, key=None) -> (y, new_state)``

Params and state are separate plain pytrees (dicts, tuples, ``()`` for none), so optax
sees only the params, ``jax.grad`` differentiates only them, and ``jax.tree_util``,
``jax.jit`` and checkpointing handle both unchanged. ``training`` is a Python bool (the
code differs: batch statistics vs running ones, dropout on or off); ``key`` is needed
only when some layer draws random numbers in training. Every combinator threads the
state through its children in order and gives each child its own key
(``jax.random.split``, as stax's ``serial`` does).

A layer without state or randomness is written as before, ``init(key, input_shape) ->
(params, output_shape)`` and ``apply(params, x) -> y``, and lifted with
:meth:`Layer.stateless`.

``apply`` checks, at trace time, that ``params`` and ``state`` have the structure and
shapes ``init`` gives for the input's shape (found with ``jax.eval_shape``, once per input
shape): params of another architecture or input size are a ``ValueError`` naming the
leaf and the layer, never a silent reinterpretation. The outermost ``apply`` checks the
whole tree; the layers it calls do not check again.

Shapes include the batch axis (any int, e.g. ``-1`` for "any batch"). ``Layer`` carries a
``name``, the ``children`` a combinator is made of with the ``keys`` under which each
child's params and state sit (for :func:`jaxcnn.nn.summary` and :mod:`jaxcnn.interop`), and
a ``count`` of trainable parameters.

Children are positional or named. ``serial(a, b, c)`` keeps tuples, one entry per layer,
as stax does; ``serial(("conv1", a), ("bn1", b), c)`` keeps dicts keyed by the names, as
PyTorch's ``nn.Sequential(OrderedDict(...))`` and Flax do, and an unnamed layer in a named
chain must have no params and no state (an activation, a pooling, a flatten): it gets no
entry. The keys are the same in params and state, so ``params["bn1"]`` and
``state["bn1"]`` belong to one layer.

jaxcnn layers and stax layers do not mix: stax's ``init`` returns ``(output_shape,
params)`` and its ``apply`` takes no state, so a jaxcnn layer inside ``stax.serial`` and
a stax layer inside :func:`serial` each raise a ``TypeError`` that says so (wrap a stax
layer with :func:`from_stax`).
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

Shape = tuple[int, ...]
Params = Any
State = Any


class Layer:
    """``init(key, input_shape) -> (params, state, output_shape)`` and
    ``apply(params, state, x, *, training=False, key=None) -> (y, new_state)``."""

    __slots__ = ("init", "apply", "name", "kind", "children", "keys", "_count", "_expected")

    def __init__(self, init: Callable, apply: Callable, *, name: str, children: Sequence["Layer"] = (),
                 keys: Optional[Sequence[Optional[tuple]]] = None, count: Optional[Callable[[Params], int]] = None,
                 kind: Optional[str] = None):
        self.init = init
        self.apply = _checked(self, apply)
        self.name = name
        #: What made the layer: its constructor's or combinator's name ("Conv", "serial", ...).
        self.kind = name.split("(")[0] if kind is None else kind
        self.children = tuple(children)
        #: For each child, the path from this layer's params (and state) to the child's: ``(i,)``
        #: in a positional chain, ``("conv1",)`` in a named one, ``()`` where the child's params
        #: are this layer's own (:func:`residual`), ``None`` where the child has none.
        self.keys = tuple((i,) for i in range(len(self.children))) if keys is None else tuple(keys)
        self._count = count
        self._expected: dict = {}  # input shapes -> what init gives for them (ShapeDtypeStructs), or None

    @classmethod
    def stateless(cls, init: Callable[[jax.Array, Shape], tuple[Params, Any]], apply: Callable[[Params, Any], Any],
                  *, name: str, children: Sequence["Layer"] = (), keys: Optional[Sequence[Optional[tuple]]] = None,
                  count: Optional[Callable[[Params], int]] = None, kind: Optional[str] = None) -> "Layer":
        """A layer from ``init(key, input_shape) -> (params, output_shape)`` and
        ``apply(params, x) -> y``: no state (``()``), the same output in training and
        evaluation, no randomness.

        >>> import jax, jax.numpy as jnp
        >>> double = Layer.stateless(lambda key, shape: ((), shape), lambda params, x: 2 * x, name="double")
        >>> params, state, shape = double.init(jax.random.PRNGKey(0), (-1, 3))
        >>> y, state = double.apply(params, state, jnp.ones((1, 3)))
        >>> y.tolist(), state
        ([[2.0, 2.0, 2.0]], ())
        """

        def full_init(key, input_shape):
            params, shape = init(key, input_shape)
            return params, (), shape

        def full_apply(params, state, x, *, training=False, key=None):
            return apply(params, x), state

        return cls(full_init, full_apply, name=name, children=children, keys=keys, count=count, kind=kind)

    def count(self, params: Params) -> int:
        """Number of trainable scalars in ``params`` (weights fixed at zero excluded)."""
        if self._count is not None:
            return self._count(params)
        return _size(params)

    def __iter__(self):
        raise TypeError(
            f"{self.name} is a jaxcnn layer, not a stax (init_fun, apply_fun) pair: its init returns "
            f"(params, state, output_shape) and its apply takes the state, so it cannot go inside "
            f"jax.example_libraries.stax combinators. Compose with jaxcnn.nn.serial/parallel instead, "
            f"wrapping stax layers with jaxcnn.nn.from_stax."
        )

    def __repr__(self) -> str:
        return f"Layer({self.name})"


_inside = threading.local()  # set while an outer apply, which checked the whole tree, runs


def _checked(layer: Layer, apply: Callable) -> Callable:
    """``apply`` preceded by the params/state check (trace time only; skipped inside an
    outer layer's apply, which has checked the whole tree)."""
    @functools.wraps(apply)
    def checked_apply(params, state, x, *args, **kwargs):
        if getattr(_inside, "active", False) or not _check_params(layer, params, state, x):
            return apply(params, state, x, *args, **kwargs)
        _inside.active = True
        try:
            return apply(params, state, x, *args, **kwargs)
        finally:
            _inside.active = False

    return checked_apply


def _check_params(layer: Layer, params, state, x) -> bool:
    """Raises ValueError unless ``(params, state)`` has the leaves and shapes that
    ``layer.init`` gives for ``x``'s shape; returns False where init cannot be traced for
    that shape (nothing to compare with: apply raises its own error, if any)."""
    input_shape = jax.tree_util.tree_map(lambda a: tuple(jnp.shape(a)), x)
    cache_key = repr(input_shape)
    if cache_key not in layer._expected:
        if len(layer._expected) >= 32:
            layer._expected.clear()
        try:
            layer._expected[cache_key] = jax.tree_util.tree_flatten(
                jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), input_shape)[:2]))
        except Exception:  # an input init refuses, or an init that needs concrete values
            layer._expected[cache_key] = None
    expected = layer._expected[cache_key]
    if expected is None:
        return False
    leaves, treedef = jax.tree_util.tree_flatten((params, state))
    if treedef == expected[1] and all(jnp.shape(a) == e.shape for a, e in zip(leaves, expected[0])):
        return True
    # The slow path, paths and all (it also accepts lists where init gave tuples).
    want = {jax.tree_util.keystr(p): e.shape for p, e in jax.tree_util.tree_leaves_with_path(
        jax.tree_util.tree_unflatten(expected[1], expected[0]))}
    got = {jax.tree_util.keystr(p): tuple(jnp.shape(a)) for p, a in jax.tree_util.tree_leaves_with_path((params,
                                                                                                          state))}
    def named(path):  # "[0][2]['w']" -> "params[2]['w']"
        return ("params" if path.startswith("[0]") else "state") + path[3:]

    if want.keys() != got.keys():
        missing, extra = [named(p) for p in want if p not in got], [named(p) for p in got if p not in want]
        raise ValueError(
            f"{layer.name}.apply: the params and state do not have the structure {layer.name}.init gives for input "
            f"shape {input_shape}: missing {missing[:3]}{' ...' if len(missing) > 3 else ''}, unexpected "
            f"{extra[:3]}{' ...' if len(extra) > 3 else ''}. Were they made for another model?")
    wrong = [f"{named(p)}{_layer_at(layer, p)} has shape {got[p]} where init gives {want[p]}"
             for p in want if want[p] != got[p]]
    raise ValueError(
        f"{layer.name}.apply: the params and state do not have the shapes {layer.name}.init gives for input shape "
        f"{input_shape}: {'; '.join(wrong[:3])}{f' (and {len(wrong) - 3} more)' if len(wrong) > 3 else ''}. Were "
        f"they made for another model or input size?")


def _layer_at(layer: Layer, path: str) -> str:
    """The innermost child of a combinator that a leaf path points into, as " (in Dense(10))"."""
    def text(key):  # ("fc", 0) -> "['fc'][0]", as jax.tree_util.keystr writes a path
        return "".join(f"[{k!r}]" for k in key)

    inner, rest = layer, path[3:]
    while True:
        step = next(((k, c) for k, c in zip(inner.keys, inner.children) if k and rest.startswith(text(k))),
                    next(((k, c) for k, c in zip(inner.keys, inner.children) if k == ()), None))
        if step is None:
            break
        rest, inner = rest[len(text(step[0])):], step[1]
    return f" (in {inner.name})" if inner is not layer else ""


def _size(tree) -> int:
    return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(tree))


def _check_layers(combinator: str, layers, start: int = 0) -> None:
    for i, layer in enumerate(layers, start):
        if isinstance(layer, Layer):
            continue
        if isinstance(layer, tuple) and len(layer) == 2 and all(callable(f) for f in layer):
            raise TypeError(
                f"{combinator}: layer {i} is a stax-style (init_fun, apply_fun) pair, not a jaxcnn.nn.Layer; "
                f"stax's init returns (output_shape, params) where jaxcnn's returns (params, state, "
                f"output_shape). Wrap it: jaxcnn.nn.from_stax(layer)."
            )
        raise TypeError(f"{combinator}: layer {i} must be a jaxcnn.nn.Layer, got {type(layer).__name__} {layer!r}.")


def _split(key: Optional[jax.Array], n: int):
    if key is None:
        return [None] * n
    return jax.random.split(key, n) if n else []


def _children(combinator: str, layers) -> tuple[tuple[Layer, ...], tuple[Optional[tuple], ...]]:
    """The layers of ``serial``/``parallel`` and their keys: positional ``(i,)`` where no layer
    is named; the names where some are given as ``(name, layer)``, ``None`` for the others."""
    if not any(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in layers):
        _check_layers(combinator, layers)
        return tuple(layers), tuple((i,) for i in range(len(layers)))
    children, keys = [], []
    for i, x in enumerate(layers):
        named = isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str)
        name, layer = x if named else (None, x)
        _check_layers(combinator, [layer], i)
        if named and (not name or name in keys or "." in name):
            raise ValueError(f"{combinator}: layer {i}'s name must be a non-empty string without '.' and unique "
                             f"in the chain, got {name!r} ({layer.name}).")
        children.append(layer)
        keys.append(name)
    return tuple(children), tuple((k,) if k is not None else None for k in keys)


def _unnamed_must_be_empty(combinator: str, i: int, layer: Layer, params, state) -> None:
    if jax.tree_util.tree_leaves((params, state)):
        raise ValueError(f"{combinator}: layer {i} ({layer.name}) has params or state but no name, in a chain whose "
                         f"other layers are named; give it one: ('name', {layer.name}).")


def _assemble(keys, entries):
    """Children's params (or states) as the combinator keeps them: a tuple, or a dict of the named."""
    if all(k is not None and isinstance(k[0], int) for k in keys):
        return tuple(entries)
    return {k[0]: e for k, e in zip(keys, entries) if k is not None}


def _entry(tree, key):
    return () if key is None else tree[key[0]]


def serial(*layers: Layer | tuple[str, Layer], name: str = "serial") -> Layer:
    """Composes layers left to right: ``apply = fₙ ∘ … ∘ f₁``; layer ``i`` gets the ``i``-th
    key of ``split(key, n)``.

    Params and state are tuples, one entry per layer, or, where layers are given as
    ``(name, layer)`` pairs, dicts keyed by the names (an unnamed layer among named ones must
    have no params or state and gets no entry):

    >>> import jax
    >>> from jaxcnn import nn
    >>> model = nn.serial(("conv1", nn.Conv(4, 3)), ("bn1", nn.BatchNorm()), nn.Relu(), nn.Flatten(),
    ...                   ("fc", nn.Dense(2)))
    >>> params, state, shape = model.init(jax.random.PRNGKey(0), (-1, 5, 5, 1))
    >>> list(params), list(state), params["fc"]["w"].shape
    (['conv1', 'bn1', 'fc'], ['conv1', 'bn1', 'fc'], (2, 36))
    """
    children, keys = _children("serial", layers)

    def init(key, input_shape):
        params, states, shape = [], [], input_shape
        for i, (layer, k, path) in enumerate(zip(children, _split(key, len(children)), keys)):
            p, s, shape = layer.init(k, shape)
            if path is None:
                _unnamed_must_be_empty("serial", i, layer, p, s)
            params.append(p)
            states.append(s)
        return _assemble(keys, params), _assemble(keys, states), shape

    def apply(params, state, x, *, training=False, key=None):
        states = []
        for layer, path, k in zip(children, keys, _split(key, len(children))):
            x, s = layer.apply(_entry(params, path), _entry(state, path), x, training=training, key=k)
            states.append(s)
        return x, _assemble(keys, states)

    def count(params):
        return sum(layer.count(_entry(params, path)) for layer, path in zip(children, keys))

    return Layer(init, apply, name=name, children=children, keys=keys, count=count, kind="serial")


def parallel(*layers: Layer | tuple[str, Layer], name: str = "parallel") -> Layer:
    """Applies ``layers[i]`` to the i-th element of a tuple input; returns a tuple. Params and
    state as in :func:`serial`: tuples, or dicts where the layers are named."""
    children, keys = _children("parallel", layers)

    def init(key, input_shape):
        _check_tuple_shape("parallel", input_shape, len(children))
        triples = [l.init(k, s) for l, k, s in zip(children, _split(key, len(children)), input_shape)]
        for i, (layer, path, (p, s, _)) in enumerate(zip(children, keys, triples)):
            if path is None:
                _unnamed_must_be_empty("parallel", i, layer, p, s)
        return (_assemble(keys, [t[0] for t in triples]), _assemble(keys, [t[1] for t in triples]),
                tuple(t[2] for t in triples))

    def apply(params, state, xs, *, training=False, key=None):
        pairs = [l.apply(_entry(params, path), _entry(state, path), x, training=training, key=k)
                 for l, path, x, k in zip(children, keys, xs, _split(key, len(children)))]
        return tuple(y for y, _ in pairs), _assemble(keys, [s for _, s in pairs])

    def count(params):
        return sum(layer.count(_entry(params, path)) for layer, path in zip(children, keys))

    return Layer(init, apply, name=name, children=children, keys=keys, count=count, kind="parallel")


def fan_out(n: int) -> Layer:
    """``x ↦ (x, …, x)``, n copies. In the backward pass the n gradients add (Bell)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"fan_out: `n` must be an int >= 1, got {n!r}.")
    return Layer.stateless(lambda key, s: ((), (s,) * n), lambda params, x: (x,) * n, name=f"fan_out({n})")


def fan_in_sum() -> Layer:
    """``(x₁, …, xₙ) ↦ Σ xᵢ``; every input must have the same shape."""

    def init(key, input_shapes):
        _check_tuple_shape("fan_in_sum", input_shapes)
        if len({tuple(s) for s in input_shapes}) != 1:
            raise ValueError(
                f"fan_in_sum: every branch must have the same output shape to be added, got "
                f"{', '.join(str(tuple(s)) for s in input_shapes)}."
            )
        return (), input_shapes[0]

    def apply(params, xs):
        return sum(xs[1:], xs[0])

    return Layer.stateless(init, apply, name="fan_in_sum")


def fan_in_concat(axis: int = -1) -> Layer:
    """``(x₁, …, xₙ) ↦ concatenate(xᵢ, axis)`` (default: channels, the last axis)."""

    def init(key, input_shapes):
        _check_tuple_shape("fan_in_concat", input_shapes)
        ranks = {len(s) for s in input_shapes}
        ndim = len(input_shapes[0])
        if len(ranks) != 1 or not -ndim <= axis < ndim:
            raise ValueError(f"fan_in_concat: cannot concatenate shapes {list(input_shapes)} along axis {axis}.")
        a = axis % ndim
        rest = {tuple(d for i, d in enumerate(s) if i != a) for s in input_shapes}
        if len(rest) != 1:
            raise ValueError(
                f"fan_in_concat: every branch must agree on all axes but {axis}, got "
                f"{', '.join(str(tuple(s)) for s in input_shapes)}."
            )
        out = list(input_shapes[0])
        out[a] = sum(s[a] for s in input_shapes)
        return (), tuple(out)

    return Layer.stateless(init, lambda params, xs: jnp.concatenate(xs, axis), name=f"fan_in_concat(axis={axis})")


def identity() -> Layer:
    """``x ↦ x``."""
    return Layer.stateless(lambda key, s: ((), s), lambda params, x: x, name="identity")


def residual(block: Layer) -> Layer:
    """``y = x + block(x)``: ``serial(fan_out(2), parallel(block, identity()), fan_in_sum())``
    written out, with the block's params and state as its own and a shape check at ``init``.

    The gradient of the skip path adds to the block's ("gradients add at branches", Bell).
    """
    _check_layers("residual", [block])

    def init(key, input_shape):
        params, state, shape = block.init(key, input_shape)
        if tuple(shape) != tuple(input_shape):
            raise ValueError(
                f"residual: the block must keep the input shape {tuple(input_shape)} to be added "
                f"to it, but it gives {tuple(shape)}; use SAME padding, stride 1, and as many "
                f"output channels as input channels."
            )
        return params, state, shape

    def apply(params, state, x, *, training=False, key=None):
        y, state = block.apply(params, state, x, training=training, key=key)
        return x + y, state

    return Layer(init, apply, name=f"residual({block.name})", children=(block,), keys=((),), count=block.count,
                 kind="residual")


def dense_block(*layers: Layer) -> Layer:
    """DenseNet-style block (Raj's outline): each layer's output is concatenated, along the
    channels, to everything before it: ``x ← concat(x, layer(x))`` for each layer.
    """
    grow = [
        serial(fan_out(2), parallel(identity(), layer), fan_in_concat(-1), name=f"concat({layer.name})")
        for layer in layers
    ]
    return serial(*grow, name="dense_block")


def _check_tuple_shape(op: str, input_shape, n: Optional[int] = None) -> None:
    ok = isinstance(input_shape, (tuple, list)) and input_shape
    ok = ok and all(isinstance(s, (tuple, list)) for s in input_shape)
    if not ok or (n is not None and len(input_shape) != n):
        want = f"a tuple of {n} shapes" if n is not None else "a tuple of shapes (one per branch)"
        raise ValueError(f"{op}: the input must be {want}, e.g. from fan_out; got input shape {input_shape!r}.")


def from_stax(layer, name: str = "stax") -> Layer:
    """A ``jax.example_libraries.stax`` layer ``(init_fun, apply_fun)`` as a jaxcnn layer
    (no state). ``init_fun``'s ``(output_shape, params)`` is reordered; ``apply_fun``
    gets ``rng=key`` and stax's ``mode="train"`` or ``"test"`` from ``training`` (note
    that stax's ``Dropout(rate)`` keeps each unit with probability ``rate``).

    >>> import jax, jax.numpy as jnp
    >>> from jax.example_libraries import stax
    >>> layer = from_stax(stax.Dense(3))
    >>> params, state, shape = layer.init(jax.random.PRNGKey(0), (-1, 2))
    >>> shape, state
    ((-1, 3), ())
    """
    if not (isinstance(layer, tuple) and len(layer) == 2 and all(callable(f) for f in layer)):
        raise TypeError(f"from_stax: expected a stax (init_fun, apply_fun) pair, got {type(layer).__name__}.")
    init_fun, apply_fun = layer

    def init(key, input_shape):
        shape, params = init_fun(key, input_shape)
        return params, (), shape

    def apply(params, state, x, *, training=False, key=None):
        return apply_fun(params, x, rng=key, mode="train" if training else "test"), state

    return Layer(init, apply, name=name)
