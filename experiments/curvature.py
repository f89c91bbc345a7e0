"""The top Hessian eigenvalue of a trained LeNet-5's loss, by power iteration on HVPs.

LeNet-5 (`jaxcnn.models.lenet5()`, C3 table, tanh, mean pooling) trained on Fashion-MNIST
32×32 for a few epochs; then the largest eigenvalue λ_max of the Hessian of its training
loss (a fixed batch) with respect to all parameters, by power iteration
``v ← H v / ‖H v‖`` on forward-over-reverse Hessian-vector products
``H v = jax.jvp(jax.grad(loss), (θ,), (v,))[1]`` — with the hand rules (``jaxcnn.ops``:
the hand JVPs pushed through the hand VJPs' code) and with autodiff of ``jaxcnn.reference``,
from the same start vector. λ_max bounds the stable learning rate of gradient descent
(``2 / λ_max``, the "edge of stability"); the two sides must give the same value to float32
precision, and the table shows each side's time per product.

    python experiments/curvature.py [--quick] [--data-dir DIR] [--out DIR]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import optax

import _common
import jaxcnn.ops
import jaxcnn.reference
from jaxcnn import models, train

EPOCHS, BATCH, LR, MOMENTUM, HESSIAN_BATCH, ITERATIONS = 3, 128, 0.05, 0.9, 512, 30


def power_iteration(backend, params, state, x, y, iterations: int, seed: int = 0):
    """``(λ_max estimates per iteration, seconds per HVP)`` of the loss on ``backend``."""
    model = models.lenet5(ops=backend)
    loss_fn = train.make_loss(model, backend.softmax_cross_entropy)

    def loss(p):
        return loss_fn(p, state, x, y, training=False)[0]

    @jax.jit
    def hvp(p, v):
        return jax.jvp(jax.grad(loss), (p,), (v,))[1]

    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    v = jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
    norm = lambda t: jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree_util.tree_leaves(t)))  # noqa: E731
    v = jax.tree_util.tree_map(lambda a: a / norm(v), v)
    jax.block_until_ready(hvp(params, v))  # compiled before timing
    estimates, start = [], time.perf_counter()
    for _ in range(iterations):
        hv = hvp(params, v)
        estimates.append(float(sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(v),
                                                                   jax.tree_util.tree_leaves(hv)))))
        v = jax.tree_util.tree_map(lambda a: a / norm(hv), hv)
    return estimates, (time.perf_counter() - start) / iterations


def main(argv=None) -> None:
    args = _common.parse_args(__doc__.splitlines()[0], argv, data_dir=True)
    fashion = _common.fashion_mnist_or_exit(args.data_dir, 32, limit=256 if args.quick else None)
    epochs, batch, n, iterations = (1, 32, 64, 3) if args.quick else (EPOCHS, BATCH, HESSIAN_BATCH, ITERATIONS)
    report = _common.Report(args.out, "curvature", "Curvature of a trained LeNet-5: λ_max by power iteration on HVPs")
    report.add(__doc__.split("\n\n")[1])
    start = time.perf_counter()
    result = train.fit(models.lenet5(), fashion, optimizer=optax.sgd(LR, MOMENTUM), epochs=epochs,
                       batch_size=batch, seed=0, quiet=True)
    seconds_training = time.perf_counter() - start
    params, state = result.state.params, result.state.model_state
    x, y = jnp.asarray(fashion.x_train[:n]), jnp.asarray(fashion.y_train[:n])
    sides = {name: power_iteration(backend, params, state, x, y, iterations)
             for name, backend in (("jaxcnn.ops (hand rules)", jaxcnn.ops),
                                   ("jaxcnn.reference (autodiff)", jaxcnn.reference))}
    (hand, t_hand), (auto, t_auto) = sides.values()
    relative = abs(hand[-1] - auto[-1]) / abs(auto[-1])
    rows = [[name, f"{est[-1]:.6g}", f"{abs(est[-1] - est[-2]) / abs(est[-1]):.1e}", f"{seconds * 1e3:.1f} ms"]
            for name, (est, seconds) in sides.items()]
    report.add(f"Trained {epochs} epochs (SGD lr {LR}, momentum {MOMENTUM}, batch {batch}; {seconds_training:.0f} s): "
               f"test accuracy {result.test.accuracy:.4f}. Hessian of the mean cross-entropy on the first {n} "
               f"training images, evaluation mode, {iterations} power iterations from the same random unit vector.")
    report.table(["rules", "λ_max", "last step's relative change", "time per HVP (jitted, compiled)"], rows)
    report.add(f"Hand rules vs autodiff: relative difference of λ_max {relative:.1e} "
               f"({'the same to float32 precision' if relative < 1e-4 else 'NOT the same'}); "
               f"HVP time ops / reference {t_hand / t_auto:.2f}; stable gradient-descent step 2/λ_max = "
               f"{2 / hand[-1]:.3g}.")
    print(report.save(args.quick))


if __name__ == "__main__":
    main()
