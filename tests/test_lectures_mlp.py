"""Hu & Zhu's MLP back-propagation in vector-matrix form, against jax.grad of the ops."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import ops


def test_two_layer_delta_recursion_matches_jax_grad(rng):
    # y1 = sigmoid(W1 x + b1), y2 = W2 y1 + b2, E = (1/N) Σ ½‖y2 − t‖²
    n, d, h, k = 5, 4, 6, 3
    x = rng.normal(size=(n, d))
    t = rng.normal(size=(n, k))
    w1, b1 = rng.normal(size=(h, d)), rng.normal(size=h)
    w2, b2 = rng.normal(size=(k, h)), rng.normal(size=k)

    def loss(w1, b1, w2, b2):
        y1 = ops.sigmoid(ops.dense(x, w1, b1))
        return ops.euclidean_loss(ops.dense(y1, w2, b2), t)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*(jnp.asarray(a) for a in (w1, b1, w2, b2)))

    # The lecture's recursion, per sample, then averaged over n (its weight update divides by N).
    u1 = x @ w1.T + b1
    y1 = 1 / (1 + np.exp(-u1))
    y2 = y1 @ w2.T + b2
    delta2 = y2 - t                                 # Euclidean loss layer: δ⁽ᴸ⁾ = y⁽ᴸ⁾ − t
    dw2 = np.einsum("ni,nj->ij", delta2, y1) / n    # ∂E/∂W = δ yᵀ
    db2 = delta2.sum(0) / n                         # ∂E/∂b = δ
    delta1 = (delta2 @ w2) * y1 * (1 - y1)          # δ⁽ˡ⁻¹⁾ = Wᵀ δ⁽ˡ⁾ ⊙ f'(u), f' = f(1 − f)
    dw1 = np.einsum("ni,nj->ij", delta1, x) / n
    db1 = delta1.sum(0) / n
    for got, want in zip(grads, (dw1, db1, dw2, db2)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
