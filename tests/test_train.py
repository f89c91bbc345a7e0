import dataclasses
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
import pytest

from jaxcnn import _xla_cpu, checkpoint, cli, data, models, nn, ops, reference, reporting, train

KEY = jax.random.PRNGKey(0)


def _toy(n_train=64, n_test=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, 8)).astype(np.float32)
    y = (x[:, :4].sum(1) > 0).astype(np.int32) + 2 * (x[:, 4] > 0)
    return data.Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 4)


def _model():
    return nn.serial(nn.Dense(16), nn.Relu(), nn.Dense(4))


def test_step_is_plain_optax_sgd_with_the_lectures_weight_decay():
    model, d = _model(), _toy()
    params, model_state, _ = model.init(KEY, (-1, 8))
    lr, lam = 0.1, 0.01
    loss_fn = train.make_loss(model, weight_decay=lam)
    step = jax.jit(train.make_step(loss_fn, optax.sgd(lr)))
    state = train.TrainState(params, model_state, optax.sgd(lr).init(params), jnp.int32(0), KEY)
    x, y = jnp.asarray(d.x_train[:8]), jnp.asarray(d.y_train[:8])
    new, (loss, acc) = step(state, (x, y))
    # W ← W − α (∂L/∂W + λ W), b ← b − α ∂L/∂b  (Hu & Zhu; Jearanaitanakij)
    data_grads = jax.grad(lambda p: ops.softmax_cross_entropy(model.apply(p, model_state, x)[0], y))(params)
    for p_new, p_old, g in zip(new.params, params, data_grads):
        for k in p_old:
            decay = lam * p_old[k] if k == "w" else 0.0
            np.testing.assert_allclose(p_new[k], p_old[k] - lr * (g[k] + decay), rtol=1e-5, atol=1e-7)
    assert int(new.step) == 1 and 0 <= float(acc) <= 1


