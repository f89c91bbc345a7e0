import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import opcheck
from jaxcnn import ops, reference, verify


def _logits(rng, shape, dtype=jnp.float64, scale=2.0):
    return jnp.asarray(rng.normal(size=shape) * scale, dtype)


# ----------------------------------------------------------------- softmax cross-entropy


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5)])
def test_ce_integer_labels_all_transforms(rng, shape):
    labels = jnp.asarray(rng.integers(0, shape[-1], size=shape[:-1]))
    opcheck.assert_all("softmax_cross_entropy", _logits(rng, shape), labels)


def test_ce_probability_labels_all_transforms(rng):
    t = jax.nn.softmax(_logits(rng, (4, 3)))
    opcheck.assert_all("softmax_cross_entropy", _logits(rng, (4, 3)), t)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ce_low_precision(rng, dtype):
    opcheck.assert_vjp("softmax_cross_entropy", _logits(rng, (8, 5), dtype), jnp.arange(8) % 5)


def test_ce_lecture_example_p_03_07_target_2():
    # Jearanaitanakij: p = (0.3, 0.7), target p2 → ∂L/∂f = (0.3, 0.7 − 1) = (0.3, −0.3)
    s = jnp.log(jnp.array([[0.3, 0.7]], jnp.float64))
    np.testing.assert_allclose(jax.grad(ops.softmax_cross_entropy)(s, jnp.array([1])), [[0.3, -0.3]], rtol=1e-12)
    one_hot = jnp.array([[0.0, 1.0]], jnp.float64)
    np.testing.assert_allclose(jax.grad(ops.softmax_cross_entropy)(s, one_hot), [[0.3, -0.3]], rtol=1e-12)


def test_ce_gradient_carries_one_over_n():
    # (p − t) / N: the same example twice halves each row's gradient (Bell, Hu & Zhu)
    s = jnp.log(jnp.array([[0.3, 0.7], [0.3, 0.7]], jnp.float64))
    np.testing.assert_allclose(jax.grad(ops.softmax_cross_entropy)(s, jnp.array([1, 1])),
                               [[0.15, -0.15], [0.15, -0.15]], rtol=1e-12)


def test_ce_stable_for_huge_logits():
    s = jnp.array([[1e4, -1e4, 0.0], [0.0, 1e4, 1e4]], jnp.float32)
    loss = ops.softmax_cross_entropy(s, jnp.array([0, 0]))
    np.testing.assert_allclose(loss, (0.0 + (1e4 + np.log(2))) / 2, rtol=1e-6)
    g = jax.grad(ops.softmax_cross_entropy)(s, jnp.array([0, 0]))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [[0, 0, 0], [-0.5, 0.25, 0.25]], atol=1e-7)
    t = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], jnp.float32)
    assert np.all(np.isfinite(jax.grad(ops.softmax_cross_entropy, argnums=(0, 1))(s, t)[1]))


@pytest.mark.parametrize("labels, ignore", [([0, 3], None), ([-1, 0], None), ([5, -2], None), ([4, 3, 0], 4)])
def test_ce_out_of_range_label_is_nan_in_loss_and_gradient_for_rule_and_reference(labels, ignore):
    # One definition for both: an id outside [0, K) makes the loss NaN and every element of
    # dL/ds NaN (finite differences of a NaN loss agree), never a finite update — an ignored
    # row's gradient included.
    s = jnp.asarray(np.random.default_rng(0).normal(size=(len(labels), 3)), jnp.float32)
    rule, ref = (functools.partial(f, ignore_index=ignore) for f in (ops.softmax_cross_entropy,
                                                                      reference.softmax_cross_entropy))
    for f in (rule, ref, jax.jit(rule)):
        assert np.isnan(f(s, jnp.array(labels)))
        assert np.all(np.isnan(jax.grad(f)(s, jnp.array(labels))))
    good = jnp.arange(len(labels)) % 3
    assert np.all(np.isfinite(jax.grad(ops.softmax_cross_entropy)(s, good)))


