"""Jit-compiled training with optax, as pieces you can take apart: a train step, an epoch
iterator, callbacks, and :func:`fit`, which composes them under a frozen :class:`Config`.

The step is plain optax (:func:`make_step`): ``jax.value_and_grad`` of the loss (the
hand-derived rules of the model's ops run inside it), ``optimizer.update``,
``optax.apply_updates``. The lectures' recipe (Hu & Zhu, Jearanaitanakij) is mini-batch
SGD with learning rate α, optional momentum, and weight decay λ as the L2 penalty
``½ λ Σ w²`` on the weights (not the biases), whose gradient ``λ w`` comes from
:func:`jaxcnn.ops.l2_penalty`. The loss is a callable ``loss(outputs, labels)``
(:func:`jaxcnn.ops.softmax_cross_entropy` by default): the backend, hand rules or
autodiff, is chosen once, when the model and the loss are built.

Models carry state (:mod:`jaxcnn.nn`): the train state holds the model's state beside
its params (batch norm's running statistics), every step applies the model with
``training=True`` and a fresh PRNG key ``fold_in(key, step)`` (dropout), and keeps the
state it returns; evaluation applies it with ``training=False`` (running statistics, no
dropout). Checkpoints hold the model state, so a resumed run is bit-identical.

:func:`epochs` runs epoch after epoch and yields ``(state, record)``: when the training
set fits on the device an epoch — shuffling with the state's PRNG key, slicing batches,
every step — is one compiled loop (or, where XLA:CPU runs the step's convolutions
slowly inside a loop, one jitted donated step per batch; :func:`make_epoch`), called in
chunks of about a second: the progress bar moves after each, and a Ctrl-C or SIGTERM is
taken there, leaving a mid-epoch checkpoint that a resumed run continues exactly. :func:`fit`
calls its callbacks after every epoch, in this order: evaluation, the non-finite guard,
checkpointing, progress, the caller's callbacks and ``stop_when``.

Data parallelism: with ``devices=n`` a 1-D :class:`jax.sharding.Mesh` named ``"batch"``
holds the first n devices; the train state is replicated, every batch is split along
its first axis, and XLA inserts the gradient all-reduce. Over several processes or
hosts, call :func:`jaxcnn.distributed.initialize` first in every process: the same mesh
then spans every process's devices, the data stay on the host and each process feeds
only its share of each batch (the same loop, another data adaptor), and the mean loss,
its gradient and any batch statistics are computed over the global batch, as in a
single-device run (see :mod:`jaxcnn.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh

import jaxcnn.ops
from jaxcnn import _checks, _xla_cpu, checkpoint, distributed
from jaxcnn.data import Dataset
from jaxcnn.nn import Layer

#: A callback of :func:`fit`: ``callback(state, record)`` after every epoch; it may add to
#: the record, raise to stop the run, or return True to end it after this epoch.
Callback = Callable[["TrainState", dict], Optional[bool]]


class TrainState(NamedTuple):
    """Everything a run needs to continue exactly: params, model state (non-trainable,
    e.g. running statistics), optimiser state, step, PRNG key."""

    params: Any
    model_state: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def init_state(model: Layer, optimizer: optax.GradientTransformation, input_shape: Sequence[int], seed: int = 0,
               dtype: Any = jnp.float32) -> TrainState:
    """A fresh state at step 0: ``model.init`` with one half of ``PRNGKey(seed)`` (floating
    leaves cast to ``dtype``), the optimiser's state, and the other half as the key of the
    shuffling and of every step's dropout."""
    init_key, key = jax.random.split(jax.random.PRNGKey(seed))
    params, model_state, _ = model.init(init_key, tuple(input_shape))
    params, model_state = jax.tree_util.tree_map(  # floating leaves only: a state may hold counters
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, (params, model_state))
    return TrainState(params, model_state, optimizer.init(params), jnp.zeros((), jnp.int32), key)


#: The precision policies ``fit(precision=...)`` takes, as Keras names them: ``"float32"``
#: (everything in ``Config.dtype``) and ``"mixed_bfloat16"`` (:func:`mixed_precision`).
PRECISIONS = ("float32", "mixed_bfloat16")


def mixed_precision(model: Layer, compute: Any = jnp.bfloat16) -> Layer:
    """``model`` computed in ``compute`` while its params and state stay as stored (float32):
    the usual mixed-precision recipe, every cast at the model's boundary.

    ``apply`` casts the floating params and the input to ``compute``, runs ``model`` and casts
    its output to float32, so the loss (and its gradient's first step) is float32; the
    gradient reaches the float32 params through the casts, so the optimiser updates float32
    params. :class:`jaxcnn.nn.BatchNorm` normalises in its state's dtype (float32: batch
    statistics, running statistics and the normalisation; cast in and out). ``init`` is the
    model's: the same params, saved and loaded as the model's.
    """
    dtype = jnp.dtype(compute)

    def cast(tree):
        return jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    def apply(params, state, x, *, training=False, key=None):
        y, state = model.apply(cast(params), state, cast(x), training=training, key=key)
        return y.astype(jnp.float32), state

    return Layer(model.init, apply, name=f"mixed_precision({model.name}, {dtype.name})", children=(model,))


def make_optimizer(name: str = "adam", lr: float = 1e-2, momentum: float = 0.0) -> optax.GradientTransformation:
    """``"sgd"`` (with optional ``momentum``, the lectures' recipe) or ``"adam"``.

    Raises:
      ValueError: an unknown ``name``, ``lr`` not finite and positive, ``momentum`` not in ``[0, 1)``,
        or a ``momentum`` with ``"adam"`` (which keeps its own moment estimates: pass an optax
        ``adam(lr, b1=...)`` as the optimizer to set them).
    """
    _checks.number("make_optimizer", "lr", lr, low=0.0, low_open=True)
    _checks.number("make_optimizer", "momentum", momentum, low=0.0, high=1.0)
    if name == "sgd":
        return optax.sgd(lr, momentum=momentum or None)
    if name == "adam":
        if momentum:
            raise ValueError(f"make_optimizer: `momentum` is SGD's; 'adam' keeps its own moment estimates, got "
                             f"momentum={momentum} with 'adam' (pass optimizer='sgd', or optax.adam(lr, b1=...)).")
        return optax.adam(lr)
    raise ValueError(f"make_optimizer: unknown optimizer {name!r}; use 'sgd' or 'adam'.")