@pytest.mark.parametrize("loop", ["scan", "steps"])
def test_epoch_equals_python_loop_of_steps(loop):
    model, d = _model(), _toy()
    params, model_state, _ = model.init(KEY, (-1, 8))
    opt = optax.adam(1e-2)
    step = train.make_step(train.make_loss(model), opt)
    state = train.TrainState(params, model_state, opt.init(params), jnp.int32(0), KEY)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    donated = jax.tree_util.tree_map(jnp.copy, state)  # the epoch donates its input state
    scanned, losses, _ = train.make_epoch(step, 16, loop=loop)(donated, x, y, 4)

    key, shuffle_key = jax.random.split(KEY)
    order = jax.random.permutation(shuffle_key, 64)[:64].reshape(4, 16)
    looped = train.TrainState(params, model_state, opt.init(params), jnp.int32(0), key)
    looped_losses = []
    for idx in order:
        looped, (loss, _) = jax.jit(step)(looped, (x[idx], y[idx]))
        looped_losses.append(loss)
    np.testing.assert_allclose(losses, looped_losses, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(scanned.params), jax.tree_util.tree_leaves(looped.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(scanned.step) == 4


def test_fit_learns_and_evaluates():
    result = train.fit(_model(), _toy(256, 128), epochs=30, batch_size=32, quiet=True)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test.accuracy > 0.8
    assert result.test.confusion.sum() == 128 and result.test.confusion.shape == (4, 4)
    assert result.test.accuracy == pytest.approx(np.trace(result.test.confusion) / 128)


def test_checkpoint_resume_gives_exactly_the_same_params(tmp_path):
    d, path = _toy(), str(tmp_path / "ckpt.npz")
    straight = train.fit(_model(), d, epochs=6, batch_size=16, quiet=True)
    train.fit(_model(), d, epochs=3, batch_size=16, quiet=True, checkpoint_path=path)
    resumed = train.fit(_model(), d, epochs=6, batch_size=16, quiet=True, checkpoint_path=path, resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_round_trip_and_errors(tmp_path):
    tree = {"w": jnp.arange(6.0, dtype=jnp.float32).reshape(2, 3), "opt": (jnp.int32(3), jnp.ones(2, jnp.float32))}
    path = str(tmp_path / "c.npz")
    checkpoint.save(path, tree, {"note": "x"})
    loaded, meta = checkpoint.load(path, tree)
    assert meta == {"note": "x"}
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]

    good = Path(path).read_bytes()
    truncated = tmp_path / "trunc.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"not a readable jaxcnn checkpoint \(truncated or foreign"):
        checkpoint.load(str(truncated), tree)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.ones(3))
    with pytest.raises(ValueError, match=r"not a jaxcnn checkpoint \(no valid header"):
        checkpoint.load(str(foreign), tree)
    with pytest.raises(ValueError, match=r"does not match the expected structure"):
        checkpoint.load(path, {"w": tree["w"]})
    with pytest.raises(ValueError, match=r"leaf \['w'\] is float32\(2, 3\) in the checkpoint but float32\(3, 2\) is "
                                         r"expected"):
        checkpoint.load(path, {"w": jnp.zeros((3, 2), jnp.float32), "opt": tree["opt"]})


def test_failed_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "c.npz")
    checkpoint.save(path, {"w": jnp.ones(3)})
    before = Path(path).read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, {"w": jnp.zeros(3)})
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def _on_host_devices(script: str, devices: int):
    """Runs ``script`` in a fresh process with ``devices`` CPU devices; returns the JSON it prints."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_data_parallel_run_equals_single_device(tmp_path):  # 18 per batch: uneven over 4 devices
    script = textwrap.dedent("""
        import json, sys
        import jax, numpy as np
        from jaxcnn import data, nn, train
        rng = np.random.default_rng(0)
        x = rng.normal(size=(96, 6, 6, 1)).astype(np.float32)
        y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
        d = data.Dataset(x[:64], y[:64], x[64:], y[64:], 2)
        model = nn.serial(nn.Conv(4, (3, 3), padding="SAME"), nn.Relu(), nn.MaxPool((2, 2)), nn.Flatten(), nn.Dense(2))
        out = {}
        for n in (1, 4):
            r = train.fit(model, d, epochs=3, batch_size=18, devices=n, quiet=True)
            out[n] = [np.asarray(l).tolist() for l in jax.tree_util.tree_leaves(r.state.params)]
            sharding = r.state.params[0]["w"].sharding
            out[f"spread{n}"] = [sharding.is_fully_replicated, len(sharding.device_set)]
        out["devices"] = len(jax.devices())
        json.dump(out, sys.stdout)
    """)
    out = _on_host_devices(script, 4)
    assert out["devices"] == 4 and out["spread4"] == [True, 4] and out["spread1"][1] == 1
    for a, b in zip(out["1"], out["4"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _stateful_model():
    return nn.serial(nn.Conv(4, (3, 3), padding="SAME"), nn.BatchNorm(), nn.Relu(), nn.MaxPool((2, 2)), nn.Flatten(),
                     nn.Dropout(0.3), nn.Dense(2))


def _images(n_train=64, n_test=32):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n_train + n_test, 6, 6, 1)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
    return data.Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 2)


def test_fit_carries_the_model_state_and_resumes_bit_exactly_with_batch_norm_and_dropout(tmp_path):
    d, path = _images(), str(tmp_path / "ckpt.npz")
    straight = train.fit(_stateful_model(), d, epochs=4, batch_size=16, quiet=True)
    bn_state = straight.state.model_state[1]
    assert not np.allclose(bn_state["mean"], 0) and not np.allclose(bn_state["var"], 1)  # running statistics moved
    train.fit(_stateful_model(), d, epochs=2, batch_size=16, quiet=True, checkpoint_path=path)
    assert any("model_state" in p for p in checkpoint.read_header(path)["paths"])
    resumed = train.fit(_stateful_model(), d, epochs=4, batch_size=16, quiet=True, checkpoint_path=path, resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    # evaluation runs in evaluation mode: running statistics, no dropout (deterministic, and not the batch's)
    model, state = _stateful_model(), straight.state
    ev = train.evaluate(model, state.params, state.model_state, d.x_test, d.y_test, 2, batch_size=8)
    logits, _ = model.apply(state.params, state.model_state, jnp.asarray(d.x_test))
    assert ev.accuracy == pytest.approx(float(np.mean(np.argmax(logits, -1) == d.y_test)))


def test_every_step_gets_a_fresh_dropout_key():
    model = nn.serial(nn.Dropout(0.5), nn.Dense(2))
    params, model_state, _ = model.init(KEY, (-1, 32))
    seen = []

    def loss_fn(params, model_state, x, y, *, training=True, key=None):
        seen.append(key)
        out, model_state = model.apply(params, model_state, x, training=training, key=key)
        return ops.softmax_cross_entropy(out, y), (out, model_state)

    opt = optax.sgd(0.1)
    step = train.make_step(loss_fn, opt)
    state = train.TrainState(params, model_state, opt.init(params), jnp.int32(0), KEY)
    x, y = jnp.ones((4, 32), jnp.float32), jnp.zeros(4, jnp.int32)
    keys = []
    for _ in range(3):
        state, _ = step(state, (x, y))
        keys.append(np.asarray(seen[-1]))
    assert len({k.tobytes() for k in keys}) == 3
    np.testing.assert_array_equal(keys[0], jax.random.fold_in(KEY, 0))


def test_data_parallel_batch_norm_uses_the_global_batch(tmp_path):
    """Two devices, each holding half of every batch: batch norm's statistics, the running
    statistics and the params equal the single-device run's (per-device statistics would not)."""
    script = textwrap.dedent("""
        import json, sys
        import jax, numpy as np, optax
        from jaxcnn import data, nn, train
        rng = np.random.default_rng(0)
        x = (rng.normal(size=(96, 6, 6, 1)) + np.linspace(-2, 2, 96)[:, None, None, None]).astype(np.float32)
        y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
        d = data.Dataset(x[:64], y[:64], x[64:], y[64:], 2)
        # no conv bias: its gradient through batch norm is zero up to rounding, which Adam would amplify
        model = nn.serial(nn.Conv(4, (3, 3), padding="SAME", use_bias=False), nn.BatchNorm(), nn.Relu(),
                          nn.MaxPool((2, 2)), nn.Flatten(), nn.Dropout(0.3), nn.Dense(2))
        out = {}
        for n in (1, 2):
            r = train.fit(model, d, epochs=2, batch_size=16, devices=n, quiet=True, shuffle=False,
                          optimizer=optax.sgd(0.1))
            out[n] = [np.asarray(l).tolist() for l in jax.tree_util.tree_leaves((r.state.params, r.state.model_state))]
            out[f"accuracy{n}"] = r.test.accuracy
        out["devices"] = len(jax.devices())
        json.dump(out, sys.stdout)
    """)
    out = _on_host_devices(script, 2)
    assert out["devices"] == 2 and out["accuracy1"] == out["accuracy2"]
    for a, b in zip(out["1"], out["2"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # The halves of a batch differ (the data drift along the unshuffled order), so per-device
    # statistics would have given other running means.
    half = np.linspace(-2, 2, 96)[:16]
    assert abs(half[:8].mean() - half.mean()) > 0.1


def test_fit_argument_errors():
    with pytest.raises(ValueError, match=r"fit: give exactly one of `epochs` and `steps`"):
        train.fit(_model(), _toy(), quiet=True)
    with pytest.raises(ValueError, match=r"devices=4 requested but 1 available"):
        train.fit(_model(), _toy(), epochs=1, batch_size=16, devices=4, quiet=True)


def test_cli_train_writes_metrics_plot_and_checkpoint_and_resumes(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--model", "seesaw_cnn", "--data", "seesaw", "--epochs", "5", "--batch-size", "1",
                     "--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "0.1", "--out", out, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed
    metrics = json.loads(Path(out, "metrics.json").read_text())
    assert len(metrics["history"]) == 5 and 0 <= metrics["test_accuracy"] <= 1 and "test_loss" in metrics
    best = max(metrics["history"], key=lambda h: h["test_accuracy"])
    assert metrics["best"] == {k: best[k] for k in ("epoch", "step", "test_accuracy", "test_loss")}
    assert (f"best epoch {best['epoch']} of 5 (chosen on the test set): test accuracy {best['test_accuracy']:.4f}"
            in printed)
    assert metrics["config"]["out"] == out
    assert metrics["wall_seconds"] > metrics["train_seconds"] > 0
    assert metrics["versions"] == {"jaxcnn": reporting.package_version(), "jax": jax.__version__,
                                   "jaxlib": jaxlib.__version__, "optax": optax.__version__,
                                   "numpy": np.__version__, "python": ".".join(map(str, sys.version_info[:3]))}
    assert metrics["device"] == {"platform": jax.devices()[0].platform, "kind": jax.devices()[0].device_kind,
                                 "count": jax.device_count(), "processes": 1}
    assert Path(out, "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["train", "--model", "seesaw_cnn", "--data", "seesaw", "--epochs", "8", "--batch-size", "1",
                     "--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "0.1", "--out", out, "--quiet",
                     "--resume"]) == 0
    assert len(json.loads(Path(out, "metrics.json").read_text())["history"]) == 8


def test_cli_takes_mnist1d_batches_in_stored_order_as_greydanus_recipe_and_shuffles_elsewhere(tmp_path, monkeypatch,
                                                                                                capsys):
    shuffles = []

    def fit(model, dataset, config):
        shuffles.append(config.shuffle)
        raise ValueError("stop before training")

    monkeypatch.setattr(train, "fit", fit)
    seesaw = ["--model", "seesaw_cnn", "--data", "seesaw"]
    for i, argv in enumerate(([], ["--shuffle"], seesaw, [*seesaw, "--no-shuffle"])):
        assert cli.main(["train", *argv, "--limit", "8", "--out", str(tmp_path / str(i))]) == 2
    assert shuffles == [False, True, True, False]
    assert capsys.readouterr().err.count("stop before training") == 4


def _cli_trains_a_batch_norm_model_on_fashion_mnist_and_resumes(model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("t10k", 16)):
        data.write_idx(str(tmp_path / f"{split}-images-idx3-ubyte.gz"), rng.integers(0, 256, (n, 28, 28), np.uint8))
        data.write_idx(str(tmp_path / f"{split}-labels-idx1-ubyte.gz"), (np.arange(n) % 10).astype(np.uint8))
    out = str(tmp_path / "run")
    argv = ["train", "--model", model, "--data", "fashion_mnist", "--data-dir", str(tmp_path),
            "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--out", out, "--quiet"]
    assert cli.main([*argv, "--epochs", "1"]) == 0
    assert f"{model} on fashion_mnist: test accuracy" in capsys.readouterr().out
    header = checkpoint.read_header(str(Path(out, "checkpoint.npz")))
    assert any("model_state" in p and "'mean'" in p for p in header["paths"])  # batch norm's running statistics
    assert cli.main([*argv, "--epochs", "2", "--resume"]) == 0
    assert len(json.loads(Path(out, "metrics.json").read_text())["history"]) == 2


@pytest.mark.parametrize("named", [False, True], ids=["positional", "named"])
def test_cli_trains_a_small_batch_norm_model_on_fashion_mnist_and_resumes(tmp_path, capsys, monkeypatch, named):
    """The quick version of the ResNet-20 run below: the same command line path, a model that compiles in a moment;
    its params and state tuples (stax's way) or dicts keyed by the layers' names (the zoo's)."""
    def small_bn(ops=None):
        L = nn.bind(ops)
        layers = [L.Conv(4, (3, 3), stride=2, use_bias=False), L.BatchNorm(), L.Relu(), L.Flatten(), L.Dense(10)]
        if named:
            layers = [("conv1", layers[0]), ("bn1", layers[1]), *layers[2:4], ("fc", layers[4])]
        return L.serial(*layers)

    monkeypatch.setitem(models.ZOO, "small_bn", models.ZooEntry(small_bn, (-1, 28, 28, 1), "softmax_cross_entropy"))
    _cli_trains_a_batch_norm_model_on_fashion_mnist_and_resumes("small_bn", tmp_path, capsys)
    paths = checkpoint.read_header(str(tmp_path / "run" / "checkpoint.npz"))["paths"]
    assert any("model_state" in p and "['bn1']['mean']" in p for p in paths) == named


@pytest.mark.slow
def test_cli_trains_resnet20_with_batch_norm_on_fashion_mnist_and_resumes(tmp_path, capsys):
    _cli_trains_a_batch_norm_model_on_fashion_mnist_and_resumes("resnet20", tmp_path, capsys)


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "nope"], "argument --model: invalid choice: 'nope'"),
    (["train", "--epochs", "0"], "argument --epochs: expected a positive integer, got '0'"),
    (["train", "--epochs", "2", "--steps", "5"], "argument --steps: not allowed with argument --epochs"),
    (["train", "--lr", "-1"], "argument --lr: expected a positive number, got '-1'"),
    (["train", "--lr", "inf"], "argument --lr: expected a positive number, got 'inf'"),
    (["train", "--momentum", "nan"], "argument --momentum: expected a number in [0, 1), got 'nan'"),
    (["train", "--momentum", "-5"], "argument --momentum: expected a number in [0, 1), got '-5'"),
    (["train", "--weight-decay", "-1"], "argument --weight-decay: expected a number >= 0, got '-1'"),
    (["train", "--weight-decay", "nan"], "argument --weight-decay: expected a number >= 0, got 'nan'"),
    (["train", "--seed", str(2**64)], f"argument --seed: expected an integer in [-2**63, 2**63), got '{2**64}'"),
    (["train", "--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
])
def test_cli_train_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_train_mismatched_model_and_data(capsys, tmp_path):
    assert cli.main(["train", "--model", "lenet5", "--data", "seesaw", "--out", str(tmp_path)]) == 2
    assert "model lenet5 takes inputs of shape (32, 32, 1) but dataset seesaw has (5,)" in capsys.readouterr().err
    missing = str(tmp_path / "none")
    assert cli.main(["train", "--data", "fashion_mnist", "--data-dir", missing, "--out", str(tmp_path)]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def _logit(p):
    return float(np.log(p / (1 - p)))


def test_seesaw_worked_example_single_step():
    """Jearanaitanakij's worked example: one per-pattern SGD step of the seesaw CNN with
    α = λ = 0.1 on the first pattern (boxes on positions 1–2, target "tilt left").

    The lecture's figures are not in its text; its printed formulas fix the values used
    here: filter weights 0.1, 0.1; pooled unit A = 0.1; w5 (A → C) = −0.1; sigmoid unit
    C = 0.49; output weights from C 0.1 (target) and 0.2 (other); p_target = 0.51. The
    remaining weights are free; the biases are set so that the network hits those values.
    """
    alpha = lam = 0.1
    x = jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0]])[..., None]
    y = jnp.array([0])
    conv = {"w": jnp.full((2, 1, 1), 0.1), "b": jnp.array([-0.1])}     # ReLU(conv) = [0.1, 0, 0, 0]
    a, b = 0.1, 0.0                                                     # max-pool, window 3, stride 1
    w_hidden = jnp.array([[-0.1, 0.3], [0.1, -0.2]])                   # rows C, D; columns A, B
    hidden = {"w": w_hidden, "b": jnp.array([_logit(0.49) - (-0.1 * a + 0.3 * b), 0.0])}
    c, d = 0.49, float(jax.nn.sigmoid(0.1 * a - 0.2 * b))
    w_out = jnp.array([[0.1, 0.3], [0.2, -0.1]])                       # rows target, other; columns C, D
    margin = (0.1 - 0.2) * c + (0.3 - -0.1) * d
    out = {"w": w_out, "b": jnp.array([_logit(0.51) - margin, 0.0])}
    params = (conv, (), (), (), hidden, (), out)
    params = jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), params)
    model = models.seesaw_cnn()
    model_state = ((),) * 7

    p = jax.nn.softmax(model.apply(params, model_state, x)[0])[0]
    np.testing.assert_allclose(p, [0.51, 0.49], rtol=1e-12)
    data_loss, _ = train.make_loss(model)(params, model_state, x, y)
    # "Data loss = 0.29": the lecture's figure is −log₁₀ p_target; the natural-log
    # cross-entropy whose gradient is p − 1 (the lecture's own derivation) is 0.673.
    assert float(data_loss) == pytest.approx(-np.log(0.51), rel=1e-12)
    assert round(float(data_loss) / np.log(10), 2) == 0.29

    opt = optax.sgd(alpha)
    step = train.make_step(train.make_loss(model, weight_decay=lam), opt)
    new, _ = step(train.TrainState(params, model_state, opt.init(params), jnp.int32(0), KEY), (x, y))
    delta = jax.tree_util.tree_map(lambda n, o: n - o, new.params, params)
    # Δw = −0.1 · (−0.49 · 0.49 + 0.1 · 0.1) = 0.023  (weight C → target output)
    assert float(delta[6]["w"][0, 0]) == pytest.approx(-alpha * ((0.51 - 1) * c + lam * 0.1), rel=1e-9)
    assert round(float(delta[6]["w"][0, 0]), 3) == 0.023
    # Δw5 = −0.1 · ([−0.49 · 0.1 + 0.49 · 0.2] · 0.49 (1 − 0.49) · 0.1 + 0.1 · (−0.1)) = 0.000878
    expected_w5 = -alpha * ((-0.49 * 0.1 + 0.49 * 0.2) * c * (1 - c) * a + lam * -0.1)
    assert float(delta[4]["w"][0, 0]) == pytest.approx(expected_w5, rel=1e-9)
    assert round(float(delta[4]["w"][0, 0]), 6) == 0.000878
    # Biases are not decayed: Δb_target = −α (p_target − 1) exactly.
    assert float(delta[6]["b"][0]) == pytest.approx(-alpha * (0.51 - 1), rel=1e-9)


