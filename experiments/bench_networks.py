"""Whole train steps over many architectures: jaxcnn ``ops`` against autodiff of ``reference``.

Per network one jitted SGD-with-momentum step (float32, ``train.make_step``), compiled first:

* **ops / reference** — the step on ``jaxcnn.ops`` (hand rules) against the same step on
  ``jaxcnn.reference`` (autodiff), timed interleaved with a second, separately compiled copy
  of the reference step (``_timing.interleaved_times``); the ratio is the median of the
  per-round ratios with its 95% interval, and the copy's ratio to the reference is what one
  program reads against itself in this run: the noise floor.
* **peers** — where a translation is straightforward, Flax linen and PyTorch CPU on the same
  network and batch, timed in blocks of consecutive calls with the ``ops`` step
  (``_timing.blocked_medians``, so PyTorch's spinning threads slow no one else down).
* **memory** — from the compiled step's ``memory_analysis()``: temporary bytes and peak bytes,
  ``ops`` against ``reference``, and the bytes of the residuals ``jax.vjp`` of the loss keeps.

A network whose layers the installed jaxcnn cannot build (an older checkout, say) is skipped
with the reason printed.

    python experiments/bench_networks.py --out experiments/results/bench_networks_cpu.md
    python experiments/bench_networks.py --quick              # tiny shapes, one round
    python experiments/bench_networks.py --cases ResNet-8     # some rows
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from _timing import (block, blocked_medians, interleaved_times, machine_line, markdown_table, paired_ratio,
                     residual_bytes, write_json)
import bench
import jaxcnn.ops
import jaxcnn.reference
from jaxcnn import models, nn, train

LR, MOMENTUM = 0.01, 0.9


class NetCase(NamedTuple):
    name: str
    batch: int
    input_shape: tuple[int, ...]  # one example, channels-last
    build: Callable  # (ops) -> nn.Layer
    flax: Optional[Callable] = None  # () -> flax.linen Module on channels-last input
    torch: Optional[Callable] = None  # () -> torch.nn.Module on channels-first input


# --------------------------------------------------------------------------- the networks, jaxcnn


def lenet5_relu_max(ops=None) -> nn.Layer:
    """LeNet-5 with ReLU and 2×2 max pooling, all of C3's 96 connections."""
    L = nn.bind(ops)
    return L.serial(L.Conv(6, (5, 5)), L.Relu(), L.MaxPool((2, 2)), L.Conv(16, (5, 5)), L.Relu(), L.MaxPool((2, 2)),
                    L.Conv(120, (5, 5)), L.Relu(), L.Flatten(), L.Dense(84), L.Relu(), L.Dense(10))


def resnet8(ops=None) -> nn.Layer:
    """Issue 22's ResNet-8 without normalisation, for 32×32×3: conv 3×3 3→16, one residual
    block ``relu(x + conv(relu(conv(x))))`` per stage at 16, 32, 64 maps, a stride-2 3×3
    conv (+ ReLU) between stages, global mean pooling, dense 10."""
    L = nn.bind(ops)

    def conv(features, stride=1):
        return L.Conv(features, (3, 3), stride=stride, padding=1, w_init=nn.initializers.he_normal())

    def block(features):
        return L.serial(L.residual(L.serial(conv(features), L.Relu(), conv(features))), L.Relu())

    return L.serial(conv(16), L.Relu(), block(16), conv(32, 2), L.Relu(), block(32), conv(64, 2), L.Relu(),
                    block(64), L.GlobalMeanPool(), L.Dense(10))


