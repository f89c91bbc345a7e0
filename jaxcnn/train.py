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
its first axis, and XLA inserts the gradient all-reduce. Batch statistics (batch norm's
mean and variance) are therefore those of the global batch, as in a single-device run:
the model is written for the whole batch and XLA adds the cross-device reductions. On several hosts, call
``jax.distributed.initialize()`` first in every process: ``jax.devices()`` then lists
every host's devices, the same mesh spans them, and each process runs the same program.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import jaxcnn.ops
from jaxcnn import _xla_cpu, checkpoint
from jaxcnn.data import Dataset
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
    """``"sgd"`` (with optional ``momentum``, the lectures' recipe) or ``"adam"``."""
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        return optax.adam(lr)
    raise ValueError(f"make_optimizer: unknown optimizer {name!r}; use 'sgd' or 'adam'.")


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

    def batch_step(state, x, y, idx):
        xb, yb = x[idx], y[idx]
        if mesh is not None:
            xb = lax.with_sharding_constraint(xb, NamedSharding(mesh, PartitionSpec("batch")))
            yb = lax.with_sharding_constraint(yb, NamedSharding(mesh, PartitionSpec("batch")))
        return step(state, (xb, yb))

    def batches(key, n, num_steps: int):
        key, shuffle_key = jax.random.split(key)
        order = jax.random.permutation(shuffle_key, n) if shuffle else jnp.arange(n)
        return key, order[: num_steps * batch_size].reshape(num_steps, batch_size)

    def scan_epoch(state: TrainState, x, y, num_steps: int):
        key, order = batches(state.key, x.shape[0], num_steps)
        state, (losses, accuracies) = lax.scan(lambda s, idx: batch_step(s, x, y, idx), state._replace(key=key), order)
        return state, losses, accuracies

    scan_epoch = jax.jit(scan_epoch, static_argnums=3, donate_argnums=0)
    batches_jit = jax.jit(batches, static_argnums=(1, 2))
    step_jit = jax.jit(batch_step, donate_argnums=0)

    def steps_epoch(state: TrainState, x, y, num_steps: int):
        key, order = batches_jit(state.key, x.shape[0], num_steps)
        state, metrics = state._replace(key=key), []
        for idx in np.asarray(order):
            state, metric = step_jit(state, x, y, idx)
            metrics.append(metric)
        losses, accuracies = (jnp.stack(m) for m in zip(*metrics)) if metrics else (jnp.zeros(0), jnp.zeros(0))
        return state, losses, accuracies

    if loop != "auto":
        return scan_epoch if loop == "scan" else steps_epoch
    chosen: list[Callable] = []

    def epoch(state: TrainState, x, y, num_steps: int):
        if not chosen:  # decided once, on the first call's shapes
            slow = _xla_cpu.on_cpu() and _xla_cpu.has_slow_loop_convolution(
                jax.make_jaxpr(batch_step)(state, x, y, jnp.zeros(batch_size, jnp.int32)).jaxpr)
            chosen.append(steps_epoch if slow else scan_epoch)
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
                   batch_size: int = 1000, ops=None) -> Callable:
    """``evaluate(params, model_state, x, y) -> Evaluation`` in evaluation mode
    (``training=False``), compiled once and reused across calls."""
    ops = ops or jaxcnn.ops
    loss_fn = make_loss(model, loss, 0.0, ops)

    @jax.jit
    def batch_stats(params, model_state, xb, yb):
        value, (out, _) = loss_fn(params, model_state, xb, yb, training=False)
        pred = jnp.argmax(out, axis=-1)
        confusion = jnp.zeros((num_classes, num_classes), jnp.int32).at[yb, pred].add(1)
        probs = out if loss == "euclidean_loss" else ops.softmax(out)
        sse = jnp.sum((probs - jax.nn.one_hot(yb, num_classes, dtype=out.dtype)) ** 2)
        return value * xb.shape[0], confusion, sse

    def evaluate(params, model_state, x, y) -> Evaluation:
        total, sse, confusion = 0.0, 0.0, np.zeros((num_classes, num_classes), np.int64)
        for start in range(0, len(x), batch_size):
            value, conf, err = batch_stats(params, model_state, x[start:start + batch_size],
                                           y[start:start + batch_size])
            total += float(value)
            sse += float(err)
            confusion += np.asarray(conf)
        return Evaluation(total / len(x), float(np.trace(confusion) / len(x)), confusion, sse)

    return evaluate