def test_seesaw_worked_example_filter_update():
    """The lecture's filter step: with the conv-layer gradients it prints,
    δ = (0, −0.0147, 0.0196, 0.0196) on the input 1 1 0 0 0, ∂L/∂w1 = −0.0147 and
    ∂L/∂w2 = 0, so Δw1 = −0.1 (−0.0147 + 0.1 · 0.1) = 0.00047 and Δw2 = −0.001.

    (That δ has gradient at three of the four conv units, which two max-pooled units
    cannot route on this board, so it is fed to the conv rule directly.)
    """
    alpha = lam = 0.1
    x = jnp.array([[1.0, 1.0, 0.0, 0.0, 0.0]], jnp.float64)[..., None]
    w = jnp.full((2, 1, 1), 0.1, jnp.float64)
    delta = jnp.array([0.0, -0.0147, 0.0196, 0.0196], jnp.float64).reshape(1, 4, 1)
    _, vjp = jax.vjp(lambda w: ops.conv(x, w), w)
    (dw,) = vjp(delta)
    np.testing.assert_allclose(dw.ravel(), [-0.0147, 0.0], atol=1e-15)
    update = -alpha * (dw.ravel() + lam * w.ravel())
    np.testing.assert_allclose(np.round(update, 5), [0.00047, -0.001])


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "euclidean_loss"])
def test_evaluation_sse_is_the_summed_squared_error_of_the_output_probabilities(loss):
    model, d = _model(), _toy()
    params, model_state, _ = model.init(KEY, (-1, 8))
    loss_fn = ops.softmax_cross_entropy if loss == "softmax_cross_entropy" else train.OneHotTargets(ops.euclidean_loss)
    ev = train.evaluate(model, params, model_state, d.x_test, d.y_test, 4, loss=loss_fn, batch_size=10)
    out = np.asarray(model.apply(params, model_state, jnp.asarray(d.x_test))[0], np.float64)
    probs = out if loss == "euclidean_loss" else np.exp(out) / np.exp(out).sum(1, keepdims=True)
    expected = np.sum((probs - np.eye(4)[d.y_test]) ** 2)
    assert ev.sse == pytest.approx(expected, rel=1e-5)
    if loss == "euclidean_loss":  # (1/N) Σ ½‖z − t‖² = SSE / 2N
        assert ev.loss == pytest.approx(ev.sse / (2 * len(d.x_test)), rel=1e-5)


