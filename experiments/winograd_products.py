"""Winograd F(2×2, 3×3) against the lecture's XLA formulas, one product at a time.

For 2-D 3 × 3 stride-1 convolutions (padding 1) of several batch sizes, map sizes and channel
counts: the forward ``y``, the weight gradient ``dW`` and the input gradient ``dx`` of
the table's ``"xla"`` (:mod:`jaxcnn.ops._conv`) and ``"winograd"`` formulas
(:mod:`jaxcnn.ops._conv_winograd`), ``dW`` in XLA:CPU's batch chunks, each jitted on its own
with every operand (δ included) an argument, timed in interleaved rounds; with ``--torch``, PyTorch CPU's three products
(channels-last) on the same shapes. ``auto`` is the plan ``method="auto"`` picks. The figures
and the rules read from them: ``docs/performance.md``, "Winograd F(2×2, 3×3)".

    python experiments/winograd_products.py
    python experiments/winograd_products.py --shapes 128x16x32x32 --torch
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from _timing import interleaved_times, machine_line, markdown_table
from jaxcnn import _shapes, _xla_cpu, _xla_cpu_conv
from jaxcnn.ops._conv import FORMULAS
from jaxcnn.ops._conv_plan import Problem, auto_plan

SHAPES = ["128x32x16x16", "128x16x32x32", "128x8x64x64", "32x32x16x16", "32x16x32x32", "64x16x12x12",
          "64x28x8x8", "32x6x64x64", "32x4x128x128", "64x8x256x256", "64x16x8x32", "64x16x32x8"]


def products(n: int, size: int, c_in: int, c_out: int, repeats: int) -> dict:
    """Each formula's three products as XLA:CPU's policy runs them (``dW`` in its batch chunks)."""
    rng = np.random.default_rng(0)
    x, w, g = (jnp.asarray(rng.normal(size=s), jnp.float32)
               for s in ((n, size, size, c_in), (3, 3, c_in, c_out), (n, size, size, c_out)))
    geom = _shapes.geometry("conv", (size, size), (3, 3), 1, 1, 1)
    problem = Problem(geom, x.shape, w.shape, 1, np.dtype("float32"), "cpu")
    fns = {}
    for name in ("xla", "winograd"):
        f, chunk = FORMULAS[name], _xla_cpu_conv.weight_chunk(name, problem)
        fns["y", name] = lambda x, w, g, f=f: f.forward(x, w, geom)
        fns["dW", name] = lambda x, w, g, f=f, chunk=chunk: _xla_cpu.summed_in_batch_chunks(
            lambda x, g: f.weight_gradient(x, g, geom)[0], chunk, x, g)
        fns["dx", name] = lambda x, w, g, f=f: f.input_gradient(g, w, geom, (size, size))
    times = interleaved_times([jax.jit(f) for f in fns.values()], [(x, w, g)] * len(fns), repeats=repeats, warmup=2)
    return {key: statistics.median(t) * 1e3 for key, t in zip(fns, times)}


def torch_products(n: int, size: int, c_in: int, c_out: int, repeats: int) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    last = torch.channels_last
    x = torch.randn(n, c_in, size, size).contiguous(memory_format=last)
    w = torch.randn(c_out, c_in, 3, 3).contiguous(memory_format=last)
    g = torch.randn(n, c_out, size, size).contiguous(memory_format=last)
    fns = {"y": lambda: torch.nn.functional.conv2d(x, w, padding=1),
           "dW": lambda: torch.nn.grad.conv2d_weight(x, w.shape, g, padding=1),
           "dx": lambda: torch.nn.grad.conv2d_input(x.shape, w, g, padding=1)}
    out = {}
    with torch.no_grad():
        for name, fn in fns.items():
            fn(), fn()
            ts = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - start)
            out[name] = statistics.median(ts) * 1e3
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES), help="N x size x C_in x C_out, comma-separated")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--torch", action="store_true", help="also PyTorch CPU's products")
    args = parser.parse_args(argv)
    rows = []
    for spec in args.shapes.split(","):
        n, size, c_in, c_out = (int(v) for v in spec.split("x"))
        ms = products(n, size, c_in, c_out, args.repeats)
        geom = _shapes.geometry("conv", (size, size), (3, 3), 1, 1, 1)
        plan = auto_plan(geom, (size, size), c_in, c_out, backend="cpu")
        row = [f"{n} × {size}×{size}, {c_in} → {c_out}"]
        row += [f"{ms[(p, 'xla')]:.2f} / {ms[(p, 'winograd')]:.2f} ({ms[(p, 'winograd')] / ms[(p, 'xla')]:.2f})"
                for p in ("y", "dW", "dx")]
        row.append(f"{plan.forward} / {plan.weight} / {plan.input}")
        if args.torch:
            t = torch_products(n, size, c_in, c_out, args.repeats)
            row.append(f"{t['y']:.2f} / {t['dW']:.2f} / {t['dx']:.2f}")
        rows.append(row)
        print(" | ".join(row), flush=True)
    header = ["N × map, C_in → C_out", "y ms: xla / winograd (ratio)", "dW", "dx", "auto: y / dW / dx"]
    print()
    print(machine_line(args.repeats, "each product jitted alone, interleaved rounds"))
    print(markdown_table(header + (["PyTorch y / dW / dx ms"] if args.torch else []), rows))


if __name__ == "__main__":
    main()
