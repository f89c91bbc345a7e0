"""Jit-compiled training with optax: a train step, whole epochs in ``lax.scan``,
evaluation, data parallelism over devices, and resumable checkpoints.

The step is plain optax: ``jax.value_and_grad`` of the loss (the hand-derived rules of
the model's ops run inside it), ``optimizer.update``, ``optax.apply_updates``. The
lectures' recipe (Hu & Zhu, Jearanaitanakij) is mini-batch SGD with learning rate α,
optional momentum, and weight decay λ as the L2 penalty ``½ λ Σ w²`` on the weights
(not the biases), whose gradient ``λ w`` comes from :func:`jaxcnn.ops.l2_penalty`.

Models carry state (:mod:`jaxcnn.nn`): the train state holds the model's state beside
its params (batch norm's running statistics), every step applies the model with
``training=True`` and a fresh PRNG key ``fold_in(key, step)`` (dropout), and keeps the
state it returns; evaluation applies it with ``training=False`` (running statistics, no
dropout). Checkpoints hold the model state, so a resumed run is bit-identical.

When the training set fits on the device, an epoch — shuffling with the state's PRNG
key, slicing batches, every step — is one compiled ``lax.scan``: no Python loop per
batch and no host round-trip.

Data parallelism: with ``devices=n`` a 1-D :class:`jax.sharding.Mesh` named ``"batch"``
holds the first n devices; the train state is replicated, every batch is split along
its first axis, and XLA inserts the gradient all-reduce. Over several processes or
hosts, call :func:`jaxcnn.distributed.initialize` first in every process: the same mesh
then spans every process's devices, each process feeds only its share of each batch,
and the mean loss, its gradient and any batch statistics (batch norm's mean and variance)
are computed over the global batch, as in a single-device run: the model is written for
the whole batch and XLA adds the cross-device reductions (see :mod:`jaxcnn.distributed`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh

import jaxcnn.ops
from jaxcnn import _xla_cpu, checkpoint, distributed
from jaxcnn.data import Dataset, check_labels
from jaxcnn.nn import Layer


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly: params, model state (non-trainable,
    e.g. running statistics), optimiser state, step, PRNG key."""

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def make_optimizer(name: str = "adam", lr: float = 1e-2, momentum: float = 0.0) -> optax.GradientTransformation:
    """``"sgd"`` (with optional ``momentum``, the lectures' recipe) or ``"adam"``.

    Raises:
      ValueError: an unknown ``name``, ``lr`` not finite and positive, ``momentum`` not in ``[0, 1)``.
    """
    check_number("make_optimizer", "lr", lr, low=0.0, low_open=True)
    check_number("make_optimizer", "momentum", momentum, low=0.0, high=1.0)
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"make_optimizer: unknown optimizer {name!r}; use 'sgd' or 'adam'.")


def check_number(op: str, name: str, value: Any, low: float = -np.inf, high: float = np.inf,
                 low_open: bool = False) -> float:
    """``value`` as a float, or an error naming ``op`` and ``name``: it must be a real
    number (not a bool), finite, ``>= low`` (``> low`` when ``low_open``) and ``< high``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{op}: `{name}` must be a number, got {value!r} ({type(value).__name__}).")
    interval = f"{'(' if low_open else '['}{low:g}, {high:g})"
    if not (np.isfinite(value) and (value > low if low_open else value >= low) and value < high):
        raise ValueError(f"{op}: `{name}` must be a finite number in {interval}, got {value!r}.")
    return float(value)


def check_int(op: str, name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    """``value`` as an int, or an error naming ``op`` and ``name``: an int (not a bool, not
    a float such as 2.5), ``>= low`` and, when given, ``< high``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{op}: `{name}` must be an int, got {value!r} ({type(value).__name__}).")
    if value < low or high is not None and value >= high:
        bound = f">= {low}" if high is None else f"in [{low}, {high})"
        raise ValueError(f"{op}: `{name}` must be an int {bound}, got {value}.")
    return int(value)


#: PRNG seeds: jax.random.PRNGKey takes a signed 64-bit integer.
SEED_RANGE = (-(2**63), 2**63)