@pytest.mark.parametrize("loop", ["scan", "steps"])
def test_unshuffled_epoch_visits_the_patterns_in_order(loop):
    model, d = _model(), _toy(n_train=6)
    params, model_state, _ = model.init(KEY, (-1, 8))
    opt = optax.sgd(0.1)
    step = train.make_step(train.make_loss(model, weight_decay=0.1), opt)
    state = train.TrainState(params, model_state, opt.init(params), jnp.int32(0), KEY)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    epoch = train.make_epoch(step, 1, shuffle=False, loop=loop)
    scanned, losses, _ = epoch(jax.tree_util.tree_map(jnp.copy, state), x, y, 6)
    looped, looped_losses = state, []
    for i in range(6):
        looped, (loss, _) = jax.jit(step)(looped, (x[i:i + 1], y[i:i + 1]))
        looped_losses.append(loss)
    np.testing.assert_allclose(losses, looped_losses, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(scanned.params), jax.tree_util.tree_leaves(looped.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_stops_early_and_keeps_step_losses(tmp_path):
    d, path = _toy(), str(tmp_path / "ckpt.npz")
    def stop(record):
        return record["epoch"] == 3
    result = train.fit(_model(), d, epochs=10, batch_size=16, quiet=True, stop_when=stop, step_losses=True,
                       checkpoint_path=path)
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and int(result.state.step) == 3 * 4
    for h in result.history:
        assert len(h["step_losses"]) == 4 and h["train_loss"] == pytest.approx(np.mean(h["step_losses"]))
        assert h["test_sse"] >= 0 and "test_accuracy" in h
    resumed = train.fit(_model(), d, epochs=10, batch_size=16, quiet=True, stop_when=stop, checkpoint_path=path,
                        resume=True)
    assert len(resumed.history) == 3 and int(resumed.state.step) == 12


def test_plot_confusion_writes_a_png_and_checks_its_input(tmp_path):
    path = str(tmp_path / "confusion.png")
    assert reporting.plot_confusion(np.array([[5, 1], [0, 4]]), path, ["left", "right"], "seesaw") == path
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"`confusion` must be square \(K, K\), got shape \(2, 3\)"):
        reporting.plot_confusion(np.zeros((2, 3)), path)
    with pytest.raises(ValueError, match=r"3 class names for a 2×2 confusion matrix"):
        reporting.plot_confusion(np.eye(2), path, ["a", "b", "c"])


def test_make_epoch_rejects_an_unknown_loop():
    step = train.make_step(train.make_loss(_model()), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"make_epoch: unknown `loop` 'while'; use 'auto', 'scan' or 'steps'"):
        train.make_epoch(step, 4, loop="while")


def test_auto_loop_steps_on_the_cpu_only_when_a_convolution_is_slow_in_a_loop():
    """XLA:CPU runs non-canonical convolutions (autodiff's transposed ones) slowly inside loop
    bodies: "auto" dispatches steps then, and scans otherwise — the ops' XLA convolutions included."""
    xla_model = nn.serial(nn.Conv(3, (3,), padding=1, method="xla"), nn.Relu(), nn.Flatten(), nn.Dense(2))
    autodiff_model = nn.serial(nn.Conv(3, (3,), stride=2, padding=1, ops=reference), nn.Relu(), nn.Flatten(),
                               nn.Dense(2))
    transpose_model = nn.serial(nn.ConvTranspose(3, (3,), stride=2, method="xla"), nn.Relu(), nn.Flatten(),
                                nn.Dense(2))  # 1-D auto: im2col, no XLA convolution
    transpose_autodiff = nn.serial(nn.ConvTranspose(3, (3,), stride=2, ops=reference), nn.Relu(), nn.Flatten(),
                                   nn.Dense(2))
    taps_model = nn.serial(nn.Conv(3, (3, 3), padding=1, method="taps"), nn.Relu(), nn.Flatten(), nn.Dense(2))
    mlp = _model()
    for model, shape, slow in ((xla_model, (6, 1), False), (autodiff_model, (6, 2), True),
                               (transpose_model, (6, 2), False), (transpose_autodiff, (6, 2), True),
                               (taps_model, (4, 4, 1), False), (mlp, (8,), False)):
        params, model_state, _ = model.init(KEY, (-1, *shape))
        x = jnp.asarray(np.random.default_rng(0).normal(size=(8, *shape)), jnp.float32)
        y = jnp.asarray([0, 1] * 4)
        grads = jax.make_jaxpr(jax.grad(lambda p: model.apply(p, model_state, x)[0].sum()))(params)
        assert _xla_cpu.has_slow_loop_convolution(grads.jaxpr) == slow  # found in the custom rule's backward too
        forward = jax.make_jaxpr(lambda p: model.apply(p, model_state, x)[0])(params)
        assert not _xla_cpu.has_slow_loop_convolution(forward.jaxpr)  # a forward convolution is canonical
        opt = optax.sgd(0.1)
        step = train.make_step(train.make_loss(model), opt)
        results = {}
        for loop in ("auto", "scan", "steps"):
            state = train.TrainState(jax.tree_util.tree_map(jnp.copy, params), model_state, opt.init(params),
                                     jnp.int32(0), jnp.copy(KEY))
            state, losses, _ = train.make_epoch(step, 4, loop=loop)(state, x, y, 2)
            assert losses.shape == (2,) and int(state.step) == 2
            results[loop] = losses
        np.testing.assert_allclose(results["auto"], results["scan"], rtol=1e-5)
        np.testing.assert_allclose(results["auto"], results["steps"], rtol=1e-5)


def _bad(d, **changes):
    return d._replace(**changes)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(epochs=0), ValueError, r"fit: `epochs` must be an int >= 1, got 0"),
    (dict(epochs=-2), ValueError, r"fit: `epochs` must be an int >= 1, got -2"),
    (dict(steps=0), ValueError, r"fit: `steps` must be an int >= 1, got 0"),
    (dict(epochs=2.5), TypeError, r"fit: `epochs` must be an int, got 2.5 \(float\)"),
    (dict(epochs=1, devices=0), ValueError, r"fit: `devices` must be an int >= 1, got 0"),
    (dict(epochs=1, batch_size=True), TypeError, r"fit: `batch_size` must be an int, got True \(bool\)"),
    (dict(epochs=1, weight_decay=-1.0), ValueError, r"fit: `weight_decay` must be a finite number in \[0, inf\), got "
                                                    r"-1.0"),
    (dict(epochs=1, weight_decay=float("nan")), ValueError, r"fit: `weight_decay` must be a finite number in \[0, "
                                                            r"inf\), got nan"),
    (dict(epochs=1, seed=2**64), ValueError, r"fit: `seed` must be an int in \[-9223372036854775808, "
                                             r"9223372036854775808\), got 18446744073709551616"),
    (dict(epochs=1, eval_every=-1), ValueError, r"fit: `eval_every` must be an int >= 0, got -1"),
])
def test_fit_refuses_bad_arguments_before_any_work(kwargs, error, message):
    with pytest.raises(error, match=message):
        train.fit(_model(), _toy(), batch_size=kwargs.pop("batch_size", 16), quiet=True, **kwargs)


def test_fit_refuses_bad_datasets_before_any_work():
    d = _toy()
    cases = [
        (_bad(d, y_train=d.y_train[:60]), r"fit: `data.x_train` has 64 examples but `data.y_train` has 60 labels; "
                                          r"they must pair one to one"),
        (_bad(d, y_test=d.y_test[:-1]), r"fit: `data.x_test` has 32 examples but `data.y_test` has 31 labels"),
        (_bad(d, x_test=d.x_test[:0], y_test=d.y_test[:0]), r"fit: `data.x_test` is empty; it needs at least one "
                                                            r"example"),
        (_bad(d, y_train=np.where(np.arange(64) == 5, 4, d.y_train).astype(np.int32)),
         r"fit: `data.y_train`: labels must be class ids in \[0, 4\), got 1 outside it \(the first: label 4 at index "
         r"5; values \[4\]\)"),
        (_bad(d, y_test=np.where(np.arange(32) == 0, -1, d.y_test).astype(np.int32)),
         r"fit: `data.y_test`: labels must be class ids in \[0, 4\), got 1 outside it \(the first: label -1 at "
         r"index 0"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            train.fit(_model(), bad, epochs=1, batch_size=16, quiet=True)


def test_evaluate_never_drops_an_example_from_the_confusion_matrix():
    d = _toy()
    params, model_state, _ = _model().init(KEY, (-1, 8))
    ev = train.evaluate(_model(), params, model_state, d.x_test, d.y_test, 4)
    assert ev.confusion.sum() == len(d.y_test)
    with pytest.raises(ValueError, match=r"evaluate: `y`: labels must be class ids in \[0, 4\), got 1 outside it "
                                         r"\(the first: label 7 at index 3"):
        train.evaluate(_model(), params, model_state, d.x_test, np.where(np.arange(32) == 3, 7, d.y_test), 4)
    with pytest.raises(ValueError, match=r"evaluate: the model has 4 outputs but num_classes=5"):
        train.evaluate(_model(), params, model_state, d.x_test, d.y_test, 5)
    with pytest.raises(ValueError, match=r"evaluate: `x` has 32 examples but `y` has 30 labels"):
        train.evaluate(_model(), params, model_state, d.x_test, d.y_test[:30], 4)


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr=float("inf")), r"make_optimizer: `lr` must be a finite number in \(0, inf\), got inf"),
    (dict(lr=0.0), r"make_optimizer: `lr` must be a finite number in \(0, inf\), got 0.0"),
    (dict(momentum=float("nan")), r"make_optimizer: `momentum` must be a finite number in \[0, 1\), got nan"),
    (dict(momentum=-5.0), r"make_optimizer: `momentum` must be a finite number in \[0, 1\), got -5.0"),
])
def test_make_optimizer_refuses_non_finite_and_out_of_range_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train.make_optimizer("sgd", **kwargs)
    with pytest.raises(ValueError, match=r"make_loss: `weight_decay` must be a finite number in \[0, inf\), got -0.5"):
        train.make_loss(_model(), weight_decay=-0.5)


