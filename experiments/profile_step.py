"""Where a train step's time goes: XLA:CPU's own per-kernel timings of one network's step.

Traces ``--steps`` jitted steps of a network from ``bench.py`` (jaxcnn on ``ops`` or on
``reference``) with ``jax.profiler`` and prints, per compiled kernel (fusion, matrix product,
copy), its time per step summed over the threads that ran it, and its result type — the
table that found, for LeNet-5, a col2im recomputed inside a pooling backward and a C1
forward that ran on one thread. Kernel names are XLA's (``ynn_fusion.6``, ``dot.9``); with
``--hlo`` the optimised HLO is written out to look them up.

    python experiments/profile_step.py                       # LeNet-5 on jaxcnn.ops
    python experiments/profile_step.py --network mnist1d --backend reference --hlo step.hlo
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile

import jax
import jax.numpy as jnp
from jax.profiler import ProfileData

import bench
import bench_networks
import jaxcnn.ops
import jaxcnn.reference
from _timing import block, markdown_table

NETWORKS = {"lenet5": bench.NETWORKS[0], "mnist1d": bench.NETWORKS[1],
            # bench_networks.py's suite, by the first word of its name in lower case
            **{c.name.split()[0].lower().rstrip(","): c for c in reversed(bench_networks.NETWORKS)}}
BACKENDS = {"ops": jaxcnn.ops, "reference": jaxcnn.reference}
_RUNTIME = re.compile(r"ThunkExecutor|SlinkyThreadPool|Await|Execute|wait for")  # scheduling, not kernels


def kernel_times(network: str = "lenet5", backend: str = "ops", steps: int = 20, batch: int | None = None,
                 hlo_path: str | None = None) -> list[tuple[str, float, str]]:
    """``(kernel, µs per step, result type)`` for every XLA kernel of the step, slowest first."""
    net = NETWORKS[network]
    batch = batch or net.batch
    if isinstance(net, bench_networks.NetCase):
        step, state, (x, y), _ = bench_networks.jaxcnn_step(net._replace(batch=batch), BACKENDS[backend])
    else:
        step, state = bench._jaxcnn_training(net, BACKENDS[backend], batch)
        x, y = map(jnp.asarray, bench._batch(net, batch))
    step = jax.jit(step, donate_argnums=0)
    compiled_text = step.lower(state, (x, y)).compile().as_text()
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(compiled_text)
    shapes = dict(re.findall(r"^\s+%(\S+) = (\S+) ", compiled_text, re.M))  # kernel -> result type
    for _ in range(3):
        state, _ = step(state, (x, y))
    block(state)
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(steps):
            state, _ = step(state, (x, y))
            block(state)
        jax.profiler.stop_trace()
        (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
        profile = ProfileData.from_file(path)
    total: collections.Counter = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLA"):  # XLA's client and worker threads only
                continue
            for event in line.events:
                if not _RUNTIME.search(event.name):
                    total[event.name] += event.duration_ns
    return [(name, ns / steps / 1e3, shapes.get(name, "")) for name, ns in total.most_common()]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="lenet5")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="ops")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="default: the network's benchmark batch")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument("--hlo", default=None, help="also write the optimised HLO here")
    args = parser.parse_args(argv)
    rows = kernel_times(args.network, args.backend, args.steps, args.batch, args.hlo)
    summed = sum(t for _, t, _ in rows)
    print(f"{args.network} on jaxcnn.{args.backend}: {summed / 1e3:.2f} ms of kernel time per step "
          f"(summed over threads; {jax.device_count()} device, {len(rows)} kernels)\n")
    print(markdown_table(["kernel", "µs / step", "share", "result"],
                         [[name, f"{t:.0f}", f"{t / summed:.1%}", shape] for name, t, shape in rows[:args.top]]))


if __name__ == "__main__":
    main()