def weights(params: Any) -> Any:
    """The leaves of ``params`` stored under a ``"w"`` key (weights, not biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaf if path and getattr(path[-1], "key", None) == "w" else None, params
    )


@dataclasses.dataclass(frozen=True)
class OneHotTargets:
    """A loss written against one-hot targets, such as :func:`jaxcnn.ops.euclidean_loss`,
    called with class ids: ``OneHotTargets(ops.euclidean_loss)(outputs, labels)`` compares
    the outputs with ``one_hot(labels)``. Evaluation then scores the outputs themselves as
    the probabilities (the SSE of :class:`Evaluation`), not their softmax."""

    loss: Callable

    def __call__(self, outputs: jax.Array, labels: jax.Array) -> jax.Array:
        return self.loss(outputs, jax.nn.one_hot(labels, outputs.shape[-1], dtype=outputs.dtype))


def _name(fn: Callable) -> str:
    """A loss's name for the fingerprint; jaxcnn.reference's functions go by the ops' names."""
    fn = fn.loss if isinstance(fn, OneHotTargets) else fn
    return getattr(fn, "__name__", type(fn).__name__).removesuffix("_reference")


def make_loss(model: Layer, loss: Callable = jaxcnn.ops.softmax_cross_entropy, weight_decay: float = 0.0,
              penalty: Callable = jaxcnn.ops.l2_penalty) -> Callable:
    """``loss_fn(params, model_state, x, y, *, training=True, key=None) -> (loss, (outputs,
    model_state))``: ``loss(outputs, y) + penalty(weights, λ)`` (``½ λ Σ w²``) for integer
    labels ``y``, the model's outputs and its new state (differentiate with ``has_aux=True``).

    Raises:
      TypeError: ``loss`` is not callable (a loss name: pass the function).
      ValueError: ``weight_decay`` not finite and >= 0.
    """
    if not callable(loss):
        raise TypeError(f"make_loss: `loss` must be a callable loss(outputs, labels), e.g. "
                        f"jaxcnn.ops.softmax_cross_entropy or train.OneHotTargets(jaxcnn.ops.euclidean_loss), "
                        f"got {loss!r} ({type(loss).__name__}).")
    weight_decay = _checks.number("make_loss", "weight_decay", weight_decay, low=0.0)

    def loss_fn(params, model_state, x, y, *, training=True, key=None):
        out, model_state = model.apply(params, model_state, x, training=training, key=key)
        data = loss(out, y)
        if weight_decay:
            data = data + penalty(weights(params), jnp.asarray(weight_decay, data.dtype))
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


# --------------------------------------------------------------------------- epochs