def test_ce_integer_labels_get_no_gradient(rng):
    _, vjp = jax.vjp(ops.softmax_cross_entropy, _logits(rng, (3, 4)), jnp.array([0, 1, 2]))
    assert vjp(jnp.float64(1.0))[1].dtype == jax.dtypes.float0


def test_checker_catches_ce_without_one_over_n(rng):
    @jax.custom_vjp
    def wrong(logits, labels):
        return reference.softmax_cross_entropy(logits, labels)

    def bwd(res, g):
        p, labels = res
        return g * (p - jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)), None  # missing / N

    wrong.defvjp(lambda s, t: (wrong(s, t), (jax.nn.softmax(s), t)), bwd)
    result = verify.check_vjp(wrong, reference.softmax_cross_entropy, _logits(rng, (4, 3)), jnp.array([0, 1, 2, 0]))
    assert not result.ok and not result["logits"].ok
    assert "logits" in str(result)


def _np_log_softmax(s):
    shifted = s - s.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_ce_options_are_torch_cross_entropy_from_its_definition(rng):
    # torch.nn.functional.cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing),
    # class indices: loss_n = (1 − ε) w_{y_n} (−log p_{n,y_n}) + (ε/K) Σ_k w_k (−log p_nk), 0 on ignored rows;
    # "mean" divides by Σ_n w_{y_n} over the rows not ignored (both terms), "sum" adds, "none" returns loss_n.
    s = rng.normal(size=(7, 4)) * 2
    y = np.array([0, 2, 3, 2, 1, 2, 0])
    w = rng.uniform(0.2, 3.0, 4)
    log_p = _np_log_softmax(s)
    nll = -log_p[np.arange(7), y]
    for eps, ignore in [(0.0, None), (0.2, None), (0.0, 2), (0.3, 2)]:
        kept = np.ones(7, bool) if ignore is None else y != ignore
        for weights in (None, w):
            ww = np.ones(4) if weights is None else weights
            rows = np.where(kept, (1 - eps) * ww[y] * nll + eps / 4 * -(ww * log_p).sum(-1), 0)
            kw = dict(weights=None if weights is None else jnp.asarray(weights), label_smoothing=eps,
                      ignore_index=ignore)
            np.testing.assert_allclose(ops.softmax_cross_entropy(s, y, **kw, reduction="none"), rows, rtol=1e-12)
            np.testing.assert_allclose(ops.softmax_cross_entropy(s, y, **kw, reduction="sum"), rows.sum(), rtol=1e-12)
            np.testing.assert_allclose(ops.softmax_cross_entropy(s, y, **kw), rows.sum() / ww[y][kept].sum(),
                                       rtol=1e-12)
            opcheck.assert_vjp("softmax_cross_entropy", jnp.asarray(s), jnp.asarray(y), **kw)
    # probability targets: the target smoothed to (1 − ε) t + ε/K, weighted per class, "mean" divides by N
    t = rng.dirichlet(np.ones(4), size=7)
    rows = -(w * (0.9 * t + 0.1 / 4) * log_p).sum(-1)
    np.testing.assert_allclose(ops.softmax_cross_entropy(s, t, weights=w, label_smoothing=0.1), rows.mean(),
                               rtol=1e-12)
    # every row ignored: 0 / 0, as PyTorch
    assert np.isnan(ops.softmax_cross_entropy(s, np.full(7, 5), ignore_index=5))


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_every_row_ignored_is_a_nan_mean_with_a_zero_gradient_as_pytorch(rng, eps, weighted):
    # torch: cross_entropy(s, y, weight=w, ignore_index=2, label_smoothing=ε) with every y_n = 2 is
    # 0/0 = nan for "mean", 0 for "sum", and s.grad is 0: no row contributes. A NaN gradient here would
    # poison every parameter in one optimiser step on an all-padding batch.
    s, y = rng.normal(size=(5, 4)), np.full(5, 2)
    kw = dict(weights=rng.uniform(0.5, 2.0, 4) if weighted else None, ignore_index=2, label_smoothing=eps)
    for f in (ops.softmax_cross_entropy, reference.softmax_cross_entropy):
        assert np.isnan(f(s, y, **kw))
        np.testing.assert_array_equal(jax.grad(f)(s, y, **kw), np.zeros((5, 4)))
        assert f(s, y, reduction="sum", **kw) == 0
        np.testing.assert_array_equal(f(s, y, reduction="none", **kw), np.zeros(5))
    with jax.disable_jit():  # the rule itself gives 0, not an XLA rewrite of 0 · (g/0)
        np.testing.assert_array_equal(jax.grad(ops.softmax_cross_entropy)(s, y, **kw), np.zeros((5, 4)))


