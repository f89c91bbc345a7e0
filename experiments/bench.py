"""Benchmarks: every hand-derived op against autodiff, and whole train steps against Flax and PyTorch.

Four tables, all float32, jitted, compiled first and then timed interleaved (median of the
repeats; see ``_timing``). Figures are printed and written as JSON, never asserted.

1. **ops** — per op and shape, ``jax.value_and_grad`` of ``⟨op(args), v⟩`` for a fixed random
   cotangent ``v`` (an argument, so XLA cannot fold a linear op's backward at compile time)
   with respect to every floating argument: ``jaxcnn.ops`` (the hand rule)
   against autodiff of ``jaxcnn.reference``, and against a second, separately compiled
   copy of the autodiff program. Ratio (target ≤ 1.0; max pooling ≥ 5× faster): the median
   over rounds of the two calls' ratio within a round, with its 95% interval; the copy's
   ratio to autodiff is what one program reads against itself, the run's noise floor.
   Compile times, and the bytes of residuals ``jax.vjp`` keeps for the backward pass. Fast
   ops get more rounds than ``--repeats``: enough for ``OP_SECONDS`` per side (at most 2,000).
2. **conv-methods** — each convolution shape of table 1 under every ``method`` of
   :func:`jaxcnn.ops.conv`, and the plan ``method="auto"`` picks from these crossovers
   (:mod:`jaxcnn.ops._conv_plan`).
3. **train** — one optimiser step of the same network at the same batch in every framework:
   LeNet-5 with the C3 table (batch 128, SGD with momentum) and the MNIST-1D CNN (batch 100,
   Adam): jaxcnn on ``ops`` and on ``reference`` (a jitted step with the state donated, and
   ``train.make_epoch``'s two loops: jitted steps and one ``lax.scan``), Flax linen, and
   PyTorch on the CPU with one thread per core. Timed in rounds of ten consecutive calls per
   implementation (the first two of each round not counted, the order rotating from round
   to round), so PyTorch's spinning OpenMP threads slow no one else down. Peers are
   optional (``pip install -e ".[bench]"``); missing ones are skipped.
4. **flops** — the FLOP/s the LeNet-5 step achieves (its multiply-adds counted by hand, the
   C3 table's 60 connections only) against a jitted 2048² float32 matmul.

    python experiments/bench.py                      # all four tables
    python experiments/bench.py --only ops --json experiments/results/bench_cpu.json
    python experiments/bench.py --quick              # tiny shapes, smoke test
    python experiments/bench.py --only ops --cases relu --cases MNIST-1D   # a few rows
    python experiments/bench.py --only train --networks MNIST-1D           # one network
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _timing import (block, blocked_medians, compile_seconds, interleaved_medians, interleaved_times, machine_line,
                     markdown_table, paired_ratio, residual_bytes, write_json)
import jaxcnn.ops
import jaxcnn.reference
from jaxcnn import _shapes, models, train
from jaxcnn.ops._conv_plan import GEOMETRY_METHODS, METHODS, auto_plan
from jaxcnn.ops._conv_winograd import applies as winograd_applies

C3 = jaxcnn.ops.LENET5_C3_TABLE


# --------------------------------------------------------------------------- 1. ops


class Labels(NamedTuple):
    """An integer-label argument: ``n`` labels below ``classes``."""

    n: int
    classes: int


class Key(NamedTuple):
    """A PRNG-key argument (dropout's)."""

    seed: int = 0


class OpCase(NamedTuple):
    name: str
    op: str  # the same name in jaxcnn.ops and jaxcnn.reference
    args: tuple  # a shape per floating array argument, a Labels, a Key, a dict of shapes (a pytree) or a float
    settings: dict = {}


OP_SECONDS = 0.5  # per side and op: fast ops get more rounds than ``--repeats`` (quick runs: none)
IMAGES = (32, 32, 32, 64)  # batch 32, 32×32, 64 channels: the shapes of the performance issue

OP_CASES = [
    OpCase("dense 256x1024 → 1024", "dense", ((256, 1024), (1024, 1024), (1024,))),
    OpCase("dense LeNet-5 F6 128x120 → 84", "dense", ((128, 120), (84, 120), (84,))),
    OpCase("dense MNIST-1D head 100x125 → 10", "dense", ((100, 125), (10, 125), (10,))),
    OpCase("softmax_cross_entropy 1024x1000", "softmax_cross_entropy", ((1024, 1000), Labels(1024, 1000))),
    OpCase("softmax_cross_entropy 128x10", "softmax_cross_entropy", ((128, 10), Labels(128, 10))),
    OpCase("euclidean_loss 1024x1000", "euclidean_loss", ((1024, 1000), (1024, 1000))),
    OpCase("l2_penalty 1024x1024 + 64x64x3x3", "l2_penalty", ({"a": (1024, 1024), "b": (3, 3, 64, 64)}, 1e-4)),
    OpCase("softmax 1024x1000", "softmax", ((1024, 1000),)),
    OpCase("relu 32x32x32x64", "relu", (IMAGES,)),
    OpCase("sigmoid 32x32x32x64", "sigmoid", (IMAGES,)),
    OpCase("tanh LeNet-5 C1 out 128x28x28x6", "tanh", ((128, 28, 28, 6),)),
    OpCase("mean_subtraction 128x32x32x1 (per image)", "mean_subtraction", ((128, 32, 32, 1),), dict(axis=(1, 2, 3))),
    OpCase("flatten 128x5x5x16", "flatten", ((128, 5, 5, 16),)),
    OpCase("im2col 128x14x14x6, 5x5", "im2col", ((128, 14, 14, 6),), dict(window=5)),
    OpCase("conv 32x32x32, 64→64, 3x3 SAME s1", "conv", (IMAGES, (3, 3, 64, 64), (64,)), dict(padding="SAME")),
    OpCase("conv 32x32x32, 64→64, 3x3 SAME s2", "conv", (IMAGES, (3, 3, 64, 64), (64,)),
           dict(stride=2, padding="SAME")),
    OpCase("conv LeNet-5 C1 128x32x32, 1→6, 5x5", "conv", ((128, 32, 32, 1), (5, 5, 1, 6), (6,))),
    OpCase("conv LeNet-5 C3 128x14x14, 6→16, 5x5, table", "conv", ((128, 14, 14, 6), (5, 5, 6, 16), (16,)),
           dict(connections=C3)),
    OpCase("conv LeNet-5 C5 128x5x5, 16→120, 5x5", "conv", ((128, 5, 5, 16), (5, 5, 16, 120), (120,))),
    OpCase("conv MNIST-1D conv1 100x40, 1→25, k5 s2 p1", "conv", ((100, 40, 1), (5, 1, 25), (25,)),
           dict(stride=2, padding=1)),
    OpCase("conv MNIST-1D conv2 100x19, 25→25, k3 s2 p1", "conv", ((100, 19, 25), (3, 25, 25), (25,)),
           dict(stride=2, padding=1)),
    OpCase("conv MNIST-1D conv3 100x9, 25→25, k3 s2 p1", "conv", ((100, 9, 25), (3, 25, 25), (25,)),
           dict(stride=2, padding=1)),
    OpCase("conv depthwise 32x32x32, 64→64, 3x3 SAME, groups 64", "conv", (IMAGES, (3, 3, 1, 64), (64,)),
           dict(padding="SAME", groups=64)),
    OpCase("conv grouped 32x32x32, 64→64, 3x3 SAME, groups 8", "conv", (IMAGES, (3, 3, 8, 64), (64,)),
           dict(padding="SAME", groups=8)),
    OpCase("conv depthwise 1-D 100x128, 32→64, k5 SAME, groups 32", "conv", ((100, 128, 32), (5, 1, 64), (64,)),
           dict(padding="SAME", groups=32)),
    OpCase("conv_transpose 32x16x16, 64→64, 3x3 s2", "conv_transpose", ((32, 16, 16, 64), (3, 3, 64, 64), (64,)),
           dict(stride=2)),
    OpCase("conv_transpose 32x16x16, 64→64, 4x4 s2 SAME", "conv_transpose",
           ((32, 16, 16, 64), (4, 4, 64, 64), (64,)), dict(stride=2, padding="SAME")),
    OpCase("max_pool 32x32x32x64, 2x2 s2", "max_pool", (IMAGES,), dict(window=2, stride=2)),
    OpCase("max_pool 32x32x32x64, 3x3 s2 SAME (overlap)", "max_pool", (IMAGES,),
           dict(window=3, stride=2, padding="SAME")),
    OpCase("mean_pool 32x32x32x64, 2x2 s2", "mean_pool", (IMAGES,), dict(window=2, stride=2)),
    OpCase("mean_pool LeNet-5 S2 128x28x28x6, 2x2", "mean_pool", ((128, 28, 28, 6),), dict(window=2)),
    OpCase("mean_pool LeNet-5 S4 128x10x10x16, 2x2", "mean_pool", ((128, 10, 10, 16),), dict(window=2)),
    OpCase("mean_pool 32x32x32x64, 3x3 s2 SAME, count_padding=False", "mean_pool", (IMAGES,),
           dict(window=3, stride=2, padding="SAME", count_padding=False)),
    OpCase("batch_norm 32x32x32x64 (training)", "batch_norm", (IMAGES, (64,), (64,))),
    OpCase("batch_norm 128x1024 (training)", "batch_norm", ((128, 1024), (1024,), (1024,))),
    OpCase("layer_norm 128x1024", "layer_norm", ((128, 1024), (1024,), (1024,))),
    OpCase("group_norm 32x32x32x64, 8 groups", "group_norm", (IMAGES, (64,), (64,)), dict(groups=8)),
    OpCase("dropout 32x32x32x64, rate 0.5", "dropout", (IMAGES, Key()), dict(rate=0.5)),
    OpCase("leaky_relu 32x32x32x64", "leaky_relu", (IMAGES,)),
    OpCase("log_softmax 1024x1000", "log_softmax", ((1024, 1000),)),
    OpCase("softmax_cross_entropy 1024x1000, weights, label_smoothing 0.1", "softmax_cross_entropy",
           ((1024, 1000), Labels(1024, 1000)),
           dict(weights=np.linspace(0.5, 2.0, 1000, dtype=np.float32), label_smoothing=0.1)),
    OpCase("global_mean_pool 32x32x32x64", "global_mean_pool", (IMAGES,)),
    OpCase("global_max_pool 32x32x32x64", "global_max_pool", (IMAGES,)),
    OpCase("upsample 32x32x32x64, x2", "upsample", (IMAGES,), dict(factor=2)),
    OpCase("downsample 32x32x32x64, /2", "downsample", (IMAGES,), dict(factor=2)),
]

QUICK_OP_CASES = [
    OpCase("quick dense 8x16 → 4", "dense", ((8, 16), (4, 16), (4,))),
    OpCase("quick softmax_cross_entropy 8x10", "softmax_cross_entropy", ((8, 10), Labels(8, 10))),
    OpCase("quick l2_penalty", "l2_penalty", ({"w": (4, 4)}, 1e-3)),
    OpCase("quick conv C3 2x9x9, 6→16, table", "conv", ((2, 9, 9, 6), (5, 5, 6, 16), (16,)), dict(connections=C3)),
    OpCase("quick max_pool 2x8x8x3, 3x3 s2 SAME", "max_pool", ((2, 8, 8, 3),),
           dict(window=3, stride=2, padding="SAME")),
    OpCase("quick batch_norm 4x3x3x2", "batch_norm", ((4, 3, 3, 2), (2,), (2,))),
    OpCase("quick dropout 4x6", "dropout", ((4, 6), Key()), dict(rate=0.3)),
]


def _build(arg, rng):
    if isinstance(arg, Key):
        return jax.random.key(arg.seed)
    if isinstance(arg, Labels):
        return jnp.asarray(rng.integers(0, arg.classes, arg.n), jnp.int32)
    if isinstance(arg, dict):
        return {k: _build(v, rng) for k, v in arg.items()}
    if isinstance(arg, float):
        return jnp.asarray(arg, jnp.float32)
    return jnp.asarray(rng.normal(size=arg), jnp.float32)


def _is_float(arg) -> bool:
    return all(jnp.issubdtype(leaf.dtype, jnp.floating) for leaf in jax.tree_util.tree_leaves(arg))


def _first_output(fn):
    """``fn``, or its first output where it returns several (batch norm's ``(y, μ, σ²)``: the
    statistics feed running averages, not the loss)."""
    def first(*args):
        out = fn(*args)
        return out[0] if isinstance(out, tuple) else out

    return first


def run_op(case: OpCase, repeats: int, warmup: int, min_seconds: float = OP_SECONDS) -> dict:
    rng = np.random.default_rng(0)
    args = tuple(_build(a, rng) for a in case.args)
    float_argnums = tuple(i + 1 for i, a in enumerate(args) if _is_float(a))  # after v
    fns = {side: _first_output(functools.partial(getattr(module, case.op), **case.settings))
           for side, module in (("ops", jaxcnn.ops), ("autodiff", jaxcnn.reference))}
    v = jnp.asarray(rng.normal(size=jnp.shape(fns["autodiff"](*args))), jnp.float32)

    # The cotangent v is an argument, not a closed-over constant: as a constant, XLA may
    # fold the whole backward of a linear op (mean pooling, resampling) at compile time.
    def grad_fn(fn):
        return jax.jit(jax.value_and_grad(lambda v, *a: jnp.vdot(fn(*a), v), argnums=float_argnums))

    grads = {side: grad_fn(fn) for side, fn in fns.items()}
    compile_s = {side: compile_seconds(g, v, *args) for side, g in grads.items()}
    # A second, separately compiled copy of the autodiff program: what "the same program"
    # reads against itself in this run is the noise floor of the ratio.
    grads["autodiff again"] = grad_fn(fns["autodiff"])
    times = dict(zip(grads, interleaved_times(list(grads.values()), [(v, *args)] * len(grads), repeats=repeats,
                                              warmup=warmup, min_seconds=min_seconds)))
    ms = {side: statistics.median(t) * 1e3 for side, t in times.items()}
    ratio, ratio_lo, ratio_hi = paired_ratio(times["ops"], times["autodiff"])
    res = {side: residual_bytes(fn, *args) for side, fn in fns.items()}
    return {"case": case.name, "op": case.op, "ms": ms, "ratio": ratio, "ratio_95": [ratio_lo, ratio_hi],
            "same_program_ratio": paired_ratio(times["autodiff again"], times["autodiff"])[0],
            "rounds": len(times["ops"]), "compile_s": compile_s, "residual_bytes": res}


def ops_table(results: list[dict]) -> str:
    rows = [[r["case"], f"{r['ms']['autodiff']:.3f}", f"{r['ms']['ops']:.3f}",
             f"**{r['ratio']:.2f}** ({r['ratio_95'][0]:.2f}–{r['ratio_95'][1]:.2f})", f"{r['same_program_ratio']:.2f}",
             f"{r['compile_s']['autodiff']:.2f} / {r['compile_s']['ops']:.2f}",
             f"{r['residual_bytes']['autodiff']:,} / {r['residual_bytes']['ops']:,}"] for r in results]
    return markdown_table(["op, shape", "autodiff ms", "ops ms", "ops / autodiff (95%)", "autodiff / itself",
                           "compile s (autodiff / ops)", "residual bytes (autodiff / ops)"], rows)


def run_conv_methods(case: OpCase, repeats: int, warmup: int) -> dict:
    """The conv case under every ``method`` (``taps``/``rows`` only for few input channels), and the
    plan ``auto`` picks: the crossovers behind :func:`jaxcnn.ops._conv_plan.auto_plan`."""
    rng = np.random.default_rng(0)
    x, w, b = (_build(a, rng) for a in case.args)
    geom = _shapes.geometry("conv", x.shape[1:-1], w.shape[:-2], case.settings.get("stride", 1),
                            case.settings.get("padding", "VALID"), case.settings.get("dilation", 1))
    methods = [m for m in METHODS if m not in ("taps", "rows") or w.shape[-2] <= 8]
    if winograd_applies(geom):
        methods.append("winograd")
    v = jnp.asarray(rng.normal(size=jaxcnn.reference.conv(x, w, b, **case.settings).shape), jnp.float32)
    grads = {m: jax.jit(jax.value_and_grad(
        lambda v, x, w, b, m=m: jnp.vdot(jaxcnn.ops.conv(x, w, b, method=m, **case.settings), v), argnums=(1, 2, 3)))
        for m in methods}
    times = interleaved_medians(list(grads.values()), [(v, x, w, b)] * len(grads), repeats=repeats, warmup=warmup)
    plan = auto_plan(geom, x.shape[1:-1], x.shape[-1], w.shape[-1], groups=case.settings.get("groups", 1))
    return {"case": case.name, "ms": {m: t * 1e3 for m, t in zip(grads, times)}, "auto_plan": plan._asdict()}


def conv_methods_table(results: list[dict]) -> str:
    rows = [[r["case"], *(f"{r['ms'][m]:.3f}" if m in r["ms"] else "—" for m in METHODS + GEOMETRY_METHODS),
             "{forward} / {weight} / {input}".format(**r["auto_plan"])] for r in results]
    return markdown_table(["conv, shape", *(f"{m} ms" for m in METHODS + GEOMETRY_METHODS), "auto: y / dW / dx"], rows)


# --------------------------------------------------------------------------- 2. train steps


class Network(NamedTuple):
    name: str
    batch: int
    input_shape: tuple[int, ...]  # one example, channels-last
    jaxcnn_model: Callable  # (ops=module) -> nn.Layer
    optimizer: Callable  # () -> optax transformation
    torch_lr: float
    torch_adam: bool


NETWORKS = [
    Network("LeNet-5, C3 table, batch 128, SGD momentum 0.9", 128, (32, 32, 1), models.lenet5,
            lambda: optax.sgd(0.05, momentum=0.9), 0.05, False),
    Network("MNIST-1D CNN, batch 100, Adam", 100, (40, 1), models.mnist1d_cnn, lambda: optax.adam(1e-2), 1e-2, True),
]


def _batch(net: Network, batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *net.input_shape)).astype(np.float32)
    y = rng.integers(0, 10, batch).astype(np.int32)
    return x, y


