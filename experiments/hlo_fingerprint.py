"""One sha256 per network of the optimised XLA:CPU program of its jitted training step.

A behaviour-preserving refactor of the ops must leave these unchanged: each step is
``value_and_grad`` of ``ops.softmax_cross_entropy`` over the model's ``apply`` followed by an
optax SGD update, compiled for the CPU; the HLO text is hashed with its metadata and source
locations stripped (they name Python files and lines, not the program). Written with public
APIs only (``jaxcnn.nn``, ``jaxcnn.models``, ``jaxcnn.ops``, optax), so that the same script
runs on the code before and after a change.

    python experiments/hlo_fingerprint.py                  # one "name sha256" line per network
    python experiments/hlo_fingerprint.py --out /tmp/hlo   # and the stripped HLO texts
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import pathlib
import re

import jax
import jax.numpy as jnp
import optax

from bench_networks import mobilenet_blocks, resnet8  # the benchmarked networks, built with public APIs
from jaxcnn import models, nn, ops

BATCH = 64


NETWORKS = {  # name: (model, input shape without the batch)
    "lenet5": (models.lenet5, (32, 32, 1)),
    "resnet8": (resnet8, (32, 32, 3)),
    "mobilenet_blocks": (mobilenet_blocks, (32, 32, 3)),
    "mnist1d_cnn": (models.mnist1d_cnn, (40, 1)),
}


def step_hlo(model: nn.Layer, input_shape) -> str:
    """The optimised CPU HLO of one SGD step of ``model`` on a batch of ``input_shape``."""
    params, state, _ = model.init(jax.random.PRNGKey(0), (BATCH, *input_shape))
    optimizer = optax.sgd(0.01)

    def loss(params, state, x, y):
        logits, state = model.apply(params, state, x, training=True, key=jax.random.PRNGKey(1))
        return ops.softmax_cross_entropy(logits, y), state

    def step(params, state, opt_state, x, y):
        (value, state), grads = jax.value_and_grad(loss, has_aux=True)(params, state, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), state, opt_state, value

    x = jnp.zeros((BATCH, *input_shape), jnp.float32)
    y = jnp.zeros((BATCH,), jnp.int32)
    compiled = jax.jit(step).lower(params, state, optimizer.init(params), x, y).compile()
    return stripped(compiled.as_text())


def stripped(hlo: str) -> str:
    """HLO text without what names the Python source rather than the program: ``metadata={...}``,
    the file, function and stack-frame tables, the module line; and with every numbered name
    (``%add.516``, ``fused_computation.3``) renumbered in order of first appearance, since the
    numbers count every traced operation, also those the optimiser removed."""
    hlo = re.sub(r",?\s*metadata=\{[^{}]*\}", "", hlo)
    lines = hlo.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("%", "ENTRY")))
    text = "\n".join(lines[first:])
    names: dict[str, str] = {}
    counts: collections.Counter = collections.Counter()

    def renumber(match):
        if match.group(0) not in names:
            names[match.group(0)] = f"{match.group(1)}.{counts[match.group(1)]}"
            counts[match.group(1)] += 1
        return names[match.group(0)]

    return re.sub(r"\b([A-Za-z_][\w\-]*)\.(\d+)\b", renumber, text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=None, help="write NAME.hlo here too")
    parser.add_argument("--only", action="append", default=None, choices=list(NETWORKS))
    args = parser.parse_args(argv)
    for name, (build, shape) in NETWORKS.items():
        if args.only and name not in args.only:
            continue
        text = step_hlo(build(), shape)
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.hlo").write_text(text)
        print(name, hashlib.sha256(text.encode()).hexdigest(), flush=True)


if __name__ == "__main__":
    main()