def test_ce_an_optimiser_step_on_an_all_padding_batch_leaves_the_parameters_finite(rng):
    # the symptom: one weighted all-ignored batch made dW NaN, and SGD wrote NaN into every weight
    x, w, b = rng.normal(size=(6, 5)), rng.normal(size=(4, 5)), rng.normal(size=4)
    y, class_weights = np.full(6, 1), rng.uniform(0.5, 2.0, 4)

    def loss(params):
        return ops.softmax_cross_entropy(ops.dense(x, *params), y, weights=class_weights, ignore_index=1)

    grads = jax.jit(jax.grad(loss))((w, b))
    np.testing.assert_array_equal(grads[0], np.zeros_like(w))
    np.testing.assert_array_equal(grads[1], np.zeros_like(b))


def test_ce_vmap_over_batches_with_one_all_padding_batch(rng):
    # per-sequence losses, one sequence all padding: its gradient is 0, the others' as the reference's
    s, y = rng.normal(size=(3, 5, 4)), rng.integers(0, 3, size=(3, 5))
    y[1], y[0, 0] = 3, 3
    w = rng.uniform(0.5, 2.0, 4)

    def grads(f):
        return jax.vmap(jax.grad(lambda s, y: f(s, y, weights=w, ignore_index=3, label_smoothing=0.1)))(s, y)

    g = grads(ops.softmax_cross_entropy)
    np.testing.assert_array_equal(g[1], np.zeros((5, 4)))
    np.testing.assert_allclose(g, grads(reference.softmax_cross_entropy), rtol=1e-12, atol=1e-15)
    assert np.all(np.isfinite(g)) and np.all(g[0, 0] == 0)


@pytest.mark.parametrize("labels, w, ignore", [([0, 1, 0, 1], [1.0, 2.0, np.nan], None),
                                               ([0, 1, 2, 1], [1.0, 2.0, np.nan], 2),
                                               ([1, 1, -100, 1], [np.nan, 2.0, 1.0], -100)])
def test_ce_never_reads_the_weight_of_an_absent_or_ignored_class(rng, labels, w, ignore):
    # torch's nll_loss gathers w[y_n] on the kept rows only: a NaN weight of a class that no kept row
    # has (the ignored class, or the class an ignored id is clipped to) leaves loss and gradient finite;
    # with label_smoothing > 0 every weight enters the smoothing term, and both are NaN, as in torch.
    s, y, w = rng.normal(size=(4, 3)), np.array(labels), np.array(w)
    kept = np.ones(4, bool) if ignore is None else y != ignore
    log_p = _np_log_softmax(s)
    w_y = np.where(kept, w[np.clip(y, 0, 2)], 0)
    loss = -(w_y * log_p[np.arange(4), np.clip(y, 0, 2)])[kept].sum() / w_y.sum()
    onehot = np.eye(3)[np.clip(y, 0, 2)]
    grad = np.where(kept[:, None], w_y[:, None] * (np.exp(log_p) - onehot), 0) / w_y.sum()
    for f in (ops.softmax_cross_entropy, reference.softmax_cross_entropy):
        np.testing.assert_allclose(f(s, y, weights=w, ignore_index=ignore), loss, rtol=1e-12)
        np.testing.assert_allclose(jax.grad(f)(s, y, weights=w, ignore_index=ignore), grad, rtol=1e-12, atol=1e-15)
        assert np.isnan(f(s, y, weights=w, ignore_index=ignore, label_smoothing=0.1))


