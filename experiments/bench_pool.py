"""Forward + backward time and residual memory of pooling, resampling and the transposed
convolution: the hand rules of ``jaxcnn.ops`` against autodiff of ``jaxcnn.reference``.

For each case two jitted functions compute ``jax.value_and_grad`` of ``⟨op(x, ...), v⟩``
for a fixed random cotangent ``v`` (the value keeps the forward in the timing, also for
the linear ops whose gradient does not need it), with respect to every array argument:
autodiff of the reference and the hand rule. They are compiled first, then timed
interleaved (median of the repeats; see ``_timing``). The residual bytes are those that
``jax.vjp`` keeps for the backward pass. Figures are printed, never asserted. Target:
``ops / autodiff <= 1.10`` on every case, and fewer residual bytes for max pooling.

    .venv/bin/python experiments/bench_pool.py                # full table
    .venv/bin/python experiments/bench_pool.py --quick        # tiny smoke run
    .venv/bin/python experiments/bench_pool.py --json out.json
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from _timing import (bench_settings, compile_seconds, interleaved_medians, machine_line, markdown_table,
                     residual_bytes, write_json)
from jaxcnn import ops, reference


class Case(NamedTuple):
    name: str
    op: str  # the name in jaxcnn.ops and jaxcnn.reference
    shapes: tuple[tuple[int, ...], ...]  # x, then w and b for conv_transpose
    settings: dict


IMAGES = (32, 32, 32, 64)  # batch 32, 32×32, 64 channels

CASES = [
    Case("max_pool 32x32x32x64, 2x2 s2", "max_pool", (IMAGES,), dict(window=2, stride=2)),
    Case("max_pool 32x32x32x64, 3x3 s2 SAME (overlap)", "max_pool", (IMAGES,), dict(window=3, stride=2, padding="SAME")),
    Case("mean_pool 32x32x32x64, 2x2 s2", "mean_pool", (IMAGES,), dict(window=2, stride=2)),
    Case("mean_pool 32x32x32x64, 3x3 s2 SAME (overlap)", "mean_pool", (IMAGES,), dict(window=3, stride=2, padding="SAME")),
    Case("mean_pool 32x32x32x64, 3x3 s2 SAME, count_padding=False", "mean_pool", (IMAGES,),
         dict(window=3, stride=2, padding="SAME", count_padding=False)),
    Case("upsample 32x32x32x64, x2", "upsample", (IMAGES,), dict(factor=2)),
    Case("downsample 32x32x32x64, /2", "downsample", (IMAGES,), dict(factor=2)),
    Case("conv_transpose 32x16x16, 64→64, 3x3 s2 VALID", "conv_transpose",
         ((32, 16, 16, 64), (3, 3, 64, 64), (64,)), dict(stride=2)),
    Case("conv_transpose 32x16x16, 64→64, 4x4 s2 SAME", "conv_transpose",
         ((32, 16, 16, 64), (4, 4, 64, 64), (64,)), dict(stride=2, padding="SAME")),
]

QUICK_CASES = [
    Case("quick max_pool 2x8x8x3, 3x3 s2 SAME", "max_pool", ((2, 8, 8, 3),), dict(window=3, stride=2, padding="SAME")),
    Case("quick mean_pool 2x8x8x3, 2x2", "mean_pool", ((2, 8, 8, 3),), dict(window=2)),
    Case("quick upsample 2x5x5x3, x2", "upsample", ((2, 5, 5, 3),), dict(factor=2)),
    Case("quick conv_transpose 2x4x4, 3→4, 3x3 s2", "conv_transpose", ((2, 4, 4, 3), (3, 3, 3, 4), (4,)), dict(stride=2)),
]


def _value_and_grad_fn(fn, settings, n_args):
    """``(v, *args) ↦ value_and_grad of ⟨fn(*args), v⟩``; ``v`` is an argument, not a
    constant, so that XLA cannot fold the backward of a linear op at compile time."""

    def loss(*args_and_v):
        *args, v = args_and_v
        return jnp.vdot(fn(*args, **settings), v)

    return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(n_args))))


def run(case: Case, repeats: int, warmup: int) -> dict:
    rng = np.random.default_rng(0)
    args = tuple(jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in case.shapes)
    if case.op == "conv_transpose":  # a kernel of unit gain
        args = (args[0], args[1] / np.sqrt(np.prod(case.shapes[1][:-1])), args[2])
    op, ref = getattr(ops, case.op), getattr(reference, case.op)
    v = jnp.asarray(rng.normal(size=ref(*args, **case.settings).shape), jnp.float32)

    variants = {"autodiff": ref, "ops": op}
    fns = {k: _value_and_grad_fn(f, case.settings, len(args)) for k, f in variants.items()}
    inputs = (*args, v)
    compile_s = {k: compile_seconds(f, *inputs) for k, f in fns.items()}
    for a, b in zip(jax.tree_util.tree_leaves(fns["autodiff"](*inputs)), jax.tree_util.tree_leaves(fns["ops"](*inputs))):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(a))))  # same figures
    times = interleaved_medians(list(fns.values()), [inputs] * len(fns), repeats=repeats, warmup=warmup)
    ms = {k: t * 1e3 for k, t in zip(fns, times)}
    res_bytes = {k: residual_bytes(lambda *a, f=f: f(*a, **case.settings), *args) for k, f in variants.items()}
    return {
        "case": case.name,
        "op": case.op,
        "shapes": case.shapes,
        "settings": {k: v for k, v in case.settings.items()},
        "ms": ms,
        "ratio": ms["ops"] / ms["autodiff"],
        "compile_s": compile_s,
        "residual_bytes": res_bytes,
        "input_bytes": int(args[0].nbytes),
    }


def main(argv=None) -> None:
    args = bench_settings(__doc__.splitlines()[0], argv)
    cases = QUICK_CASES if args.quick else CASES
    repeats, warmup = args.repeats, args.warmup

    results = [run(case, repeats, warmup) for case in cases]
    rows = [
        [
            r["case"],
            f"{r['ms']['autodiff']:.3f}",
            f"{r['ms']['ops']:.3f}",
            f"{r['ratio']:.2f}",
            f"{r['compile_s']['autodiff']:.2f} / {r['compile_s']['ops']:.2f}",
            f"{r['residual_bytes']['autodiff']:,}",
            f"{r['residual_bytes']['ops']:,}",
            f"{r['input_bytes']:,}",
        ]
        for r in results
    ]
    header = ["case", "autodiff ms", "ops ms", "ops/autodiff", "compile s (autodiff / ops)",
              "residual bytes autodiff", "residual bytes ops", "input bytes"]
    print(machine_line(repeats, "jit(value_and_grad wrt every array argument)"))
    print(markdown_table(header, rows))
    worst = max(results, key=lambda r: r["ratio"])
    print(f"worst ops/autodiff ratio: {worst['ratio']:.2f} ({worst['case']}; target <= 1.10)")
    write_json(args.json, repeats, results)


if __name__ == "__main__":
    main()