@dataclasses.dataclass(frozen=True)
class _OnDevice:
    """The training set on the device(s) (replicated over a mesh): the compiled program
    receives each batch's row indices and gathers the rows itself."""

    mesh: Optional[Mesh]

    def place(self, x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        return (x, y) if self.mesh is None else distributed.replicate((x, y), self.mesh)

    def resident(self, x, y):
        return x, y

    def feed(self, x, y, rows):
        return rows

    def take(self, resident, rows):
        x, y = resident
        return x[rows], y[rows]


@dataclasses.dataclass(frozen=True)
class _HostFeed:
    """A mesh over several processes: the training set stays on the host, the same in every
    process, and each process transfers only its own rows of every global batch
    (:func:`jaxcnn.distributed.feed`); nothing is resident on the devices."""

    mesh: Mesh

    def place(self, x, y):
        return np.asarray(x), np.asarray(y)

    def resident(self, x, y):
        return ()

    def feed(self, x, y, rows):
        rows = np.asarray(rows)
        return distributed.feed(x, rows, self.mesh), distributed.feed(y, rows, self.mesh)

    def take(self, resident, fed):
        return fed


def _data_on(mesh: Optional[Mesh]) -> Union[_OnDevice, _HostFeed]:
    return _HostFeed(mesh) if mesh is not None and mesh.is_multi_process else _OnDevice(mesh)


def _steps_beat_scan(step_jaxpr: Any, platform: str) -> bool:
    """The one predicate behind ``loop="auto"``: whether a step is better dispatched batch
    by batch than scanned. Only on XLA:CPU, and only for a step with a convolution that it
    compiles to far slower code inside a loop body than at the top level of a program
    (autodiff's transposed convolutions; performance.md, "Scan vs steps")."""
    return platform == "cpu" and _xla_cpu.has_slow_loop_convolution(step_jaxpr)


#: The time one compiled call of ``chunk="auto"`` aims at: the bar moves and a Ctrl-C is taken
#: that often, with one host round trip per call (performance.md, "Scan vs steps").
_CHUNK_SECONDS = 1.0


def make_epoch(step: Callable, batch_size: int, mesh: Optional[Mesh] = None, shuffle: bool = True,
               loop: str = "auto") -> Callable:
    """``epoch(state, x, y, num_steps, *, start=0, chunk=None, after_chunk=None) -> (state, losses, accuracies)``.

    Shuffles with a key split off ``state.key`` (or, with ``shuffle=False``, keeps the
    examples in their stored order, as the lectures' per-pattern updates do) and runs
    ``num_steps`` steps of ``batch_size`` examples. The incoming state's buffers are donated.

    ``x``, ``y`` are the whole training set: on the device, or, with a ``mesh`` (a 1-D
    :class:`jax.sharding.Mesh` named ``"batch"``, the state replicated on it) replicated on
    it, every batch then split over its devices (unevenly when ``batch_size`` does not
    divide by their number). When the mesh spans several processes (:mod:`jaxcnn.distributed`)
    ``x`` and ``y`` are NumPy arrays on the host, the same in every process: each process
    computes the same permutation and transfers only its own rows of each global batch.
    The two are data adaptors of one loop.

    ``loop`` says how the steps run; both give the same batches and the same updates:

    * ``"scan"``: one compiled loop over the steps (their number a run-time argument: one
      program for every chunk and epoch length) — no host round trip per step, the fastest
      on GPUs and TPUs;
    * ``"steps"``: one jitted, donated step per batch dispatched from Python;
    * ``"auto"`` (default): ``"steps"`` where ``_steps_beat_scan`` says so (the step is
      traced for it, once per shape: JAX caches the trace), else ``"scan"``. ``jaxcnn.ops``
      writes all of its convolutions in XLA:CPU's canonical form, so their steps scan.

    The epoch runs in chunks of ``chunk`` steps (None: all at once; ``"auto"``: about a
    second each, timed as it goes), and after each ``after_chunk(state, done, losses,
    accuracies)`` is called with the state as a mid-epoch checkpoint keeps it (its key the
    one the epoch was shuffled with), the steps ``done`` and their metrics; it returns True
    to end the epoch there. ``start`` continues such a state from step ``start`` of its
    epoch. Chunks change no bit of the result: the same program runs the same steps.
    """
    if loop not in ("auto", "scan", "steps"):
        raise ValueError(f"make_epoch: unknown `loop` {loop!r}; use 'auto', 'scan' or 'steps'.")
    data = _data_on(mesh)

    def mesh_step(state, batch):  # cuts a fed batch's padding; splits the batch over the mesh (unevenly if need be)
        if mesh is not None:
            batch = tuple(distributed.unpad(a, batch_size, mesh) for a in batch)
        return step(state, batch)

    def order(key, n: int, num_steps: int):
        key, shuffle_key = jax.random.split(key)
        rows = jax.random.permutation(shuffle_key, n) if shuffle else jnp.arange(n)
        return key, rows[: num_steps * batch_size].reshape(num_steps, batch_size)

    def steps_from(state, resident, fed, start, stop):  # steps start .. stop-1 of the epoch, in one loop
        def body(i, carry):
            state, losses, accuracies = carry
            item = jax.tree_util.tree_map(lambda a: lax.dynamic_index_in_dim(a, i, keepdims=False), fed)
            state, (loss, accuracy) = mesh_step(state, data.take(resident, item))
            return state, losses.at[i].set(loss), accuracies.at[i].set(accuracy)

        n = jax.tree_util.tree_leaves(fed)[0].shape[0]
        first = jax.tree_util.tree_map(lambda a: a[0], fed)
        _, metrics = jax.eval_shape(lambda s, item: mesh_step(s, data.take(resident, item)), state, first)
        return lax.fori_loop(start, stop, body, (state, *(jnp.zeros(n, m.dtype) for m in metrics)))

    order, traced = jax.jit(order, static_argnums=(1, 2)), jax.jit(mesh_step)
    steps_from = jax.jit(steps_from, donate_argnums=0)
    one_step = jax.jit(lambda state, resident, item: mesh_step(state, data.take(resident, item)), donate_argnums=0)
    timed = {"per_step": None, "count": 1}  # chunk="auto": seconds per step and steps per call, as last timed

    def batch_like(x, y):
        return tuple(jax.ShapeDtypeStruct((batch_size, *a.shape[1:]), a.dtype) for a in (x, y))

    def scans(state, x, y) -> bool:
        if loop != "auto":
            return loop == "scan"
        batch = batch_like(x, y)
        platform = (jax.devices()[0] if mesh is None else mesh.devices.flat[0]).platform
        return not _steps_beat_scan(traced.trace(state, batch).jaxpr.jaxpr, platform)

    def size(chunk, done: int, num_steps: int) -> int:
        if chunk is None:
            return num_steps - done
        if chunk != "auto":
            return min(chunk, num_steps - done)
        if timed["per_step"] is None:  # the first call compiles: one step, then timed ones, growing at most 4-fold
            return 1
        return max(1, min(num_steps - done, 4 * timed["count"], int(_CHUNK_SECONDS / timed["per_step"])))

    def epoch(state: TrainState, x, y, num_steps: int, *, start: int = 0, chunk: Union[None, int, str] = None,
              after_chunk: Optional[Callable] = None):
        if not (chunk is None or chunk == "auto" or isinstance(chunk, int) and chunk >= 1):
            raise ValueError(f"make_epoch: `chunk` must be None, 'auto' or a number of steps >= 1, got {chunk!r}.")
        if not 0 <= start <= num_steps <= len(x) // batch_size:
            raise ValueError(f"make_epoch: need 0 <= start <= num_steps <= {len(x) // batch_size} (the whole batches "
                             f"of {len(x)} examples), got start={start}, num_steps={num_steps}.")
        x, y = data.place(x, y)  # a no-op for data already placed
        # Always the whole epoch's order: an epoch cut short runs the same program, fewer steps.
        epoch_key, (key, rows) = state.key, order(state.key, len(x), len(x) // batch_size)
        state, resident, scanned = state._replace(key=key), data.resident(x, y), scans(state, x, y)
        fed = data.feed(x, y, rows) if scanned else None
        losses, accuracies, done = [], [], start
        while done < num_steps:
            count, began = size(chunk, done, num_steps), time.perf_counter()
            if scanned:
                state, chunk_losses, chunk_accuracies = steps_from(state, resident, fed, done, done + count)
                metrics = [np.asarray(chunk_losses)[done:done + count], np.asarray(chunk_accuracies)[done:done + count]]
            else:
                metrics = []
                for item in np.asarray(rows[done:done + count]):
                    state, metric = one_step(state, resident, data.feed(x, y, item))
                    metrics.append(metric)
                metrics = [np.asarray(jnp.stack(m)) for m in zip(*metrics)]
            timed.update(per_step=(time.perf_counter() - began) / count, count=count)
            losses.append(metrics[0])
            accuracies.append(metrics[1])
            done += count
            if after_chunk is not None and after_chunk(state._replace(key=epoch_key), done, np.concatenate(losses),
                                                      np.concatenate(accuracies)):
                break
        if not losses:  # no step to run: empty metrics of the step's dtypes
            losses, accuracies = ([np.zeros(0, m.dtype)] for m in jax.eval_shape(traced, state, batch_like(x, y))[1])
        return state, np.concatenate(losses), np.concatenate(accuracies)

    return epoch


def epochs(step: Callable, state: TrainState, x, y, *, batch_size: int, steps: int, shuffle: bool = True,
           mesh: Optional[Mesh] = None, loop: str = "auto", epochs_done: int = 0, step_losses: bool = False,
           chunk: Union[None, int, str] = "auto", epoch_in_progress: Optional[dict] = None,
           on_chunk: Optional[Callable[[int], Any]] = None,
           on_interrupt: Optional[Callable[[TrainState, dict], Any]] = None) -> Iterator[tuple[TrainState, dict]]:
    """Trains epoch after epoch (:func:`make_epoch`; a trailing partial batch is dropped)
    until ``state.step`` reaches ``steps``, the last epoch cut short, and yields
    ``(state, record)`` after each. The record: ``epoch`` (counted on from ``epochs_done``),
    ``step``, ``train_loss`` and ``train_accuracy`` (means over the epoch's steps),
    ``seconds``, and with ``step_losses`` every step's loss (the loss its update came from).

    Each epoch runs in chunks of steps (``chunk``: about a second each by default; see
    :func:`make_epoch`), and after each chunk ``on_chunk(step)`` is called (the bar of
    :class:`Progress` moves). A SIGINT or SIGTERM (Ctrl-C, ``kill``, a batch system) that
    arrives in an epoch is taken after the chunk running: ``on_interrupt(state,
    epoch_in_progress=...)`` is called with the state reached and where it stands in its epoch
    (``{"epoch", "step", "steps", "losses", "accuracies", "seconds"}``; the state's key the
    one the epoch was shuffled with), e.g. to save it, then the signal is delivered to the
    handler it would have reached (Python's raises ``KeyboardInterrupt``). Such a state and
    its ``epoch_in_progress`` continue the epoch where it stopped, to the same final state
    as an uninterrupted run, bit for bit. In a run over several processes signals are not
    held back (they would have to be agreed on between processes).

    The training set is placed once, where ``mesh`` says (:func:`make_epoch`); each state
    yielded is donated to the next epoch: copy it (``jax.tree.map(jnp.copy, state)``) to
    keep it beyond the next iteration.
    """
    if not 1 <= batch_size <= len(x):
        raise ValueError(f"epochs: `batch_size` must be between 1 and the training set size {len(x)}, got "
                         f"{batch_size}.")
    epoch = make_epoch(step, batch_size, mesh, shuffle, loop)
    x, y = _data_on(mesh).place(x, y)
    steps_per_epoch, number, part = len(x) // batch_size, epochs_done, epoch_in_progress
    multiprocess = distributed.is_multiprocess()  # every process must run the same chunks: no timing, no signals
    chunk = None if multiprocess and chunk == "auto" else chunk
    while part is not None or int(state.step) < steps:
        start = time.perf_counter()
        done = part["step"] if part else 0
        num_steps = min(steps_per_epoch, steps - int(state.step) + done)
        previous = (np.asarray(part["losses"]), np.asarray(part["accuracies"]), part["seconds"]) if part else \
            (np.zeros(0), np.zeros(0), 0.0)  # exact values of the step's dtype, cast back to it below
        number, part, stopped = number + 1, None, []

        def after_chunk(state, done, losses, accuracies):
            if on_chunk is not None:
                on_chunk(int(state.step))
            if signals:
                stopped.append((state, {"epoch": number, "step": done, "steps": num_steps,
                                        "losses": np.concatenate([previous[0], losses], dtype=float).tolist(),
                                        "accuracies": np.concatenate([previous[1], accuracies], dtype=float).tolist(),
                                        "seconds": previous[2] + time.perf_counter() - start}))
                if on_interrupt is not None:
                    on_interrupt(stopped[-1][0], epoch_in_progress=stopped[-1][1])
            return bool(signals)

        # A signal is taken between chunks, and delivered when the block ends.
        with contextlib.nullcontext([]) if multiprocess else checkpoint._interrupts_deferred() as signals:
            state, losses, accuracies = epoch(state, x, y, num_steps, start=done, chunk=chunk, after_chunk=after_chunk)
        if stopped:  # its handler did not raise: the epoch goes on
            (state, part), number = stopped[-1], number - 1
            continue
        losses, accuracies = (np.concatenate([p.astype(m.dtype), m]) for p, m in zip(previous, (losses, accuracies)))
        record = {"epoch": number, "step": int(state.step), "train_loss": float(losses.mean()),
                  "train_accuracy": float(accuracies.mean()), "seconds": previous[2] + time.perf_counter() - start}
        if step_losses:
            record["step_losses"] = losses.tolist()
        yield state, record


# --------------------------------------------------------------------------- evaluation


class Evaluation(NamedTuple):
    """A model's scores on a dataset.

    Attributes:
      loss: mean data loss (no weight decay).
      accuracy: fraction of arg-max predictions equal to the label.
      confusion: ``[true class, predicted class]`` counts, ``(num_classes, num_classes)``.
      sse: summed squared error ``Σ_n ‖p_n − t_n‖²`` of the output probabilities ``p``
        (the softmax of the logits, or the outputs themselves under a loss against one-hot
        targets, :class:`OneHotTargets`: the Euclidean loss) against the one-hot labels
        ``t`` — the "SSE" of the Jearanaitanakij lecture's comparison table.
    """

    loss: float
    accuracy: float
    confusion: np.ndarray
    sse: float


def make_evaluator(model: Layer, num_classes: int, loss: Callable = jaxcnn.ops.softmax_cross_entropy,
                   batch_size: int = 1000, mesh: Optional[Mesh] = None) -> Callable:
    """``evaluate(params, model_state, x, y) -> Evaluation`` in evaluation mode
    (``training=False``), compiled once and reused across calls.

    With a ``mesh`` each batch is split over its devices, and over its processes when it
    spans several: every process then passes the whole ``x``, ``y`` (NumPy, on the host)
    but transfers only its own rows, so the set is evaluated once, not once per process.
    """
    loss_fn = make_loss(model, loss)

    @functools.partial(jax.jit, static_argnums=4)
    def batch_stats(params, model_state, xb, yb, size):
        if mesh is not None:
            xb, yb = distributed.unpad(xb, size, mesh), distributed.unpad(yb, size, mesh)
        value, (out, _) = loss_fn(params, model_state, xb, yb, training=False)
        if out.shape[-1] != num_classes:  # a prediction >= num_classes would drop out of the confusion matrix
            raise ValueError(f"evaluate: the model has {out.shape[-1]} outputs but num_classes={num_classes}.")
        pred = jnp.argmax(out, axis=-1)
        confusion = jnp.zeros((num_classes, num_classes), jnp.int32).at[yb, pred].add(1)
        probs = out if isinstance(loss, OneHotTargets) else jax.nn.softmax(out)
        sse = jnp.sum((probs - jax.nn.one_hot(yb, num_classes, dtype=out.dtype)) ** 2)
        return value * xb.shape[0], confusion, sse

    def evaluate(params, model_state, x, y) -> Evaluation:
        _checks.examples("evaluate", "x", x, "y", y, num_classes)
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
             loss: Callable = jaxcnn.ops.softmax_cross_entropy, batch_size: int = 1000) -> Evaluation:
    """Mean data loss, accuracy and confusion matrix over ``(x, y)`` in evaluation mode, in
    jitted batches.

    Raises:
      ValueError: ``x`` and ``y`` differ in length or are empty, a label is outside
        ``[0, num_classes)``, an input is not finite, or the model does not have
        ``num_classes`` outputs: every example lands in the confusion matrix, none is dropped.
    """
    return make_evaluator(model, num_classes, loss, batch_size)(params, model_state, x, y)


# --------------------------------------------------------------------------- the configuration


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything :func:`fit` is told besides the model and the data: frozen, checked when
    built, and, less the fields that only steer the run (:attr:`RUN_CONTROL`), the JSON
    fingerprint a resumed run must match (:meth:`fingerprint`).

    Attributes:
      epochs, steps: how long to train, exactly one of them (``steps`` cuts the last epoch short).
      batch_size: examples per step; a trailing partial batch is dropped every epoch.
      loss: ``loss(outputs, labels)`` on integer labels: :func:`jaxcnn.ops.softmax_cross_entropy`
        (default), ``jaxcnn.reference.softmax_cross_entropy``, or ``OneHotTargets(ops.euclidean_loss)``.
      penalty: ``penalty(weights, λ)``, the weight decay's ``½ λ Σ w²`` (:func:`jaxcnn.ops.l2_penalty`).
      optimizer, lr, momentum: ``"adam"`` or ``"sgd"`` with its learning rate and momentum
        (:func:`make_optimizer`), or any optax transformation (then it holds them: ``lr``
        and ``momentum`` stay at their defaults and out of the fingerprint).
      weight_decay: λ >= 0 of the L2 penalty on the weights (not the biases).
      seed: the PRNG seed of the initialisation, the shuffling and dropout.
      devices: data-parallel devices; None: 1, or every device of every process in a
        multi-process run.
      dtype: the floating dtype of the params and the inputs.
      precision: ``"float32"`` (default: everything in ``dtype``) or ``"mixed_bfloat16"``: params,
        optimiser and model state in float32 (``dtype`` must be float32), the model computed in
        bfloat16 with batch norm and the loss in float32 (:func:`mixed_precision`).
      shuffle: reshuffle the training set every epoch; ``False`` visits it in stored
        order (the lectures' pattern-by-pattern updates with ``batch_size=1``).
      input_shape: the model's input shape ``(-1, *dims)``; None: the data's.
      eval_every: evaluate the test set every this many epochs and at the end; 0: at the end only.
      step_losses: also keep every step's training loss in the records (``step_losses``).
      checkpoint_path: save the state there after every epoch.
      resume: continue from ``checkpoint_path`` exactly (the same final state as an
        uninterrupted run); refused when the fingerprint differs, unless ``allow_changed_settings``.
      overwrite: start over, replacing a checkpoint; without it or ``resume`` none is replaced.
      allow_changed_settings: resume even from a checkpoint written under another fingerprint.
      quiet: no progress display.
      settings: JSON-able settings of the caller's own for the fingerprint (the command
        line adds the model, dataset and backend); no key may repeat a fingerprint key.
    """

    epochs: Optional[int] = None
    steps: Optional[int] = None
    batch_size: int = 100
    loss: Callable = jaxcnn.ops.softmax_cross_entropy
    penalty: Callable = jaxcnn.ops.l2_penalty
    optimizer: Union[str, optax.GradientTransformation] = "adam"
    lr: float = 1e-2
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    devices: Optional[int] = None
    dtype: Any = "float32"
    precision: str = "float32"
    shuffle: bool = True
    input_shape: Optional[tuple[int, ...]] = None
    eval_every: int = 1
    step_losses: bool = False
    checkpoint_path: Optional[str] = None
    resume: bool = False
    overwrite: bool = False
    allow_changed_settings: bool = False
    quiet: bool = False
    settings: Optional[dict] = None

    #: Fields that steer a run without changing what it computes: left out of the fingerprint.
    RUN_CONTROL = ("epochs", "steps", "eval_every", "step_losses", "checkpoint_path", "resume", "overwrite",
                   "allow_changed_settings", "quiet")

    def __post_init__(self):
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("fit: give exactly one of `epochs` and `steps`.")
        for name in ("epochs", "steps", "batch_size", "devices"):
            if getattr(self, name) is not None:
                _checks.integer("fit", name, getattr(self, name), 1)
        _checks.integer("fit", "seed", self.seed, *_checks.SEED_RANGE)
        _checks.integer("fit", "eval_every", self.eval_every, 0)
        _checks.number("fit", "weight_decay", self.weight_decay, low=0.0)
        for name in ("loss", "penalty"):
            if not callable(getattr(self, name)):
                raise TypeError(f"fit: `{name}` must be a callable, e.g. jaxcnn.ops.softmax_cross_entropy (the "
                                f"command line alone takes loss names), got {getattr(self, name)!r}.")
        if isinstance(self.optimizer, str):
            make_optimizer(self.optimizer, self.lr, self.momentum)
        elif not isinstance(self.optimizer, optax.GradientTransformation):
            raise TypeError(f"fit: `optimizer` must be 'adam', 'sgd' or an optax GradientTransformation, got "
                            f"{self.optimizer!r}.")
        elif (self.lr, self.momentum) != (Config.lr, Config.momentum):  # the defaults: unset
            raise ValueError(f"fit: `lr` and `momentum` set a named optimizer; an optax `optimizer` holds its own "
                             f"(got lr={self.lr}, momentum={self.momentum}).")
        dtype = jnp.dtype(self.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"fit: `dtype` must be a floating dtype (float32, float64, bfloat16), got {dtype}.")
        object.__setattr__(self, "dtype", dtype.name)
        if self.precision not in PRECISIONS:
            raise ValueError(f"fit: `precision` must be one of {', '.join(map(repr, PRECISIONS))}, got "
                             f"{self.precision!r}.")
        if self.precision != "float32" and dtype != jnp.float32:
            raise ValueError(f"fit: precision={self.precision!r} keeps the params in float32 and computes in "
                             f"bfloat16; `dtype` must be float32, got {dtype.name}.")
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", _checks.input_shape("fit", self.input_shape))
        try:
            json.dumps(self.settings)
        except TypeError as e:
            raise TypeError(f"fit: `settings` must be JSON-able (a dict of numbers, strings, lists ...): {e}.") from e
        clash = sorted(set(self.settings or {}) & {*self._fingerprinted(), "input_shape", "num_classes",
                                                   "data_fingerprint"})
        if clash:
            raise ValueError(f"fit: `settings` may not repeat {clash[0]!r}, a key the config already puts in the "
                             f"fingerprint.")

    def make_optimizer(self) -> optax.GradientTransformation:
        """The optax transformation: :func:`make_optimizer` of the name, or the one given."""
        return self.optimizer if not isinstance(self.optimizer, str) else make_optimizer(self.optimizer, self.lr,
                                                                                         self.momentum)

    def to_json(self) -> dict:
        """The fields as JSON gives them back: callables by name; an optax optimizer as ``"optax"``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.update(loss=_name(self.loss), penalty=_name(self.penalty))
        if not isinstance(self.optimizer, str):
            fields.update(optimizer="optax", lr=None, momentum=None)
        return json.loads(json.dumps(fields))

    def _fingerprinted(self) -> dict:
        # The default precision leaves no trace: checkpoints written before the field resume.
        return {k: v for k, v in self.to_json().items() if k not in (*self.RUN_CONTROL, "penalty", "settings")
                and not (k in ("lr", "momentum") and v is None) and not (k == "precision" and v == "float32")}

    def fingerprint(self, data: Dataset, input_shape: Sequence[int]) -> dict:
        """What a resumed run must share: the fields less :attr:`RUN_CONTROL` and ``penalty``
        (its name is the same in either backend), and less an optax optimizer's unset ``lr``
        and ``momentum``; the caller's ``settings`` beside them; the input shape,
        the number of classes and a digest of the data (a changed dataset under the same
        name is caught too)."""
        digest = hashlib.blake2b(digest_size=8)
        for a in data[:4]:
            a = np.ascontiguousarray(a)
            digest.update(f"{a.dtype}{a.shape}".encode())
            digest.update(a.data)
        return {**self._fingerprinted(), **json.loads(json.dumps(self.settings or {})),
                "input_shape": list(input_shape), "num_classes": data.num_classes,
                "data_fingerprint": digest.hexdigest()}


# --------------------------------------------------------------------------- callbacks


class NonFiniteError(FloatingPointError, ValueError):
    """Training diverged: a loss or the train state is no longer finite. (A ValueError
    too: the command line reports it in one line and exits with status 2.)"""


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _refuse_non_finite(state: TrainState, record: dict, path: Optional[str]) -> None:
    bad = [f"{k.replace('_', ' ')} {record[k]}" for k in ("train_loss", "test_loss")
           if k in record and not math.isfinite(record[k])]
    if not bad and bool(_all_finite((state.params, state.model_state, state.opt_state))):
        return
    kept = "" if not path else f"; {path} still holds the last finite epoch saved" if os.path.exists(path) else \
        "; no checkpoint was written"
    raise NonFiniteError(
        f"fit: training diverged in epoch {record['epoch']} (step {record['step']}): "
        f"{', '.join(bad) or 'the params or the optimiser state are no longer finite'}. Stopped without saving "
        f"it{kept}. Lower the learning rate, or look for extreme values in the data.")


def stop_on_non_finite(checkpoint_path: Optional[str] = None) -> Callback:
    """Raises :class:`NonFiniteError` once the epoch's training or test loss, or any
    floating leaf of the params, model state or optimiser state, is NaN or infinite:
    diverged training never continues (``checkpoint_path`` is only named in the message)."""
    return lambda state, record: _refuse_non_finite(state, record, checkpoint_path)


def checkpointing(path: str, history: list, settings: dict) -> Callback:
    """Saves the state after every epoch to ``path``, atomically, with ``history`` (the
    list the records go to) and the run's fingerprint ``settings``. A state that is not
    finite is refused (:class:`NonFiniteError`): the file only ever holds finite states.

    Called as ``save(state, epoch_in_progress=...)`` (the ``on_interrupt`` of :func:`epochs`),
    it writes a mid-epoch checkpoint, which ``resume`` continues from that step of the epoch;
    one that is not finite is not written (the file keeps the last finite state)."""
    def save(state, record=None, *, epoch_in_progress=None):
        if epoch_in_progress is None:
            _refuse_non_finite(state, record, path)
            checkpoint.save(path, state, {"history": history, "settings": settings})
        elif np.isfinite(epoch_in_progress["losses"]).all() and bool(
                _all_finite((state.params, state.model_state, state.opt_state))):
            checkpoint.save(path, state, {"history": history, "settings": settings,
                                          "epoch_in_progress": epoch_in_progress})

    return save


def evaluation(evaluate: Callable[[TrainState], Evaluation], every: int, steps: int) -> Callback:
    """Adds ``test_loss``, ``test_accuracy`` and ``test_sse`` (:class:`Evaluation`) to the
    record every ``every`` epochs and when ``state.step`` reaches ``steps``; never with ``every=0``."""
    def add(state, record):
        if every and (record["epoch"] % every == 0 or record["step"] >= steps):
            ev = evaluate(state)
            record.update(test_loss=ev.loss, test_accuracy=ev.accuracy, test_sse=ev.sse)

    return add


class Progress(contextlib.AbstractContextManager):
    """Progress over steps showing loss/accuracy: a tqdm bar on a terminal, moving after
    every chunk of steps (:meth:`advance`, with tqdm's rate and time left), or lines on
    stderr otherwise (a log file, ``jaxcnn launch``'s forwarded output): one per epoch, and
    within an epoch one at most every 30 seconds with the rate and the time left; silent
    when quiet. A callback, and a context manager that closes the bar."""

    LINE_SECONDS = 30.0

    def __init__(self, total: int, done: int, quiet: bool = False):
        self.bar, self.lines, self.total, self.done = None, False, total, done
        self.shown, self.since = done, (time.monotonic(), done)  # the step the bar shows; the last line's time, step
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

    def advance(self, step: int) -> None:
        """Within an epoch: ``step`` steps are done (the ``on_chunk`` of :func:`epochs`)."""
        if self.bar is not None:
            self.bar.update(step - self.shown)
        elif self.lines and time.monotonic() - self.since[0] >= self.LINE_SECONDS:
            rate = (step - self.since[1]) / (time.monotonic() - self.since[0])
            left = f", {(self.total - step) / rate:.0f} s left" if rate > 0 else ""
            print(f"step {step}/{self.total}: {rate:.3g} steps/s{left}", file=sys.stderr, flush=True)
            self.since = (time.monotonic(), step)
        self.shown = step

    def __call__(self, state: TrainState, record: dict) -> None:
        shown = {k: f"{v:.4f}" for k, v in record.items() if k in ("train_loss", "train_accuracy", "test_accuracy")}
        self.done = record["step"]
        if self.bar is not None:
            self.bar.set_postfix(shown)
            self.bar.update(self.done - self.shown)
        elif self.lines:
            self.since = (time.monotonic(), self.done)
            print(f"epoch {record['epoch']}, step {self.done}/{self.total}: "
                  + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in shown.items()), file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- fit


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict]
    test: Evaluation


