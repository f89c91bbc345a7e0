"""The precision policy's speed: a train step of ResNet-20 (batch norm) and LeNet-5 in float32
against ``precision="mixed_bfloat16"`` (float32 params, bfloat16 compute, batch norm and the loss
in float32: :func:`jaxcnn.train.mixed_precision`), timed interleaved; figures printed, never asserted.

    python experiments/bench_precision.py [--quick] [--repeats N] [--json PATH]

bfloat16 pays where the hardware has bfloat16 units (GPUs, TPUs, recent x86's AMX); on other
CPUs the casts can make it slower. Accuracy against float32 is a test
(tests/test_train.py::test_mixed_bfloat16_keeps_float32_state_and_trains_as_well_as_float32).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _timing import bench_settings, block, interleaved_medians, machine_line, markdown_table, write_json

from jaxcnn import models, train

NETWORKS = {"ResNet-20": (models.resnet20, (28, 28, 1)), "LeNet-5": (models.lenet5, (32, 32, 1))}


def step_for(build, shape, batch, precision):
    model = build()
    if precision == "mixed_bfloat16":
        model = train.mixed_precision(model)
    optimizer = optax.sgd(0.1, momentum=0.9)
    state = train.init_state(model, optimizer, (-1, *shape), seed=0)
    step = jax.jit(train.make_step(train.make_loss(model), optimizer))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    block(step(state, (x, y)))  # compiled before the clock starts
    return step, (state, (x, y))


def main(argv=None):
    settings = bench_settings(__doc__.splitlines()[0], argv)
    batch = 8 if settings.quick else 128
    networks = {"LeNet-5": NETWORKS["LeNet-5"]} if settings.quick else NETWORKS
    rows, results = [], []
    for name, (build, shape) in networks.items():
        full, full_args = step_for(build, shape, batch, "float32")
        mixed, mixed_args = step_for(build, shape, batch, "mixed_bfloat16")
        f32, bf16 = interleaved_medians([full, mixed], [full_args, mixed_args], repeats=settings.repeats,
                                        warmup=settings.warmup)
        rows.append([name, batch, f"{1e3 * f32:.2f}", f"{1e3 * bf16:.2f}", f"{f32 / bf16:.2f}×"])
        results.append({"network": name, "batch": batch, "ms_per_step": {"float32": 1e3 * f32,
                                                                         "mixed_bfloat16": 1e3 * bf16}})
    print(machine_line(settings.repeats, "one jitted train step (sgd, momentum 0.9)"))
    print(markdown_table(["network", "batch", "float32 ms", "mixed_bfloat16 ms", "speed-up"], rows))
    write_json(settings.json, settings.repeats, results)


if __name__ == "__main__":
    main()
