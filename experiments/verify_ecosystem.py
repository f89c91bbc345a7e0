"""The verifier on code that is not jaxcnn's: JAX's own custom derivatives and optax's losses.

Every function of ``jax.nn`` with a custom derivative (and the activations around them),
and optax's losses, each registered in a :class:`jaxcnn.verify.Registry` with a reference
written from its documented formula, then certified like jaxcnn's ops (every transform,
float32 / float64 / bfloat16, finite differences; forward mode where there is one). Then
the conventions at the kinks, where references may legitimately differ, and a planted
error (a wrong ``custom_jvp`` and a wrong ``custom_vjp``) caught and blamed.

    python experiments/verify_ecosystem.py [--quick] [--out DIR]

writes ``DIR/verify_ecosystem.md`` (``experiments/results`` by default).
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import Report, parse_args  # noqa: E402
from jaxcnn import ops  # noqa: E402
from jaxcnn._certify import compilation, display, runner  # noqa: E402
from jaxcnn._certify.registry import away_from_zero  # noqa: E402
from jaxcnn.verify import Registry, Sample, diagnose  # noqa: E402

SQRT_2_OVER_PI = float(np.sqrt(2 / np.pi))


def _activations(rng):
    return [Sample((away_from_zero(rng, 4, 5, high=3.0),)), Sample((away_from_zero(rng, 2, 3, 4, low=0.2, high=5.0),))]


def _logits(rng):
    return [Sample((rng.normal(size=(4, 5)) * 2,)), Sample((rng.normal(size=(2, 3, 4)) * 2,), {"axis": 1})]


def _positive(rng):
    return [Sample((rng.uniform(0.1, 3.0, size=(4, 5)),)), Sample((rng.uniform(0.05, 6.0, size=(7,)),))]


def _relu6_samples(rng):
    x = away_from_zero(rng, 4, 5, high=9.0)
    x[np.abs(x - 6) < 0.2] += 0.5  # away from the kink at 6 too
    return [Sample((x,))]


def _pairs(rng):
    return [Sample((rng.normal(size=(6, 4)), rng.normal(size=(6, 4))))]


def _huber_pairs(rng):
    target = rng.normal(size=(6, 4))
    d = np.where(rng.random((6, 4)) < 0.5, away_from_zero(rng, 6, 4, high=0.8), away_from_zero(rng, 6, 4, low=1.2,
                                                                                                high=3.0))
    return [Sample((target + d, target)), Sample((target + 2 * d, target), {"delta": 2.0}, label="delta=2")]


def _probabilities(rng, *shape):
    p = np.exp(rng.normal(size=shape))
    return p / p.sum(-1, keepdims=True)


def _cross_entropy(rng):
    return [Sample((rng.normal(size=(6, 4)) * 2, _probabilities(rng, 6, 4)), label="probability labels (6, 4)")]


def _integer_labels(rng):
    return [Sample((rng.normal(size=(6, 4)) * 2, rng.integers(0, 4, size=6)), label="integer labels (6,)")]


def _binary(rng):
    return [Sample((rng.normal(size=(6, 3)) * 2, rng.uniform(0, 1, size=(6, 3))), label="soft labels (6, 3)")]


def _hinge(rng):
    labels = rng.choice([-1.0, 1.0], size=8)
    margin = away_from_zero(rng, 8, low=0.1, high=2.0)  # 1 − labels·scores away from 0: off the kink
    return [Sample(((1 - margin) * labels, labels), label="(8,) scores off the margin")]


def _kl(rng):
    return [Sample((np.log(_probabilities(rng, 5, 4)), _probabilities(rng, 5, 4)), label="log-predictions (5, 4)")]


def _gelu_reference(x, approximate=True):
    if approximate:
        return 0.5 * x * (1 + jnp.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + jax.scipy.special.erf(x / np.sqrt(2)))


def _gelu_samples(rng):
    return [Sample((rng.normal(size=(4, 5)) * 2,)), Sample((rng.normal(size=(4, 5)) * 2,), {"approximate": False})]


def _log_sum_exp(x, axis=-1):
    return jnp.log(jnp.sum(jnp.exp(x), axis=axis, keepdims=True))


def build_registry() -> Registry:
    """jax.nn's functions and optax's losses, each with a reference from its documented formula."""
    r = Registry()
    nn = jax.nn
    r.register("jax.nn.relu", nn.relu, lambda x: jnp.where(x > 0, x, 0.0), _activations)
    r.register("jax.nn.relu6", nn.relu6, lambda x: jnp.where(x > 0, jnp.where(x < 6, x, 6.0), 0.0), _relu6_samples)
    r.register("jax.nn.softplus", nn.softplus, lambda x: jnp.log1p(jnp.exp(x)), _activations)
    r.register("jax.nn.log_sigmoid", nn.log_sigmoid, lambda x: -jnp.log1p(jnp.exp(-x)), _activations)
    r.register("jax.nn.sigmoid", nn.sigmoid, lambda x: 1 / (1 + jnp.exp(-x)), _activations)
    r.register("jax.nn.silu", nn.silu, lambda x: x / (1 + jnp.exp(-x)), _activations)
    r.register("jax.nn.gelu", nn.gelu, _gelu_reference, _gelu_samples)
    r.register("jax.nn.elu", nn.elu, lambda x: jnp.where(x > 0, x, jnp.exp(x) - 1), _activations)
    r.register("jax.nn.mish", nn.mish, lambda x: x * jnp.tanh(jnp.log1p(jnp.exp(x))), _activations)
    r.register("jax.nn.log1mexp", nn.log1mexp, lambda x: jnp.log(1 - jnp.exp(-x)), _positive)
    r.register("jax.nn.logsumexp", lambda x, axis=-1: nn.logsumexp(x, axis=axis, keepdims=True), _log_sum_exp,
               _logits)
    r.register("jax.nn.log_softmax", nn.log_softmax, lambda x, axis=-1: x - _log_sum_exp(x, axis), _logits)
    r.register("jax.nn.softmax", nn.softmax,
               lambda x, axis=-1: jnp.exp(x) / jnp.sum(jnp.exp(x), axis=axis, keepdims=True), _logits)
    losses = optax.losses
    r.register("optax.softmax_cross_entropy", losses.softmax_cross_entropy,
               lambda logits, labels: -jnp.sum(labels * (logits - _log_sum_exp(logits)), axis=-1),
               _cross_entropy, batched=(0, 1))
    r.register("optax.softmax_cross_entropy_with_integer_labels",
               losses.softmax_cross_entropy_with_integer_labels,
               lambda logits, labels: (_log_sum_exp(logits)[..., 0]
                                       - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]),
               _integer_labels, batched=(0, 1))
    r.register("optax.sigmoid_binary_cross_entropy", losses.sigmoid_binary_cross_entropy,
               lambda x, labels: -labels * jnp.log(1 / (1 + jnp.exp(-x))) - (1 - labels) * jnp.log(
                   1 - 1 / (1 + jnp.exp(-x))), _binary, batched=(0, 1))
    r.register("optax.huber_loss", losses.huber_loss,
               lambda p, t, delta=1.0: jnp.where(jnp.abs(p - t) <= delta, 0.5 * (p - t) ** 2,
                                                 delta * (jnp.abs(p - t) - 0.5 * delta)), _huber_pairs, batched=(0, 1))
    r.register("optax.l2_loss", losses.l2_loss, lambda p, t: 0.5 * (p - t) ** 2, _pairs, batched=(0, 1))
    r.register("optax.squared_error", losses.squared_error, lambda p, t: (p - t) ** 2, _pairs, batched=(0, 1))
    r.register("optax.log_cosh", losses.log_cosh, lambda p, t: jnp.log(jnp.cosh(p - t)), _pairs, batched=(0, 1))
    r.register("optax.hinge_loss", losses.hinge_loss, lambda s, y: jnp.where(1 - s * y > 0, 1 - s * y, 0.0),
               _hinge, batched=(0, 1))
    r.register("optax.kl_divergence", losses.kl_divergence,
               lambda log_p, t: jnp.sum(t * (jnp.log(t) - log_p), axis=-1), _kl, batched=(0, 1))
    return r


# --------------------------------------------------------------------------- planted errors


@jax.custom_jvp
def softplus_planted(x):
    return jax.nn.softplus(x)


@softplus_planted.defjvp
def _softplus_planted_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus_planted(x), jnp.where(x > 2.0, 1.0, jax.nn.sigmoid(x)) * t  # wrong: "saturated" from 2 on


@jax.custom_vjp
def log_cosh_planted(p, t):
    return optax.losses.log_cosh(p, t)


log_cosh_planted.defvjp(lambda p, t: (log_cosh_planted(p, t), p - t),
                        lambda d, g: (g * jnp.tanh(d), g * jnp.tanh(d)))  # wrong: the target's sign


def planted_registry(registry: Registry) -> Registry:
    planted = Registry()
    for name, fn in (("jax.nn.softplus", softplus_planted), ("optax.log_cosh", log_cosh_planted)):
        info = registry[name]
        planted.register(f"{name} (planted error)", fn, info.reference, info.samples, batched=info.batched)
    return planted


# --------------------------------------------------------------------------- kinks


def kink_conventions() -> list[tuple]:
    """The derivative at the kink, by each implementation, at x = 0 (and 6 for relu6)."""
    rows = []
    zero, six = jnp.zeros(()), jnp.full((), 6.0)
    candidates = [
        ("relu at 0", zero, [("jax.nn.relu", jax.nn.relu), ("jaxcnn.ops.relu", ops.relu),
                             ("where(x > 0, x, 0)", lambda x: jnp.where(x > 0, x, 0.0)),
                             ("jnp.maximum(x, 0)", lambda x: jnp.maximum(x, 0.0))]),
        ("relu6 at 6", six, [("jax.nn.relu6", jax.nn.relu6), ("jnp.clip(x, 0, 6)", lambda x: jnp.clip(x, 0.0, 6.0)),
                             ("jnp.minimum(jnp.maximum(x, 0), 6)", lambda x: jnp.minimum(jnp.maximum(x, 0.0), 6.0))]),
        ("hinge at the margin", jnp.ones(()), [
            ("optax.hinge_loss (labels 1)", lambda s: optax.losses.hinge_loss(s, jnp.ones(()))),
            ("jnp.maximum(0, 1 - s)", lambda s: jnp.maximum(0.0, 1 - s))]),
    ]
    for point, x, fns in candidates:
        for name, fn in fns:
            grad = float(jax.grad(fn)(x))
            try:
                forward = float(jax.jvp(fn, (x,), (jnp.ones(()),))[1])
            except TypeError:  # a custom_vjp has no forward mode
                forward = float("nan")
            rows.append((point, name, f"{grad:g}", "-" if np.isnan(forward) else f"{forward:g}"))
    return rows


def findings(failed: list) -> list[str]:
    """One line per failed check, read through its float64 diagnosis."""
    lines = []
    for r in failed:
        where = f"`{r.op}` #{r.index} {r.sample}, {r.dtype}, {r.transform}"
        if r.verdict == "agree":
            lines.append(f"{where}: outside the {r.dtype} tolerance, but in float64 the rule, autodiff of the "
                         f"reference and finite differences agree: the function and its reference round "
                         f"differently in {r.dtype} (two formulas of the same value), no derivative is wrong.")
        else:
            lines.append(f"{where}: verdict **{r.verdict or 'none'}**.")
    return lines


def main(argv=None) -> None:
    args = parse_args("Certify jax.nn's custom derivatives and optax's losses with jaxcnn verify.", argv)
    report = Report(args.out, "verify_ecosystem", "The verifier on JAX's and optax's own derivatives")  # timed
    compilation.use_compilation_cache()
    registry = build_registry()
    names = ["jax.nn.softplus"] if args.quick else list(registry)
    dtypes = ("float64",) if args.quick else runner.DTYPES
    units = runner.plan(names, dtypes, quick=args.quick, module=registry)
    progress = display.Progress()
    progress.start(sum(len(u.checks) for u in units), 1, f" ({len(names)} functions)")
    records = runner.run(names, dtypes, quick=args.quick, module=registry, progress=progress, units=units)
    progress.finish()
    failed = [r for r in records if not r.ok]

    report.add(
        "Every function below was registered in a `jaxcnn.verify.Registry` with a reference written from its "
        "documented formula (plain `jnp`, differentiated by autodiff) and certified as `jaxcnn verify` certifies "
        "jaxcnn's ops: the VJP under eager, jit, vmap, grad-of-grad, checkpoint; the custom_vjp contract; float32, "
        "float64 and bfloat16; float64 finite differences; and, for `custom_jvp` rules and plain autodiff, forward "
        "mode (`jvp` against the reference's, and against finite differences). Samples are drawn away from kinks. "
        f"{len(records)} checks, {len(failed)} failed."
    )
    kinds = [(name, registry[name].rule_at(registry[name].samples(np.random.default_rng(0))[0])) for name in names]
    report.add("## What defines each derivative\n\nFound by tracing each function (`jaxcnn.verify.registry.rule_of`): "
               + "; ".join(f"`{n}` {k}" for n, k in kinds) + ".")
    report.add("## Results\n\n```\n" + display.format_table(records) + "\n```")
    if failed:
        report.add("### Findings\n\n" + "\n".join(f"- {line}" for line in findings(failed)))
        report.add("### Failures in full\n\n```\n" + display.format_failures(records) + "\n```")
    report.add(
        "## Conventions at the kinks\n\n"
        "At a kink there is no derivative to certify, only a choice. Samples avoid the kinks, so the table above "
        "does not depend on it; here is what each implementation chooses (reverse mode `jax.grad`, forward mode "
        "`jax.jvp` with tangent 1). A reference written with `jnp.maximum` splits a tie evenly (0.5), one written "
        "with `jnp.where` takes a side: both are legitimate, and a check at the kink compares conventions, not "
        "correctness; jaxcnn pins its own (`ops.relu` passes the gradient at 0) with samples marked `kink`."
    )
    report.table(("point", "implementation", "grad", "jvp"), kink_conventions())

    planted = planted_registry(registry)
    planted_names = list(planted)[:1] if args.quick else list(planted)
    caught = runner.run(planted_names, dtypes=dtypes[:1] if args.quick else ("float32", "float64"), quick=True,
                       module=planted)
    rows = [(r.op, f"#{r.index} {r.sample}", r.dtype, r.transform, r.verdict or "-",
             ", ".join(a.name for a in r.result.failures()) or "-") for r in caught if not r.ok]
    report.add(
        "## A planted error, caught and blamed\n\n"
        "Two wrong rules, registered with the same references and samples: a `custom_jvp` softplus whose "
        "derivative is 1 from x = 2 on (right below 2, so only the samples reaching past 2 can catch it), and a "
        "`custom_vjp` log-cosh whose gradient for the target has the wrong sign (the prediction's is right). "
        f"Every failing check ({len(rows)} of {len(caught)}, the quick plan in "
        f"{', '.join(dict.fromkeys(r.dtype for r in caught))}), with the "
        "verifier's verdict and the argument it blames:"
    )
    report.table(("op", "sample", "dtype", "transform", "verdict", "blamed"), rows)
    diagnosis = diagnose(log_cosh_planted, registry["optax.log_cosh"].reference,
                         *registry["optax.log_cosh"].samples(np.random.default_rng(0))[0].args)
    report.add("The three-way diagnosis of the planted custom_vjp:\n\n```\n" + str(diagnosis) + "\n```")
    report.save(args.quick)


if __name__ == "__main__":
    main()
