"""Plan against plan for one convolution's forward + backward: the crossovers behind ``auto_plan``.

For each shape, ``value_and_grad`` of ``⟨conv(x, w, b), v⟩`` (x, w and b) under a few whole
plans (one formula per product, :class:`jaxcnn.ops._conv_plan.Plan`, each with XLA:CPU's
tunings: :func:`jaxcnn._xla_cpu_conv.tuned`, passed as a policy) and under autodiff of
the reference, timed interleaved (``_timing.interleaved_times``); each plan's time is read
as the median of its per-round ratio to the all-XLA plan, with a second compiled copy of the
all-XLA plan for the noise floor.

    python experiments/conv_plan_sweep.py
    python experiments/conv_plan_sweep.py --repeats 20 --cases "16→16"
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from _timing import interleaved_times, markdown_table, paired_ratio
import jaxcnn.reference
from jaxcnn import _shapes, _xla_cpu_conv, ops
from jaxcnn.ops._conv_plan import Plan, auto_plan


class Shape(NamedTuple):
    n: int
    spatial: tuple[int, ...]
    window: tuple[int, ...]
    c_in: int
    c_out: int
    stride: int = 1
    padding: object = 1

    @property
    def name(self) -> str:
        size = "×".join(map(str, self.spatial))
        win = "×".join(map(str, self.window))
        return f"{self.n}×{size}, {self.c_in}→{self.c_out}, {win}/{self.stride}"


SHAPES = [  # ResNet-8/20's 3×3 convolutions and a few neighbours
    Shape(128, (32, 32), (3, 3), 16, 16), Shape(128, (32, 32), (3, 3), 16, 32, 2), Shape(128, (16, 16), (3, 3), 32, 32),
    Shape(128, (16, 16), (3, 3), 32, 64, 2), Shape(128, (8, 8), (3, 3), 64, 64), Shape(32, (32, 32), (3, 3), 16, 16),
    Shape(64, (32, 32), (3, 3), 8, 8), Shape(64, (32, 32), (3, 3), 8, 16), Shape(64, (32, 32), (3, 3), 8, 16, 2),
    Shape(64, (14, 14), (3, 3), 32, 32), Shape(128, (14, 14), (5, 5), 6, 16, 1, 0),
    Shape(128, (16, 16), (1, 1), 32, 64, 1, 0),
    Shape(128, (19,), (3,), 25, 25, 2), Shape(128, (40,), (5,), 64, 64, 2), Shape(64, (64,), (3,), 128, 128, 2),
]

CANDIDATES = {
    "xla": Plan.of("xla"),
    "xla y/dW, col2im dx": Plan("xla", "xla", "im2col"),
    "im2col y/dW, xla dx": Plan("im2col", "im2col", "xla"),
    "im2col": Plan.of("im2col"),
}


def run(shape: Shape, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(shape.n, *shape.spatial, shape.c_in)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(*shape.window, shape.c_in, shape.c_out)), jnp.float32)
    b = jnp.zeros((shape.c_out,), jnp.float32)
    geom = _shapes.geometry("conv", shape.spatial, shape.window, shape.stride, shape.padding, 1)
    v = jnp.asarray(rng.normal(size=(shape.n, *geom.out_shape, shape.c_out)), jnp.float32)
    auto = auto_plan(geom, shape.spatial, shape.c_in, shape.c_out, backend="cpu")
    plans = dict(CANDIDATES)
    plans.setdefault("auto", auto)

    def grad(fn):
        return jax.jit(jax.value_and_grad(lambda v, x, w, b: jnp.vdot(fn(x, w, b), v), argnums=(1, 2, 3)))

    def conv(plan):  # the plan's formulas, tuned for XLA:CPU as auto's are
        policy = lambda problem: _xla_cpu_conv.tuned(plan, problem)  # noqa: E731
        return lambda x, w, b: ops.conv(x, w, b, stride=shape.stride, padding=shape.padding, method=policy,
                                        platform="cpu")

    fns = {name: grad(conv(p)) for name, p in plans.items()}
    fns["xla again"] = grad(conv(Plan.of("xla")))
    fns["autodiff"] = grad(lambda x, w, b: jaxcnn.reference.conv(x, w, b, stride=shape.stride, padding=shape.padding))
    times = dict(zip(fns, interleaved_times(list(fns.values()), [(v, x, w, b)] * len(fns), repeats=repeats)))
    ratios = {name: paired_ratio(t, times["xla"])[0] for name, t in times.items() if name != "xla"}
    return {"shape": shape.name, "xla_ms": float(np.median(times["xla"])) * 1e3, "ratios": ratios,
            "auto": "{} / {} / {}".format(*auto)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cases", action="append", default=None, metavar="TEXT")
    args = parser.parse_args(argv)
    shapes = [s for s in SHAPES if args.cases is None or any(t in s.name for t in args.cases)]
    rows, names = [], None
    for shape in shapes:
        r = run(shape, args.repeats)
        names = names or list(r["ratios"])
        rows.append([r["shape"], f"{r['xla_ms']:.2f}", *(f"{r['ratios'].get(k, float('nan')):.2f}" for k in names),
                     r["auto"]])
        print(" | ".join(rows[-1]), flush=True)
    print()
    print(markdown_table(["conv", "xla ms", *(f"{k} / xla" for k in names), "auto: y / dW / dx"], rows))


if __name__ == "__main__":
    main()
