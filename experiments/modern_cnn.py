"""ResNet-20 with batch norm, with group norm and without normalisation, beside LeNet-5, on Fashion-MNIST.

`jaxcnn.models.resnet20(norm=...)` is He et al.'s (2016) CIFAR network — a 3×3 conv with 16
maps, three stages of three basic blocks (16, 32, 64 maps, stride-2 transitions with the
paper's parameter-free option-A shortcut), global average pooling, fc 10; 0.27M parameters —
on the 28×28 images as they are. It is trained with batch norm (the paper), with group norm
(Wu & He 2018, 8 groups) and with no normalisation at all (convolutions with biases), all
on the hand-derived rules of `jaxcnn.ops` and the same recipe; LeNet-5 with its C3 table
(`experiments/lenet5.py`'s recipe, 32×32) is the 1998 baseline. Published ResNet-class
results on Fashion-MNIST (the dataset's benchmark table, zalandoresearch/fashion-mnist,
README "Benchmark"): ResNet18 with augmentation 0.949, DenseNet-BC 768K 0.954, MobileNet
0.950, GoogLeNet without preprocessing 0.937 — all trained for tens to hundreds of epochs.
The target here is at least 0.93 for ResNet-20 with batch norm on a short schedule.

Recipe (ResNets): SGD with Nesterov momentum 0.9, batch 128, a one-cycle learning rate
(cosine warm-up from 0.01 to 0.1 over the first 30% of the steps, cosine decay to 1e-5;
peak 0.02 without normalisation, which diverges at 0.1),
weight decay 5e-4 on the conv and dense weights (the L2 penalty of `train.fit`), He
initialisation (Fixup's for the unnormalised network, see `resnet20`), no augmentation;
images scaled to [0, 1]. Batch norm's running statistics (momentum 0.9) are used for every
test evaluation.

    python experiments/modern_cnn.py [--quick] [--only NAME ...] [--epochs N] [--data-dir DIR] [--out DIR] [--work DIR]

Each network trains with a checkpoint in `--work` (default: a folder in the system's temporary
directory) and leaves its history there as JSON; an interrupted run continues where it stopped,
`--only` trains some networks, and the report is assembled from every network found in `--work`.
`--quick` (a smoke test) trains ResNet-20 with batch norm and LeNet-5 only, unless `--only` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np
import optax

import _common
from jaxcnn import data, models, reporting, train

#: name -> (label, build, image size, recipe)
NETWORKS = {
    "resnet20_bn": ("ResNet-20, batch norm", lambda: models.resnet20(norm="batch"), 28, "resnet"),
    "resnet20_gn": ("ResNet-20, group norm (8 groups)", lambda: models.resnet20(norm="group"), 28, "resnet"),
    "resnet20_none": ("ResNet-20, no normalisation", lambda: models.resnet20(norm="none"), 28, "resnet"),
    "lenet5": ("LeNet-5, C3 table (1998 baseline)", lambda: models.lenet5(), 32, "lenet5"),
}
QUICK = ["resnet20_bn", "lenet5"]  # the other ResNets differ only in the norm layer, tested in tests/
EPOCHS = {"resnet": 6, "lenet5": 15}
BATCH, MOMENTUM, PEAK_LR, WEIGHT_DECAY = 128, 0.9, 0.1, 5e-4
#: Without normalisation the network diverges at the others' peak (a run at 0.1 collapsed to a
#: constant output when the warm-up passed ~0.07, at step ~270): a fifth of it.
PEAK_LR_UNNORMALISED = 0.02
LENET_LR = 0.05
TARGET = 0.93
REFERENCES = [("ResNet18 (benchmark, augmented): 0.949", 0.949), ("GoogLeNet (benchmark): 0.937", 0.937)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on 256 images, ResNet-20 with batch norm and LeNet-5 only (smoke test)")
    parser.add_argument("--out", help="output folder (default experiments/results; a temporary folder with --quick)")
    parser.add_argument("--work", help="checkpoints and per-network histories (default: $TMPDIR/jaxcnn-modern_cnn)")
    parser.add_argument("--only", nargs="+", choices=sorted(NETWORKS), help="train only these networks")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from --work without training")
    parser.add_argument("--epochs", type=int, help=f"ResNet epochs (default {EPOCHS['resnet']})")
    parser.add_argument("--data-dir", help=f"Fashion-MNIST IDX folder (default ${data.FASHION_MNIST_ENV} or "
                                           f"{data.FASHION_MNIST_DIR})")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"argument --epochs: expected a positive integer, got {args.epochs}")
    args.out = args.out or (tempfile.mkdtemp(prefix="jaxcnn-quick-") if args.quick else _common.RESULTS)
    args.work = args.work or (tempfile.mkdtemp(prefix="jaxcnn-quick-work-") if args.quick
                              else os.path.join(tempfile.gettempdir(), "jaxcnn-modern_cnn"))
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    return args


def optimizer(name: str, recipe: str, total_steps: int) -> optax.GradientTransformation:
    if recipe == "lenet5":
        return optax.sgd(optax.cosine_decay_schedule(LENET_LR, total_steps), MOMENTUM)
    peak = PEAK_LR_UNNORMALISED if name == "resnet20_none" else PEAK_LR
    schedule = optax.cosine_onecycle_schedule(total_steps, peak, pct_start=0.3, div_factor=10,
                                              final_div_factor=1e3)
    return optax.sgd(schedule, MOMENTUM, nesterov=True)


def run(name: str, args, fashion: dict) -> dict:
    """Trains one network (continuing from its checkpoint in ``args.work``) and returns its record."""
    label, build, size, recipe = NETWORKS[name]
    d = fashion[size]
    epochs = 1 if args.quick else (args.epochs or EPOCHS["resnet"]) if recipe == "resnet" else EPOCHS[recipe]
    batch = 32 if args.quick else BATCH
    steps = epochs * (len(d.x_train) // batch)
    checkpoint = os.path.join(args.work, f"{name}.npz")
    model = build()
    result = train.fit(model, d, optimizer=optimizer(name, recipe, steps), epochs=epochs, batch_size=batch,
                       weight_decay=WEIGHT_DECAY if recipe == "resnet" else 0.0, seed=0, quiet=True,
                       checkpoint_path=checkpoint, resume=os.path.exists(checkpoint), step_losses=True)
    # The first epoch of a fresh run includes compilation: time per epoch is the median of the others.
    seconds = [h["seconds"] for h in result.history]
    record = {
        "name": name, "label": label, "commit": args.commit, "epochs": epochs, "batch": batch, "image": size,
        "params": model.count(result.state.params),
        "state": int(sum(np.size(a) for a in jax.tree_util.tree_leaves(result.state.model_state))),
        "test_accuracy": result.test.accuracy, "test_loss": result.test.loss,
        "seconds_per_epoch": float(np.median(seconds[1:] or seconds)), "history": result.history,
        "confusion": result.test.confusion.tolist(),
    }
    with open(os.path.join(args.work, f"{name}.json"), "w") as f:
        json.dump(record, f)
    print(f"{label}: test accuracy {record['test_accuracy']:.4f}, {record['seconds_per_epoch']:.0f} s/epoch",
          flush=True)
    return record


def report(args, rep: _common.Report) -> None:
    records = []
    for name in NETWORKS:
        path = os.path.join(args.work, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                records.append(json.load(f))
    rep.parts = rep.parts[:1]
    rep.add(__doc__.split("\n\n")[1])
    rep.add(__doc__.split("\n\n")[2])
    missing = [NETWORKS[n][0] for n in NETWORKS if n not in {r["name"] for r in records}]
    rows = []
    for r in records:
        best = max(h.get("test_accuracy", 0.0) for h in r["history"])
        target = ("yes" if r["test_accuracy"] >= TARGET else "no") if r["name"] == "resnet20_bn" else ""
        rows.append([r["label"], r.get("commit", "unknown"), f"{r['image']}×{r['image']}", f"{r['params']:,}",
                     f"{r['state']:,}", str(r["epochs"]),
                     f"{r['test_accuracy']:.4f}", f"{best:.4f}", target, f"{r['seconds_per_epoch']:.0f} s"])
    rep.add("Seed 0; 60,000 training / 10,000 test images. Test accuracy after the last epoch (\"best\": the "
            "best epoch, for reference only — no model selection on the test set); \"state\": the non-trainable "
            "values (batch norm's running means and variances); time per epoch: the median over the epochs after "
            "the first (which compiles), training only, on a machine shared with other jobs (see the footer).")
    rep.table(["network", "commit", "input", "parameters", "state", "epochs", "test accuracy", "best epoch",
               f"≥ {TARGET}", "time per epoch"], rows)
    if missing:
        rep.add("Not trained in this run: " + ", ".join(missing) + ".")
    commits = sorted({r.get("commit", "unknown") for r in records})
    rep.add(f"Code at commit {args.commit}." if commits in ([], [args.commit]) else
            "Each network was trained at the commit in its row; the report was assembled at " + args.commit + ".")
    if records:
        curves = [(r["label"], np.arange(1, len(r["history"]) + 1),
                   [np.array([h["test_accuracy"] for h in r["history"]])]) for r in records]
        reporting.plot_curves(rep.path("modern_cnn_accuracy.png"), curves, xlabel="epoch", ylabel="test accuracy",
                              title="Fashion-MNIST test accuracy per epoch", references=REFERENCES)
        losses = []
        for r in records:
            step_losses = np.concatenate([h["step_losses"] for h in r["history"]])
            window = max(1, len(step_losses) // (20 * r["epochs"]))
            smooth = np.convolve(step_losses, np.ones(window) / window, mode="valid")
            losses.append((r["label"], np.arange(len(smooth)) / (len(step_losses) / r["epochs"]) + window
                           / (len(step_losses) / r["epochs"]), [smooth]))
        reporting.plot_curves(rep.path("modern_cnn_loss.png"), losses, xlabel="epoch",
                              ylabel="training loss (moving mean)", title="Fashion-MNIST training loss", logy=True)
        rep.add("## Learning curves")
        rep.image("modern_cnn_accuracy.png", "test accuracy per epoch")
        rep.image("modern_cnn_loss.png", "training loss per step, moving mean")
    if getattr(args, "assembled", False):
        rep.add("This file was assembled from each network's record (`--report-only`); the wall time below is "
                "the assembly's, the time per epoch above the training's.")
    rep.save(args.quick)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> None:
    args = parse_args(argv)
    args.commit = _commit()  # at the start: the tree may change during a long run
    rep = _common.Report(args.out, "modern_cnn",
                         "ResNet-20 (batch norm, group norm, none) and LeNet-5 on Fashion-MNIST")
    if args.report_only:  # the rows' runs are what reproduces them; this process only assembles
        rep.command = "python experiments/modern_cnn.py"
        args.assembled = True
        return report(args, rep)
    names = args.only or (QUICK if args.quick else list(NETWORKS))
    sizes = {NETWORKS[n][2] for n in names}
    fashion = {s: _common.fashion_mnist_or_exit(args.data_dir, s, limit=256 if args.quick else None) for s in sizes}
    for name in names:  # the report is rewritten after each network, so a long run leaves results as it goes
        run(name, args, fashion)
        report(args, rep)


if __name__ == "__main__":
    sys.exit(main())