def mobilenet_blocks(ops=None) -> nn.Layer:
    """A depthwise-separable stack (MobileNet v1's block: depthwise 3×3 → BN → ReLU →
    pointwise 1×1 → BN → ReLU) for 32×32×3: conv 3×3/2 → 32, blocks to 64, 128 (/2), 128,
    256 (/2), global mean pooling, dense 10."""
    L = nn.bind(ops)

    def conv_bn_relu(features, window, stride=1, groups=1):
        return [L.Conv(features, window, stride=stride, padding="SAME", groups=groups, use_bias=False,
                       w_init=nn.initializers.he_normal()), L.BatchNorm(), L.Relu()]

    def separable(c_in, c_out, stride=1):
        return [*conv_bn_relu(c_in, (3, 3), stride, groups=c_in), *conv_bn_relu(c_out, (1, 1))]

    return L.serial(*conv_bn_relu(32, (3, 3), 2), *separable(32, 64), *separable(64, 128, 2), *separable(128, 128),
                    *separable(128, 256, 2), L.GlobalMeanPool(), L.Dense(10))


def cnn1d(channels: int) -> Callable:
    """The MNIST-1D CNN's layout (conv k5/k3/k3, stride 2, pad 1, ReLU; fc 10) at ``channels`` maps."""
    return lambda ops=None: models.mnist1d_cnn(channels, ops=ops)


# --------------------------------------------------------------------------- Flax and PyTorch translations


