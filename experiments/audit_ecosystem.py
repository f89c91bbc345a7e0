"""`verify.audit` on programs that are not jaxcnn's: Flax linen and Equinox CNN train steps
(one with a planted wrong custom_vjp, caught and named; the same clean), optax's losses with
custom rules, and jaxcnn's own ResNet-20 (batch norm) and LeNet-5 train steps, every op
certified where it runs; where the NaN locator is installed, a NaN born in a backward pass.
Each with the time its audit takes (cold: JAX's caches are cleared by every audit).

    python experiments/audit_ecosystem.py [--quick] [--out DIR]

writes ``DIR/audit_ecosystem.md`` (``experiments/results`` by default).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import equinox as eqx
import flax.linen as fnn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Report, parse_args  # noqa: E402
from jaxcnn import models, train  # noqa: E402
from jaxcnn.verify import audit  # noqa: E402


def swish_rule(correct: bool):
    """x·σ(x) as a custom_vjp; the planted error forgets the x·σ(x)(1 − σ(x)) term."""
    @jax.custom_vjp
    def swish(x):
        return x * jax.nn.sigmoid(x)

    def swish_bwd(x, g):
        s = jax.nn.sigmoid(x)
        return (g * (s + x * s * (1 - s)) if correct else g * s,)

    swish.defvjp(lambda x: (swish(x), x), swish_bwd)
    return swish


class Block(fnn.Module):
    features: int
    act: object

    @fnn.compact
    def __call__(self, x):
        return self.act(fnn.Conv(self.features, (3, 3))(x))


class FlaxCNN(fnn.Module):
    act: object

    @fnn.compact
    def __call__(self, x):
        x = Block(8, self.act)(x)
        x = fnn.max_pool(Block(8, fnn.relu)(x), (2, 2), (2, 2))
        x = fnn.relu(fnn.Dense(32)(x.reshape(x.shape[0], -1)))
        return fnn.Dense(10)(x)


def flax_step(act, batch: int):
    model, tx = FlaxCNN(act), optax.adam(1e-3)
    x = jax.random.normal(jax.random.key(0), (batch, 16, 16, 1))
    y = jnp.arange(batch) % 10
    params = model.init(jax.random.key(1), x)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply(p, x), y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, (params, tx.init(params), x, y)


class EqxCNN(eqx.Module):
    conv: eqx.nn.Conv2d
    linear: eqx.nn.Linear
    act: object = eqx.field(static=True)

    def __init__(self, act, key):
        k1, k2 = jax.random.split(key)
        self.conv, self.linear, self.act = eqx.nn.Conv2d(1, 4, 3, key=k1), eqx.nn.Linear(4 * 6 * 6, 10, key=k2), act

    def __call__(self, x):
        return self.linear(jax.nn.softplus(self.act(self.conv(x))).reshape(-1))


def equinox_step(act, batch: int):
    model, tx = EqxCNN(act, jax.random.key(0)), optax.sgd(0.1)
    x = jax.random.normal(jax.random.key(1), (batch, 1, 8, 8))
    y = jnp.arange(batch) % 10

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(jax.vmap(m)(x), y).mean()

        grads = eqx.filter_grad(loss)(model)
        updates, opt_state = tx.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state

    return step, (model, tx.init(eqx.filter(model, eqx.is_array)), x, y)


def optax_losses():
    """optax's losses with a custom rule (found by auditing each), each as a scalar loss."""
    logits = jax.random.normal(jax.random.key(0), (8, 5))
    probs = jax.nn.softmax(jax.random.normal(jax.random.key(1), (8, 5)))
    labels, bits = jnp.arange(8) % 5, (jax.random.uniform(jax.random.key(2), (8, 5)) > 0.5).astype(jnp.float32)
    return {
        "safe_softmax_cross_entropy": lambda z: optax.safe_softmax_cross_entropy(z, probs).mean(),
        "sigmoid_binary_cross_entropy": lambda z: optax.sigmoid_binary_cross_entropy(z, bits).mean(),
        "sigmoid_focal_loss": lambda z: optax.sigmoid_focal_loss(z, bits).mean(),
        "log_cosh": lambda z: optax.log_cosh(z).mean(),
        "ctc_loss": lambda z: optax.ctc_loss(z[None], jnp.zeros((1, 8)), jnp.array([[1, 2]]), jnp.zeros((1, 2))).sum(),
        "multiclass_sparsemax_loss": lambda z: optax.losses.multiclass_sparsemax_loss(z, labels).mean(),
    }, logits


