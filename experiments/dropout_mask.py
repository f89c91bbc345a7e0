"""Dropout's backward: regenerate the mask from the key, or store it as bytes or bits?

Times ``jax.value_and_grad`` of ``⟨dropout(x), v⟩`` (forward + backward, jitted, float32)
for three custom_vjp rules with the same forward and mask (``jaxcnn.ops.dropout``'s
``keep_mask``) and the plain autodiff reference, timed interleaved, and prints the
residual bytes each keeps. Also a dropout between two dense layers (the residual is then
live across a matmul). Figures are printed, never asserted; they go to docs/performance.md.

    python experiments/dropout_mask.py [--quick] [--repeats N]
"""

from __future__ import annotations

import functools
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import bench_settings, interleaved_times, machine_line, markdown_table, paired_ratio, residual_bytes  # noqa: E402

from jaxcnn import ops, reference  # noqa: E402
from jaxcnn.ops._dropout import _apply, keep_mask  # noqa: E402

RATE = 0.5


def _stored(pack: bool):
    """The custom_vjp that stores the mask: one byte per element, or one bit (packbits)."""
    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def f(x, key, rate):
        return _apply(x, keep_mask(key, x.shape, rate), rate)

    def fwd(x, key, rate):
        mask = keep_mask(key, x.shape, rate)
        return _apply(x, mask, rate), (jnp.packbits(mask.reshape(-1)) if pack else mask)

    def bwd(rate, mask, g):
        if pack:
            mask = jnp.unpackbits(mask, count=g.size).reshape(g.shape).astype(bool)
        return _apply(g, mask, rate), None

    f.defvjp(fwd, bwd)
    return f


RULES = {
    "regenerate from the key (ops.dropout)": lambda x, key: ops.dropout(x, key, RATE),
    "store a byte mask": lambda x, key: _stored(False)(x, key, RATE),
    "store a bit mask (packbits)": lambda x, key: _stored(True)(x, key, RATE),
    "autodiff of the reference": lambda x, key: reference.dropout(x, key, RATE),
}


def main(argv=None) -> None:
    settings = bench_settings(__doc__.splitlines()[0], argv)
    shapes = [(2, 8, 8, 4)] if settings.quick else [(32, 32, 32, 64), (128, 1024)]
    rng = np.random.default_rng(0)
    key = jax.random.key(0)
    print(machine_line(settings.repeats, "forward + backward, rate 0.5"))
    for shape in shapes:
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        v = jnp.asarray(rng.normal(size=shape), jnp.float32)
        grads = [jax.jit(jax.value_and_grad(lambda x, v, f=f: jnp.vdot(f(x, key), v))) for f in RULES.values()]
        times = interleaved_times(grads, [(x, v)] * len(grads), repeats=settings.repeats, warmup=settings.warmup,
                                  min_seconds=0 if settings.quick else 0.5)
        base = times[0]
        rows = [[name, f"{statistics.median(t) * 1e3:.3f}", f"{paired_ratio(t, base)[0]:.2f}",
                 f"{residual_bytes(f, x, key):,}"] for (name, f), t in zip(RULES.items(), times)]
        print(f"\nx {shape}\n" + markdown_table(["backward", "ms", "vs regenerate", "residual bytes"], rows))

    # between two dense layers, one grad step: the residual lives across the second matmul
    n, d = (4, 8) if settings.quick else (256, 1024)
    x, w1, w2 = (jnp.asarray(rng.normal(size=s), jnp.float32) / np.sqrt(s[-1]) for s in ((n, d), (d, d), (d, d)))

    def loss(w1, w2, f):
        return jnp.sum(ops.dense(f(ops.relu(ops.dense(x, w1)), key), w2) ** 2)

    steps = [jax.jit(jax.grad(functools.partial(loss, f=f), argnums=(0, 1))) for f in RULES.values()]
    times = interleaved_times(steps, [(w1, w2)] * len(steps), repeats=settings.repeats, warmup=settings.warmup,
                              min_seconds=0 if settings.quick else 0.5)
    rows = [[name, f"{statistics.median(t) * 1e3:.3f}", f"{paired_ratio(t, times[0])[0]:.2f}"]
            for name, t in zip(RULES, times)]
    print(f"\ndense {n}x{d} → relu → dropout → dense {d}, grad of both weights\n"
          + markdown_table(["backward", "ms", "vs regenerate"], rows))


if __name__ == "__main__":
    main()
