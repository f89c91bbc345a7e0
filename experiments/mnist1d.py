"""MNIST-1D (Greydanus & Kobak): logistic regression, MLP and CNN, and the shuffled-sequence variant.

The paper reports test accuracies of 32% (logistic regression), 68% (MLP) and 94% (CNN)
and, with the 40 positions of every sequence shuffled by one fixed permutation, 56% for
the CNN: the convolution's spatial prior is what wins. Recipe of the reference code:
Adam, learning rate 1e-2, batch 100, 6000 steps, no weight decay, the batches taken in
stored order (no reshuffling: batch k holds rows 100k … 100k + 99); the models are
`jaxcnn.models.mnist1d_logistic/mlp/cnn` (Greydanus' LinearBase, MLPBase, ConvBase with
PyTorch's default initialisation); the data are the paper's default set (generator seed
42, 4000 train / 1000 test), generated locally by the `mnist1d` package. Each seed
changes the initialisation.

    python experiments/mnist1d.py [--quick] [--seeds 5] [--out DIR]
"""

from __future__ import annotations

import os
import pathlib
import sys

# Run as `python experiments/mnist1d.py`, this file's folder comes first on sys.path and
# its name would shadow the `mnist1d` package (the data generator): import that first.
_HERE = pathlib.Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if pathlib.Path(p or os.curdir).resolve() != _HERE]
import mnist1d.data  # noqa: E402,F401
sys.path.insert(0, str(_HERE))

import numpy as np  # noqa: E402

import _common  # noqa: E402
from jaxcnn import data, models, ops, reporting, train  # noqa: E402

# (model, shuffled sequence, paper's test accuracy in %)
RUNS = [
    ("mnist1d_logistic", False, 32), ("mnist1d_mlp", False, 68), ("mnist1d_cnn", False, 94),
    ("mnist1d_mlp", True, None), ("mnist1d_cnn", True, 56),
]
LABELS = {"mnist1d_logistic": "logistic regression", "mnist1d_mlp": "MLP", "mnist1d_cnn": "CNN"}
STEPS, BATCH, LR = 6000, 100, 1e-2


def main(argv=None) -> None:
    args = _common.parse_args(__doc__.splitlines()[0], argv, seeds=5)
    steps, eval_every = (20, 1) if args.quick else (STEPS, 5)
    seeds = range(1 if args.quick else args.seeds)
    runs = [RUNS[0], RUNS[-1]] if args.quick else RUNS
    report = _common.Report(args.out, "mnist1d", "MNIST-1D: logistic regression, MLP, CNN (Greydanus & Kobak)")
    report.add(__doc__.split("\n\n")[1])
    datasets = {False: data.mnist1d(), True: data.mnist1d(shuffle_seq=True)}

    rows, curves, confusion_done = [], {False: [], True: []}, False
    for name, shuffled, paper in runs:
        entry = models.ZOO[name]
        results = [train.fit(entry.build(), datasets[shuffled], input_shape=entry.input_shape,
                             loss=ops.softmax_cross_entropy, optimizer="adam", lr=LR, steps=steps, batch_size=BATCH,
                             seed=seed, shuffle=False, eval_every=eval_every, quiet=True) for seed in seeds]
        accuracies = [r.test.accuracy for r in results]
        seconds = np.mean([sum(h["seconds"] for h in r.history) for r in results])
        label = LABELS[name] + (", shuffled sequence" if shuffled else "")
        rows.append([label, f"{paper}%" if paper else "— (permutation-invariant)",
                     _common.mean_sd(accuracies, 100) + "%",
                     f"{100 * min(accuracies):.1f}–{100 * max(accuracies):.1f}%",
                     f"{seconds:.1f} s"])
        print(rows[-1], flush=True)
        evaluated = [h for h in results[0].history if "test_accuracy" in h]
        curves[shuffled].append((label, [h["step"] for h in evaluated],
                                 [np.array([100 * h["test_accuracy"] for h in r.history if "test_accuracy" in h])
                                  for r in results]))
        if name == "mnist1d_cnn" and not confusion_done:  # the first CNN run (the quick run has only the shuffled one)
            confusion_done = True
            reporting.plot_confusion(results[0].test.confusion, report.path("mnist1d_cnn_confusion.png"),
                                 title=f"MNIST-1D {label}, seed 0: test accuracy {results[0].test.accuracy:.3f}")

    report.add(f"Seeds 0 … {len(seeds) - 1}; {steps} steps of batch {BATCH}, Adam lr {LR}; test accuracy after "
               f"the last step, batches in stored order, mean ± sample sd over the seeds.")
    report.table(["model", "paper", f"ours ({len(seeds)} seeds)", "range", "training time per run"], rows)
    report.add("## Test accuracy during training (median over seeds, band: interquartile range; dashed: paper)")
    for shuffled, suffix in ((False, "original"), (True, "shuffled")):
        plotted = [(n, p) for n, s, p in runs if s == shuffled]
        refs = [(f"paper: {LABELS[n]}", p, i) for i, (n, p) in enumerate(plotted) if p]
        reporting.plot_curves(report.path(f"mnist1d_{suffix}.png"), curves[shuffled], xlabel="step",
                            ylabel="test accuracy (%)", references=refs,
                            title="MNIST-1D" + (", shuffled sequence" if shuffled else ""))
        report.image(f"mnist1d_{suffix}.png", f"test accuracy, {suffix}")
    report.add("## Confusion matrix of the CNN (seed 0)")
    report.image("mnist1d_cnn_confusion.png", "CNN confusion matrix")
    report.save(args.quick)


if __name__ == "__main__":
    main()
