"""The PyTorch options of jaxcnn's ops against PyTorch itself (float64, CPU).

Every option that ports a PyTorch call one-to-one — pooling's ``dilation``, ``ceil_mode``,
``count_include_pad`` and ``return_indices``; adaptive pooling (1-D to 3-D, any output size);
cross-entropy's ``weight``, ``ignore_index``,
``label_smoothing`` and ``reduction``; ``batch_norm``'s training output and running-variance
update; ``layer_norm``, ``group_norm``, ``log_softmax``, ``leaky_relu`` and ReLU's derivative at
0; ``conv``'s ``groups``; ``conv_transpose``'s ``dilation``, ``output_padding`` and ``groups`` — is
run on both, values and gradients compared. The default test suite checks the same
semantics from their definitions, without torch; this script needs ``pip install -e ".[bench]"``.

    python experiments/torch_semantics.py
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import torch

from jaxcnn import ops, reference

jax.config.update("jax_enable_x64", True)
F = torch.nn.functional


def nchw(a):
    return np.moveaxis(np.asarray(a), -1, 1)


def pooling(rng) -> int:
    checked = 0
    for h, w, k, s, p, d, ceil in itertools.product([5, 8], [6, 9], [2, 3], [1, 2, 3], [0, 1], [1, 2], [False, True]):
        if p > k // 2:
            continue
        x = rng.permutation(np.arange(2 * 3 * h * w)).reshape(2, 3, h, w).astype(np.float64)
        xt = torch.tensor(x, requires_grad=True)
        yt, it = F.max_pool2d(xt, k, s, p, d, ceil_mode=ceil, return_indices=True)
        (yt * torch.arange(yt.numel(), dtype=torch.float64).reshape(yt.shape)).sum().backward()
        xj = np.moveaxis(x, 1, -1)
        y, i = ops.max_pool(xj, k, s, p, dilation=d, ceil_mode=ceil, return_indices=True)
        v = np.moveaxis(np.arange(yt.numel(), dtype=np.float64).reshape(yt.shape), 1, -1)
        dx = jax.grad(lambda x: (ops.max_pool(x, k, s, p, dilation=d, ceil_mode=ceil) * v).sum())(xj)
        assert np.array_equal(nchw(y), yt.detach().numpy()) and np.array_equal(nchw(i), it.numpy())
        assert np.allclose(nchw(dx), xt.grad.numpy())
        checked += 1
        if d == 1:
            for include in (True, False):
                at = F.avg_pool2d(torch.tensor(x), k, s, p, ceil_mode=ceil, count_include_pad=include).numpy()
                a = ops.mean_pool(xj, k, s, p, count_padding=include, ceil_mode=ceil)
                assert np.allclose(nchw(a), at), (h, w, k, s, p, ceil, include)
                checked += 1
    return checked


def adaptive_pooling(rng) -> int:
    """``adaptive_mean_pool``/``adaptive_max_pool`` against ``F.adaptive_avg_pool{1,2,3}d`` and
    ``F.adaptive_max_pool{1,2,3}d`` (values, gradients, indices), on random inputs and on 0/1
    inputs tied in nearly every window, output sizes smaller, larger and not dividing."""
    checked = 0
    for d, tied in itertools.product([1, 2, 3], [False, True]):
        for _ in range(4):
            spatial = tuple(int(n) for n in rng.integers(1, 8 if d < 3 else 5, d))
            out = tuple(int(m) for m in rng.integers(1, 10 if d < 3 else 6, d))
            shape = (2, *spatial, 3)
            x = rng.integers(0, 2, size=shape).astype(np.float64) if tied else rng.normal(size=shape)
            v = rng.normal(size=(2, *out, 3))
            for name, torch_op in [("adaptive_mean_pool", getattr(F, f"adaptive_avg_pool{d}d")),
                                   ("adaptive_max_pool", getattr(F, f"adaptive_max_pool{d}d"))]:
                xt = torch.tensor(nchw(x).copy(), requires_grad=True)
                yt = torch_op(xt, out)
                (yt * torch.tensor(nchw(v).copy())).sum().backward()
                for f in (getattr(ops, name), getattr(reference, name)):
                    y, vjp = jax.vjp(lambda x: f(x, out), x)
                    assert np.allclose(nchw(y), yt.detach().numpy()) and np.allclose(nchw(vjp(v)[0]), xt.grad.numpy())
                    checked += 1
            _, it = getattr(F, f"adaptive_max_pool{d}d")(torch.tensor(nchw(x).copy()), out, return_indices=True)
            assert np.array_equal(nchw(ops.adaptive_max_pool(x, out, return_indices=True)[1]), it.numpy())
    return checked


def cross_entropy(rng) -> int:
    checked = 0
    s = rng.normal(size=(9, 5)) * 2
    y = rng.integers(0, 5, 9)
    w = rng.uniform(0.2, 3.0, 5)
    probs = rng.dirichlet(np.ones(5), 9)
    for weights, ignore, eps, reduction in itertools.product((None, w), (None, int(y[0])), (0.0, 0.15),
                                                             ("mean", "sum", "none")):
        for labels in (y, probs):
            if ignore is not None and labels is probs:
                continue
            st = torch.tensor(s, requires_grad=True)
            kw = dict(weight=None if weights is None else torch.tensor(weights), label_smoothing=eps,
                      reduction=reduction)
            if ignore is not None:
                kw["ignore_index"] = ignore
            lt = F.cross_entropy(st, torch.tensor(labels), **kw)
            lt.sum().backward()
            mine = dict(weights=weights, ignore_index=ignore, label_smoothing=eps, reduction=reduction)
            loss = ops.softmax_cross_entropy(s, labels, **mine)
            ds = jax.grad(lambda s: ops.softmax_cross_entropy(s, labels, **mine).sum())(s)
            assert np.allclose(loss, lt.detach().numpy()) and np.allclose(ds, st.grad.numpy())
            checked += 1
    return checked


def normalisation(rng) -> int:
    x = rng.normal(size=(4, 5, 6, 6)) * 2 + 1  # NHWC
    gamma, beta = rng.normal(size=6), rng.normal(size=6)
    v = rng.normal(size=x.shape)
    xt = torch.tensor(np.moveaxis(x, -1, 1).copy(), requires_grad=True)
    mean, var = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    yt = F.batch_norm(xt, mean, var, torch.tensor(gamma), torch.tensor(beta), training=True, momentum=0.1)
    (yt * torch.tensor(np.moveaxis(v, -1, 1).copy())).sum().backward()
    (y, mu, batch_var), vjp = jax.vjp(lambda x: ops.batch_norm(x, gamma, beta), x)
    dx = vjp((v, np.zeros(6), np.zeros(6)))[0]
    n = x.size // 6
    assert np.allclose(nchw(y), yt.detach().numpy()) and np.allclose(nchw(dx), xt.grad.numpy())
    assert np.allclose(0.9 * 0 + 0.1 * mu, mean.numpy())  # torch updated its running statistics in place
    assert np.allclose(0.9 * 1 + 0.1 * batch_var * n / (n - 1), var.numpy())  # the unbiased correction
    ln = ops.layer_norm(x, np.ones((5, 6, 6)), np.zeros((5, 6, 6)), axis=(1, 2, 3))
    assert np.allclose(ln, F.layer_norm(torch.tensor(x), (5, 6, 6)).numpy())
    gn = ops.group_norm(x, gamma, beta, 3)
    gt = F.group_norm(torch.tensor(np.moveaxis(x, -1, 1).copy()), 3, torch.tensor(gamma), torch.tensor(beta))
    assert np.allclose(nchw(gn), gt.numpy())
    return 4


def convolution(rng) -> int:
    """``conv(groups=)`` against ``F.conv2d`` and ``conv_transpose(stride, padding, dilation,
    output_padding, groups)`` against ``F.conv_transpose2d``: values and all three gradients.
    PyTorch's conv kernel is ``(C_out, C_in / g, kh, kw)``; its transposed-conv kernel is
    ``(C_in, C_out / g, kh, kw)`` and jaxcnn's ``(kh, kw, C_in / g, C_out)`` flipped."""
    checked = 0
    for (c_in, c_out, g), s, p, d in itertools.product([(4, 4, 4), (3, 6, 3), (4, 6, 2), (2, 4, 1)], [1, 2],
                                                        [0, 1], [1, 2]):
        x, b = rng.normal(size=(2, 7, 6, c_in)), rng.normal(size=c_out)
        w = rng.normal(size=(3, 3, c_in // g, c_out))
        xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (nchw(x), np.transpose(w, (3, 2, 0, 1)), b))
        yt = F.conv2d(xt, wt, bt, s, p, d, g)
        v = rng.normal(size=yt.shape)
        (yt * torch.tensor(v)).sum().backward()
        y, vjp = jax.vjp(lambda x, w, b: ops.conv(x, w, b, stride=s, padding=p, dilation=d, groups=g), x, w, b)
        dx, dw, db = vjp(np.moveaxis(v, 1, -1))
        assert np.allclose(nchw(y), yt.detach().numpy()) and np.allclose(nchw(dx), xt.grad.numpy())
        assert np.allclose(np.transpose(dw, (3, 2, 0, 1)), wt.grad.numpy()) and np.allclose(db, bt.grad.numpy())
        checked += 1
        for a in range(max(s, d)):  # every output_padding PyTorch accepts
            xs = x[:, :4, :3]
            w_flipped = w[::-1, ::-1].reshape(3, 3, c_in // g, g, c_out // g)
            w_torch = np.transpose(w_flipped, (3, 2, 4, 0, 1)).reshape(c_in, c_out // g, 3, 3)
            xt, wt, bt = (torch.tensor(arr, requires_grad=True) for arr in (nchw(xs), w_torch.copy(), b))
            yt = F.conv_transpose2d(xt, wt, bt, s, p, a, g, d)
            v = rng.normal(size=yt.shape)
            (yt * torch.tensor(v)).sum().backward()
            y, vjp = jax.vjp(lambda x, w, b: ops.conv_transpose(x, w, b, stride=s, padding=p, dilation=d,
                                                                output_padding=a, groups=g), xs, w, b)
            dx, dw, db = vjp(np.moveaxis(v, 1, -1))
            dw_torch = np.transpose(np.asarray(dw)[::-1, ::-1].reshape(3, 3, c_in // g, g, c_out // g),
                                    (3, 2, 4, 0, 1)).reshape(wt.shape)
            assert np.allclose(nchw(y), yt.detach().numpy()) and np.allclose(nchw(dx), xt.grad.numpy())
            assert np.allclose(dw_torch, wt.grad.numpy()) and np.allclose(db, bt.grad.numpy())
            checked += 1
    return checked


def activations() -> int:
    x = np.array([-2.0, -0.5, 0.0, 0.0, 1.5])
    xt = torch.tensor(x, requires_grad=True)
    F.relu(xt).sum().backward()
    assert np.array_equal(jax.grad(lambda x: ops.relu(x, derivative_at_zero=0.0).sum())(x), xt.grad.numpy())
    xt.grad = None
    F.leaky_relu(xt, 0.1).sum().backward()
    torch_way = jax.grad(lambda x: ops.leaky_relu(x, 0.1, derivative_at_zero=0.1).sum())(x)
    assert np.array_equal(torch_way, xt.grad.numpy())
    xt.grad = None
    (F.log_softmax(xt, 0) * torch.arange(5.0, dtype=torch.float64)).sum().backward()
    grad = jax.grad(lambda x: (ops.log_softmax(x, 0) * np.arange(5.0)).sum())(x)
    assert np.allclose(grad, xt.grad.numpy())
    return 3


def edge_cases(rng) -> int:
    """The corners of issue 36: an all-ignored weighted batch (loss NaN, gradient 0), a NaN weight
    of a class no kept row has (finite), log-softmax over an empty axis, dilated max-pool ties."""
    checked = 0
    s = rng.normal(size=(5, 4))
    for weights, labels, ignore in [(rng.uniform(0.5, 2.0, 4), np.full(5, 2), 2),
                                    (np.array([1.0, 2.0, np.nan, 0.5]), np.array([0, 1, 3, 1, 2]), 2),
                                    (np.array([1.0, 2.0, np.nan, 0.5]), np.array([0, 1, 3, 1, 0]), -100)]:
        st = torch.tensor(s, requires_grad=True)
        lt = F.cross_entropy(st, torch.tensor(labels), weight=torch.tensor(weights), ignore_index=ignore)
        lt.backward()
        mine = dict(weights=weights, ignore_index=ignore)
        for f in (ops.softmax_cross_entropy, reference.softmax_cross_entropy):
            loss, ds = f(s, labels, **mine), jax.grad(lambda s: f(s, labels, **mine))(s)
            assert np.allclose(loss, lt.item(), equal_nan=True) and np.allclose(ds, st.grad.numpy())
            checked += 1
    for axis in range(3):
        assert F.log_softmax(torch.ones(5, 0, 0), axis).shape == ops.log_softmax(np.ones((5, 0, 0)), axis).shape
        checked += 1
    for d, ceil in itertools.product([2, 3], [False, True]):
        x = rng.integers(0, 2, size=(2, 3, 7, 6)).astype(np.float64)  # NCHW, ties in nearly every window
        xt = torch.tensor(x, requires_grad=True)
        yt = F.max_pool2d(xt, 2, 1, 1, d, ceil_mode=ceil)
        v = rng.normal(size=yt.shape)
        (yt * torch.tensor(v)).sum().backward()
        for f in (ops.max_pool, reference.max_pool):
            dx = jax.vjp(lambda x: f(x, 2, 1, 1, dilation=d, ceil_mode=ceil), np.moveaxis(x, 1, -1))[1](
                np.moveaxis(v, 1, -1))[0]
            assert np.allclose(nchw(dx), xt.grad.numpy())
            checked += 1
    return checked


def main() -> None:
    rng = np.random.default_rng(0)
    counts = {"pooling": pooling(rng), "adaptive pooling": adaptive_pooling(rng),
              "cross-entropy": cross_entropy(rng), "normalisation": normalisation(rng),
              "activations": activations(), "convolution": convolution(rng), "edge cases": edge_cases(rng)}
    print(f"torch {torch.__version__}: every comparison agrees (float64) — "
          + ", ".join(f"{name} {n} settings" for name, n in counts.items()))


if __name__ == "__main__":
    main()