def _jaxcnn_training(net: Network, backend, batch: int):
    """The network built on ``backend``, its unjitted ``train.make_step`` and a fresh state."""
    model, optimizer = net.jaxcnn_model(ops=backend), net.optimizer()
    params, model_state, _ = model.init(jax.random.PRNGKey(0), (batch, *net.input_shape))
    state = train.TrainState(params, model_state, optimizer.init(params), jnp.zeros((), jnp.int32),
                             jax.random.PRNGKey(1))
    return train.make_step(train.make_loss(model, backend.softmax_cross_entropy), optimizer), state


def jaxcnn_step(net: Network, backend, batch: int) -> Callable[[], object]:
    """One jitted, donated optimiser step on a fixed batch."""
    step, state = _jaxcnn_training(net, backend, batch)
    step = jax.jit(step, donate_argnums=0)
    x, y = map(jnp.asarray, _batch(net, batch))

    def run():
        nonlocal state
        state, (loss, _) = step(state, (x, y))
        return loss

    return run


def jaxcnn_epoch(net: Network, backend, batch: int, steps: int, loop: str) -> Callable[[], object]:
    """``steps`` steps through ``train.make_epoch(loop=loop)`` (time is divided by ``steps``)."""
    step, state = _jaxcnn_training(net, backend, batch)
    epoch = train.make_epoch(step, batch, loop=loop)
    x, y = map(jnp.asarray, _batch(net, batch * steps))

    def run():
        nonlocal state
        state, losses, _ = epoch(state, x, y, steps)
        return losses

    return run