def weights(params: Any) -> Any:
    """The leaves of ``params`` stored under a ``"w"`` key (weights, not biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf if path and getattr(path[-1], "key", None) == "w" else None, params
    )


def make_loss(model: Layer, loss: str = "softmax_cross_entropy", weight_decay: float = 0.0,
              ops=None) -> Callable:
    """``loss_fn(params, model_state, x, y, *, training=True, key=None) -> (loss, (outputs,
    model_state))``: ``data_loss + ½ λ Σ w²`` for integer labels ``y``, the model's outputs
    and its new state (differentiate with ``has_aux=True``)."""
    ops = ops or jaxcnn.ops
    if loss not in ("softmax_cross_entropy", "euclidean_loss"):
        raise ValueError(f"make_loss: unknown loss {loss!r}; use 'softmax_cross_entropy' or 'euclidean_loss'.")
    weight_decay = check_number("make_loss", "weight_decay", weight_decay, low=0.0)

    def loss_fn(params, model_state, x, y, *, training=True, key=None):
        out, model_state = model.apply(params, model_state, x, training=training, key=key)
        if loss == "euclidean_loss":
            data = ops.euclidean_loss(out, jax.nn.one_hot(y, out.shape[-1], dtype=out.dtype))
        else:
            data = ops.softmax_cross_entropy(out, y)
        if weight_decay:
            data = data + ops.l2_penalty(weights(params), jnp.asarray(weight_decay, data.dtype))
        return data, (out, model_state)

    return loss_fn


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``step(state, (x, y)) -> (state, (loss, accuracy))``: one optax update in training
    mode, with the PRNG key ``fold_in(state.key, state.step)`` (fresh every step) and the
    model state the forward pass returns."""

    def step(state: TrainState, batch):
        x, y = batch
        key = jax.random.fold_in(state.key, state.step)
        (loss, (out, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.model_state, x, y, training=True, key=key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        accuracy = jnp.mean(jnp.argmax(out, axis=-1) == y)
        return TrainState(params, model_state, opt_state, state.step + 1, state.key), (loss, accuracy)

    return step


def make_epoch(step: Callable, batch_size: int, mesh: Optional[Mesh] = None, shuffle: bool = True,
               loop: str = "auto") -> Callable:
    """``epoch(state, x, y, num_steps) -> (state, losses, accuracies)``.

    Shuffles with a key split off ``state.key`` (or, with ``shuffle=False``, keeps the
    examples in their stored order, as the lectures' per-pattern updates do) and runs
    ``num_steps`` steps of ``batch_size`` examples; ``x``, ``y`` are the whole training
    set on the device. The incoming state's buffers are donated.

    With a ``mesh`` (a 1-D :class:`jax.sharding.Mesh` named ``"batch"``, the state
    replicated on it) every batch is split over the mesh's devices, unevenly when
    ``batch_size`` does not divide by their number (XLA pads the last shards internally).
    When the mesh spans several processes (:mod:`jaxcnn.distributed`), ``x`` and ``y`` are
    NumPy arrays on the host, the same in every process: each process computes the same
    permutation and gathers only its own rows of each global batch.

    ``loop`` says how the steps run; the two loops give the same batches and the same updates:

    * ``"scan"``: the whole epoch is one compiled ``lax.scan`` (``num_steps`` static) —
      no host round trip per step, the fastest on GPUs and TPUs;
    * ``"steps"``: one jitted, donated step per batch dispatched from Python. XLA:CPU
      compiles a convolution that is not in its canonical channels-last form (autodiff's
      transposed convolutions) to far slower code inside a loop body than at the top
      level of a program (performance.md, "Scan vs steps");
    * ``"auto"`` (default): ``"scan"``, except on the CPU when the step contains such a
      convolution (found by tracing the step once): then ``"steps"``. ``jaxcnn.ops``
      writes all of its convolutions (``conv``, ``conv_transpose``, forward and backward)
      in the canonical form, so their steps scan; tiny steps (the lectures' per-pattern
      updates) keep the scan too, which saves a host round trip per step.
    """
    if loop not in ("auto", "scan", "steps"):
        raise ValueError(f"make_epoch: unknown `loop` {loop!r}; use 'auto', 'scan' or 'steps'.")
    fed = mesh is not None and mesh.is_multi_process

    def sharded_step(state, xb, yb):
        if mesh is not None:  # cuts a fed batch's padding; splits the batch over the mesh (unevenly if need be)
            xb, yb = distributed.unpad(xb, batch_size, mesh), distributed.unpad(yb, batch_size, mesh)
        return step(state, (xb, yb))

    def batches(key, n, num_steps: int):
        key, shuffle_key = jax.random.split(key)
        order = jax.random.permutation(shuffle_key, n) if shuffle else jnp.arange(n)
        return key, order[: num_steps * batch_size].reshape(num_steps, batch_size)

    def scan_epoch(state: TrainState, x, y, num_steps: int):
        key, order = batches(state.key, x.shape[0], num_steps)
        state, (losses, accuracies) = lax.scan(lambda s, idx: sharded_step(s, x[idx], y[idx]),
                                                state._replace(key=key), order)
        return state, losses, accuracies

    def scan_fed(state: TrainState, key, xs, ys):
        state, (losses, accuracies) = lax.scan(lambda s, b: sharded_step(s, *b), state._replace(key=key), (xs, ys))
        return state, losses, accuracies

    scan_epoch = jax.jit(scan_epoch, static_argnums=3, donate_argnums=0)
    scan_fed = jax.jit(scan_fed, donate_argnums=0)
    batches_jit = jax.jit(batches, static_argnums=(1, 2))
    step_jit = jax.jit(lambda state, x, y, idx: sharded_step(state, x[idx], y[idx]), donate_argnums=0)
    fed_step_jit = jax.jit(sharded_step, donate_argnums=0)

    def fed_epoch(state: TrainState, x, y, num_steps: int):
        # The same global permutation in every process (computed from the replicated key);
        # each process gathers only its rows of each global batch.
        key, order = batches_jit(state.key, len(x), num_steps)
        order = np.asarray(order)
        return scan_fed(state, key, distributed.feed(x, order, mesh), distributed.feed(y, order, mesh))

    def steps_epoch(state: TrainState, x, y, num_steps: int):
        key, order = batches_jit(state.key, len(x), num_steps)
        state, metrics = state._replace(key=key), []
        for idx in np.asarray(order):
            if fed:
                state, metric = fed_step_jit(state, distributed.feed(x, idx, mesh), distributed.feed(y, idx, mesh))
            else:
                state, metric = step_jit(state, x, y, idx)
            metrics.append(metric)
        losses, accuracies = (jnp.stack(m) for m in zip(*metrics)) if metrics else (jnp.zeros(0), jnp.zeros(0))
        return state, losses, accuracies

    scan = fed_epoch if fed else scan_epoch
    if loop != "auto":
        return scan if loop == "scan" else steps_epoch
    chosen: list[Callable] = []

    def epoch(state: TrainState, x, y, num_steps: int):
        if not chosen:  # decided once, on the first call's shapes
            xb, yb = (jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype) for a in (x, y))
            slow = _xla_cpu.on_cpu() and _xla_cpu.has_slow_loop_convolution(
                jax.make_jaxpr(sharded_step)(state, xb, yb).jaxpr)
            chosen.append(steps_epoch if slow else scan)
        return chosen[0](state, x, y, num_steps)

    return epoch


class Evaluation(NamedTuple):
    """A model's scores on a dataset.

    Attributes:
      loss: mean data loss (no weight decay).
      accuracy: fraction of arg-max predictions equal to the label.
      confusion: ``[true class, predicted class]`` counts, ``(num_classes, num_classes)``.
      sse: summed squared error ``Σ_n ‖p_n − t_n‖²`` of the output probabilities ``p``
        (the softmax of the logits under softmax cross-entropy, the outputs themselves
        under the Euclidean loss) against the one-hot labels ``t`` — the "SSE" of the
        Jearanaitanakij lecture's comparison table.
    """

    loss: float
    accuracy: float
    confusion: np.ndarray
    sse: float


def make_evaluator(model: Layer, num_classes: int, loss: str = "softmax_cross_entropy",
                   batch_size: int = 1000, ops=None, mesh: Optional[Mesh] = None) -> Callable:
    """``evaluate(params, model_state, x, y) -> Evaluation`` in evaluation mode
    (``training=False``), compiled once and reused across calls.

    With a ``mesh`` each batch is split over its devices, and over its processes when it
    spans several: every process then passes the whole ``x``, ``y`` (NumPy, on the host)
    but transfers only its own rows, so the set is evaluated once, not once per process.
    """
    ops = ops or jaxcnn.ops
    loss_fn = make_loss(model, loss, 0.0, ops)

    @functools.partial(jax.jit, static_argnums=4)
    def batch_stats(params, model_state, xb, yb, size):
        if mesh is not None:
            xb, yb = distributed.unpad(xb, size, mesh), distributed.unpad(yb, size, mesh)
        value, (out, _) = loss_fn(params, model_state, xb, yb, training=False)
        if out.shape[-1] != num_classes:  # a prediction >= num_classes would drop out of the confusion matrix
            raise ValueError(f"evaluate: the model has {out.shape[-1]} outputs but num_classes={num_classes}.")
        pred = jnp.argmax(out, axis=-1)
        confusion = jnp.zeros((num_classes, num_classes), jnp.int32).at[yb, pred].add(1)
        probs = out if loss == "euclidean_loss" else ops.softmax(out)
        sse = jnp.sum((probs - jax.nn.one_hot(yb, num_classes, dtype=out.dtype)) ** 2)
        return value * xb.shape[0], confusion, sse

    def evaluate(params, model_state, x, y) -> Evaluation:
        _check_examples("evaluate", "x", x, "y", y, num_classes)
        total, sse, confusion = 0.0, 0.0, np.zeros((num_classes, num_classes), np.int64)
        for start in range(0, len(x), batch_size):
            rows = np.arange(start, min(start + batch_size, len(x)))
            if mesh is None:
                value, conf, err = batch_stats(params, model_state, x[rows], y[rows], len(rows))
            else:
                value, conf, err = batch_stats(params, model_state, distributed.feed(x, rows, mesh),
                                               distributed.feed(y, rows, mesh), len(rows))
            total += float(value)
            sse += float(err)
            confusion += np.asarray(conf)
        return Evaluation(total / len(x), float(np.trace(confusion) / len(x)), confusion, sse)

    return evaluate


def evaluate(model: Layer, params: Any, model_state: Any, x: np.ndarray, y: np.ndarray, num_classes: int,
             loss: str = "softmax_cross_entropy", batch_size: int = 1000, ops=None) -> Evaluation:
    """Mean data loss, accuracy and confusion matrix over ``(x, y)`` in evaluation mode, in
    jitted batches.

    Raises:
      ValueError: ``x`` and ``y`` differ in length or are empty, a label is outside
        ``[0, num_classes)``, or the model does not have ``num_classes`` outputs: every
        example lands in the confusion matrix, none is dropped.
    """
    return make_evaluator(model, num_classes, loss, batch_size, ops)(params, model_state, x, y)


def _check_examples(op: str, x_name: str, x: Any, y_name: str, y: Any, num_classes: int) -> None:
    """Same number of inputs and labels, at least one, labels 1-D class ids in range."""
    if len(x) != len(y):
        raise ValueError(f"{op}: `{x_name}` has {len(x)} examples but `{y_name}` has {len(y)} labels; "
                         f"they must pair one to one.")
    if len(x) == 0:
        raise ValueError(f"{op}: `{x_name}` is empty; it needs at least one example.")
    if np.ndim(y) != 1:
        raise ValueError(f"{op}: `{y_name}` must be a 1-D array of class ids, got shape {np.shape(y)}.")
    check_labels(f"{op}: `{y_name}`", np.asarray(y), num_classes)


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict]
    test: Evaluation