def check_devices(devices: int, argument: str = "devices={}") -> None:
    """Raises unless ``devices`` (1 or more) are present; on CPU the message names the XLA flag
    that gives one process more. ``argument`` is how the caller spells the setting."""
    available = jax.devices()
    if not 1 <= devices <= len(available):
        hint = (f"; on CPU, XLA_FLAGS=--xla_force_host_platform_device_count={devices} (set before JAX starts) "
                f"gives one process {devices} devices" if available[0].platform == "cpu" else "")
        raise ValueError(f"{argument.format(devices)} requested but {len(available)} available "
                         f"({available[0].platform}){hint}.")


def make_mesh(devices: int) -> Mesh:
    """A 1-D mesh named ``"batch"`` over the first ``devices`` of ``jax.devices()`` (every
    process's devices once :func:`jaxcnn.distributed.initialize` has run; then it must
    span all of them, or some processes would have no device in the program)."""
    check_devices(devices)
    available = jax.devices()
    if distributed.is_multiprocess() and devices != len(available):
        raise ValueError(f"devices={devices} requested, but a run over {jax.process_count()} processes trains on "
                         f"all of their {len(available)} devices: pass devices={len(available)} or None.")
    return Mesh(np.array(available[:devices]), ("batch",))


def fit(model: Layer, data: Dataset, config: Optional[Config] = None, /, *, callbacks: Sequence[Callback] = (),
        stop_when: Optional[Callable[[dict], bool]] = None, **options) -> FitResult:
    """Trains ``model`` on ``data`` under ``config`` (:class:`Config`; keyword ``options``
    are its fields, replacing the config's) and returns the final state, the history (one
    record per epoch, :func:`epochs`) and the final test evaluation.

    Composes :func:`init_state`, :func:`make_step` of :func:`make_loss` and :func:`epochs`,
    calling after every epoch :func:`evaluation`, :func:`stop_on_non_finite`,
    :func:`checkpointing` (process 0), :class:`Progress`, ``callbacks`` and ``stop_when``
    (called with the record; training stops once it returns True). Everything is checked
    before the first step: the config, the data (inputs and labels pair up, labels are
    class ids, inputs are finite, the test set is not empty), the checkpoint's place.

    Raises:
      TypeError, ValueError: a bad option or dataset, before any work.
      FileNotFoundError: ``resume`` without a checkpoint.
      NonFiniteError: the training diverged (the checkpoint keeps the last finite epoch).
    """
    config = _configure(config, options)
    if config.precision == "mixed_bfloat16":
        model = mixed_precision(model, jnp.bfloat16)
    x_train, x_test, input_shape = _inputs(data, config)
    fingerprint = config.fingerprint(data, input_shape)
    _checks.run_location(config.checkpoint_path, config.resume, config.overwrite)
    optimizer = config.make_optimizer()
    state, history, part = init_state(model, optimizer, input_shape, config.seed, config.dtype), [], None
    if config.resume:
        state, history, part = _resume(config, state, fingerprint)
    steps = config.steps or config.epochs * (len(x_train) // config.batch_size)
    distributed.assert_same(np.array([len(x_train), len(x_test), config.batch_size, steps, int(state.step)]),
                            "fit's settings (training/test set sizes, batch size, total steps, resumed step)")
    devices = config.devices or (jax.device_count() if distributed.is_multiprocess() else 1)
    mesh = make_mesh(devices) if devices > 1 or distributed.is_multiprocess() else None
    state = state if mesh is None else distributed.replicate(state, mesh)
    evaluator = make_evaluator(model, data.num_classes, config.loss, mesh=mesh)

    def test(s):
        return evaluator(s.params, s.model_state, x_test, data.y_test)

    path = config.checkpoint_path if distributed.is_primary() else None
    step = make_step(make_loss(model, config.loss, config.weight_decay, config.penalty), optimizer)
    save = checkpointing(path, history, fingerprint) if path else None
    with Progress(steps, int(state.step), config.quiet or not distributed.is_primary()) as shown:
        run = epochs(step, state, x_train, data.y_train, batch_size=config.batch_size, steps=steps, mesh=mesh,
                     shuffle=config.shuffle, epochs_done=len(history), step_losses=config.step_losses,
                     epoch_in_progress=part, on_chunk=shown.advance, on_interrupt=save)
        every_epoch = [evaluation(test, config.eval_every, steps), stop_on_non_finite(config.checkpoint_path),
                       *([save] if path else []), shown, *callbacks,
                       lambda state, record: stop_when and stop_when(record)]
        for state, record in () if stop_when and history and stop_when(history[-1]) else run:
            history.append(record)
            if any([callback(state, record) for callback in every_epoch]):
                break
    return FitResult(state, history, test(state))


def _configure(config: Optional[Config], options: dict) -> Config:
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        raise TypeError(f"fit: unknown option {unknown[0]!r}; the options are the fields of train.Config: "
                        f"{', '.join(f.name for f in dataclasses.fields(Config))}.")
    return dataclasses.replace(config, **options) if config is not None else Config(**options)


def _inputs(data: Dataset, config: Config):
    """The data checked against the config; the inputs reshaped to the model's input shape
    and cast to its dtype (on the host: :func:`epochs` places them)."""
    _checks.examples("fit", "data.x_train", data.x_train, "data.y_train", data.y_train, data.num_classes)
    _checks.examples("fit", "data.x_test", data.x_test, "data.y_test", data.y_test, data.num_classes)
    if config.batch_size > len(data.x_train):
        raise ValueError(f"fit: `batch_size` must be between 1 and the training set size {len(data.x_train)}, got "
                         f"{config.batch_size}.")
    shape = _checks.input_shape("fit", config.input_shape or (-1, *data.x_train.shape[1:]), data.x_train.shape[1:],
                                "data.x_train")
    _checks.input_shape("fit", shape, data.x_test.shape[1:], "data.x_test")
    dtype = jnp.dtype(config.dtype)
    x_train, x_test = (np.asarray(x.reshape(-1, *shape[1:]), dtype) for x in (data.x_train, data.x_test))
    return x_train, x_test, shape


def _resume(config: Config, state: TrainState, fingerprint: dict) -> tuple[TrainState, list]:
    path = config.checkpoint_path
    saved = checkpoint.read_header(path)["metadata"].get("settings")
    if saved is None:
        changed = "it was written without its settings (by an older jaxcnn)"
    else:
        diffs = [f"{k} {saved.get(k, '(unset)')!r} -> {fingerprint.get(k, '(unset)')!r}"
                 for k in sorted(set(saved) | set(fingerprint)) if saved.get(k) != fingerprint.get(k)]
        changed = "its settings differ: " + ", ".join(diffs) if diffs else ""
    if changed and not config.allow_changed_settings:
        raise ValueError(
            f"fit: cannot resume from {path}: {changed}. Resume with the checkpoint's settings, or pass "
            f"allow_changed_settings=True (--allow-changed-settings) to continue under the new ones."
        )
    state, meta = checkpoint.load(path, state)
    history, part = meta.get("history", []), meta.get("epoch_in_progress")
    if part is not None and part["epoch"] != len(history) + 1:
        raise ValueError(f"fit: cannot resume from {path}: it stopped in epoch {part['epoch']} but holds "
                         f"{len(history)} finished epochs; is the file corrupt?")
    return state, history, part


__all__ = [
    "Callback", "Config", "Evaluation", "FitResult", "NonFiniteError", "OneHotTargets", "Progress", "TrainState",
    "check_devices", "checkpointing", "epochs", "evaluate", "evaluation", "fit", "init_state", "make_epoch",
    "make_evaluator", "make_loss", "make_mesh", "make_optimizer", "make_step", "mixed_precision", "stop_on_non_finite",
    "weights",
]