def flax_step(net: Network, batch: int) -> Optional[Callable[[], object]]:
    try:
        import flax.linen as fnn
    except ImportError:
        return None

    if net.jaxcnn_model is models.lenet5:
        mask = np.broadcast_to(C3, (5, 5, 6, 16)).astype(np.float32)

        class Model(fnn.Module):
            @fnn.compact
            def __call__(self, x):
                x = fnn.avg_pool(jnp.tanh(fnn.Conv(6, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
                x = fnn.avg_pool(jnp.tanh(fnn.Conv(16, (5, 5), padding="VALID", mask=mask)(x)), (2, 2), (2, 2))
                x = jnp.tanh(fnn.Conv(120, (5, 5), padding="VALID")(x)).reshape(x.shape[0], -1)
                return fnn.Dense(10)(jnp.tanh(fnn.Dense(84)(x)))
    else:
        class Model(fnn.Module):
            @fnn.compact
            def __call__(self, x):
                x = jax.nn.relu(fnn.Conv(25, (5,), strides=2, padding=1)(x))
                x = jax.nn.relu(fnn.Conv(25, (3,), strides=2, padding=1)(x))
                x = jax.nn.relu(fnn.Conv(25, (3,), strides=2, padding=1)(x))
                return fnn.Dense(10)(x.reshape(x.shape[0], -1))

    model, optimizer = Model(), net.optimizer()
    x, y = map(jnp.asarray, _batch(net, batch))
    params = model.init(jax.random.PRNGKey(0), x)
    state = (params, optimizer.init(params))

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(params, x), y).mean()

    @functools.partial(jax.jit, donate_argnums=0)
    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def run():
        nonlocal state
        state, loss = step(state, x, y)
        return loss

    return run


def torch_step(net: Network, batch: int) -> Optional[Callable[[], object]]:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    tnn = torch.nn
    if net.jaxcnn_model is models.lenet5:
        mask = torch.tensor(np.ascontiguousarray(C3.T), dtype=torch.float32)[:, :, None, None]

        class Model(tnn.Module):
            def __init__(self):
                super().__init__()
                self.c1, self.c3, self.c5 = tnn.Conv2d(1, 6, 5), tnn.Conv2d(6, 16, 5), tnn.Conv2d(16, 120, 5)
                self.f6, self.out = tnn.Linear(120, 84), tnn.Linear(84, 10)
                self.register_buffer("mask", mask)

            def forward(self, x):
                x = F.avg_pool2d(torch.tanh(self.c1(x)), 2)
                x = F.avg_pool2d(torch.tanh(F.conv2d(x, self.c3.weight * self.mask, self.c3.bias)), 2)
                x = torch.tanh(self.c5(x)).flatten(1)
                return self.out(torch.tanh(self.f6(x)))
    else:
        class Model(tnn.Module):
            def __init__(self):
                super().__init__()
                self.conv = tnn.Sequential(tnn.Conv1d(1, 25, 5, 2, 1), tnn.ReLU(), tnn.Conv1d(25, 25, 3, 2, 1),
                                           tnn.ReLU(), tnn.Conv1d(25, 25, 3, 2, 1), tnn.ReLU())
                self.head = tnn.Linear(125, 10)

            def forward(self, x):
                return self.head(self.conv(x).flatten(1))

    model = Model()
    opt = (torch.optim.Adam(model.parameters(), lr=net.torch_lr) if net.torch_adam
           else torch.optim.SGD(model.parameters(), lr=net.torch_lr, momentum=0.9))
    return torch_run(model, opt, *_batch(net, batch))


def torch_run(model, opt, x, y) -> Callable[[], float]:
    """One PyTorch step of ``opt`` on ``model`` per call, for channels-last ``x`` and integer labels ``y``."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))  # PyTorch's native NCHW / NCW
    y = torch.from_numpy(y.astype(np.int64))

    def run():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return run


def run_network(net: Network, batch: int, epoch_steps: int, repeats: int, warmup: int) -> dict:
    candidates = {
        "jaxcnn ops (jit step)": jaxcnn_step(net, jaxcnn.ops, batch),
        "jaxcnn ops (make_epoch, steps)": jaxcnn_epoch(net, jaxcnn.ops, batch, epoch_steps, "steps"),
        "jaxcnn ops (make_epoch, lax.scan)": jaxcnn_epoch(net, jaxcnn.ops, batch, epoch_steps, "scan"),
        "jaxcnn reference (jit step)": jaxcnn_step(net, jaxcnn.reference, batch),
        "jaxcnn reference (make_epoch, lax.scan)": jaxcnn_epoch(net, jaxcnn.reference, batch, epoch_steps, "scan"),
        "Flax linen (jit step)": flax_step(net, batch),
        "PyTorch CPU": torch_step(net, batch),
    }
    runs = {k: fn for k, fn in candidates.items() if fn is not None}
    for fn in runs.values():
        for _ in range(warmup):
            block(fn())
    times = blocked_medians(list(runs.values()), repeats=repeats)
    ms = {k: t * 1e3 / (epoch_steps if "make_epoch" in k else 1) for k, t in zip(runs, times)}
    return {"network": net.name, "batch": batch, "ms_per_step": ms,
            "images_per_s": {k: batch / (t / 1e3) for k, t in ms.items()},
            "skipped": [k for k, fn in candidates.items() if fn is None]}


def train_table(result: dict) -> str:
    ms = result["ms_per_step"]
    base = ms["jaxcnn ops (jit step)"]
    rows = [[k, f"{t:.3f}", f"{result['images_per_s'][k]:,.0f}", f"{t / base:.2f}"] for k, t in ms.items()]
    rows += [[k, "not installed", "", ""] for k in result["skipped"]]
    return markdown_table(["implementation", "ms / step", "images / s", "time vs jaxcnn ops"], rows)


# --------------------------------------------------------------------------- 3. FLOP/s


def lenet5_train_flops(batch: int) -> int:
    """Multiply-adds × 2 of one LeNet-5 train step: forward, dW, and dx for every layer but C1."""
    convs = [  # (output positions, window size, connections), connections = C_in·C_out pairs used
        (28 * 28, 25, 1 * 6), (10 * 10, 25, int(C3.sum())), (1, 25, 16 * 120)]
    dense = [120 * 84, 84 * 10]
    forward = [2 * batch * pos * k * conn for pos, k, conn in convs] + [2 * batch * m for m in dense]
    return sum(forward) * 3 - forward[0]  # every layer: y, dW, dx; C1 needs no dx


def matmul_flops_per_s(n: int, repeats: int) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    (t,) = interleaved_medians([matmul], [(a, a)], repeats=repeats)
    return 2 * n**3 / t


# --------------------------------------------------------------------------- main


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and batches, few repeats (smoke test)")
    parser.add_argument("--only", choices=["ops", "conv-methods", "train", "flops"], action="append",
                        help="run only these tables (repeatable; default all)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per function (default 30, quick 3)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--cases", action="append", default=None, metavar="TEXT",
                        help="per-op and per-method tables: only the shapes whose name contains TEXT (repeatable)")
    parser.add_argument("--networks", action="append", default=None, metavar="TEXT",
                        help="train table: only the networks whose name contains TEXT (repeatable)")
    args = parser.parse_args(argv)
    repeats, warmup = args.repeats or (3 if args.quick else 30), 1 if args.quick else 3
    only = set(args.only or ["ops", "conv-methods", "train", "flops"])
    results: dict = {}
    print(machine_line(repeats, f"{os.cpu_count()} cores"))

    op_cases = [c for c in (QUICK_OP_CASES if args.quick else OP_CASES)
                if args.cases is None or any(text in c.name for text in args.cases)]
    if "ops" in only:
        results["ops"] = []
        for case in op_cases:
            results["ops"].append(run_op(case, repeats, warmup, 0 if args.quick else OP_SECONDS))
            r = results["ops"][-1]
            print(f"  {r['case']}: ops/autodiff {r['ratio']:.2f}", flush=True)
        print("\n## Forward + backward per op: hand rule (ops) vs autodiff of the reference\n")
        print(ops_table(results["ops"]))
        ratios = {r["case"]: r["ratio"] for r in results["ops"]}
        worst = max(ratios, key=ratios.get)
        floor = [r["same_program_ratio"] for r in results["ops"]]
        print(f"\nworst ops/autodiff ratio: {ratios[worst]:.2f} ({worst}); target <= 1.0; "
              f"autodiff against itself: {min(floor):.2f}–{max(floor):.2f}")

    if "conv-methods" in only:
        cases = [c for c in op_cases if c.op == "conv"]
        results["conv_methods"] = [run_conv_methods(c, repeats, warmup) for c in cases]
        print("\n## Convolution, forward + backward, per method (auto picks per product)\n")
        print(conv_methods_table(results["conv_methods"]))

    lenet_ms = None
    if "train" in only:
        results["train"] = []
        for net in [n for n in NETWORKS if args.networks is None or any(text in n.name for text in args.networks)]:
            batch = 8 if args.quick else net.batch
            result = run_network(net, batch, 4 if args.quick else 20, repeats, warmup)
            results["train"].append(result)
            print(f"\n## Train step: {net.name if not args.quick else net.name + ' (quick: batch 8)'}\n")
            print(train_table(result))
            if net.jaxcnn_model is models.lenet5:
                lenet_ms = result["ms_per_step"]

    if "flops" in only:
        batch = 8 if args.quick else 128
        if lenet_ms is None:
            lenet_ms = run_network(NETWORKS[0], batch, 4 if args.quick else 20, repeats, warmup)["ms_per_step"]
        flops = lenet5_train_flops(batch)
        peak = matmul_flops_per_s(256 if args.quick else 2048, repeats)
        rows = [[k, f"{flops / (t / 1e3) / 1e9:.1f}", f"{flops / (t / 1e3) / peak:.1%}"] for k, t in lenet_ms.items()]
        results["flops"] = {"lenet5_train_step_flops": flops, "matmul_flops_per_s": peak,
                            "lenet5_flops_per_s": {k: flops / (t / 1e3) for k, t in lenet_ms.items()}}
        print(f"\n## LeNet-5 step (batch {batch}, {flops / 1e6:.0f} MFLOP) against a jitted "
              f"{256 if args.quick else 2048}² matmul at {peak / 1e9:.0f} GFLOP/s\n")
        print(markdown_table(["implementation", "GFLOP/s", "of matmul"], rows))

    write_json(args.json, repeats, results)


if __name__ == "__main__":
    main()
