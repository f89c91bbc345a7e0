"""Hand-derived backward rules vs autodiff, end to end: LeNet-5 on Fashion-MNIST 32×32.

The same LeNet-5 (C3 connection table) is trained twice from the same seed, with the
same batches: once built from `jaxcnn.ops` (the hand-derived `custom_vjp` rules) and once
from `jaxcnn.reference` (plain `jax.numpy`/`lax`, differentiated by JAX's autodiff), via
the models' `ops=` switch (and the loss of the same backend). If the rules are right the two loss
curves coincide up to float32 rounding, which training amplifies only slowly.

    python experiments/ops_vs_autodiff.py [--quick] [--data-dir DIR] [--out DIR]
"""

from __future__ import annotations

import jax
import numpy as np

import _common
import jaxcnn.ops
import jaxcnn.reference
from jaxcnn import models, reporting, train

EPOCHS, BATCH, LR, MOMENTUM, SEED = 3, 128, 0.05, 0.9, 0
BACKENDS = [("hand-derived (jaxcnn.ops)", jaxcnn.ops), ("autodiff (jaxcnn.reference)", jaxcnn.reference)]


def main(argv=None) -> None:
    args = _common.parse_args(__doc__.splitlines()[0], argv, data_dir=True)
    fashion = _common.fashion_mnist_or_exit(args.data_dir, 32, limit=256 if args.quick else None)
    epochs, batch = (1, 32) if args.quick else (EPOCHS, BATCH)
    report = _common.Report(args.out, "ops_vs_autodiff", "Hand-derived rules vs autodiff: LeNet-5 end to end")
    report.add(__doc__.split("\n\n")[1])

    results = {}
    for label, backend in BACKENDS:
        results[label] = train.fit(models.lenet5(ops=backend), fashion, loss=backend.softmax_cross_entropy,
                                   optimizer="sgd", lr=LR, momentum=MOMENTUM, epochs=epochs, batch_size=batch,
                                   seed=SEED, quiet=True, step_losses=True)
        print(label, results[label].test.accuracy, flush=True)
    (hand_label, hand), (auto_label, auto) = results.items()
    losses = {k: np.concatenate([h["step_losses"] for h in r.history]) for k, r in results.items()}
    diff = np.abs(losses[hand_label] - losses[auto_label])
    relative = diff / np.abs(losses[auto_label])
    params_diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                      zip(jax.tree_util.tree_leaves(hand.state.params), jax.tree_util.tree_leaves(auto.state.params)))
    first_epoch = {k: r.history[0]["seconds"] for k, r in results.items()}
    per_epoch = {k: np.median([h["seconds"] for h in r.history[1:]] or [r.history[0]["seconds"]])
                 for k, r in results.items()}

    report.add(f"Seed {SEED}; SGD lr {LR}, momentum {MOMENTUM}, batch {batch}, {epochs} epochs "
               f"({len(diff)} steps), float32; {len(fashion.x_train):,} training / {len(fashion.x_test):,} test "
               f"images.")
    report.table(["backward rules", "final train loss (last step)", "test loss", "test accuracy",
                  "first epoch (incl. compile)", "time per later epoch"],
                 [[k, f"{losses[k][-1]:.6f}", f"{r.test.loss:.6f}", f"{r.test.accuracy:.4f}",
                   f"{first_epoch[k]:.1f} s", f"{per_epoch[k]:.1f} s"] for k, r in results.items()])
    report.add(f"- max |loss difference| over all {len(diff)} steps: **{diff.max():.2e}** (relative "
               f"{relative.max():.2e}, at step {int(diff.argmax()) + 1}); first step {diff[0]:.2e}; "
               f"last step {diff[-1]:.2e}\n"
               f"- max |parameter difference| after training: {params_diff:.2e}\n"
               f"- test accuracy difference: {abs(hand.test.accuracy - auto.test.accuracy):.4f} "
               f"({round(abs(hand.test.accuracy - auto.test.accuracy) * len(fashion.y_test))} of "
               f"{len(fashion.y_test)} test images)")
    steps = np.arange(1, len(diff) + 1)
    reporting.plot_curves(report.path("ops_vs_autodiff_loss.png"),
                        [(k, steps, [v]) for k, v in losses.items()], xlabel="step", ylabel="training loss",
                        logy=True, title="LeNet-5, same seed: hand-derived rules vs autodiff")
    reporting.plot_curves(report.path("ops_vs_autodiff_difference.png"),
                        [("|hand − autodiff| training loss", steps, [np.maximum(diff, 1e-10)])],
                        xlabel="step", ylabel="absolute difference", logy=True,
                        title="loss difference per step (floored at 1e-10 for the log scale)")
    report.add("## Loss curves (the two lines lie on top of each other)")
    report.image("ops_vs_autodiff_loss.png", "training loss per step, both backends")
    report.image("ops_vs_autodiff_difference.png", "absolute loss difference per step")
    report.save(args.quick)


if __name__ == "__main__":
    main()
