"""What a training run leaves behind: ``metrics.json`` and PNG plots, for the ``jaxcnn train``
command and the scripts in ``experiments/`` alike. Plots need the ``train`` extra
(matplotlib) and are drawn off-screen. Every file is written atomically
(:func:`jaxcnn.checkpoint.write_atomically`)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from jaxcnn.train import FitResult


def _pyplot():
    """``matplotlib.pyplot`` on the off-screen Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, dpi: int) -> str:
    """Lays out ``fig``, writes it to ``path`` atomically (as a checkpoint: a reader sees the
    old file or the new one; a symlink at ``path`` is replaced, not followed) and closes it."""
    from jaxcnn import checkpoint

    fig.tight_layout()
    try:
        form = os.path.splitext(path)[1][1:].lower() or "png"
        checkpoint.write_atomically(path, lambda f: fig.savefig(f, format=form, dpi=dpi))
    finally:
        _pyplot().close(fig)
    return path


def package_version(name: str = "jaxcnn") -> str:
    """The installed version of package ``name`` (``importlib.metadata``); for jaxcnn run
    from a source tree without installing it, ``jaxcnn.__version__``."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name != "jaxcnn":
            raise
        import jaxcnn

        return jaxcnn.__version__


def environment() -> dict:
    """What a run's figures depend on besides its settings: the library versions and the devices."""
    import platform

    import jax

    devices = jax.devices()
    return {
        "versions": {**{name: package_version(name) for name in ("jaxcnn", "jax", "jaxlib", "optax", "numpy")},
                     "python": platform.python_version()},
        "device": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices),
                   "processes": jax.process_count()},
    }


def best_epoch(history: Sequence[dict]) -> Optional[dict]:
    """The evaluated epoch with the highest test accuracy (the first of equals): ``epoch``,
    ``step``, ``test_accuracy``, ``test_loss``; None if no epoch was evaluated. Chosen on
    the test set, so an optimistic figure beside the final one, not a held-out score."""
    evaluated = [h for h in history if "test_accuracy" in h]
    if not evaluated:
        return None
    best = max(evaluated, key=lambda h: h["test_accuracy"])  # max keeps the first of equals
    return {k: best[k] for k in ("epoch", "step", "test_accuracy", "test_loss")}


def save_metrics(directory: str, result: FitResult, config: dict, *, wall_seconds: Optional[float] = None) -> str:
    """Writes ``metrics.json``: the history, the final test loss/accuracy/SSE and confusion, the
    best epoch (:func:`best_epoch`), the config, the training time (the epochs' ``seconds``)
    and ``wall_seconds`` (the whole run, when given), the library versions and the devices
    (:func:`environment`). Written atomically like a checkpoint: a reader sees the previous
    file or the new one, never half of one."""
    from jaxcnn import checkpoint

    path = os.path.join(directory, "metrics.json")
    text = json.dumps({
        "config": config,
        "history": result.history,
        "test_loss": result.test.loss,
        "test_accuracy": result.test.accuracy,
        "test_sse": result.test.sse,
        "confusion": result.test.confusion.tolist(),
        "best": best_epoch(result.history),
        "train_seconds": sum(h.get("seconds", 0.0) for h in result.history),
        "wall_seconds": wall_seconds,
        **environment(),
    }, indent=1)
    checkpoint.write_atomically(path, lambda f: f.write(text.encode()))
    return path


def plot_history(history: list[dict], path: str, title: str = "") -> str:
    """A learning-curve PNG: train loss and train/test accuracy per epoch."""
    plt = _pyplot()

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    if any("test_loss" in h for h in history):
        ax_loss.plot([h["epoch"] for h in history if "test_loss" in h],
                     [h["test_loss"] for h in history if "test_loss" in h], label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    if any("test_accuracy" in h for h in history):
        ax_acc.plot([h["epoch"] for h in history if "test_accuracy" in h],
                    [h["test_accuracy"] for h in history if "test_accuracy" in h], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi=100)


def plot_confusion(confusion: np.ndarray, path: str, class_names: Optional[Sequence[str]] = None,
                   title: str = "") -> str:
    """A confusion-matrix PNG: rows are true classes, columns predicted classes, each
    cell the fraction of its row (the per-class recall on the diagonal), with counts.

    Args:
      confusion: ``(K, K)`` counts, ``[true class, predicted class]`` (:class:`Evaluation`).
      path: the PNG to write.
      class_names: ``K`` tick labels (default ``0 … K−1``).
      title: the figure title.

    Returns:
      ``path``.
    """
    plt = _pyplot()

    confusion = np.asarray(confusion)
    k = confusion.shape[0]
    if confusion.shape != (k, k):
        raise ValueError(f"plot_confusion: `confusion` must be square (K, K), got shape {confusion.shape}.")
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"plot_confusion: {len(names)} class names for a {k}×{k} confusion matrix.")
    rows = confusion.sum(axis=1, keepdims=True)
    fractions = confusion / np.maximum(rows, 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if confusion[i, j]:
                ax.text(j, i, f"{confusion[i, j]}", ha="center", va="center", fontsize=7,
                        color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=80)


def plot_curves(path: str, series: Sequence[tuple[str, np.ndarray, Sequence[np.ndarray]]], *, xlabel: str,
                ylabel: str, title: str = "", logy: bool = False, references: Sequence[tuple] = ()) -> str:
    """One PNG of several learning curves, each the median over its seeds with the
    interquartile range as a band.

    Args:
      series: ``(label, x, [y for each seed])``; a run that stopped early keeps its last
        value to the end of the longest.
      references: ``(label, y)`` or ``(label, y, i)`` horizontal dashed lines (published
        figures), grey or in the colour of ``series[i]``.
    """
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for i, (label, x, ys) in enumerate(series):
        n = max(len(y) for y in ys)
        stack = np.stack([np.concatenate([y, np.full(n - len(y), y[-1])]) for y in map(np.asarray, ys)])
        x = np.asarray(x)[:n]
        color = f"C{i}"
        ax.plot(x, np.median(stack, axis=0), color=color, label=label + (f" ({len(ys)} seeds)" if len(ys) > 1 else ""))
        if len(ys) > 1:
            low, high = np.quantile(stack, [0.25, 0.75], axis=0)
            ax.fill_between(x, low, high, color=color, alpha=0.2, lw=0)
    for label, y, *index in references:
        ax.axhline(y, color=f"C{index[0]}" if index else "gray", ls="--", lw=1, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, yscale="log" if logy else "linear")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path, dpi=72)


__all__ = ["plot_confusion", "plot_curves", "plot_history", "save_metrics"]