def evaluate(model: Layer, params: Any, model_state: Any, x: np.ndarray, y: np.ndarray, num_classes: int,
             loss: str = "softmax_cross_entropy", batch_size: int = 1000, ops=None) -> Evaluation:
    """Mean data loss, accuracy and confusion matrix over ``(x, y)`` in evaluation mode, in
    jitted batches."""
    return make_evaluator(model, num_classes, loss, batch_size, ops)(params, model_state, x, y)


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict]
    test: Evaluation


def make_mesh(devices: int) -> Mesh:
    available = jax.devices()
    if not 1 <= devices <= len(available):
        raise ValueError(f"devices={devices} requested but {len(available)} available ({available[0].platform}).")
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
    devices: int = 1,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
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
    The test set is evaluated every ``eval_every`` epochs and at the end. With ``checkpoint_path`` the state is saved
    after every epoch; ``resume=True`` continues from it exactly (same final params as an
    uninterrupted run).

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
      Others as named; ``ops`` (default :mod:`jaxcnn.ops`) computes the loss and the
      evaluation, the model's own ops are chosen when it is built.

    Returns:
      The final state, the per-epoch history and the final test evaluation.
    """
    if (epochs is None) == (steps is None):
        raise ValueError("fit: give exactly one of `epochs` and `steps`.")
    n_train = len(data.x_train)
    if not 1 <= batch_size <= n_train:
        raise ValueError(f"fit: `batch_size` must be between 1 and the training set size {n_train}, got {batch_size}.")
    if batch_size % devices:
        raise ValueError(f"fit: `batch_size` {batch_size} must be divisible by devices={devices}.")
    steps_per_epoch = n_train // batch_size
    total_steps = steps if steps is not None else epochs * steps_per_epoch
    optimizer = optimizer or make_optimizer()
    input_shape = input_shape or (-1, *data.x_train.shape[1:])

    x_train = jnp.asarray(data.x_train.reshape(-1, *input_shape[1:]), dtype)
    y_train = jnp.asarray(data.y_train)
    x_test = data.x_test.reshape(-1, *input_shape[1:]).astype(dtype)

    key = jax.random.PRNGKey(seed)
    init_key, key = jax.random.split(key)
    params, model_state, _ = model.init(init_key, input_shape)
    params, model_state = jax.tree_util.tree_map(  # floating leaves only: a state may hold counters
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, (params, model_state))
    state = TrainState(params, model_state, optimizer.init(params), jnp.zeros((), jnp.int32), key)
    history: list[dict] = []
    if resume:
        if checkpoint_path is None or not os.path.exists(checkpoint_path):
            raise FileNotFoundError(f"fit: resume=True but there is no checkpoint at {checkpoint_path!r}.")
        state, meta = checkpoint.load(checkpoint_path, state)
        history = meta.get("history", [])

    mesh = make_mesh(devices) if devices > 1 else None
    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
        state = jax.device_put(state, replicated)
        x_train, y_train = jax.device_put((x_train, y_train), replicated)

    epoch_fn = make_epoch(make_step(make_loss(model, loss, weight_decay, ops), optimizer), batch_size, mesh, shuffle)
    evaluator = make_evaluator(model, data.num_classes, loss, ops=ops)
    def evaluate_(s):
        return evaluator(s.params, s.model_state, x_test, data.y_test)

    bar = _progress(total_steps, int(state.step), quiet)
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
        if checkpoint_path:
            checkpoint.save(checkpoint_path, state, {"history": history})
        bar.update(n, record)
    bar.close()
    return FitResult(state, history, evaluate_(state))


class _progress:
    """A tqdm bar over steps showing loss/accuracy; silent when not a terminal or quiet."""

    def __init__(self, total: int, done: int, quiet: bool):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=done, unit="step", dynamic_ncols=True)

    def update(self, n: int, record: dict) -> None:
        if self.bar is not None:
            shown = {k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "train_accuracy", "test_accuracy")}
            self.bar.set_postfix(shown)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


__all__ = [
    "Evaluation", "FitResult", "TrainState", "evaluate", "fit", "make_epoch", "make_evaluator", "make_loss",
    "make_mesh", "make_optimizer", "make_step", "weights",
]