def test_ce_accepts_numpy_scalars_for_its_settings(rng):
    s, y = rng.normal(size=(6, 4)), np.array([0, 2, 3, 2, 1, 2])
    for f in (ops.softmax_cross_entropy, reference.softmax_cross_entropy):
        want = f(s, y, ignore_index=2, label_smoothing=0.25)
        np.testing.assert_array_equal(f(s, y, ignore_index=np.int64(2), label_smoothing=np.float32(0.25)), want)
        np.testing.assert_array_equal(f(s, y, ignore_index=np.int32(2), label_smoothing=np.float64(0.25)), want)
    assert np.isfinite(jax.jit(lambda s: ops.softmax_cross_entropy(s, y, ignore_index=np.int8(2),
                                                                   label_smoothing=np.float16(0.5)))(s))


def test_ce_options_backward_is_sigma_times_p_sum_c_minus_c(rng):
    s, y, w = rng.normal(size=(5, 3)), np.array([0, 1, 1, 2, 1]), rng.uniform(0.5, 2.0, 3)
    eps, g = 0.2, 1.7
    p = np.exp(_np_log_softmax(s))
    kept = y != 1
    c = kept[:, None] * ((1 - eps) * w[y][:, None] * np.eye(3)[y] + eps / 3 * w)
    divisor = w[y][kept].sum()
    grad = jax.grad(lambda s: g * ops.softmax_cross_entropy(s, y, weights=w, ignore_index=1, label_smoothing=eps))(s)
    np.testing.assert_allclose(grad, g / divisor * (p * c.sum(-1, keepdims=True) - c), rtol=1e-12)
    assert np.all(np.asarray(grad)[~kept] == 0)  # ignored rows get nothing
    # the combined options under every transform
    opcheck.assert_all("softmax_cross_entropy", jnp.asarray(s), jnp.asarray(y), weights=jnp.asarray(w),
                       ignore_index=1, label_smoothing=eps, reduction="none")


def test_euclidean_reduction_is_over_examples_and_relates_to_mse_loss(rng):
    z, t = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
    per_example = 0.5 * ((z - t) ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(ops.euclidean_loss(z, t, reduction="none"), per_example, rtol=1e-12)
    np.testing.assert_allclose(ops.euclidean_loss(z, t, reduction="sum"), per_example.sum(), rtol=1e-12)
    np.testing.assert_allclose(ops.euclidean_loss(z, t), per_example.mean(), rtol=1e-12)
    # torch.nn.functional.mse_loss: mean of (z − t)² over every element; sum: Σ (z − t)²
    np.testing.assert_allclose(2 * ops.euclidean_loss(z, t, reduction="sum"), ((z - t) ** 2).sum(), rtol=1e-12)
    np.testing.assert_allclose(2 * ops.euclidean_loss(z, t) / 6, ((z - t) ** 2).mean(), rtol=1e-12)
    g = rng.normal(size=4)
    dz, dt = jax.vjp(lambda z, t: ops.euclidean_loss(z, t, reduction="none"), z, t)[1](g)
    np.testing.assert_allclose(dz, g[:, None, None] * (z - t), rtol=1e-12)
    np.testing.assert_allclose(dt, -dz, rtol=1e-12)
    for reduction in ("sum", "none"):
        opcheck.assert_all("euclidean_loss", jnp.asarray(z), jnp.asarray(t), reduction=reduction)


def test_loss_option_errors(rng):
    s, y = jnp.ones((3, 4), jnp.float32), jnp.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `weights` must have shape \(4,\) \(one weight"):
        ops.softmax_cross_entropy(s, y, weights=jnp.ones(3))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: all floating arguments must share one dtype"):
        ops.softmax_cross_entropy(s, y, weights=jnp.ones(4, jnp.float64))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `ignore_index`=0 applies to integer class ids only"):
        ops.softmax_cross_entropy(s, jnp.full((3, 4), 0.25, jnp.float32), ignore_index=0)
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: `ignore_index` must be an int, got 1.0 \(float\)"):
        ops.softmax_cross_entropy(s, y, ignore_index=1.0)
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: `ignore_index` must be an int, got True \(bool\)"):
        ops.softmax_cross_entropy(s, y, ignore_index=True)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `label_smoothing` must be a finite number in "
                                         r"\[0, 1\], got 1.5"):
        ops.softmax_cross_entropy(s, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `label_smoothing` must be a finite number in "
                                         r"\[0, 1\], got nan"):
        reference.softmax_cross_entropy(s, y, label_smoothing=np.float32("nan"))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: `label_smoothing` must be a number, got Array"):
        ops.softmax_cross_entropy(s, y, label_smoothing=jnp.float32(0.1))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `reduction` must be one of 'mean', 'sum', 'none', "
                                         r"got 'avg'"):
        ops.softmax_cross_entropy(s, y, reduction="avg")
    with pytest.raises(ValueError, match=r"euclidean_loss: `reduction` must be one of 'mean', 'sum', 'none', got None"):
        ops.euclidean_loss(s, s, reduction=None)


