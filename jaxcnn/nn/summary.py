"""A per-layer table of output shapes, parameter and state counts, like Keras' ``model.summary()``."""

from __future__ import annotations

import jax

from jaxcnn.nn.core import Layer, Shape, _size


def _rows(layer: Layer, params, state, input_shape, key):
    """(key, layer, output shape, params, state): one row per layer of the model's own serial
    chain (a block inside it, e.g. a ResNet basic block, is one row), with the key its params
    and state have in the model's (``None`` for none: an unnamed layer in a named chain)."""
    if layer.kind == "serial":
        rows, shape = [], input_shape
        for child, path, k in zip(layer.children, layer.keys, jax.random.split(key, len(layer.children))):
            p, s = ((), ()) if path is None else (params[path[0]], state[path[0]])
            _, _, shape = _abstract_init(child, k, shape)
            rows.append((None if path is None else path[0], child.name, shape, child.count(p), _size(s)))
        return rows
    _, _, shape = _abstract_init(layer, key, input_shape)
    return [(None, layer.name, shape, layer.count(params), _size(state))]


def _abstract_init(layer: Layer, key, input_shape):
    """``layer.init`` traced, not run (:func:`jax.eval_shape`): parameters and state as
    shapes and dtypes, and the output shape. A summary draws no random numbers."""
    shapes = []

    def init(key):
        params, state, shape = layer.init(key, input_shape)
        shapes.append(shape)
        return params, state

    params, state = jax.eval_shape(init, key)
    return params, state, shapes[0]


def summary(model: Layer, input_shape: Shape, key=None) -> str:
    """Returns a table: one row per layer with its output shape, its trainable parameters
    and its state (non-trainable values such as batch norm's running statistics).

    Parameters fixed at zero by a connection table are not counted (LeNet-5's C3 has
    1,516 trainable parameters, not 2,416). Where the model's layers are named (``serial(("conv1",
    Conv(...)), ...)``) a first column shows each layer's key in the params and state.
    """
    key = jax.random.PRNGKey(0) if key is None else key
    params, state, _ = _abstract_init(model, key, tuple(input_shape))
    rows = _rows(model, params, state, tuple(input_shape), key)
    named = any(isinstance(r[0], str) for r in rows)
    table = [("name",) * named + ("layer", "output shape", "params", "state")]
    table += [("" if r[0] is None else str(r[0]),) * named + (n, str(tuple(s)), f"{c:,}", f"{k:,}")
              for r in rows for n, s, c, k in [r[1:]]]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    align = "<" * (named + 2) + ">>"
    lines = ["  ".join(f"{v:{a}{w}}" for v, a, w in zip(r, align, widths)).rstrip() for r in table]
    lines.insert(1, rule)
    lines += [rule, f"total trainable parameters: {model.count(params):,}",
              f"total state (non-trainable): {_size(state):,}"]
    return "\n".join(lines)
