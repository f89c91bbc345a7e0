"""A per-layer table of output shapes, parameter and state counts, like Keras' ``model.summary()``."""

from __future__ import annotations

import jax

from jaxcnn.nn.core import Layer, Shape, _size


def _rows(layer: Layer, params, state, input_shape, key, expand: bool):
    """(name, output shape, params, state): one row per layer of the model's own serial
    chain (a block inside it, e.g. a ResNet basic block, is one row)."""
    if expand and layer.children:
        rows, shape = [], input_shape
        for child, p, s, k in zip(layer.children, params, state, jax.random.split(key, len(layer.children))):
            child_rows, shape = _rows(child, p, s, shape, k, False)
            rows += child_rows
        return rows, shape
    _, _, shape = _abstract_init(layer, key, input_shape)
    return [(layer.name, shape, layer.count(params), _size(state))], shape


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
    1,516 trainable parameters, not 2,416).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    params, state, _ = _abstract_init(model, key, tuple(input_shape))
    rows, _ = _rows(model, params, state, tuple(input_shape), key, True)
    table = [("layer", "output shape", "params", "state")]
    table += [(n, str(tuple(s)), f"{c:,}", f"{k:,}") for n, s, c, k in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    rule = "-" * (sum(widths) + 6)
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}" for r in table]
    lines.insert(1, rule)
    lines += [rule, f"total trainable parameters: {model.count(params):,}",
              f"total state (non-trainable): {_size(state):,}"]
    return "\n".join(lines)