def test_ce_errors(rng):
    s = _logits(rng, (4, 3), jnp.float32)
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `labels` must have shape \(4,\) \(integer class "
                                         r"ids: logits.shape\[:-1\]\), got \(4, 1\)"):
        ops.softmax_cross_entropy(s, jnp.zeros((4, 1), jnp.int32))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `labels` must have shape \(4, 3\) \(one-hot or "
                                         r"probability rows: logits.shape\), got \(4, 2\)"):
        ops.softmax_cross_entropy(s, jnp.zeros((4, 2), jnp.float32))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: `labels` must be integer class ids of shape \(4,\) "
                                        r"or floating target rows of shape \(4, 3\), got dtype bool"):
        ops.softmax_cross_entropy(s, jnp.zeros((4,), bool))
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `logits` must have at least 2 dimensions \(N, K\), "
                                         r"got shape \(3,\)"):
        ops.softmax_cross_entropy(s[0], jnp.array(1))
    with pytest.raises(TypeError, match=r"softmax_cross_entropy: `logits` must be a floating-point array"):
        ops.softmax_cross_entropy(jnp.zeros((4, 3), jnp.int32), jnp.zeros((4,), jnp.int32))
    with pytest.raises(TypeError, match=r"share one dtype, but `logits` is float32, `labels` is float64"):
        ops.softmax_cross_entropy(s, jnp.zeros((4, 3), jnp.float64))


# ----------------------------------------------------------------- Euclidean loss


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2)])
def test_euclidean_all_transforms(rng, shape):
    z, y = (jnp.asarray(rng.normal(size=shape)) for _ in range(2))
    opcheck.assert_all("euclidean_loss", z, y)


def test_euclidean_gradients_carry_one_over_n():
    # Bell: ∂L_i/∂z = z − y, ∂L_i/∂y = y − z, and L = (1/N) Σ L_i
    z = jnp.array([[1.0, 2.0], [3.0, -1.0]], jnp.float64)
    y = jnp.array([[0.0, 2.0], [1.0, 1.0]], jnp.float64)
    assert float(ops.euclidean_loss(z, y)) == pytest.approx(0.5 * (1 + 0 + 4 + 4) / 2)
    dz, dy = jax.grad(ops.euclidean_loss, argnums=(0, 1))(z, y)
    np.testing.assert_allclose(dz, (z - y) / 2)
    np.testing.assert_allclose(dy, (y - z) / 2)


def test_euclidean_low_precision(rng):
    z, y = (jnp.asarray(rng.normal(size=(6, 4)), jnp.bfloat16) for _ in range(2))
    opcheck.assert_vjp("euclidean_loss", z, y)


def test_euclidean_errors():
    with pytest.raises(ValueError, match=r"euclidean_loss: `target` must have shape \(2, 3\) \(the shape of "
                                         r"`pred`\), got \(3, 2\)"):
        ops.euclidean_loss(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match=r"euclidean_loss: `target` must be a floating-point array"):
        ops.euclidean_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))


# ----------------------------------------------------------------- L2 penalty


def _params(rng, dtype=jnp.float64):
    return {"conv": {"w": jnp.asarray(rng.normal(size=(3, 3, 2)), dtype)},
            "dense": [jnp.asarray(rng.normal(size=(4, 5)), dtype), jnp.asarray(rng.normal(size=(4,)), dtype)]}


