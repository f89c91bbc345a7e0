"""Forward-mode products: jaxcnn ``ops`` (hand JVPs and VJPs) against autodiff of ``reference``.

Per row one jitted program, float32, compiled first, timed interleaved with a second,
separately compiled copy of the reference program (its ratio is the run's noise floor):

* **HVP** — a Hessian-vector product of a loss with respect to the parameters, forward over
  reverse (``jax.jvp(jax.grad(loss), (params,), (v,))``), the product second-order optimisers,
  sharpness and influence functions use;
* **jacfwd** — ``jax.jacfwd`` of a small CNN's logits with respect to its input (one
  ``jax.jvp`` per input element, vmapped).

The error column is each float32 side's largest deviation from the same product computed by the
reference in float64, relative to its largest entry.

    python experiments/bench_forward_mode.py --out experiments/results/bench_forward_mode_cpu.md
    python experiments/bench_forward_mode.py --quick   # tiny shapes, one round (smoke test)
"""

from __future__ import annotations

import argparse
import os
import statistics
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from _timing import interleaved_times, machine_line, markdown_table, paired_ratio
from bench_networks import _commit
import jaxcnn.ops
import jaxcnn.reference
from jaxcnn import models, train


class Case(NamedTuple):
    name: str
    product: str  # "hvp" or "jacfwd"
    batch: int
    input_shape: tuple[int, ...]
    build: Callable  # (ops) -> nn.Layer


CASES = [
    Case("LeNet-5 (zoo: tanh, mean pool, C3 table), HVP of the loss", "hvp", 32, (32, 32, 1), models.lenet5),
    Case("ResNet-20 (zoo, batch norm), HVP of the loss", "hvp", 16, (32, 32, 3), models.resnet20),
    Case("LeNet-5 (zoo), jacfwd of the logits w.r.t. one image", "jacfwd", 1, (32, 32, 1), models.lenet5),
    Case("MNIST-1D CNN (zoo), jacfwd of the logits w.r.t. the input", "jacfwd", 8, (40, 1), models.mnist1d_cnn),
]

QUICK = [
    Case("quick LeNet-5 HVP", "hvp", 2, (32, 32, 1), models.lenet5),
    Case("quick ResNet-20 HVP", "hvp", 1, (8, 8, 3), models.resnet20),
    Case("quick MNIST-1D CNN jacfwd", "jacfwd", 1, (40, 1), models.mnist1d_cnn),
]


def program(case: Case, backend, dtype=jnp.float32) -> tuple[Callable, tuple]:
    """``(jitted product, its arguments)`` on ``backend``, in ``dtype`` (the same values cast)."""
    model = case.build(ops=backend)
    shape = (case.batch, *case.input_shape)
    params, state, _ = model.init(jax.random.PRNGKey(0), shape)
    cast = lambda t: jax.tree_util.tree_map(  # noqa: E731
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
    params, state = cast((params, state))
    rng = np.random.default_rng(0)
    x = cast(jnp.asarray(rng.normal(size=shape).astype(np.float32)))
    y = jnp.asarray(rng.integers(0, 10, case.batch).astype(np.int32))
    if case.product == "hvp":
        loss_fn = train.make_loss(model, backend.softmax_cross_entropy)

        def loss(p):
            return loss_fn(p, state, x, y, key=jax.random.PRNGKey(2))[0]

        leaves, tree = jax.tree_util.tree_flatten(params)
        v = cast(jax.tree_util.tree_unflatten(tree, [jnp.asarray(rng.normal(size=l.shape).astype(np.float32))
                                                     for l in leaves]))
        return jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1]), (params, v)

    def logits(x):
        return model.apply(params, state, x)[0]

    return jax.jit(jax.jacfwd(logits)), (x,)


def run(case: Case, repeats: int, warmup: int) -> dict:
    (f_ops, a_ops), (f_ref, a_ref), (f_again, a_again) = (program(case, b) for b in (
        jaxcnn.ops, jaxcnn.reference, jaxcnn.reference))
    got, want = f_ops(*a_ops), f_ref(*a_ref)
    times = interleaved_times([f_ops, f_ref, f_again], [a_ops, a_ref, a_again], repeats=repeats, warmup=warmup)
    with jax.enable_x64(True):  # each float32 side against the reference in float64
        f64, a64 = program(case, jaxcnn.reference, jnp.float64)
        exact = [np.asarray(e) for e in jax.tree_util.tree_leaves(f64(*a64))]

    def error(side):
        return max(float(np.max(np.abs(np.asarray(s, np.float64) - e)) / (np.max(np.abs(e)) + 1e-300))
                   for s, e in zip(jax.tree_util.tree_leaves(side), exact))

    ratio, lo, hi = paired_ratio(times[0], times[1])
    floor, flo, fhi = paired_ratio(times[2], times[1])
    return {"case": case.name, "batch": case.batch, "ms": [statistics.median(t) * 1e3 for t in times[:2]],
            "ratio": ratio, "ratio_95": [lo, hi], "floor": floor, "floor_95": [flo, fhi],
            "error_ops": error(got), "error_reference": error(want)}


def table(results: list[dict]) -> str:
    rows = [[r["case"], r["batch"], f"{r['ms'][0]:.2f} / {r['ms'][1]:.2f}",
             f"**{r['ratio']:.3f}** ({r['ratio_95'][0]:.3f}–{r['ratio_95'][1]:.3f})",
             f"{r['floor']:.3f} ({r['floor_95'][0]:.3f}–{r['floor_95'][1]:.3f})",
             f"{r['error_ops']:.1e} / {r['error_reference']:.1e}"]
            for r in results]
    return markdown_table(["product", "batch", "ms ops / reference", "ops / reference (95%)",
                           "reference / itself (95%): noise floor",
                           "float32 error ops / reference (vs the reference in float64)"], rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 15)")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    repeats, warmup = args.repeats or (1 if args.quick else 15), 1 if args.quick else 2
    header = f"{machine_line(repeats, f'{os.cpu_count()} cores')}; commit {_commit()}; load {os.getloadavg()[0]:.2f}"
    print(header, flush=True)
    results = []
    for case in QUICK if args.quick else CASES:
        results.append(run(case, repeats, warmup))
        r = results[-1]
        print(f"  {r['case']}: ops / reference {r['ratio']:.3f} (floor {r['floor']:.3f}), "
              f"{r['ms'][0]:.2f} vs {r['ms'][1]:.2f} ms, float32 error ops {r['error_ops']:.1e}, "
              f"reference {r['error_reference']:.1e}", flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write("# Forward-mode products (`experiments/bench_forward_mode.py`)\n\n"
                        f"{header}\n\n{table(results)}\n")


if __name__ == "__main__":
    main()
