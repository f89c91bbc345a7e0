"""What the experiment scripts share: the command line, loading Fashion-MNIST or stopping
with the install hint, summary statistics and the Markdown report (plots come
from :mod:`jaxcnn.reporting`).

Every script runs ``python experiments/NAME.py [--quick] [--out DIR] [--seeds N]``. The full
run writes ``DIR/NAME.md`` and its PNGs (``DIR`` defaults to ``experiments/results``);
``--quick`` runs a few steps as a smoke test and writes into a fresh temporary folder
unless ``--out`` is given, so it never overwrites the committed results.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Optional, Sequence

import jax

from _timing import markdown_table
from jaxcnn import data

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(description: str, argv: Optional[Sequence[str]] = None, *, seeds: Optional[int] = None,
               data_dir: bool = False) -> argparse.Namespace:
    """The scripts' shared options; ``seeds`` is the default of ``--seeds`` (None: no such
    option), ``data_dir`` adds ``--data-dir`` for Fashion-MNIST."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    parser.add_argument("--out", help="output folder (default experiments/results; a temporary folder with --quick)")
    if seeds is not None:
        parser.add_argument("--seeds", type=int, default=seeds, help=f"number of seeds, 0 … N−1 (default {seeds})")
    if data_dir:
        parser.add_argument("--data-dir", help=f"Fashion-MNIST IDX folder (default ${data.FASHION_MNIST_ENV} or "
                                               f"{data.FASHION_MNIST_DIR})")
    args = parser.parse_args(argv)
    if seeds is not None and args.seeds < 1:
        parser.error(f"argument --seeds: expected a positive integer, got {args.seeds}")
    args.out = args.out or (tempfile.mkdtemp(prefix="jaxcnn-quick-") if args.quick else RESULTS)
    os.makedirs(args.out, exist_ok=True)
    return args


def fashion_mnist_or_exit(directory: Optional[str], size: int, limit: Optional[int] = None) -> data.Dataset:
    """Fashion-MNIST at ``size``×``size``, or exit with status 2 and the install hint on one
    line when the files are absent. ``limit`` keeps the first examples of each split."""
    try:
        d = data.fashion_mnist(directory, size)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if limit:
        d = data.Dataset(d.x_train[:limit], d.y_train[:limit], d.x_test[:limit], d.y_test[:limit], d.num_classes)
    return d


def mean_sd(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    """``"mean ± sd"`` (sample standard deviation) of ``values × scale``; one value alone."""
    v = [scale * x for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


class Report:
    """A Markdown results file: title, paragraphs, tables and images, then a footer with the
    command, the wall time and the machine. ``save()`` writes ``out/name.md``."""

    def __init__(self, out: str, name: str, title: str):
        self.out, self.name, self.start = out, name, time.perf_counter()
        self.parts = [f"# {title}"]
        self.command = None  # how to reproduce, when not this process's own command line

    def add(self, text: str) -> None:
        self.parts.append(text.strip())

    def table(self, header: Sequence[str], rows: Sequence[Sequence]) -> None:
        self.parts.append(markdown_table(header, rows))

    def image(self, filename: str, alt: str) -> None:
        self.parts.append(f"![{alt}]({filename})")

    def path(self, filename: str) -> str:
        return os.path.join(self.out, filename)

    def save(self, quick: bool) -> str:
        seconds = time.perf_counter() - self.start
        command = self.command or "python experiments/" + self.name + ".py " + " ".join(sys.argv[1:])
        self.parts.append(
            f"---\nReproduce: `{command.strip()}`{' (QUICK SMOKE RUN: numbers are meaningless)' if quick else ''}. "
            f"Wall time {seconds / 60:.1f} min ({seconds:.0f} s) on {machine()}."
        )
        path = self.path(self.name + ".md")
        with open(path, "w") as f:
            f.write("\n\n".join(self.parts) + "\n")
        print(f"wrote {path} ({seconds:.0f} s)")
        return path


def machine() -> str:
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"jax {jax.__version__} on {jax.devices()[0].platform}, float32")