def test_l2_penalty_gradients(rng):
    params, lam = _params(rng), jnp.float64(0.3)
    opcheck.assert_vjp("l2_penalty", params, lam)
    opcheck.assert_jit("l2_penalty", params, lam)
    opcheck.assert_grad_of_grad("l2_penalty", params, lam)
    opcheck.assert_numerical("l2_penalty", params, lam)
    opcheck.assert_vmap("l2_penalty", params, lam, in_axes=(0, None))


def test_l2_penalty_is_half_lambda_sum_of_squares_with_gradient_lambda_w(rng):
    params = _params(rng)
    leaves = jax.tree_util.tree_leaves(params)
    expected = 0.5 * 0.1 * sum(float(jnp.sum(l**2)) for l in leaves)
    assert float(ops.l2_penalty(params, 0.1)) == pytest.approx(expected, rel=1e-12)
    grads = jax.grad(ops.l2_penalty)(params, 0.1)
    for g, w in zip(jax.tree_util.tree_leaves(grads), leaves):
        np.testing.assert_allclose(g, 0.1 * w, rtol=1e-12)


def test_l2_penalty_of_empty_tree_is_zero():
    assert float(ops.l2_penalty({}, 0.5)) == 0.0


def test_l2_penalty_errors(rng):
    with pytest.raises(TypeError, match=r"l2_penalty: `params\['step'\]` must be a floating-point array .* got dtype "
                                        r"int32"):
        ops.l2_penalty({"w": jnp.ones(3), "step": jnp.array(3, jnp.int32)}, 0.1)
    with pytest.raises(ValueError, match=r"l2_penalty: `lam` must have 0 dimensions \(a scalar\), got 1 dimensions "
                                         r"with shape \(2,\)"):
        ops.l2_penalty({"w": jnp.ones(3)}, jnp.array([0.1, 0.2]))
    for f in (ops.l2_penalty, reference.l2_penalty):  # a Python or NumPy λ is a setting: finite
        with pytest.raises(ValueError, match=r"l2_penalty: `lam` must be a finite number, got inf"):
            f({"w": jnp.ones(3)}, float("inf"))
        with pytest.raises(ValueError, match=r"l2_penalty: `lam` must be a finite number, got nan"):
            f({"w": jnp.ones(3)}, np.float32("nan"))
        assert f({"w": jnp.ones(3, jnp.float64)}, np.float32(0.5)).dtype == jnp.float64  # the leaves' dtype


# ----------------------------------------------------------------- forward mode


def _ce_forward_cases():
    """Every option of softmax_cross_entropy, the combinations in the default suite, the rest ``slow``."""
    rng = np.random.default_rng(1)
    ids, t, w = np.array([0, 2, 2, 1]), jnp.asarray(rng.dirichlet(np.ones(3), size=4)), jnp.asarray([0.5, 2.0, 1.5])
    every = {"weights": w, "ignore_index": 2, "label_smoothing": 0.2}
    cases = [("ids", ids, {}, False),
             ("ids, leading axes, sum", np.array([[0, 2], [1, 1]]), {"reduction": "sum"}, False),
             ("ids, every option, mean", ids, every, False),
             ("ids, every option, none", ids, every | {"reduction": "none"}, False),
             ("ids, ignored rows", ids, {"ignore_index": 2}, True),
             ("ids, weights and smoothing, sum", ids, {"weights": w, "label_smoothing": 0.1, "reduction": "sum"}, True),
             ("rows", t, {}, False),
             ("rows, weights and smoothing, none", t, {"weights": w, "label_smoothing": 0.1, "reduction": "none"},
              False),
             ("rows, sum", t, {"reduction": "sum"}, True)]
    return [pytest.param(labels, settings, id=name, marks=[pytest.mark.slow] if slow else [])
            for name, labels, settings, slow in cases]


@pytest.mark.parametrize("labels,settings", _ce_forward_cases())
def test_ce_forward_mode_every_transform_against_the_reference(rng, labels, settings):
    shape = labels.shape if labels.dtype.kind == "f" else labels.shape + (3,)
    opcheck.assert_forward_mode("softmax_cross_entropy", _logits(rng, shape), jnp.asarray(labels), **settings)


