"""The convolution family, one layer at a time: jaxcnn ``ops`` against autodiff of ``reference``
and against PyTorch CPU.

Per layer and batch, ``jax.value_and_grad`` of ``⟨layer(x, w), v⟩`` with respect to ``x`` and
``w`` (``v`` a fixed random cotangent passed as an argument, so that XLA cannot fold a linear
backward at compile time), jitted, float32, compiled first:

* **ops / reference** — ``jaxcnn.ops`` (the hand rules, ``method="auto"``) against autodiff of
  ``jaxcnn.reference``, timed interleaved with a second, separately compiled copy of the
  reference (``_timing.interleaved_times``): the ratio is the median of the per-round ratios
  with its 95% interval, and the copy's ratio to the reference is the noise floor, what one
  program reads against itself in this run.
* **ops / PyTorch** — the same layer in PyTorch (``torch.nn.functional``, its native
  channels-first layout, ``torch.autograd.grad`` of the same scalar, as many threads as
  cores), timed in blocks of consecutive calls with the ``ops`` side
  (``_timing.blocked_medians``, so that PyTorch's spinning threads slow no one else down);
  ``n/a`` without PyTorch.

The families are the ones JAX users report slow on the CPU (issue 34): a ResNet-style 3×3, a
depthwise 3×3 (MobileNet), a grouped 3×3 (ResNeXt), a 3-D 3×3×3, a 1-D long kernel, transposed
2-D and 1-D at stride 2 with output padding, a dilated 3×3, and the two convolutions of Flax's
MNIST example.

    python experiments/bench_conv_family.py --out experiments/results/bench_conv_family_cpu.md
    python experiments/bench_conv_family.py --quick            # tiny shapes, one round
    python experiments/bench_conv_family.py --cases 3-D --batches 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from _timing import block, blocked_medians, interleaved_times, markdown_table, paired_ratio, write_json
import jaxcnn.ops
import jaxcnn.reference
from jaxcnn import _xla_cpu_conv


class Layer(NamedTuple):
    family: str
    op: str  # "conv" or "conv_transpose"
    sample: tuple[int, ...]  # one input, channels-last (*spatial, C_in)
    window: tuple[int, ...]
    c_out: int
    batches: tuple[int, ...]
    stride: int = 1
    padding: int = 0  # symmetric, as PyTorch's `padding`
    dilation: int = 1
    groups: int = 1
    output_padding: int = 0  # conv_transpose only

    @property
    def w_shape(self) -> tuple[int, ...]:  # jaxcnn's (*window, C_in / groups, C_out)
        return (*self.window, self.sample[-1] // self.groups, self.c_out)

    @property
    def shape(self) -> str:
        size, win = "×".join(map(str, self.sample[:-1])), "×".join(map(str, self.window))
        extra = "".join(f", {name} {value}" for name, value, default in (
            ("stride", self.stride, 1), ("pad", self.padding, 0), ("dilation", self.dilation, 1),
            ("groups", self.groups, 1), ("output_padding", self.output_padding, 0)) if value != default)
        return f"{size}, {self.sample[-1]}→{self.c_out}, {win}{extra}"

    def kwargs(self) -> dict:
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)
        return {**kw, "output_padding": self.output_padding} if self.op == "conv_transpose" else kw


LAYERS = [
    Layer("ResNet 3×3", "conv", (32, 32, 16), (3, 3), 16, (1, 32, 128), padding=1),
    Layer("ResNet 3×3", "conv", (16, 16, 32), (3, 3), 32, (1, 32, 128, 256), padding=1),
    Layer("ResNet 3×3, stride 2", "conv", (32, 32, 16), (3, 3), 32, (32, 128), stride=2, padding=1),
    Layer("depthwise 3×3 (MobileNet)", "conv", (32, 32, 32), (3, 3), 32, (1, 32, 128), padding=1, groups=32),
    Layer("depthwise 3×3 (MobileNet)", "conv", (16, 16, 128), (3, 3), 128, (32,), stride=2, padding=1, groups=128),
    Layer("grouped 3×3 (ResNeXt)", "conv", (16, 16, 128), (3, 3), 128, (1, 8), padding=1, groups=32),
    Layer("3-D 3×3×3", "conv", (16, 16, 16, 16), (3, 3, 3), 16, (1, 4, 16), padding=1),
    Layer("3-D 3×3×3", "conv", (8, 8, 8, 32), (3, 3, 3), 32, (8, 32), padding=1),
    Layer("1-D long kernel", "conv", (512, 16), (33,), 16, (1, 16, 64), padding=16),
    Layer("1-D long kernel", "conv", (1000, 32), (63,), 32, (16,), padding=31),
    Layer("transposed 2-D, stride 2", "conv_transpose", (16, 16, 32), (3, 3), 16, (1, 32, 128), stride=2,
          padding=1, output_padding=1),
    Layer("transposed 1-D, stride 2", "conv_transpose", (128, 32), (5,), 16, (1, 32, 128), stride=2, padding=2,
          output_padding=1),
    Layer("dilated 3×3", "conv", (16, 16, 32), (3, 3), 32, (1, 32, 128), padding=2, dilation=2),
    Layer("Flax MNIST conv1", "conv", (28, 28, 1), (3, 3), 32, (128,), padding=1),
    Layer("Flax MNIST conv2", "conv", (14, 14, 32), (3, 3), 64, (1, 128), padding=1),
]

QUICK_LAYERS = [
    Layer("quick ResNet 3×3", "conv", (8, 8, 4), (3, 3), 4, (2,), padding=1),
    Layer("quick depthwise 3×3", "conv", (8, 8, 4), (3, 3), 4, (2,), padding=1, groups=4),
    Layer("quick 3-D 3×3×3", "conv", (4, 4, 4, 2), (3, 3, 3), 2, (1,), padding=1),
    Layer("quick 1-D long kernel", "conv", (32, 2), (9,), 2, (2,), padding=4),
    Layer("quick transposed 1-D, stride 2", "conv_transpose", (8, 2), (5,), 2, (2,), stride=2, padding=2,
          output_padding=1),
]


# --------------------------------------------------------------------------- the two JAX sides and PyTorch


def _arrays(layer: Layer, batch: int):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *layer.sample)).astype(np.float32)
    w = (rng.normal(size=layer.w_shape) / np.sqrt(np.prod(layer.w_shape[:-1]))).astype(np.float32)
    out = jax.eval_shape(lambda x, w: getattr(jaxcnn.reference, layer.op)(x, w, **layer.kwargs()), x, w)
    v = rng.normal(size=out.shape).astype(np.float32)
    return x, w, v


def jax_side(layer: Layer, backend):
    """``(x, w, v) -> (⟨layer(x, w), v⟩, (dx, dw))``, jitted, on ``backend``."""
    op, kw = getattr(backend, layer.op), layer.kwargs()
    return jax.jit(jax.value_and_grad(lambda x, w, v: jnp.vdot(op(x, w, **kw), v), argnums=(0, 1)))


def torch_side(layer: Layer, x, w, v):
    """One PyTorch forward + backward of the same layer per call, or None without PyTorch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    nd = len(layer.window)
    first = lambda a: torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))  # noqa: E731  NC(D)HW
    if layer.op == "conv":  # (*window, C_in/g, C_out) -> (C_out, C_in/g, *window)
        fn = getattr(F, f"conv{nd}d")
        wt = np.transpose(w, (nd + 1, nd, *range(nd)))
        extra = {}
    else:  # (*window, C_in/g, C_out) -> (C_in, C_out/g, *window); the flip does not change the time
        fn = getattr(F, f"conv_transpose{nd}d")
        g, c_in_g, c_out = layer.groups, w.shape[-2], w.shape[-1]
        wt = np.transpose(w.reshape(*layer.window, c_in_g, g, c_out // g), (nd + 1, nd, nd + 2, *range(nd)))
        wt = wt.reshape(g * c_in_g, c_out // g, *layer.window)
        extra = {"output_padding": layer.output_padding}
    xt = first(x).requires_grad_(True)
    wt = torch.from_numpy(np.ascontiguousarray(wt)).requires_grad_(True)
    vt = first(v)

    def run():
        y = fn(xt, wt, None, stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
               groups=layer.groups, **extra)
        loss = (y * vt).sum()
        dx, dw = torch.autograd.grad(loss, (xt, wt))
        return loss.item()

    return run


def _plan(layer: Layer, batch: int) -> str:
    """The formulas ``method="auto"`` picks for ``y / dW / dx`` (conv_transpose: its own products)."""
    seen = []
    policy = _xla_cpu_conv.auto_policy if layer.op == "conv" else _xla_cpu_conv.transpose_policy

    def spy(problem):
        seen.append(policy(problem))
        return seen[-1]

    x, w, _ = _arrays(layer, 1)
    jax.eval_shape(lambda x, w: getattr(jaxcnn.ops, layer.op)(x, w, **layer.kwargs(), method=spy),
                   np.zeros((batch, *layer.sample), np.float32), w)
    (plan,) = seen
    if layer.op == "conv_transpose":  # y is the transposed convolution's input gradient, dx its forward
        return f"{plan.input} / {plan.weight} / {plan.forward}" + (f", dW chunk {plan.weight_chunk}"
                                                                     if plan.weight_chunk else "")
    return f"{plan.forward} / {plan.weight} / {plan.input}" + (f", dW chunk {plan.weight_chunk}"
                                                               if plan.weight_chunk else "")


def run_layer(layer: Layer, batch: int, repeats: int, warmup: int, min_seconds: float, peers: bool) -> dict:
    result = {"family": layer.family, "op": layer.op, "shape": layer.shape, "batch": batch,
              "plan": _plan(layer, batch)}
    x, w, v = _arrays(layer, batch)
    args = tuple(map(jnp.asarray, (x, w, v)))
    fns = [jax_side(layer, jaxcnn.ops), jax_side(layer, jaxcnn.reference), jax_side(layer, jaxcnn.reference)]
    times = interleaved_times(fns, [args] * 3, repeats=repeats, warmup=warmup, min_seconds=min_seconds,
                              max_repeats=200)
    result["ms"] = {side: statistics.median(t) * 1e3 for side, t in zip(("ops", "reference", "reference again"),
                                                                        times)}
    ratio, lo, hi = paired_ratio(times[0], times[1])
    floor, floor_lo, floor_hi = paired_ratio(times[2], times[1])
    result.update(ratio=ratio, ratio_95=[lo, hi], noise_floor=floor, noise_floor_95=[floor_lo, floor_hi],
                  rounds=len(times[0]))
    run = torch_side(layer, x, w, v) if peers else None
    if run is not None:
        ops_run = lambda: fns[0](*args)  # noqa: E731
        for fn in (ops_run, run):
            for _ in range(warmup):
                block(fn())
        ms_ops, ms_torch = blocked_medians([ops_run, run], repeats=max(4, repeats // 2), calls=5, skip=1)
        result["torch_ms"] = {"ops": ms_ops * 1e3, "PyTorch CPU": ms_torch * 1e3}
    return result


# --------------------------------------------------------------------------- the table


def family_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        peer = r.get("torch_ms")
        rows.append([
            r["family"], r["shape"], r["batch"], r["plan"],
            f"{r['ms']['ops']:.3f} / {r['ms']['reference']:.3f}",
            f"**{r['ratio']:.3f}** ({r['ratio_95'][0]:.3f}–{r['ratio_95'][1]:.3f})",
            f"{r['noise_floor']:.3f} ({r['noise_floor_95'][0]:.3f}–{r['noise_floor_95'][1]:.3f})",
            "n/a" if peer is None else f"{peer['PyTorch CPU']:.3f}",
            "n/a" if peer is None else f"{peer['ops'] / peer['PyTorch CPU']:.3g}",
        ])
    return markdown_table(["family", "layer (per sample)", "batch", "auto: y / dW / dx",
                           "ms ops / reference", "ops / reference (95%)", "reference / itself (95%): noise floor",
                           "ms PyTorch", "ops / PyTorch"], rows)


def _commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _versions() -> str:
    try:
        import torch
        peer = f"torch {torch.__version__} ({os.cpu_count()} threads)"
    except ImportError:
        peer = "torch absent"
    return f"jax {jax.__version__}, {peer}"


def _load() -> str:
    return "/".join(f"{a:.1f}" for a in os.getloadavg())


def _write(path: str, header: str, results: list[dict], footer: str = "") -> None:
    with open(path, "w") as f:
        f.write("# The convolution family, layer by layer (`experiments/bench_conv_family.py`)\n\n")
        f.write(f"{header}\n\n{family_table(results)}\n{footer}")


def _summary(results: list[dict]) -> str:
    if not results:
        return ""
    floors = [r["noise_floor"] for r in results]
    worst = max(results, key=lambda r: r["ratio"])
    return (f"\nnoise floor (reference against its own copy, every row): {min(floors):.3f}–{max(floors):.3f}; "
            f"worst ops / reference {worst['ratio']:.3f} ({worst['family']}, {worst['shape']}, "
            f"batch {worst['batch']}); load average at the end {_load()}\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="least interleaved rounds per row (default 10)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="more rounds for fast rows, up to this many seconds of the slowest side (default 1.5)")
    parser.add_argument("--cases", action="append", default=None, metavar="TEXT",
                        help="only the layers whose family or shape contains TEXT (repeatable)")
    parser.add_argument("--batches", type=int, action="append", default=None, metavar="N",
                        help="only these batch sizes (repeatable)")
    parser.add_argument("--no-peers", action="store_true", help="skip PyTorch")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    repeats, warmup = args.repeats or (1 if args.quick else 10), 1 if args.quick else 2
    seconds = args.seconds if args.seconds is not None else (0.0 if args.quick else 1.5)
    layers = [l for l in (QUICK_LAYERS if args.quick else LAYERS)
              if args.cases is None or any(t in l.family or t in l.shape for t in args.cases)]
    header = (f"{_versions()}, {jax.devices()[0].platform}, {os.cpu_count()} cores, float32, jitted "
              f"value_and_grad w.r.t. x and w; commit {_commit()}; load average at the start {_load()}; "
              f"at least {repeats} interleaved rounds (more for fast rows, {seconds:g} s of the slowest side)")
    print(header, flush=True)
    results = []
    for layer in layers:
        for batch in layer.batches:
            if args.batches is not None and batch not in args.batches:
                continue
            results.append(run_layer(layer, batch, repeats, warmup, seconds, peers=not args.no_peers))
            r = results[-1]
            print(f"  {r['family']}, {r['shape']}, batch {batch} [{r['plan']}]: ops/reference {r['ratio']:.3f} "
                  f"({r['ratio_95'][0]:.3f}–{r['ratio_95'][1]:.3f}), noise floor {r['noise_floor']:.3f}"
                  + (f", ops/PyTorch {r['torch_ms']['ops'] / r['torch_ms']['PyTorch CPU']:.2f}"
                     if "torch_ms" in r else "") + f" (load {_load()})", flush=True)
            if args.out:  # after every row, so that an interrupted run keeps what it measured
                _write(args.out, header, results)
    print("\n## The convolution family: ops vs reference vs PyTorch\n")
    print(family_table(results))
    print(_summary(results))
    if args.out:
        _write(args.out, header, results, _summary(results))
    write_json(args.json, repeats, results)


if __name__ == "__main__":
    main()