def make_mesh(devices: int) -> Mesh:
    """A 1-D mesh named ``"batch"`` over the first ``devices`` of ``jax.devices()`` (every
    process's devices once :func:`jaxcnn.distributed.initialize` has run; then it must
    span all of them, or some processes would have no device in the program)."""
    available = jax.devices()
    if not 1 <= devices <= len(available):
        raise ValueError(f"devices={devices} requested but {len(available)} available ({available[0].platform}).")
    if distributed.is_multiprocess() and devices != len(available):
        raise ValueError(f"devices={devices} requested, but a run over {jax.process_count()} processes trains on "
                         f"all of their {len(available)} devices: pass devices={len(available)} or None.")
    return Mesh(np.array(available[:devices]), ("batch",))


def fit(
    model: Layer,
    data: Dataset,
    *,
    input_shape: Optional[tuple[int, ...]] = None,
    loss: str = "softmax_cross_entropy",
    optimizer: Optional[optax.GradientTransformation] = None,
    epochs: Optional[int] = None,
    steps: Optional[int] = None,
    batch_size: int = 100,
    weight_decay: float = 0.0,
    seed: int = 0,
    devices: Optional[int] = None,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
    overwrite: bool = False,
    settings: Optional[dict] = None,
    allow_changed_settings: bool = False,
    eval_every: int = 1,
    quiet: bool = False,
    ops=None,
    dtype: Any = jnp.float32,
    shuffle: bool = True,
    stop_when: Optional[Callable[[dict], bool]] = None,
    step_losses: bool = False,
) -> FitResult:
    """Trains ``model`` on ``data`` for ``epochs`` epochs or ``steps`` steps.

    Each epoch runs shuffled batches through :func:`make_epoch` with ``loop="auto"`` (one
    compiled scan, or jitted donated steps where XLA:CPU would run convolutions inside the
    scan; a trailing partial batch is dropped); with ``steps`` the last epoch is cut short.
    The test set is evaluated every ``eval_every`` epochs and at the end. With
    ``checkpoint_path`` the state is saved after every epoch, with the run's settings
    (``seed``, ``batch_size``, ``loss``, ``weight_decay``, ``dtype``, ``shuffle``,
    ``input_shape``, a fingerprint of the data, and the caller's ``settings``, e.g. the
    optimiser's); ``resume=True`` continues from it exactly (the same final params as an
    uninterrupted run with the same settings) and refuses a checkpoint written with other
    settings unless ``allow_changed_settings``. An existing checkpoint is never overwritten
    unless ``resume`` or ``overwrite``.

    Everything is checked before the first step: the arguments' types and ranges, that
    inputs and labels pair up, that labels are class ids in ``[0, num_classes)``, that the
    test set is not empty, and that the checkpoint can be written where asked.

    Data parallelism: with ``devices=n`` (default: 1, or every device of every process
    once :func:`jaxcnn.distributed.initialize` has run) the state is replicated over a
    1-D mesh and each global batch of ``batch_size`` examples is split over its devices
    (unevenly if need be). Over several processes, each gathers only its share of every
    batch (:mod:`jaxcnn.distributed`), all compute the same updates, only process 0
    writes the checkpoint and shows progress, and the test set is split over the
    processes and evaluated once.

    Each epoch appends a record to the history: ``epoch``, ``step``, ``train_loss`` and
    ``train_accuracy`` (means over the epoch's steps), ``seconds``, and on evaluated
    epochs ``test_loss``, ``test_accuracy`` and ``test_sse`` (see :class:`Evaluation`).

    Args:
      shuffle: shuffle the training set every epoch; ``False`` visits it in stored
        order (the lectures' pattern-by-pattern updates with ``batch_size=1``).
      stop_when: called with each epoch's record after it is appended; training stops
        early once it returns True (e.g. ``lambda r: r.get("test_sse", 1) < 0.005``;
        ``len(history)`` is then the number of epochs to converge).
      step_losses: also keep every step's training loss (the loss the update was
        computed from) in the record, under ``step_losses``.
      settings: JSON-able settings the caller wants a resume checked against (the
        command line passes the model, dataset, optimiser, learning rate and momentum).
      allow_changed_settings: resume even from a checkpoint whose settings differ.
      Others as named; ``ops`` (default :mod:`jaxcnn.ops`) computes the loss and the
      evaluation, the model's own ops are chosen when it is built.

    Raises:
      TypeError, ValueError: a bad argument or dataset, as listed above, before any work.
      FileNotFoundError: ``resume`` without a checkpoint.

    Returns:
      The final state, the per-epoch history and the final test evaluation.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("fit: give exactly one of `epochs` and `steps`.")
    for name, value in (("epochs", epochs), ("steps", steps)):
        if value is not None:
            check_int("fit", name, value, 1)
    _check_examples("fit", "data.x_train", data.x_train, "data.y_train", data.y_train, data.num_classes)
    _check_examples("fit", "data.x_test", data.x_test, "data.y_test", data.y_test, data.num_classes)
    n_train = len(data.x_train)
    check_int("fit", "batch_size", batch_size, 1)
    if batch_size > n_train:
        raise ValueError(f"fit: `batch_size` must be between 1 and the training set size {n_train}, got {batch_size}.")
    multiprocess = distributed.is_multiprocess()
    if devices is None:
        devices = jax.device_count() if multiprocess else 1
    check_int("fit", "devices", devices, 1)
    check_int("fit", "seed", seed, *SEED_RANGE)
    check_int("fit", "eval_every", eval_every, 0)
    weight_decay = check_number("fit", "weight_decay", weight_decay, low=0.0)
    steps_per_epoch = n_train // batch_size
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    optimizer = optimizer or make_optimizer()
    input_shape = input_shape or (-1, *data.x_train.shape[1:])
    run_settings = _run_settings(data, input_shape, seed=seed, batch_size=batch_size, loss=loss,
                                 weight_decay=weight_decay, dtype=jnp.dtype(dtype).name, shuffle=shuffle,
                                 **(settings or {}))
    check_run_location(checkpoint_path, resume, overwrite)

    # Over several processes the data stay on the host and each process feeds its rows.
    to_array = np.asarray if multiprocess else jnp.asarray
    x_train = to_array(data.x_train.reshape(-1, *input_shape[1:]), dtype)
    y_train = to_array(data.y_train)
    x_test = data.x_test.reshape(-1, *input_shape[1:]).astype(dtype)

    key = jax.random.PRNGKey(seed)
    init_key, key = jax.random.split(key)
    params, model_state, _ = model.init(init_key, input_shape)
    params, model_state = jax.tree_util.tree_map(  # floating leaves only: a state may hold counters
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, (params, model_state))
    state = TrainState(params, model_state, optimizer.init(params), jnp.zeros((), jnp.int32), key)
    history: list[dict] = []
    if resume:
        saved = checkpoint.read_header(checkpoint_path)["metadata"].get("settings")
        _check_resumed_settings(checkpoint_path, saved, run_settings, allow_changed_settings)
        state, meta = checkpoint.load(checkpoint_path, state)
        history = meta.get("history", [])
    distributed.assert_same(np.array([n_train, len(x_test), batch_size, total_steps, int(state.step)]),
                            "fit's settings (training/test set sizes, batch size, total steps, resumed step)")

    mesh = make_mesh(devices) if devices > 1 or multiprocess else None
    if mesh is not None:
        state = distributed.replicate(state, mesh)
        if not multiprocess:
            x_train, y_train = distributed.replicate((x_train, y_train), mesh)

    epoch_fn = make_epoch(make_step(make_loss(model, loss, weight_decay, ops), optimizer), batch_size, mesh, shuffle)
    evaluator = make_evaluator(model, data.num_classes, loss, ops=ops, mesh=mesh)

    def evaluate_(s):
        return evaluator(s.params, s.model_state, x_test, data.y_test)

    primary = distributed.is_primary()
    bar = _progress(total_steps, int(state.step), quiet or not primary)
    epoch = len(history)
    stopped = bool(stop_when and history and stop_when(history[-1]))
    while int(state.step) < total_steps and not stopped:
        start = time.perf_counter()
        n = min(steps_per_epoch, total_steps - int(state.step))
        state, losses, accuracies = epoch_fn(state, x_train, y_train, n)
        losses = np.asarray(losses)
        epoch += 1
        record = {"epoch": epoch, "step": int(state.step), "train_loss": float(losses.mean()),
                  "train_accuracy": float(np.asarray(accuracies).mean()),
                  "seconds": time.perf_counter() - start}
        if step_losses:
            record["step_losses"] = losses.tolist()
        if eval_every and (epoch % eval_every == 0 or int(state.step) >= total_steps):
            ev = evaluate_(state)
            record.update(test_loss=ev.loss, test_accuracy=ev.accuracy, test_sse=ev.sse)
        history.append(record)
        stopped = bool(stop_when and stop_when(record))
        if checkpoint_path and primary:
            checkpoint.save(checkpoint_path, state, {"history": history, "settings": run_settings})
        bar.update(n, record)
    bar.close()
    return FitResult(state, history, evaluate_(state))


def check_run_location(checkpoint_path: Optional[str], resume: bool, overwrite: bool) -> None:
    """Before any work: the checkpoint can be written there; ``resume`` needs one to exist,
    and an existing one is replaced only with ``overwrite``."""
    if resume and (checkpoint_path is None or not os.path.exists(checkpoint_path)):
        raise FileNotFoundError(f"fit: resume=True but there is no checkpoint at {checkpoint_path!r}.")
    if checkpoint_path is None:
        return
    checkpoint.check_writable(checkpoint_path)
    if os.path.exists(checkpoint_path) and not resume and not overwrite:
        raise ValueError(
            f"fit: {checkpoint_path} already holds a checkpoint; continue it with resume=True "
            f"(--resume) or start over with overwrite=True (--overwrite)."
        )


def _run_settings(dataset: Dataset, input_shape, /, **settings) -> dict:
    """The settings a resumed run must share, as JSON would give them back, with a
    fingerprint of the data (a changed dataset under the same name is caught too)."""
    digest = hashlib.blake2b(digest_size=8)
    for a in dataset[:4]:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.dtype}{a.shape}".encode())
        digest.update(a.data)
    settings.update(input_shape=list(input_shape), num_classes=dataset.num_classes, data_fingerprint=digest.hexdigest())
    return json.loads(json.dumps(settings))


def _check_resumed_settings(path: str, saved: Optional[dict], now: dict, allow: bool) -> None:
    if saved is None:
        changed = "it was written without its settings (by an older jaxcnn)"
    else:
        diffs = [f"{k} {saved.get(k, '(unset)')!r} -> {now.get(k, '(unset)')!r}"
                 for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
        changed = "its settings differ: " + ", ".join(diffs) if diffs else ""
    if changed and not allow:
        raise ValueError(
            f"fit: cannot resume from {path}: {changed}. Resume with the checkpoint's settings, or pass "
            f"allow_changed_settings=True (--allow-changed-settings) to continue under the new ones."
        )


class _progress:
    """Progress over steps showing loss/accuracy: a tqdm bar on a terminal, one line per
    epoch on stderr otherwise (a log file, ``jaxcnn launch``'s forwarded output); silent when quiet."""

    def __init__(self, total: int, done: int, quiet: bool):
        self.bar, self.lines, self.total, self.done = None, False, total, done
        if quiet:
            return
        if not sys.stderr.isatty():
            self.lines = True
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)

    def update(self, n: int, record: dict) -> None:
        shown = {k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "train_accuracy", "test_accuracy")}
        self.done += n
        if self.bar is not None:
            self.bar.set_postfix(shown)
            self.bar.update(n)
        elif self.lines:
            print(f"epoch {record['epoch']}, step {self.done}/{self.total}: "
                  + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items()), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "Evaluation", "FitResult", "SEED_RANGE", "TrainState", "check_int", "check_number", "check_run_location",
    "evaluate", "fit", "make_epoch", "make_evaluator", "make_loss", "make_mesh", "make_optimizer", "make_step",
    "weights",
]