def test_ce_forward_mode_under_vmap_and_in_float32(rng):
    y, w = jnp.array([0, 2, 2, 1]), jnp.asarray([0.5, 2.0, 1.5])
    options = dict(weights=w, ignore_index=2, label_smoothing=0.2)
    opcheck.assert_jvp("softmax_cross_entropy", _logits(rng, (3, 4, 3)), y, in_axes=(0,), **options)
    t = jax.nn.softmax(_logits(rng, (3, 4, 3)))
    opcheck.assert_jvp("softmax_cross_entropy", _logits(rng, (3, 4, 3)), t, in_axes=(0, 0), reduction="none")
    opcheck.assert_jvp("softmax_cross_entropy", _logits(rng, (8, 5), jnp.float32), jnp.arange(8) % 5, rtol=1e-5,
                       atol=1e-6, **options | {"weights": None})
    opcheck.assert_jvp("softmax_cross_entropy", _logits(rng, (4, 3), jnp.float32), t[0].astype(jnp.float32),
                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ce_jvp_is_the_adjoint_of_the_vjp_for_every_option(rng, reduction):
    # ⟨J ṫ, g⟩ = ⟨ṫ, Jᵀ g⟩: the hand JVP and the lectures' VJP are one derivative
    s, y, t = _logits(rng, (5, 4)), jnp.array([0, 3, 1, 3, 2]), jax.nn.softmax(_logits(rng, (5, 4)))
    w = jnp.asarray(rng.uniform(0.5, 2.0, 4))
    for weights in (None, w):
        for eps in (0.0, 0.3):
            for ignore in (None, 3):
                opcheck.assert_adjoint("softmax_cross_entropy", s, y, weights=weights, label_smoothing=eps,
                                       ignore_index=ignore, reduction=reduction)
            opcheck.assert_adjoint("softmax_cross_entropy", s, t, weights=weights, label_smoothing=eps,
                                   reduction=reduction)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_ce_tangent_of_an_all_padding_batch_is_zero_as_its_gradient(rng, eps, weighted):
    # every row ignored: "mean" is 0/0 = NaN whatever the logits, a constant: its tangent is 0, the
    # VJP's gradient (0) contracted with ṫ. Forward-mode autodiff of the reference gives (0/0)·ṫ = NaN.
    s, s_dot, y = _logits(rng, (5, 4)), _logits(rng, (5, 4)), jnp.full(5, 2)
    kw = dict(weights=jnp.asarray(rng.uniform(0.5, 2.0, 4)) if weighted else None, ignore_index=2,
              label_smoothing=eps)
    loss, tangent = jax.jvp(lambda s: ops.softmax_cross_entropy(s, y, **kw), (s,), (s_dot,))
    assert np.isnan(loss) and tangent == 0
    assert np.isnan(jax.jvp(lambda s: reference.softmax_cross_entropy(s, y, **kw), (s,), (s_dot,))[1])
    for reduction in ("sum", "none"):
        np.testing.assert_array_equal(
            jax.jvp(lambda s: ops.softmax_cross_entropy(s, y, reduction=reduction, **kw), (s,), (s_dot,))[1], 0 * y)
    # one kept row: the tangent is that row's alone, the reference's
    y = y.at[1].set(0)
    for f in (ops.softmax_cross_entropy, reference.softmax_cross_entropy):
        np.testing.assert_allclose(jax.jvp(lambda s: f(s, y, **kw), (s,), (s_dot,))[1],
                                   jnp.sum(jax.grad(reference.softmax_cross_entropy)(s, y, **kw) * s_dot), rtol=1e-12)


def test_ce_tangent_is_nan_for_an_out_of_range_label_and_zero_for_the_weights(rng):
    s, s_dot, w = _logits(rng, (3, 4)), _logits(rng, (3, 4)), jnp.asarray(rng.uniform(0.5, 2.0, 4))
    for f in (ops.softmax_cross_entropy, reference.softmax_cross_entropy):
        for reduction in ("mean", "none"):
            tangent = jax.jvp(lambda s: f(s, jnp.array([0, 4, 1]), reduction=reduction), (s,), (s_dot,))[1]
            assert np.all(np.isnan(tangent))  # as the loss and the gradient: never silently finite
        # class weights are constants (no gradient, as in PyTorch): no tangent either
        assert jax.jvp(lambda w: f(s, jnp.array([0, 3, 1]), weights=w), (w,), (w,))[1] == 0


@pytest.mark.parametrize("shape,reduction", [((4, 3), "mean"), ((2, 3, 2), "sum"), ((3,), "none")])
def test_euclidean_forward_mode_every_transform_against_the_reference(rng, shape, reduction):
    z, y = (jnp.asarray(rng.normal(size=shape)) for _ in range(2))
    opcheck.assert_forward_mode("euclidean_loss", z, y, reduction=reduction)


def test_euclidean_tangent_is_the_difference_dotted_under_vmap_and_in_float32(rng):
    z, y, z_dot, y_dot = (jnp.asarray(rng.normal(size=(4, 3))) for _ in range(4))
    tangent = jax.jvp(lambda z, y: ops.euclidean_loss(z, y, reduction="none"), (z, y), (z_dot, y_dot))[1]
    np.testing.assert_allclose(tangent, np.sum((z - y) * (z_dot - y_dot), axis=1), rtol=1e-13)
    for reduction in ("mean", "sum", "none"):
        opcheck.assert_adjoint("euclidean_loss", z, y, reduction=reduction)
    opcheck.assert_jvp("euclidean_loss", jnp.asarray(rng.normal(size=(3, 4, 2))), jnp.asarray(rng.normal(size=(4, 2))),
                       in_axes=(0, None), reduction="none")
    opcheck.assert_jvp("euclidean_loss", *(jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(2)),
                       rtol=1e-5, atol=1e-6)


def test_l2_penalty_forward_mode_every_transform_against_the_reference(rng):
    params = {"conv": {"w": jnp.asarray(rng.normal(size=(2, 2)))}, "dense": [jnp.asarray(rng.normal(size=(3,)))]}
    opcheck.assert_forward_mode("l2_penalty", params, jnp.float64(0.3))
    opcheck.assert_forward_mode("l2_penalty", params, 0.3)  # a Python λ: a differentiable argument too


def test_l2_penalty_tangent_is_lambda_w_dot_plus_half_lambda_dot_sum_sq_under_vmap_and_in_float32(rng):
    params, t_params, lam, t_lam = _params(rng), _params(rng), jnp.float64(0.3), jnp.float64(-1.7)
    leaves, t_leaves = jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(t_params)
    expected = 0.3 * sum(float(jnp.sum(w * t)) for w, t in zip(leaves, t_leaves)) - 0.5 * 1.7 * sum(
        float(jnp.sum(w * w)) for w in leaves)
    np.testing.assert_allclose(jax.jvp(ops.l2_penalty, (params, lam), (t_params, t_lam))[1], expected, rtol=1e-13)
    opcheck.assert_adjoint("l2_penalty", params, lam)
    batched = jax.tree_util.tree_map(lambda w: jnp.stack([w, 2 * w, -w]), params)
    opcheck.assert_jvp("l2_penalty", batched, lam, in_axes=(0, None))
    opcheck.assert_jvp("l2_penalty", _params(rng, jnp.float32), jnp.float32(0.1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("labels", ["ids", "rows"])
def test_ce_forward_mode_computes_no_more_transcendentals_than_autodiff_of_the_reference(rng, labels):
    # the JVP's softmax is the forward's (one exp and one log per program, as the reference's)
    import re

    s = _logits(rng, (8, 10))
    y = jnp.arange(8) % 10 if labels == "ids" else jax.nn.softmax(_logits(rng, (8, 10)))

    def count(module):
        f = lambda s: module.softmax_cross_entropy(s, y, label_smoothing=0.1)  # noqa: E731
        program = jax.jit(lambda s, t: jax.jvp(f, (s,), (t,))).lower(s, s).compile().as_text()
        return len(re.findall(r"\b(exponential|log)\(", program))

    assert count(ops) <= count(reference)