def _flax_lenet5(activation: str, pool: str, table: bool):
    import flax.linen as fnn

    act = {"tanh": jnp.tanh, "relu": jax.nn.relu}[activation]
    pooling = {"mean": fnn.avg_pool, "max": fnn.max_pool}[pool]
    mask = np.broadcast_to(jaxcnn.ops.LENET5_C3_TABLE, (5, 5, 6, 16)).astype(np.float32) if table else None

    class LeNet5(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = pooling(act(fnn.Conv(6, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
            x = pooling(act(fnn.Conv(16, (5, 5), padding="VALID", mask=mask)(x)), (2, 2), (2, 2))
            x = act(fnn.Conv(120, (5, 5), padding="VALID")(x)).reshape(x.shape[0], -1)
            return fnn.Dense(10)(act(fnn.Dense(84)(x)))

    return LeNet5()


def _torch_lenet5(activation: str, pool: str, table: bool):
    import torch
    import torch.nn.functional as F

    act = {"tanh": torch.tanh, "relu": F.relu}[activation]
    pooling = {"mean": F.avg_pool2d, "max": F.max_pool2d}[pool]
    mask = np.ascontiguousarray(jaxcnn.ops.LENET5_C3_TABLE.T) if table else np.ones((16, 6))

    class LeNet5(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c3, self.c5 = torch.nn.Conv2d(1, 6, 5), torch.nn.Conv2d(6, 16, 5), torch.nn.Conv2d(16, 120, 5)
            self.f6, self.out = torch.nn.Linear(120, 84), torch.nn.Linear(84, 10)
            self.register_buffer("mask", torch.tensor(mask, dtype=torch.float32)[:, :, None, None])
            self.table = table

        def forward(self, x):
            x = pooling(act(self.c1(x)), 2)
            w3 = self.c3.weight * self.mask if self.table else self.c3.weight
            x = pooling(act(F.conv2d(x, w3, self.c3.bias)), 2)
            return self.out(act(self.f6(act(self.c5(x)).flatten(1))))

    return LeNet5()


def _flax_resnet8():
    import flax.linen as fnn

    def conv(features, stride=1):
        return fnn.Conv(features, (3, 3), strides=stride, padding=1)

    class ResNet8(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            x = jax.nn.relu(conv(16)(x))
            for features in (16, 32, 64):
                if features > 16:
                    x = jax.nn.relu(conv(features, 2)(x))
                x = jax.nn.relu(x + conv(features)(jax.nn.relu(conv(features)(x))))
            return fnn.Dense(10)(x.mean(axis=(1, 2)))

    return ResNet8()


def _torch_resnet8():
    import torch

    tnn = torch.nn

    class Block(tnn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = tnn.Conv2d(c, c, 3, padding=1), tnn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.b(torch.relu(self.a(x))))

    return tnn.Sequential(tnn.Conv2d(3, 16, 3, padding=1), tnn.ReLU(), Block(16),
                          tnn.Conv2d(16, 32, 3, 2, 1), tnn.ReLU(), Block(32),
                          tnn.Conv2d(32, 64, 3, 2, 1), tnn.ReLU(), Block(64),
                          tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10))


def _flax_cnn1d(channels: int):
    import flax.linen as fnn

    class CNN1D(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            for window in (5, 3, 3):
                x = jax.nn.relu(fnn.Conv(channels, (window,), strides=2, padding=1)(x))
            return fnn.Dense(10)(x.reshape(x.shape[0], -1))

    return CNN1D()


def _torch_cnn1d(channels: int, length: int = 40):
    import torch

    tnn = torch.nn
    out = length
    for window in (5, 3, 3):
        out = (out + 2 - window) // 2 + 1
    return tnn.Sequential(tnn.Conv1d(1, channels, 5, 2, 1), tnn.ReLU(), tnn.Conv1d(channels, channels, 3, 2, 1),
                          tnn.ReLU(), tnn.Conv1d(channels, channels, 3, 2, 1), tnn.ReLU(), tnn.Flatten(),
                          tnn.Linear(channels * out, 10))


def _lenet5_peers(activation, pool, table):
    return dict(flax=lambda: _flax_lenet5(activation, pool, table),
                torch=lambda: _torch_lenet5(activation, pool, table))


def _cnn1d_peers(channels):
    return dict(flax=lambda: _flax_cnn1d(channels), torch=lambda: _torch_cnn1d(channels))


NETWORKS = [
    NetCase("LeNet-5 (zoo: tanh, mean pool, C3 table)", 128, (32, 32, 1), models.lenet5,
            **_lenet5_peers("tanh", "mean", True)),
    NetCase("LeNet-5 (zoo: tanh, mean pool, C3 table)", 32, (32, 32, 1), models.lenet5),
    NetCase("LeNet-5 ReLU, mean pool, C3 table", 128, (32, 32, 1),
            lambda ops=None: models.lenet5(activation="relu", ops=ops), **_lenet5_peers("relu", "mean", True)),
    NetCase("LeNet-5 ReLU, max pool, full C3", 128, (32, 32, 1), lenet5_relu_max,
            **_lenet5_peers("relu", "max", False)),
    NetCase("LeNet-5 ReLU, max pool, full C3", 256, (32, 32, 1), lenet5_relu_max),
    NetCase("MNIST-1D CNN (zoo, 25 maps)", 100, (40, 1), models.mnist1d_cnn, **_cnn1d_peers(25)),
    NetCase("1-D CNN, 8 maps", 256, (40, 1), cnn1d(8), **_cnn1d_peers(8)),
    NetCase("1-D CNN, 64 maps", 128, (40, 1), cnn1d(64), **_cnn1d_peers(64)),
    NetCase("1-D CNN, 128 maps", 64, (40, 1), cnn1d(128)),
    NetCase("ResNet-8, no normalisation, 32×32×3", 128, (32, 32, 3), resnet8,
            flax=_flax_resnet8, torch=_torch_resnet8),
    NetCase("ResNet-8, no normalisation, 32×32×3", 32, (32, 32, 3), resnet8),
    NetCase("ResNet-20 (zoo, batch norm), 32×32×3", 64, (32, 32, 3), models.resnet20),
    NetCase("VGG-small (zoo: BN, dropout), 28×28×1", 64, (28, 28, 1), models.vgg_small),
    NetCase("MobileNet-style depthwise-separable stack, 32×32×3", 64, (32, 32, 3), mobilenet_blocks),
]

QUICK_NETWORKS = [
    NetCase("quick LeNet-5 ReLU, max pool", 4, (32, 32, 1), lenet5_relu_max, **_lenet5_peers("relu", "max", False)),
    NetCase("quick ResNet-8", 2, (8, 8, 3), resnet8, flax=_flax_resnet8, torch=_torch_resnet8),
    NetCase("quick 1-D CNN, 8 maps", 4, (40, 1), cnn1d(8), **_cnn1d_peers(8)),
    NetCase("quick VGG-small", 2, (28, 28, 1), models.vgg_small),
    NetCase("quick MobileNet-style stack", 2, (16, 16, 3), mobilenet_blocks),
]


# --------------------------------------------------------------------------- the steps


def _batch(case: NetCase, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(case.batch, *case.input_shape)).astype(np.float32),
            rng.integers(0, 10, case.batch).astype(np.int32))


def jaxcnn_step(case: NetCase, backend):
    """``(step, state, batch, loss closure of the params)`` on ``backend``; the step is to be
    jitted without donation (every call starts from the same state, so the sides can be
    timed in any order)."""
    model, optimizer = case.build(ops=backend), optax.sgd(LR, momentum=MOMENTUM)
    params, model_state, _ = model.init(jax.random.PRNGKey(0), (case.batch, *case.input_shape))
    state = train.TrainState(params, model_state, optimizer.init(params), jnp.zeros((), jnp.int32),
                             jax.random.PRNGKey(1))
    loss_fn = train.make_loss(model, backend.softmax_cross_entropy)
    x, y = map(jnp.asarray, _batch(case))

    def loss_of_params(params):
        return loss_fn(params, model_state, x, y, key=jax.random.PRNGKey(2))[0]

    return train.make_step(loss_fn, optimizer), state, (x, y), loss_of_params


def memory(step, state, batch) -> dict:
    stats = step.lower(state, batch).compile().memory_analysis()
    return {"temp": int(stats.temp_size_in_bytes), "peak": int(getattr(stats, "peak_memory_in_bytes", 0) or 0)}


def flax_run(case: NetCase) -> Optional[Callable[[], object]]:
    try:
        module = case.flax()
    except ImportError:
        return None
    optimizer = optax.sgd(LR, momentum=MOMENTUM)
    x, y = map(jnp.asarray, _batch(case))
    params = module.init(jax.random.PRNGKey(0), x)
    state = (params, optimizer.init(params))

    def loss_fn(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(module.apply(params, x), y).mean()

    @jax.jit
    def step(state, x, y):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return lambda: step(state, x, y)


def torch_run(case: NetCase) -> Optional[Callable[[], object]]:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    model = case.torch()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return bench.torch_run(model, opt, *_batch(case))


def run_network(case: NetCase, repeats: int, warmup: int, peers: bool = True) -> dict:
    result = {"network": case.name, "batch": case.batch}
    try:
        sides = {"ops": jaxcnn_step(case, jaxcnn.ops), "reference": jaxcnn_step(case, jaxcnn.reference)}
        jax.eval_shape(sides["ops"][0], *sides["ops"][1:3])
    except TypeError as e:  # a layer setting this jaxcnn's ops do not take yet (Conv groups=)
        return {**result, "skipped": f"{type(e).__name__}: {e}"}
    (step_ops, state, batch, loss_ops), (step_ref, _, _, loss_ref) = sides["ops"], sides["reference"]
    step_ops, step_ref = jax.jit(step_ops), jax.jit(step_ref)
    result["memory"] = {"ops": memory(step_ops, state, batch), "reference": memory(step_ref, state, batch)}
    result["residual_bytes"] = {"ops": residual_bytes(loss_ops, state.params),
                                "reference": residual_bytes(loss_ref, state.params)}
    # a second, separately compiled copy of the reference step: the run's noise floor
    step_again = jax.jit(jaxcnn_step(case, jaxcnn.reference)[0])
    fns = [step_ops, step_ref, step_again]
    times = interleaved_times(fns, [(state, batch)] * 3, repeats=repeats, warmup=warmup)
    result["ms"] = {side: statistics.median(t) * 1e3 for side, t in zip(("ops", "reference", "reference again"), times)}
    ratio, lo, hi = paired_ratio(times[0], times[1])
    floor, floor_lo, floor_hi = paired_ratio(times[2], times[1])
    result.update(ratio=ratio, ratio_95=[lo, hi], noise_floor=floor, noise_floor_95=[floor_lo, floor_hi],
                  rounds=repeats)
    if peers and case.flax is not None:
        runs = {"ops": lambda: step_ops(state, batch)}
        for name, make in (("Flax linen", flax_run), ("PyTorch CPU", torch_run)):
            run = make(case)
            if run is not None:
                runs[name] = run
        for fn in runs.values():
            for _ in range(warmup):
                block(fn())
        medians = blocked_medians(list(runs.values()), repeats=repeats, calls=6, skip=1)
        result["peers_ms"] = {name: t * 1e3 for name, t in zip(runs, medians)}
    return result


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def networks_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["network"], r["batch"], "skipped: " + r["skipped"].splitlines()[0][:120]] + [""] * 6)
            continue
        peers = r.get("peers_ms", {})
        vs = " / ".join(f"{peers[k] / peers['ops']:.2f}" if k in peers else "—" for k in ("Flax linen", "PyTorch CPU"))
        mem, res = r["memory"], r["residual_bytes"]
        rows.append([
            r["network"], r["batch"], f"{r['ms']['ops']:.2f} / {r['ms']['reference']:.2f}",
            f"**{r['ratio']:.3f}** ({r['ratio_95'][0]:.3f}–{r['ratio_95'][1]:.3f})",
            f"{r['noise_floor']:.3f} ({r['noise_floor_95'][0]:.3f}–{r['noise_floor_95'][1]:.3f})",
            vs if peers else "—",
            f"{_mb(mem['ops']['temp'])} / {_mb(mem['reference']['temp'])}",
            f"{_mb(mem['ops']['peak'])} / {_mb(mem['reference']['peak'])}",
            f"{_mb(res['ops'])} / {_mb(res['reference'])}",
        ])
    return markdown_table(["network", "batch", "ms ops / reference", "ops / reference (95%)",
                           "reference / itself (95%): noise floor", "Flax / ops, PyTorch / ops",
                           "temp MB ops / ref", "peak MB ops / ref", "residual MB ops / ref"], rows)


def _commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def _write_table(path: str, header: str, results: list[dict]) -> None:
    with open(path, "w") as f:
        f.write("# Train steps per network (`experiments/bench_networks.py`)\n\n")
        f.write(f"{header}\n\n{networks_table(results)}\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes and batches, one round (smoke test)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds per network (default 15)")
    parser.add_argument("--cases", action="append", default=None, metavar="TEXT",
                        help="only the networks whose name contains TEXT (repeatable)")
    parser.add_argument("--no-peers", action="store_true", help="skip Flax and PyTorch")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    repeats, warmup = args.repeats or (1 if args.quick else 15), 1 if args.quick else 2
    cases = [c for c in (QUICK_NETWORKS if args.quick else NETWORKS)
             if args.cases is None or any(text in c.name for text in args.cases)]
    header = (f"{machine_line(repeats, f'{os.cpu_count()} cores')}; commit {_commit()}; "
              f"jitted step, SGD lr {LR} momentum {MOMENTUM}")
    print(header, flush=True)
    results = []
    for case in cases:
        results.append(run_network(case, repeats, warmup, peers=not args.no_peers))
        r = results[-1]
        if args.out:  # after every network, so that an interrupted run keeps what it measured
            _write_table(args.out, header, results)
        print(f"  {r['network']}, batch {r['batch']}: " + (
            f"skipped ({r['skipped'].splitlines()[0]})" if "skipped" in r else
            f"ops/reference {r['ratio']:.3f} ({r['ratio_95'][0]:.3f}–{r['ratio_95'][1]:.3f}), "
            f"noise floor {r['noise_floor']:.3f}"), flush=True)
    table = networks_table(results)
    print("\n## Train step per network: ops vs reference, peers, memory\n")
    print(table)
    done = [r for r in results if "skipped" not in r]
    if done:
        floors = [r["noise_floor"] for r in done]
        print(f"\nnoise floor (reference against its own copy): {min(floors):.3f}–{max(floors):.3f}; "
              f"worst ops/reference: {max(r['ratio'] for r in done):.3f}")
    if args.out:
        _write_table(args.out, header, results)
    write_json(args.json, repeats, results)


if __name__ == "__main__":
    main()
