"""Forward + backward time of ``ops.conv`` (both methods) against autodiff of ``reference.conv``.

For each shape, three jitted functions compute ``jax.grad`` with respect to ``x`` and ``w``
of ``⟨conv(x, w, b), v⟩`` for a fixed random cotangent ``v``: autodiff of the reference,
the hand rule with ``method="xla"``, the hand rule with ``method="im2col"``. They are
compiled first, then timed interleaved (median of the repeats; see ``_timing``). Figures
are printed, never asserted. Target: ``xla / autodiff <= 1.10`` on every shape. The last
column says whether the compiled ``method="xla"`` program holds the same convolution
instructions (result shape, window, padding, dilation, layout) as autodiff's: the hand rule
should cost nothing, so timing differences there are machine noise.

    .venv/bin/python experiments/bench_conv.py                # full table
    .venv/bin/python experiments/bench_conv.py --quick        # tiny smoke run
    .venv/bin/python experiments/bench_conv.py --json out.json
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from _timing import (bench_settings, compile_seconds, interleaved_medians, machine_line, markdown_table,
                     residual_bytes, write_json)
from jaxcnn import ops, reference


class Case(NamedTuple):
    name: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    settings: dict
    connections: Optional[np.ndarray] = None


CASES = [
    Case("NHWC 32x32x32, 64→64, 3x3 SAME s1", (32, 32, 32, 64), (3, 3, 64, 64), dict(stride=1, padding="SAME")),
    Case("NHWC 32x32x32, 64→64, 3x3 SAME s2", (32, 32, 32, 64), (3, 3, 64, 64), dict(stride=2, padding="SAME")),
    Case("MNIST-1D conv1: 100x40, 1→25, k5 s2 p1", (100, 40, 1), (5, 1, 25), dict(stride=2, padding=1)),
    Case("MNIST-1D conv2: 100x19, 25→25, k3 s2 p1", (100, 19, 25), (3, 25, 25), dict(stride=2, padding=1)),
    Case("LeNet-5 C1: 32x32x32, 1→6, 5x5", (32, 32, 32, 1), (5, 5, 1, 6), {}),
    Case("LeNet-5 C3: 32x14x14, 6→16, 5x5, table", (32, 14, 14, 6), (5, 5, 6, 16), {}, ops.LENET5_C3_TABLE),
]

QUICK_CASES = [
    Case("quick 2D: 2x8x8, 3→4, 3x3 SAME s2", (2, 8, 8, 3), (3, 3, 3, 4), dict(stride=2, padding="SAME")),
    Case("quick 1D: 4x12, 1→5, k5 s2 p1", (4, 12, 1), (5, 1, 5), dict(stride=2, padding=1)),
    Case("quick C3: 2x9x9, 6→16, 5x5, table", (2, 9, 9, 6), (5, 5, 6, 16), {}, ops.LENET5_C3_TABLE),
]


def _grad_fn(conv_fn, settings, v):
    def loss(x, w, b):
        return jnp.vdot(conv_fn(x, w, b, **settings), v)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def convolutions(fn, *args) -> list[str]:
    """The convolution instructions of the compiled program: result shape, window, layout."""
    hlo = fn.lower(*args).compile().as_text()
    found = re.findall(r"= (\S+) convolution\(.*?(window=\{[^}]*\}).*?(dim_labels=[\w>-]+)", hlo)
    return sorted(" ".join(parts) for parts in found)


def run(case: Case, repeats: int, warmup: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=case.x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=case.w_shape) / np.sqrt(np.prod(case.w_shape[:-1])), jnp.float32)
    b = jnp.asarray(rng.normal(size=case.w_shape[-1:]), jnp.float32)
    settings = dict(case.settings, connections=case.connections)
    v = jnp.asarray(rng.normal(size=reference.conv(x, w, b, **settings).shape), jnp.float32)

    variants = {
        "autodiff": (reference.conv, settings),
        "xla": (ops.conv, dict(settings, method="xla")),
        "im2col": (ops.conv, dict(settings, method="im2col")),
    }
    fns = {k: _grad_fn(f, s, v) for k, (f, s) in variants.items()}
    compile_s = {k: compile_seconds(f, x, w, b) for k, f in fns.items()}
    autodiff_convs, xla_convs = convolutions(fns["autodiff"], x, w, b), convolutions(fns["xla"], x, w, b)
    times = interleaved_medians(list(fns.values()), [(x, w, b)] * len(fns), repeats=repeats, warmup=warmup)
    ms = {k: t * 1e3 for k, t in zip(fns, times)}
    res_bytes = {
        k: residual_bytes(lambda x, w, b, f=f, s=s: f(x, w, b, **s), x, w, b) for k, (f, s) in variants.items()
    }
    return {
        "case": case.name,
        "x_shape": case.x_shape,
        "w_shape": case.w_shape,
        "ms": ms,
        "ratio": {"xla": ms["xla"] / ms["autodiff"], "im2col": ms["im2col"] / ms["autodiff"]},
        "compile_s": compile_s,
        "residual_bytes": res_bytes,
        "xla_convolutions_equal_autodiff": autodiff_convs == xla_convs,
        "autodiff_convolutions": autodiff_convs,
        "xla_convolutions": xla_convs,
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
            f"{r['ms']['xla']:.3f}",
            f"{r['ratio']['xla']:.2f}",
            f"{r['ms']['im2col']:.3f}",
            f"{r['ratio']['im2col']:.2f}",
            f"{r['residual_bytes']['autodiff']} / {r['residual_bytes']['xla']} / {r['residual_bytes']['im2col']}",
            "yes" if r["xla_convolutions_equal_autodiff"] else "NO",
        ]
        for r in results
    ]
    header = ["shape", "autodiff ms", "xla ms", "xla/autodiff", "im2col ms", "im2col/autodiff",
              "residual bytes (autodiff / xla / im2col)", "xla HLO convs = autodiff's"]
    print(machine_line(repeats, "jit(grad wrt x and w)"))
    print(markdown_table(header, rows))
    worst = max(r["ratio"]["xla"] for r in results)
    print(f"worst xla/autodiff ratio: {worst:.2f} (target <= 1.10)")
    write_json(args.json, repeats, results)


if __name__ == "__main__":
    main()