def jaxcnn_step(model, shape):
    optimizer = train.make_optimizer("sgd", 0.1)
    state = train.init_state(model, optimizer, shape)
    x = jax.random.normal(jax.random.key(0), shape)
    return jax.jit(train.make_step(train.make_loss(model), optimizer)), (state, (x, jnp.arange(shape[0]) % 10))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    report = audit(fn, *args, **kwargs)
    return report, time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args("verify.audit on Flax, Equinox, optax and jaxcnn train steps.", argv)
    report = Report(args.out, "audit_ecosystem", "Auditing every custom gradient of programs jaxcnn did not write")
    batch = 2 if args.quick else 8
    report.add(
        "Each program is run once by `jaxcnn.verify.audit`, which records every `custom_vjp`/`custom_jvp` call in "
        "it with its real operands and cotangent and checks each distinct rule there against autodiff of its own "
        "primal, float64 finite differences, and eager against compiled (docs/auditing.md). Times are the whole "
        "audit, cold (every audit clears JAX's caches), on a machine shared with other jobs: read them as upper "
        "bounds.")
    rows = []

    def add(program: str, expected: str, found, seconds: float):
        failures = ", ".join(f"`{f.rule}` at `{f.source}` ({f.path or '-'}): {f.verdict}" for f in found.failures)
        rows.append((program, expected, f"{found.calls} / {len(found.findings)}", failures or "none",
                     f"{seconds:.1f}"))
        report.parts.append(f"### {program}\n\n```\n{found.table()}\n```")

    flax_programs = ((swish_rule(False), "Flax linen CNN, planted wrong swish", "swish in Block_0"),
                     (swish_rule(True), "Flax linen CNN, the same clean", "none"))
    for act, name, expected in flax_programs[:1] if args.quick else flax_programs:
        add(name, expected, *timed(*(lambda s, a: (s, *a))(*flax_step(act, batch))))
    if args.quick:  # the smoke test: the planted error caught, and one optax loss clean
        losses, logits = optax_losses()
        add("optax.log_cosh (its gradient)", "none", *timed(jax.grad(losses["log_cosh"]), logits))
    else:
        for act, name, expected in ((swish_rule(False), "Equinox CNN (vmap), planted wrong swish", "swish in EqxCNN"),
                                    (swish_rule(True), "Equinox CNN (vmap), the same clean", "none")):
            add(name, expected, *timed(*(lambda s, a: (s, *a))(*equinox_step(act, batch))))
        losses, logits = optax_losses()
        for name, loss in losses.items():
            add(f"optax.{name} (its gradient)", "none", *timed(jax.grad(loss), logits))
        add("jaxcnn LeNet-5 train step, batch 8", "none",
            *timed(*(lambda s, a: (s, *a))(*jaxcnn_step(models.lenet5(), (8, 32, 32, 1)))))
        add("jaxcnn ResNet-20 (batch norm) train step, batch 8", "none",
            *timed(*(lambda s, a: (s, *a))(*jaxcnn_step(models.resnet20(), (8, 32, 32, 3)))))
    if importlib.util.find_spec("jaxcnn.verify._nans") is not None:
        found, seconds = timed(jax.grad(lambda x: jnp.sum(jnp.sqrt(x ** 2))), jnp.array([0.0, 1.0]), nans=True)
        add("a NaN born in a backward pass (√(x²) at 0)", "the sqrt's cotangent", found, seconds)
    else:
        report.add("The NaN locator (`jaxcnn.verify._nans`) is not installed in this tree: no NaN row.")
    report.parts.insert(2, "## Summary\n\n" + "\n".join(
        ["| program | expected finding | calls / distinct rules | findings | audit s |", "|---|---|---|---|---|"]
        + [f"| {' | '.join(r)} |" for r in rows]))
    report.add("## The reports")
    report.parts.append(report.parts.pop(-1))
    report.save(args.quick)


if __name__ == "__main__":
    main()