def test_fit_checks_where_the_checkpoint_goes_before_the_first_step(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder.npz").mkdir()
    for path, message in [(tmp_path / "file" / "c.npz", r"file/c.npz: cannot write the checkpoint: .*/file is a file, "
                                                        r"not a folder"),
                          (tmp_path / "folder.npz", r"folder.npz: the checkpoint path is a folder; give a file path")]:
        with pytest.raises(ValueError, match=message):
            train.fit(_model(), _toy(), epochs=1, batch_size=16, quiet=True, checkpoint_path=str(path))


def test_resume_refuses_other_settings_and_a_run_is_never_overwritten_silently(tmp_path):
    d, path = _toy(), str(tmp_path / "c.npz")
    train.fit(_model(), d, epochs=1, batch_size=16, quiet=True, checkpoint_path=path, lr=0.1)
    saved = checkpoint.read_header(path)["metadata"]["settings"]
    assert saved["seed"] == 0 and saved["batch_size"] == 16 and saved["lr"] == 0.1 and saved["data_fingerprint"]
    before = Path(path).read_bytes()
    with pytest.raises(ValueError, match=r"c.npz already holds a checkpoint; continue it with resume=True "
                                         r"\(--resume\) or start over with overwrite=True \(--overwrite\)"):
        train.fit(_model(), d, epochs=2, batch_size=16, quiet=True, checkpoint_path=path, lr=0.1)
    with pytest.raises(ValueError, match=r"cannot resume from .*c.npz: its settings differ: batch_size 16 -> 8, lr "
                                         r"0.1 -> 0.2, seed 0 -> 1\. .*allow_changed_settings=True"):
        train.fit(_model(), d, epochs=2, batch_size=8, seed=1, quiet=True, checkpoint_path=path, resume=True,
                  lr=0.2)
    with pytest.raises(ValueError, match=r"its settings differ: data_fingerprint '[0-9a-f]{16}' -> '[0-9a-f]{16}'"):
        train.fit(_model(), _bad(d, x_train=d.x_train * 2), epochs=2, batch_size=16, quiet=True,
                  checkpoint_path=path, resume=True, lr=0.1)
    assert Path(path).read_bytes() == before
    resumed = train.fit(_model(), d, epochs=2, batch_size=8, quiet=True, checkpoint_path=path, resume=True,
                        lr=0.1, allow_changed_settings=True)
    assert resumed.history[0]["step"] == 4 and int(resumed.state.step) == 16  # 2 epochs of 8 steps under batch 8
    assert checkpoint.read_header(path)["metadata"]["settings"]["batch_size"] == 8
    restarted = train.fit(_model(), d, epochs=1, batch_size=16, quiet=True, checkpoint_path=path, overwrite=True)
    assert len(restarted.history) == 1


def test_best_epoch_is_the_first_evaluated_epoch_of_highest_test_accuracy():
    history = [{"epoch": 1, "step": 2, "test_accuracy": 0.5, "test_loss": 1.0}, {"epoch": 2, "step": 4},
               {"epoch": 3, "step": 6, "test_accuracy": 0.75, "test_loss": 0.75},
               {"epoch": 4, "step": 8, "test_accuracy": 0.75, "test_loss": 0.5, "seconds": 1.0}]
    assert reporting.best_epoch(history) == {"epoch": 3, "step": 6, "test_accuracy": 0.75, "test_loss": 0.75}
    assert reporting.best_epoch([{"epoch": 1, "step": 2}]) is None


def test_metrics_json_is_written_atomically(tmp_path, monkeypatch):
    result = train.FitResult(None, [{"epoch": 1}], train.Evaluation(0.5, 0.75, np.eye(2, dtype=int), 0.1))
    path = reporting.save_metrics(str(tmp_path), result, {"lr": 0.1})
    before = Path(path).read_bytes()

    def full_disk(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="disk full"):
        reporting.save_metrics(str(tmp_path), train.FitResult(None, [{"epoch": 2}], result.test), {"lr": 0.2})
    assert Path(path).read_bytes() == before and os.listdir(tmp_path) == ["metrics.json"]


SEESAW = ["train", "--model", "seesaw_cnn", "--data", "seesaw", "--batch-size", "1", "--optimizer", "sgd", "--quiet"]


def test_cli_train_checks_the_output_folder_and_the_run_before_loading_data(tmp_path, capsys, monkeypatch):
    def loaded(**kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setitem(data.DATASETS, "seesaw", loaded)  # every check comes before the data
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir" / "checkpoint.npz").mkdir(parents=True)
    checkpoint.save(str(tmp_path / "old" / "checkpoint.npz"), {"w": np.ones(2)})
    for out, message in [
        ("file", r"file/checkpoint.npz: cannot write the output: .*/file is a file, not a folder"),
        ("dir", r"dir/checkpoint.npz: the output path is a folder; give a file path"),
        ("old", r"old/checkpoint.npz already holds a checkpoint; continue it with resume=True \(--resume\) or start "
                r"over with overwrite=True \(--overwrite\)"),
        ("new --resume", r"resume=True but there is no checkpoint at '.*new/checkpoint.npz'"),
    ]:
        folder, *extra = out.split()
        with pytest.raises(AssertionError, match="the data was loaded"):  # a good folder passes the checks
            cli.main([*SEESAW, "--epochs", "1", "--out", str(tmp_path / "ok")])
        assert cli.main([*SEESAW, "--epochs", "1", "--out", str(tmp_path / folder), *extra]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.startswith("jaxcnn: error: ") and "Traceback" not in err


def _data_never_loaded(monkeypatch):
    def loaded(**kwargs):
        raise AssertionError("the data was loaded")

    monkeypatch.setitem(data.DATASETS, "seesaw", loaded)


def test_cli_train_refuses_momentum_with_adam_before_loading_data(tmp_path, capsys, monkeypatch):
    _data_never_loaded(monkeypatch)
    argv = ["train", "--model", "seesaw_cnn", "--data", "seesaw", "--epochs", "1", "--out", str(tmp_path), "--quiet"]
    assert cli.main([*argv, "--momentum", "0.9"]) == 2  # the default optimizer is adam
    assert capsys.readouterr().err == ("jaxcnn: error: --momentum goes with --optimizer sgd; adam keeps its own moment "
                                       "estimates (got --momentum 0.9 with --optimizer adam).\n")
    assert cli.main([*argv, "--optimizer", "adam", "--momentum", "0"]) == 2  # given at all: it would be ignored
    with pytest.raises(AssertionError, match="the data was loaded"):  # sgd takes it
        cli.main([*argv, "--optimizer", "sgd", "--momentum", "0.9"])


@pytest.mark.parametrize("optimizer, momentum, recorded", [("adam", [], None), ("sgd", [], 0.0),
                                                           ("sgd", ["--momentum", "0.5"], 0.5)])
def test_metrics_json_records_the_momentum_used_and_none_for_adam(tmp_path, capsys, optimizer, momentum, recorded):
    out = tmp_path / "run"
    assert cli.main(["train", "--model", "seesaw_cnn", "--data", "seesaw", "--epochs", "1", "--batch-size", "4",
                     "--optimizer", optimizer, *momentum, "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["momentum"] == recorded


def test_make_optimizer_and_config_refuse_momentum_with_adam():
    message = (r"make_optimizer: `momentum` is SGD's; 'adam' keeps its own moment estimates, got momentum=0.9 with "
               r"'adam' \(pass optimizer='sgd', or optax.adam\(lr, b1=...\)\)")
    with pytest.raises(ValueError, match=message):
        train.make_optimizer("adam", 1e-3, 0.9)
    with pytest.raises(ValueError, match=message):
        train.Config(epochs=1, optimizer="adam", momentum=0.9)
    train.Config(epochs=1, optimizer="sgd", momentum=0.9)


def test_cli_train_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE examples per optimiser step, split over --devices (default 100)" in text
    assert "SGD momentum in [0, 1), with --optimizer sgd only" in text


def test_cli_train_with_more_devices_than_present_fails_before_loading_data_naming_the_flag(tmp_path, capsys,
                                                                                            monkeypatch):
    _data_never_loaded(monkeypatch)
    n = jax.device_count() + 1
    assert cli.main([*SEESAW, "--epochs", "1", "--devices", str(n), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (f"jaxcnn: error: --devices {n} requested but {n - 1} available (cpu); on CPU, "
                   f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (set before JAX starts) gives one process "
                   f"{n} devices.\n")
    with pytest.raises(ValueError, match=rf"devices={n} requested but {n - 1} available \(cpu\); on CPU, "
                                         rf"XLA_FLAGS=--xla_force_host_platform_device_count={n} "):
        train.make_mesh(n)


def test_cli_train_prints_a_loading_line_before_anything_slow(tmp_path, capsys, monkeypatch):
    _data_never_loaded(monkeypatch)
    loud = [a for a in SEESAW if a != "--quiet"]
    with pytest.raises(AssertionError, match="the data was loaded"):
        cli.main([*loud, "--epochs", "1", "--out", str(tmp_path)])
    assert capsys.readouterr().out == "jaxcnn train: loading JAX, the model and the data ...\n"
    with pytest.raises(AssertionError, match="the data was loaded"):
        cli.main([*SEESAW, "--epochs", "1", "--out", str(tmp_path)])
    assert capsys.readouterr().out == ""  # --quiet: nothing


def test_cli_train_names_the_extra_to_install_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on a bare install: import fails
    assert cli.main([*SEESAW, "--epochs", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert ("jaxcnn train needs matplotlib (learning_curve.png), not installed; install the train extra: "
            "pip install 'jaxcnn[train]'") in err
    assert not os.listdir(tmp_path)  # nothing trained, nothing written


def test_cli_ctrl_c_names_the_last_checkpoint_without_a_traceback(tmp_path, capsys, monkeypatch):
    fit = train.fit

    def interrupted_after_two_epochs(*args, **kwargs):
        fit(*args, **{**kwargs, "epochs": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted_after_two_epochs)
    assert cli.main([*SEESAW, "--epochs", "5", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err == (f"jaxcnn: interrupted; last checkpoint at epoch 2 ({tmp_path}/checkpoint.npz; continue with "
                   f"--resume)\n")
    monkeypatch.setattr(train, "fit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert cli.main([*SEESAW, "--epochs", "5", "--out", str(tmp_path / "b")]) == 130
    assert capsys.readouterr().err == "jaxcnn: interrupted; no checkpoint written yet\n"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_sigint_or_sigterm_during_training_says_where_to_resume(tmp_path, signum):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "jaxcnn", *SEESAW, "--steps", "100000000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    try:
        deadline = time.monotonic() + 600  # until the first checkpoint is written (slow on a loaded machine)
        while not (out / "checkpoint.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum, err
    assert re.fullmatch(r"jaxcnn: interrupted; last checkpoint at (epoch|step \d+ of \d+ in epoch) \d+ "
                        r"\(.*checkpoint.npz; continue with --resume\)\n", err)
    checkpoint.read_header(str(out / "checkpoint.npz"))


# --------------------------------------------------------------------------- the config and the loop's pieces


def test_config_is_frozen_checked_when_built_and_its_json_is_the_resume_fingerprint():
    config = train.Config(epochs=2, batch_size=16, optimizer="sgd", lr=0.1, dtype=jnp.float32, input_shape=[-1, 8],
                          settings={"model": "mlp"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.2
    assert config.dtype == "float32" and config.input_shape == (-1, 8)
    assert json.loads(json.dumps(config.to_json())) == config.to_json()
    printed = config.fingerprint(_toy(), (-1, 8))
    assert {k: printed[k] for k in ("optimizer", "lr", "momentum", "loss", "batch_size", "model")} == \
        {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "loss": "softmax_cross_entropy", "batch_size": 16,
         "model": "mlp"}
    assert not set(printed) & {"epochs", "steps", "checkpoint_path", "resume", "quiet", "settings"}  # run control
    assert printed == dataclasses.replace(config, epochs=None, steps=7, quiet=True).fingerprint(_toy(), (-1, 8))
    assert printed != dataclasses.replace(config, seed=1).fingerprint(_toy(), (-1, 8))
    autodiff = train.Config(epochs=1, loss=train.OneHotTargets(reference.euclidean_loss)).fingerprint(_toy(), (-1, 8))
    assert autodiff["loss"] == "euclidean_loss"  # as the command line wrote it before the loss was a callable
    custom = train.Config(epochs=1, optimizer=optax.sgd(0.1)).fingerprint(_toy(), (-1, 8))
    assert custom["optimizer"] == "optax" and "lr" not in custom and "momentum" not in custom
    described = train.Config(epochs=1, optimizer=optax.sgd(0.1), settings={"lr": 0.1}).fingerprint(_toy(), (-1, 8))
    assert described["lr"] == 0.1  # an optax optimizer's hyperparameters, described by the caller


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(epochs=1, optimizer=optax.sgd(0.1), lr=0.5), ValueError, r"fit: `lr` and `momentum` set a named optimizer; "
                                                                   r"an optax `optimizer` holds its own \(got lr=0.5"),
    (dict(epochs=1, optimizer="rmsprop"), ValueError, r"make_optimizer: unknown optimizer 'rmsprop'"),
    (dict(epochs=1, loss="euclidean_loss"), TypeError, r"fit: `loss` must be a callable, e.g. "
                                                       r"jaxcnn.ops.softmax_cross_entropy \(the command line alone"),
    (dict(epochs=1, dtype=jnp.int32), TypeError, r"fit: `dtype` must be a floating dtype .* got int32"),
    (dict(epochs=1, settings={"seed": 3}), ValueError, r"fit: `settings` may not repeat 'seed', a key the "
                                                       r"config already puts in the fingerprint"),
    (dict(epochs=1, settings={"f": object()}), TypeError, r"fit: `settings` must be JSON-able"),
    (dict(epochs=1, input_shape=(-1, 0)), ValueError, r"fit: `input_shape` must be \(-1, \*dims\) with positive int "
                                                      r"dims, got \(-1, 0\)"),
])
def test_config_refuses_bad_fields(kwargs, error, message):
    with pytest.raises(error, match=message):
        train.Config(**kwargs)


def test_fit_names_an_unknown_option_and_takes_a_config_with_options_replacing_its_fields():
    with pytest.raises(TypeError, match=r"fit: unknown option 'epoch'; the options are the fields of train.Config: "
                                        r"epochs, steps, batch_size"):
        train.fit(_model(), _toy(), epoch=1)
    config = train.Config(epochs=5, batch_size=16, quiet=True)
    assert [h["epoch"] for h in train.fit(_model(), _toy(), config, epochs=2).history] == [1, 2]


def test_make_loss_takes_the_loss_as_a_callable_not_a_name():
    with pytest.raises(TypeError, match=r"make_loss: `loss` must be a callable loss\(outputs, labels\), e.g. "
                                        r"jaxcnn.ops.softmax_cross_entropy or "
                                        r"train.OneHotTargets\(jaxcnn.ops.euclidean_loss\), got 'euclidean_loss'"):
        train.make_loss(_model(), "euclidean_loss")
    model, d = _model(), _toy()
    params, model_state, _ = model.init(KEY, (-1, 8))
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    out = model.apply(params, model_state, x)[0]
    one_hot = jax.nn.one_hot(y, 4, dtype=out.dtype)
    for loss, expected in ((reference.softmax_cross_entropy, reference.softmax_cross_entropy(out, y)),
                           (train.OneHotTargets(ops.euclidean_loss), ops.euclidean_loss(out, one_hot))):
        np.testing.assert_allclose(train.make_loss(model, loss)(params, model_state, x, y)[0], expected, rtol=1e-6)
    # the backend lives in the model and the loss: the reference's loss and penalty leave no hand rule in the step
    auto = nn.bind(reference).serial(nn.bind(reference).Dense(4))
    p, s, _ = auto.init(KEY, (-1, 8))
    loss_fn = train.make_loss(auto, reference.softmax_cross_entropy, 0.1, reference.l2_penalty)
    assert "_prim=jaxcnn." not in str(jax.make_jaxpr(lambda p: loss_fn(p, s, x, y)[0])(p))
    hand_loss = train.make_loss(auto, weight_decay=0.1)  # the default loss and penalty: jaxcnn.ops's rules
    assert str(jax.make_jaxpr(lambda p: hand_loss(p, s, x, y)[0])(p)).count("_prim=jaxcnn.") == 2


def test_a_loop_written_from_make_step_and_the_epoch_iterator_is_fit():
    """The loop a user takes apart: the same pieces as fit, the same final state, bit for bit."""
    d, optimizer = _toy(), optax.sgd(0.1, momentum=0.9)
    state = train.init_state(_stateful_mlp(), optimizer, (-1, 8), seed=3)
    step = train.make_step(train.make_loss(_stateful_mlp(), ops.softmax_cross_entropy, 1e-3), optimizer)
    evaluate = train.make_evaluator(_stateful_mlp(), d.num_classes)
    history = []
    for state, record in train.epochs(step, state, d.x_train, d.y_train, batch_size=16, steps=4 * 6):
        record["test_accuracy"] = evaluate(state.params, state.model_state, d.x_test, d.y_test).accuracy
        history.append(record)
    fitted = train.fit(_stateful_mlp(), d, epochs=6, batch_size=16, seed=3, optimizer=optimizer, weight_decay=1e-3,
                       quiet=True)
    for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(fitted.state)):
        np.testing.assert_array_equal(a, b)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6] and history[-1]["step"] == 24
    assert [h["test_accuracy"] for h in history] == [h["test_accuracy"] for h in fitted.history]


def _stateful_mlp():
    return nn.serial(nn.Dense(16), nn.BatchNorm(), nn.Relu(), nn.Dropout(0.2), nn.Dense(4))


def test_user_callbacks_see_every_record_after_the_checkpoint_and_can_stop_the_run(tmp_path):
    path, seen = str(tmp_path / "c.npz"), []

    def callback(state, record):
        seen.append((record["epoch"], len(checkpoint.read_header(path)["metadata"]["history"]), "test_loss" in record))
        return record["epoch"] == 2

    result = train.fit(_model(), _toy(), epochs=5, batch_size=16, quiet=True, checkpoint_path=path,
                       callbacks=[callback])
    assert seen == [(1, 1, True), (2, 2, True)] and len(result.history) == 2


# --------------------------------------------------------------------------- issue 36: reliability


def _diverging(d, path, **kwargs):
    """Two sane epochs saved at ``path``, then resumed with a learning rate that overflows."""
    train.fit(_model(), d, epochs=2, batch_size=16, quiet=True, checkpoint_path=path, optimizer="sgd", lr=0.1)
    return train.fit(_model(), d, epochs=4, batch_size=16, quiet=True, checkpoint_path=path, optimizer="sgd",
                     lr=1e30, resume=True, allow_changed_settings=True, **kwargs)


def _finite_leaves(path) -> bool:
    with np.load(path, allow_pickle=False) as f:
        return all(np.isfinite(f[k]).all() for k in f.files if k != "__header__" and f[k].dtype.kind == "f")


def test_a_non_finite_loss_stops_fit_and_never_replaces_the_last_finite_checkpoint(tmp_path):
    d, path = _toy(), str(tmp_path / "c.npz")
    with pytest.raises(train.NonFiniteError, match=r"fit: training diverged in epoch 3 \(step 12\): train loss nan.*"
                                                   r"Stopped without saving it; .*c.npz still holds the last finite "
                                                   r"epoch saved. Lower the learning rate"):
        _diverging(d, path)
    assert [h["epoch"] for h in checkpoint.read_header(path)["metadata"]["history"]] == [1, 2]
    assert _finite_leaves(path)
    assert issubclass(train.NonFiniteError, FloatingPointError) and issubclass(train.NonFiniteError, ValueError)


def test_the_checkpoint_callback_refuses_a_non_finite_state(tmp_path):
    path = str(tmp_path / "c.npz")
    state = train.init_state(_model(), optax.sgd(0.1), (-1, 8))
    save = train.checkpointing(path, [], {})
    save(state, {"epoch": 1, "step": 0, "train_loss": 1.0})
    before = Path(path).read_bytes()
    poisoned = state._replace(params=jax.tree_util.tree_map(lambda a: a.at[0].set(jnp.inf), state.params))
    with pytest.raises(train.NonFiniteError, match=r"epoch 2 \(step 0\): the params or the optimiser state are no "
                                                   r"longer finite"):
        save(poisoned, {"epoch": 2, "step": 0, "train_loss": 1.0})
    with pytest.raises(train.NonFiniteError, match=r"train loss inf"):
        save(state, {"epoch": 2, "step": 0, "train_loss": float("inf")})
    assert Path(path).read_bytes() == before


def test_cli_train_with_a_diverging_learning_rate_exits_non_zero_and_keeps_the_last_finite_checkpoint(tmp_path,
                                                                                                       capsys):
    out = str(tmp_path / "run")
    argv = ["train", "--data", "mnist1d", "--model", "mnist1d_mlp", "--limit", "400", "--out", out, "--quiet"]
    assert cli.main([*argv, "--epochs", "3", "--lr", "1e37"]) == 2  # diverges in its first epoch: nothing saved
    err = capsys.readouterr().err
    assert err.startswith("jaxcnn: error: fit: training diverged in epoch 1") and "no checkpoint was written" in err
    assert not os.path.exists(os.path.join(out, "checkpoint.npz"))
    assert cli.main([*argv, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert cli.main([*argv, "--epochs", "3", "--lr", "1e37", "--resume", "--allow-changed-settings"]) == 2
    err = capsys.readouterr().err
    assert "training diverged in epoch 2" in err and "Traceback" not in err and err.count("\n") == 1
    path = os.path.join(out, "checkpoint.npz")
    assert [h["epoch"] for h in checkpoint.read_header(path)["metadata"]["history"]] == [1] and _finite_leaves(path)


def test_fit_refuses_a_non_finite_input_naming_the_array_and_the_first_bad_index():
    d = _toy()
    x = d.x_train.copy()
    x[3, 5], x[9, 0] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"fit: `data.x_train` holds 2 non-finite value\(s\) \(the first: nan at "
                                         r"index \(3, 5\)\); every input must be finite"):
        train.fit(_model(), d._replace(x_train=x), epochs=1, batch_size=16, quiet=True)
    x_test = d.x_test.copy()
    x_test[1, 2] = -np.inf
    with pytest.raises(ValueError, match=r"fit: `data.x_test` holds 1 non-finite value\(s\) \(the first: -inf at "
                                         r"index \(1, 2\)\)"):
        train.fit(_model(), d._replace(x_test=x_test), epochs=1, batch_size=16, quiet=True)


def test_stop_when_raising_keeps_the_epoch_just_trained(tmp_path):
    path = str(tmp_path / "c.npz")

    def stop(record):
        if record["epoch"] == 2:
            raise RuntimeError("stop_when failed")
        return False

    with pytest.raises(RuntimeError, match="stop_when failed"):
        train.fit(_model(), _toy(), epochs=5, batch_size=16, quiet=True, checkpoint_path=path, stop_when=stop)
    assert [h["epoch"] for h in checkpoint.read_header(path)["metadata"]["history"]] == [1, 2]
    resumed = train.fit(_model(), _toy(), epochs=3, batch_size=16, quiet=True, checkpoint_path=path, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_fit_trains_dropout_models_under_the_rbg_prng_and_resumes_exactly(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        import jax, numpy as np
        from jaxcnn import checkpoint, data, nn, train
        rng = np.random.default_rng(0)
        x = rng.normal(size=(96, 6, 6, 1)).astype(np.float32)
        y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int32)
        d = data.Dataset(x[:64], y[:64], x[64:], y[64:], 2)
        model = nn.serial(nn.Conv(4, (3, 3), padding="SAME"), nn.BatchNorm(), nn.Relu(), nn.Flatten(),
                          nn.Dropout(0.3), nn.Dense(2))
        path = {str(tmp_path / "c.npz")!r}
        straight = train.fit(model, d, epochs=3, batch_size=16, quiet=True)
        train.fit(model, d, epochs=1, batch_size=16, quiet=True, checkpoint_path=path)
        resumed = train.fit(model, d, epochs=3, batch_size=16, quiet=True, checkpoint_path=path, resume=True)
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(straight.state),
                                                        jax.tree_util.tree_leaves(resumed.state)))
        json.dump({{"key": list(straight.state.key.shape), "same": same, "loss": straight.history[-1]["train_loss"]}},
                  sys.stdout)
    """)
    env = dict(os.environ, JAX_DEFAULT_PRNG_IMPL="rbg", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["key"] == [4] and out["same"] and np.isfinite(out["loss"])  # rbg's raw keys are 4 words


def test_fit_says_when_the_input_shape_does_not_fit_the_data():
    with pytest.raises(ValueError, match=r"fit: `input_shape` \(-1, 7\) does not fit the examples of `data.x_train`, "
                                         r"each of shape \(8,\): 7 values per example expected, 8 given"):
        train.fit(_model(), _toy(), epochs=1, batch_size=16, quiet=True, input_shape=(-1, 7))


def test_fit_is_a_short_composition_and_no_training_function_takes_a_backend():
    """The backend lives in the model (and the loss passed): none of the training functions
    takes ``ops=``; fit composes the pieces in at most 60 lines."""
    assert len(inspect.getsource(train.fit).splitlines()) <= 60
    for fn in (train.fit, train.make_loss, train.make_evaluator, train.evaluate, train.make_epoch, train.epochs,
               train.make_step, train.init_state):
        assert "ops" not in inspect.signature(fn).parameters, fn.__name__
    state = train.init_state(_model(), optax.sgd(0.1), (-1, 8))
    step = train.make_step(train.make_loss(_model()), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"epochs: `batch_size` must be between 1 and the training set size 64, got "
                                         r"65"):
        next(train.epochs(step, state, _toy().x_train, _toy().y_train, batch_size=65, steps=4))


# --------------------------------------------------------------------------- within an epoch: chunks, progress, Ctrl-C


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


@pytest.mark.parametrize("loop", ["scan", "steps"])
def test_an_epoch_in_chunks_is_bit_for_bit_the_epoch_in_one_call(loop):
    """Shuffled, with batch norm and dropout: chunks of 1, 3 (a remainder of 1) and 5 steps
    and the timed ones give the same params, model state, key and metrics as one call."""
    d, opt = _images(), optax.adam(1e-2)
    step = train.make_step(train.make_loss(_stateful_model()), opt)
    state = train.init_state(_stateful_model(), opt, (-1, 6, 6, 1), seed=1)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    epoch = train.make_epoch(step, 8, loop=loop)
    whole, losses, accuracies = epoch(_copy(state), x, y, 7)
    for chunk in (1, 3, 5, "auto"):
        seen = []
        chunked, chunk_losses, chunk_accuracies = epoch(_copy(state), x, y, 7, chunk=chunk,
                                                        after_chunk=lambda s, done, *_: seen.append(done))
        for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(chunked)):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(losses, chunk_losses)
        np.testing.assert_array_equal(accuracies, chunk_accuracies)
        if chunk != "auto":
            assert seen == [*range(chunk, 7, chunk), 7]


def test_an_epoch_stopped_after_a_chunk_continues_from_there_bit_for_bit():
    d, opt = _images(), optax.adam(1e-2)
    step = train.make_step(train.make_loss(_stateful_model()), opt)
    state = train.init_state(_stateful_model(), opt, (-1, 6, 6, 1), seed=2)
    x, y = jnp.asarray(d.x_train), jnp.asarray(d.y_train)
    epoch = train.make_epoch(step, 8)
    whole, losses, _ = epoch(_copy(state), x, y, 8)
    kept = []
    epoch(_copy(state), x, y, 8, chunk=3, after_chunk=lambda s, done, *_: kept.append((_copy(s), done)) or done >= 3)
    (middle, done), = kept
    assert done == 3 and int(middle.step) == 3
    np.testing.assert_array_equal(middle.key, state.key)  # the key the epoch was shuffled with: its order again
    rest, rest_losses, _ = epoch(middle, x, y, 8, start=3, chunk=2)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(rest)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(losses[3:], rest_losses)


def test_make_epoch_refuses_a_bad_chunk():
    d, opt = _toy(), optax.sgd(0.1)
    step = train.make_step(train.make_loss(_model()), opt)
    state = train.init_state(_model(), opt, (-1, 8))
    with pytest.raises(ValueError, match=r"make_epoch: `chunk` must be None, 'auto' or a number of steps >= 1, got 0"):
        train.make_epoch(step, 8)(state, d.x_train, d.y_train, 4, chunk=0)
    with pytest.raises(ValueError, match=r"make_epoch: need 0 <= start <= num_steps <= 8 \(the whole batches of 64 "
                                         r"examples\), got start=0, num_steps=9"):
        train.make_epoch(step, 8)(state, d.x_train, d.y_train, 9)


def test_the_bar_moves_within_an_epoch_and_lines_come_within_a_long_one(monkeypatch, capsys):
    moves = []
    monkeypatch.setattr(train.Progress, "advance", lambda self, step: moves.append(step))
    monkeypatch.setattr(train, "_CHUNK_SECONDS", 0.0)  # chunks of one step
    train.fit(_model(), _toy(), epochs=2, batch_size=16, quiet=True)
    assert moves == list(range(1, 9))
    monkeypatch.undo()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(train.Progress, "LINE_SECONDS", 0.0)
    progress = train.Progress(100, 0)
    progress.advance(10)
    progress.advance(20)
    progress(None, {"epoch": 1, "step": 50, "train_loss": 0.5})
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["step 10/100", "step 20/100", "epoch 1, step 50/100"]
    assert re.fullmatch(r"step 20/100: \S+ steps/s, \d+ s left", err[1])


def _interrupting_at(monkeypatch, at: int, signum=signal.SIGINT):
    """Progress.advance sends this process ``signum`` once the run reaches step ``at``."""
    advance = train.Progress.advance

    def advance_and_signal(self, step):
        advance(self, step)
        if step == at:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(train.Progress, "advance", advance_and_signal)
    monkeypatch.setattr(train, "_CHUNK_SECONDS", 0.0)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_an_epoch_keeps_a_mid_epoch_checkpoint_that_resumes_bit_for_bit(tmp_path, monkeypatch, signum):
    d, path = _images(), str(tmp_path / "ckpt.npz")
    options = dict(epochs=3, batch_size=8, quiet=True, seed=4, step_losses=True)
    straight = train.fit(_stateful_model(), d, **options)
    _interrupting_at(monkeypatch, 8 + 3, signum)  # step 3 of epoch 2
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM raises as SIGINT does
    try:
        with pytest.raises(KeyboardInterrupt):
            train.fit(_stateful_model(), d, **options, checkpoint_path=path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    meta = checkpoint.read_header(path)["metadata"]
    part = meta["epoch_in_progress"]
    assert [h["epoch"] for h in meta["history"]] == [1]
    assert (part["epoch"], part["step"], part["steps"], len(part["losses"])) == (2, 3, 8, 3)
    monkeypatch.undo()
    resumed = train.fit(_stateful_model(), d, **options, checkpoint_path=path, resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]
    assert "epoch_in_progress" not in checkpoint.read_header(path)["metadata"]


def test_a_handler_that_does_not_raise_lets_the_epoch_go_on(monkeypatch):
    d = _toy()
    straight = train.fit(_model(), d, epochs=2, batch_size=16, quiet=True)
    _interrupting_at(monkeypatch, 2)
    calls = []
    previous = signal.signal(signal.SIGINT, lambda *args: calls.append(args))
    try:
        result = train.fit(_model(), d, epochs=2, batch_size=16, quiet=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 1
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(result.state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_resnet20_shows_progress_within_an_epoch_and_a_ctrl_c_3_s_into_epoch_2_resumes_bit_for_bit(tmp_path,
                                                                                                   monkeypatch):
    """The issue's demonstration on synthetic data of ResNet-20's shape (Fashion-MNIST's):
    the bar moves within every epoch, a SIGINT 3 s into epoch 2 stops it after the chunk
    running, and the resumed run ends with the uninterrupted run's state, bit for bit."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(288, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 288).astype(np.int32)
    d, path = data.Dataset(x[:256], y[:256], x[256:], y[256:], 10), str(tmp_path / "ckpt.npz")
    options = dict(epochs=3, batch_size=8, quiet=True, input_shape=(-1, 28, 28, 1))
    straight = train.fit(models.resnet20(), d, **options)
    advance, moves, epoch_2 = train.Progress.advance, [], []

    def advance_and_signal(self, step):
        advance(self, step)
        moves.append(step)
        if step > 32 and not epoch_2:
            epoch_2.append(time.monotonic())
        if len(epoch_2) == 1 and time.monotonic() - epoch_2[0] >= 3:
            os.kill(os.getpid(), signal.SIGINT)
            epoch_2.append(time.monotonic())

    monkeypatch.setattr(train.Progress, "advance", advance_and_signal)
    with pytest.raises(KeyboardInterrupt):
        train.fit(models.resnet20(), d, **options, checkpoint_path=path)
    assert len([m for m in moves if m <= 32]) > 2  # more than once an epoch
    part = checkpoint.read_header(path)["metadata"]["epoch_in_progress"]
    assert part["epoch"] == 2 and 0 < part["step"] < 32
    monkeypatch.undo()
    resumed = train.fit(models.resnet20(), d, **options, checkpoint_path=path, resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state)):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- the precision policy


def _four_quadrants(n=600, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    y = (x[:, :4].sum((1, 2, 3)) > 0).astype(np.int32) + 2 * (x[:, :, :4].sum((1, 2, 3)) > 0)
    return data.Dataset(x[:512], y[:512], x[512:], y[512:], 4)


def _bn_cnn():
    return nn.serial(nn.Conv(8, (3, 3), padding="SAME"), nn.BatchNorm(), nn.Relu(), nn.MaxPool(2), nn.Flatten(),
                     nn.Dense(32), nn.Relu(), nn.Dense(4))


def test_mixed_bfloat16_keeps_float32_state_and_trains_as_well_as_float32():
    options = dict(epochs=8, batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9, quiet=True)
    full = train.fit(_bn_cnn(), _four_quadrants(), **options)
    mixed = train.fit(_bn_cnn(), _four_quadrants(), **options, precision="mixed_bfloat16")
    leaves = jax.tree_util.tree_leaves((mixed.state.params, mixed.state.model_state, mixed.state.opt_state))
    assert {a.dtype for a in leaves if jnp.issubdtype(a.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
    assert mixed.history[-1]["train_loss"] != full.history[-1]["train_loss"]  # it did compute in bfloat16
    assert full.test.accuracy > 0.6  # the task is learnt, and as well in mixed precision
    assert abs(mixed.test.accuracy - full.test.accuracy) <= 0.05
    assert abs(mixed.test.loss - full.test.loss) <= 0.1 * full.test.loss


def test_mixed_precision_casts_at_the_model_boundary_and_runs_batch_norm_in_float32():
    model = train.mixed_precision(_bn_cnn())
    params, state, _ = model.init(KEY, (-1, 8, 8, 1))
    program = jax.make_jaxpr(lambda p: model.apply(p, state, jnp.ones((2, 8, 8, 1)), training=True))(params)
    types = {}
    for eqn in program.jaxpr.eqns:
        if eqn.primitive.name == "jit":
            types[eqn.params["name"]] = {str(v.aval.dtype) for v in eqn.invars}
    assert types["_conv"] == types["_dense"] == types["_relu"] == {"bfloat16"}
    assert types["_batch_norm_train"] == {"float32"}
    (out,), new_state = program.out_avals[:1], program.out_avals[1:]
    assert out.dtype == jnp.float32 and {a.dtype for a in new_state} == {jnp.dtype(jnp.float32)}
    grads = jax.grad(lambda p: model.apply(p, state, jnp.ones((2, 8, 8, 1)), training=True)[0].sum())(params)
    assert {a.dtype for a in jax.tree_util.tree_leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_precision_is_checked_and_in_the_fingerprint_only_when_mixed():
    with pytest.raises(ValueError, match=r"fit: `precision` must be one of 'float32', 'mixed_bfloat16', got 'fp16'"):
        train.Config(epochs=1, precision="fp16")
    with pytest.raises(ValueError, match=r"fit: precision='mixed_bfloat16' keeps the params in float32 and computes "
                                         r"in bfloat16; `dtype` must be float32, got float64"):
        train.Config(epochs=1, precision="mixed_bfloat16", dtype=jnp.float64)
    assert "precision" not in train.Config(epochs=1).fingerprint(_toy(), (-1, 8))  # older checkpoints resume
    assert train.Config(epochs=1, precision="mixed_bfloat16").fingerprint(_toy(), (-1, 8))["precision"] == \
        "mixed_bfloat16"


def test_cli_train_takes_precision(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*SEESAW, "--epochs", "1", "--out", str(out)]
    assert cli.main([*argv, "--precision", "mixed_bfloat16"]) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["precision"] == "mixed_bfloat16"
    assert set(checkpoint.read_header(str(out / "checkpoint.npz"))["dtypes"]) <= {"float32", "int32", "uint32"}
    assert cli.main([*argv, "--epochs", "2", "--resume"]) == 2  # the policy is part of the run's settings
    assert "precision 'mixed_bfloat16' -> '(unset)'" in capsys.readouterr().err


def test_the_precision_benchmark_runs_in_quick_mode(tmp_path):
    """Its figures are printed, not asserted (experiments/bench_precision.py)."""
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "bench_precision.py", "--quick", "--repeats", "1", "--json", str(out)],
                          cwd=Path(__file__).parents[1] / "experiments", capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert proc.returncode == 0, proc.stderr
    assert "| network | batch | float32 ms | mixed_bfloat16 ms | speed-up |" in proc.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert row["network"] == "LeNet-5" and set(row["ms_per_step"]) == {"float32", "mixed_bfloat16"}
