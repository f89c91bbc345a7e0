"""Park's homework networks on Fashion-MNIST downsampled to 14×14.

The four networks of the homework (`jaxcnn.models`): a single-layer linear perceptron
trained with the Euclidean loss against one-hot labels, a single-layer perceptron with
softmax cross-entropy, an MLP (fc 30 → ReLU → fc 10) and a CNN (conv 3×3, 3 channels →
ReLU → 2×2 max-pool → fc 10), plus the MLP with 100 hidden units for the dataset
authors' figure. A published run of the homework on MNIST reached 0.38 / 0.88 / 0.92 /
0.94; on Fashion-MNIST the dataset authors report 0.842 for logistic regression and 0.871
for a 100-unit MLP (sklearn benchmark, 28×28 input). Recipe: mini-batch SGD with momentum,
the same for every network.

    python experiments/homework.py [--quick] [--seeds 3] [--data-dir DIR] [--out DIR]
"""

from __future__ import annotations

import numpy as np

import _common
from jaxcnn import data, models, ops, reporting, train

# (label, build, loss, MNIST homework reference, Fashion-MNIST authors' reference)
NETWORKS = [
    ("linear perceptron, Euclidean loss", models.linear_perceptron, "euclidean_loss", 0.38, None),
    ("perceptron, softmax CE", models.perceptron, "softmax_cross_entropy", 0.88, 0.842),
    ("MLP (30 hidden)", models.mlp, "softmax_cross_entropy", 0.92, None),
    ("CNN", models.homework_cnn, "softmax_cross_entropy", 0.94, None),
    ("MLP (100 hidden)", lambda: models.mlp(hidden=100), "softmax_cross_entropy", None, 0.871),
]
LOSSES = {"euclidean_loss": train.OneHotTargets(ops.euclidean_loss),  # the zoo's loss names as losses
          "softmax_cross_entropy": ops.softmax_cross_entropy}
EPOCHS, BATCH, LR, MOMENTUM = 10, 32, 0.01, 0.9


def main(argv=None) -> None:
    args = _common.parse_args(__doc__.splitlines()[0], argv, seeds=3, data_dir=True)
    fashion = _common.fashion_mnist_or_exit(args.data_dir, 14, limit=256 if args.quick else None)
    epochs = 1 if args.quick else EPOCHS
    seeds = range(1 if args.quick else args.seeds)
    report = _common.Report(args.out, "homework", "Park's homework networks on Fashion-MNIST 14×14")
    report.add(__doc__.split("\n\n")[1])

    rows, curves, ours = [], [], {}
    for label, build, loss, mnist_ref, fashion_ref in NETWORKS:
        results = [train.fit(build(), fashion, loss=LOSSES[loss], optimizer="sgd", lr=LR, momentum=MOMENTUM,
                             epochs=epochs, batch_size=BATCH, seed=seed, quiet=True) for seed in seeds]
        accuracies = [r.test.accuracy for r in results]
        ours[label] = np.mean(accuracies)
        params = build().count(results[0].state.params)
        seconds = np.median([h["seconds"] for r in results for h in r.history])
        rows.append([label, loss, mnist_ref or "—", fashion_ref or "—", _common.mean_sd(accuracies, digits=3),
                     f"{params:,}", f"{seconds:.2f} s"])
        print(rows[-1], flush=True)
        curves.append((label, np.arange(1, epochs + 1), [np.array([h["test_accuracy"] for h in r.history])
                                                         for r in results]))
        if label == "CNN":
            reporting.plot_confusion(results[0].test.confusion, report.path("homework_cnn_confusion.png"),
                                 data.FASHION_MNIST_CLASSES, f"homework CNN, seed 0: test accuracy "
                                                             f"{results[0].test.accuracy:.3f}")

    report.add(f"Seeds 0 … {len(seeds) - 1}; SGD lr {LR}, momentum {MOMENTUM}, batch {BATCH}, {epochs} epochs, no "
               f"weight decay; {len(fashion.x_train):,} training / {len(fashion.x_test):,} test images, 2×2 block "
               f"means to 14×14. Test accuracy after the last epoch, mean ± sample sd over the seeds.")
    report.table(["network", "loss", "homework on MNIST", "Fashion-MNIST authors", "ours (Fashion-MNIST 14×14)",
                  "parameters", "time per epoch"], rows)
    order = [label for label, *_ in NETWORKS[:4]]
    got = " < ".join(f"{label} {ours[label]:.3f}" for label in sorted(order, key=ours.get))
    holds = all(ours[a] < ours[b] for a, b in zip(order, order[1:]))
    report.add(f"## Ordering\n\nThe MNIST run's ordering, linear perceptron < perceptron < MLP < CNN, "
               f"**{'holds' if holds else 'does not hold'}** here: {got}.")
    reporting.plot_curves(report.path("homework_accuracy.png"), curves, xlabel="epoch", ylabel="test accuracy",
                        title="Park's homework networks, Fashion-MNIST 14×14",
                        references=[("authors: logistic regression 0.842", 0.842, 1),
                                    ("authors: MLP-100 0.871", 0.871, 4)])
    report.add("## Test accuracy per epoch (median over seeds, band: interquartile range)")
    report.image("homework_accuracy.png", "test accuracy per epoch")
    report.add("## Confusion matrix of the CNN (seed 0)")
    report.image("homework_cnn_confusion.png", "CNN confusion matrix")
    report.save(args.quick)


if __name__ == "__main__":
    main()
