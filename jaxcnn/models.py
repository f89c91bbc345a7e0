"""The model zoo: the networks of the lectures and of the papers the experiments reproduce.

Every function returns a :class:`jaxcnn.nn.Layer` and takes ``ops=`` (default
:mod:`jaxcnn.ops`; :mod:`jaxcnn.reference` for plain autodiff) and ``conventions=``
(:data:`jaxcnn.nn.bound.CONVENTIONS`: ``"flax"`` or ``"pytorch"`` for ReLU′(0) = 0 and the plain
convolutions), bound once to every layer with :func:`jaxcnn.nn.bind`. Classifiers end in
logits: train them with :func:`jaxcnn.ops.softmax_cross_entropy`, which applies the
softmax (the "softmax output" of the lectures). :data:`ZOO` lists each model with its
input shape and loss.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Callable, Optional

import jax.numpy as jnp

from jaxcnn import nn
from jaxcnn.ops import LENET5_C3_TABLE

#: PyTorch's default initialisation, ``U(±1/√fan_in)`` for weights and biases, used where
#: a model reproduces a PyTorch reference (MNIST-1D).
_TORCH_INIT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


# --------------------------------------------------------------------------- Jearanaitanakij: seesaw


def seesaw_mlp(output: str = "softmax", hidden: int = 2, *, ops: Optional[ModuleType] = None,
               conventions: str = "lectures") -> nn.Layer:
    """The seesaw multilayer NN: 5 board positions → ``hidden`` sigmoid units → 2 outputs.

    ``output="sigmoid"`` ends in a sigmoid layer (trained with the Euclidean loss on the
    one-hot state); ``output="softmax"`` ends in logits (softmax cross-entropy). Input
    ``(N, 5)``.
    """
    if output not in ("sigmoid", "softmax"):
        raise ValueError(f"seesaw_mlp: `output` must be 'sigmoid' or 'softmax', got {output!r}.")
    L = nn.bind(ops, conventions=conventions)
    layers = [L.Dense(hidden), L.Sigmoid(), L.Dense(2)]
    if output == "sigmoid":
        layers.append(L.Sigmoid())
    return L.serial(*layers, name=f"seesaw_mlp({output})")


def seesaw_cnn(pool: int = 3, pool_stride: int = 1, *, ops: Optional[ModuleType] = None,
               conventions: str = "lectures") -> nn.Layer:
    """The seesaw CNN: conv (window 2, stride 1) → ReLU → max-pool (window ``pool``,
    stride ``pool_stride``) → fully connected to 2 sigmoid units → 2 logits. Input ``(N, 5, 1)``.

    The lecture's figures give the 2-tap filter (``w1``, ``w2``), stride 1 for the
    convolution, two pooled units A, B feeding two sigmoid units C, D (``w5…w8``) and the
    two-way softmax output (``w1…w4``). Two geometries turn the 4 conv outputs into the
    two pooled units: window 3 at stride 1 (the default; A and B overlap) and window 2 at
    stride 2 (A over conv outputs 1–2, B over 3–4), which is what the worked example's
    conv-layer gradient (0, −0.0147, 0.0196, 0.0196) points to.

    Raises:
      ValueError: if the pooling does not give exactly the two pooled units A, B.
    """
    if pool < 1 or pool_stride < 1 or (4 - pool) // pool_stride + 1 != 2 or pool > 4:
        raise ValueError(f"seesaw_cnn: max-pool window {pool}, stride {pool_stride} over the 4 conv outputs gives "
                         f"{max(0, (4 - pool) // max(pool_stride, 1) + 1)} pooled units, not the lecture's two (A, B); "
                         f"use window 3 stride 1 or window 2 stride 2.")
    L = nn.bind(ops, conventions=conventions)
    return L.serial(
        L.Conv(1, 2), L.Relu(), L.MaxPool(pool, stride=pool_stride), L.Flatten(),  # w1, w2 → A, B
        L.Dense(2), L.Sigmoid(),  # C, D
        L.Dense(2),  # the softmax output's logits
        name="seesaw_cnn",
    )


# --------------------------------------------------------------------------- Park: homework networks


def linear_perceptron(num_classes: int = 10, *, ops: Optional[ModuleType] = None,
                      conventions: str = "lectures") -> nn.Layer:
    """Single-layer linear perceptron: flatten → fully connected; trained with the
    Euclidean loss against one-hot labels (Park's homework). Input ``(N, 14, 14, 1)``."""
    L = nn.bind(ops, conventions=conventions)
    return L.serial(L.Flatten(), L.Dense(num_classes), name="linear_perceptron")


def perceptron(num_classes: int = 10, *, ops: Optional[ModuleType] = None,
               conventions: str = "lectures") -> nn.Layer:
    """Single-layer perceptron: flatten → fully connected → softmax cross-entropy."""
    L = nn.bind(ops, conventions=conventions)
    return L.serial(L.Flatten(), L.Dense(num_classes), name="perceptron")


def mlp(hidden: int = 30, num_classes: int = 10, *, ops: Optional[ModuleType] = None,
        conventions: str = "lectures") -> nn.Layer:
    """Park's MLP: flatten → fc(``hidden``) → ReLU → fc(10)."""
    L = nn.bind(ops, conventions=conventions)
    return L.serial(L.Flatten(), L.Dense(hidden), L.Relu(), L.Dense(num_classes), name="mlp")


def homework_cnn(num_classes: int = 10, *, ops: Optional[ModuleType] = None,
                 conventions: str = "lectures") -> nn.Layer:
    """Park's CNN: conv 3×3, 3 channels (SAME) → ReLU → 2×2 max-pool → flatten (147 for
    14×14 input) → fc(10)."""
    L = nn.bind(ops, conventions=conventions)
    return L.serial(
        L.Conv(3, (3, 3), padding="SAME"), L.Relu(), L.MaxPool((2, 2)),
        L.Flatten(), L.Dense(num_classes),
        name="homework_cnn",
    )


# --------------------------------------------------------------------------- LeNet-5


def lenet5(num_classes: int = 10, *, full_c3: bool = False, activation: str = "tanh",
           ops: Optional[ModuleType] = None,
           conventions: str = "lectures") -> nn.Layer:
    """LeNet-5 (LeCun et al. 1998, in Hu & Zhu) for ``(N, 32, 32, 1)`` input.

    C1 conv 5×5, 6 maps → S2 2×2 mean pooling → C3 conv 5×5, 16 maps through the
    connection table :data:`~jaxcnn.ops.LENET5_C3_TABLE` (60 of 96 connections; all 96
    with ``full_c3=True``) → S4 2×2 mean pooling → C5 conv 5×5, 120 maps → F6 fc 84 →
    fc ``num_classes`` (logits). Subsampling is pooling without trainable coefficients.
    60,806 trainable parameters (C3: 1,516); 61,706 with the full C3. Params are keyed by the
    paper's layer names: ``c1``, ``c3``, ``c5``, ``f6``, ``output``.
    """
    L = nn.bind(ops, conventions=conventions)
    act = {"tanh": L.Tanh, "relu": L.Relu, "sigmoid": L.Sigmoid}.get(activation)
    if act is None:
        raise ValueError(f"lenet5: `activation` must be 'tanh', 'relu' or 'sigmoid', got {activation!r}.")
    table = None if full_c3 else LENET5_C3_TABLE
    return L.serial(
        ("c1", L.Conv(6, (5, 5))), act(), L.MeanPool((2, 2)),  # C1: 28×28×6, S2: 14×14×6
        ("c3", L.Conv(16, (5, 5), connections=table)), act(), L.MeanPool((2, 2)),  # C3: 10×10×16, S4: 5×5×16
        ("c5", L.Conv(120, (5, 5))), act(), L.Flatten(),  # C5: 120
        ("f6", L.Dense(84)), act(),  # F6: 84
        ("output", L.Dense(num_classes)),
        name="lenet5",
    )


# --------------------------------------------------------------------------- MNIST-1D (Greydanus)


def mnist1d_cnn(channels: int = 25, num_classes: int = 10, *, ops: Optional[ModuleType] = None,
                conventions: str = "lectures") -> nn.Layer:
    """Greydanus' ConvBase: conv1d 1→25 k5 s2 p1, 25→25 k3 s2 p1, 25→25 k3 s2 p1, each
    ReLU → flatten (125 for length 40) → fc 10. Input ``(N, 40, 1)``."""
    L = nn.bind(ops, conventions=conventions)

    def conv(window):
        return L.Conv(channels, (window,), stride=2, padding=1, w_init=_TORCH_INIT, b_init=_TORCH_INIT)

    return L.serial(
        conv(5), L.Relu(), conv(3), L.Relu(), conv(3), L.Relu(),
        L.Flatten(), L.Dense(num_classes, w_init=_TORCH_INIT, b_init=_TORCH_INIT),
        name="mnist1d_cnn",
    )


def mnist1d_mlp(hidden: int = 100, num_classes: int = 10, *, ops: Optional[ModuleType] = None,
                conventions: str = "lectures") -> nn.Layer:
    """Greydanus' MLPBase: ``h = relu(W₁x)``, ``h = h + relu(W₂h)``, ``y = W₃h``. Input ``(N, 40)``."""
    L = nn.bind(ops, conventions=conventions)

    def dense(n):
        return L.Dense(n, w_init=_TORCH_INIT, b_init=_TORCH_INIT)

    return L.serial(dense(hidden), L.Relu(), L.residual(L.serial(dense(hidden), L.Relu())), dense(num_classes),
                    name="mnist1d_mlp")


def mnist1d_logistic(num_classes: int = 10, *, ops: Optional[ModuleType] = None,
                     conventions: str = "lectures") -> nn.Layer:
    """Greydanus' LinearBase: logistic regression. Input ``(N, 40)``."""
    L = nn.bind(ops, conventions=conventions)
    return L.serial(L.Dense(num_classes, w_init=_TORCH_INIT, b_init=_TORCH_INIT), name="mnist1d_logistic")


# --------------------------------------------------------------------------- small ResNet / DenseNet


def small_resnet(channels: int = 16, num_classes: int = 10, *, ops: Optional[ModuleType] = None,
                 conventions: str = "lectures") -> nn.Layer:
    """Conv 3×3 → two stages of [residual block of two 3×3 convs → ReLU → 2×2 max-pool]
    → flatten → fc. Image input ``(N, H, W, C)``."""
    L = nn.bind(ops, conventions=conventions)

    def block():
        he = L.initializers.he_normal()
        return L.residual(L.serial(
            L.Conv(channels, (3, 3), padding="SAME", w_init=he), L.Relu(),
            L.Conv(channels, (3, 3), padding="SAME", w_init=he),
        ))

    return L.serial(
        L.Conv(channels, (3, 3), padding="SAME"), L.Relu(),
        block(), L.Relu(), L.MaxPool((2, 2)),
        block(), L.Relu(), L.MaxPool((2, 2)),
        L.Flatten(), L.Dense(num_classes),
        name="small_resnet",
    )


def small_densenet(growth: int = 8, layers: int = 3, num_classes: int = 10, *,
                   ops: Optional[ModuleType] = None,
                   conventions: str = "lectures") -> nn.Layer:
    """Raj's DenseNet outline: conv → a dense block (each 3×3 conv sees the concatenation of
    all earlier maps) → 1×1 transition conv → 2×2 max-pool → flatten → fc."""
    L = nn.bind(ops, conventions=conventions)
    grow = [L.serial(L.Conv(growth, (3, 3), padding="SAME"), L.Relu()) for _ in range(layers)]
    return L.serial(
        L.Conv(2 * growth, (3, 3), padding="SAME"), L.Relu(),
        L.dense_block(*grow),
        L.Conv(2 * growth, (1, 1)), L.Relu(), L.MaxPool((2, 2)),
        L.Flatten(), L.Dense(num_classes),
        name="small_densenet",
    )


# --------------------------------------------------------------------------- He et al. 2016: ResNet-20


def _pad_channels(extra: int) -> nn.Layer:
    """``(…, C) → (…, C + extra)`` with zeros: the identity shortcut's "extra zero entries
    padded for increasing dimensions" (He et al., option A)."""
    return nn.Layer.stateless(lambda key, s: ((), (*s[:-1], s[-1] + extra)),
                              lambda params, x: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)]),
                              name=f"pad_channels(+{extra})")


def resnet20(num_classes: int = 10, *, norm: str = "batch", groups: int = 8,
             ops: Optional[ModuleType] = None,
             conventions: str = "lectures") -> nn.Layer:
    """ResNet-20, He et al. (2016), §4.2's CIFAR network, for ``(N, H, W, C)`` images.

    conv 3×3, 16 → three stages of three basic blocks with 16, 32 and 64 maps → global
    average pooling → fc ``num_classes`` (logits); 6·3 + 2 = 20 weight layers. A basic
    block is ``relu(x + norm(conv(relu(norm(conv(x))))))`` with 3×3 convolutions; the first
    block of stages 2 and 3 halves the map with stride 2 and its shortcut is the paper's
    option A for CIFAR: the identity subsampled by 2 with zero channels appended
    (parameter-free, 0.27M parameters in all as in the paper's Table 6). Convolutions pad
    by 1 (so a stride-2 convolution sees the pixels the shortcut keeps) and are
    initialised as in He et al. (2015).

    Args:
      norm: ``"batch"`` (the paper: batch norm after every convolution, the convolutions
        without bias), ``"group"`` (group norm with ``groups`` groups, Wu & He) or
        ``"none"`` (convolutions with bias, no normalisation, initialised as Fixup's rules
        prescribe, Zhang, Dauphin & Ma 2019: each residual branch's last convolution starts at
        zero and its first is He's scaled by ``9^(-1/2)`` for the nine branches, so the signal
        does not grow with depth at initialisation — with He's initialisation alone the
        unnormalised network's logits start ~10× too large and the `modern_cnn` recipe's training
        collapses to a constant output).
      groups: group norm's number of groups (it must divide 16).

    Params and state are keyed as in PyTorch's CIFAR ResNets: ``conv1``, ``bn1``, ``layer1`` …
    ``layer3`` (three blocks each, by position: ``params["layer2"][0]["conv1"]`` is PyTorch's
    ``layer2.0.conv1``), ``fc``; a block's are ``conv1``, ``bn1``, ``conv2``, ``bn2`` (``gn1``,
    ``gn2`` with group norm, none without normalisation).

    Raises:
      ValueError: an unknown ``norm`` or a ``groups`` that does not divide 16.
    """
    if norm not in ("batch", "group", "none"):
        raise ValueError(f"resnet20: `norm` must be 'batch', 'group' or 'none', got {norm!r}.")
    if norm == "group" and (not isinstance(groups, int) or groups < 1 or 16 % groups):
        raise ValueError(f"resnet20: group norm's `groups` must divide every stage's channels (16, 32, 64), "
                         f"got {groups!r}.")
    L = nn.bind(ops, conventions=conventions)

    def conv(features, stride=1, w_init=nn.initializers.he_normal()):
        return L.Conv(features, (3, 3), stride=stride, padding=1, use_bias=norm == "none", w_init=w_init)

    # Fixup (see `norm`): only without normalisation, which otherwise keeps the signal's scale.
    first, last = ((nn.initializers.variance_scaling(2.0 / 9, "fan_in", "normal"), nn.initializers.zeros())
                   if norm == "none" else (nn.initializers.he_normal(), nn.initializers.he_normal()))

    def normalise(i):  # the norm layer after convolution i, named as PyTorch's: bn1, gn1, or none
        return {"batch": [(f"bn{i}", L.BatchNorm())], "group": [(f"gn{i}", L.GroupNorm(groups))], "none": []}[norm]

    def block(features, stride=1, c_in=None):
        body = L.serial(("conv1", conv(features, stride, first)), *normalise(1), L.Relu(),
                        ("conv2", conv(features, w_init=last)), *normalise(2), name=f"block({features})")
        if stride == 1:
            return _basic_block(body, [], L.Relu(), name=f"basic_block({features})")
        shortcut = [L.Downsample(stride), _pad_channels(features - c_in)]  # option A
        return _basic_block(body, shortcut, L.Relu(), name=f"basic_block({features}, /{stride})")

    return L.serial(
        ("conv1", conv(16)), *normalise(1), L.Relu(),
        ("layer1", L.serial(block(16), block(16), block(16), name="3 × basic_block(16)")),  # 28×28×16
        ("layer2", L.serial(block(32, 2, 16), block(32), block(32), name="3 × basic_block(32)")),  # 14×14×32
        ("layer3", L.serial(block(64, 2, 32), block(64), block(64), name="3 × basic_block(64)")),  # 7×7×64
        L.GlobalMeanPool(), ("fc", L.Dense(num_classes)),
        name=f"resnet20(norm={norm})",
    )


def _basic_block(body: nn.Layer, shortcut: list[nn.Layer], relu: nn.Layer, *, name: str) -> nn.Layer:
    """``relu(body(x) + shortcut(x))``, He et al.'s basic block (PyTorch's ``BasicBlock``), with the
    body's params and state as its own (``conv1``, ``bn1``, ``conv2``, ``bn2``): the shortcut (the
    identity, or parameter-free layers applied in order) and the ReLU have none."""

    def init(key, input_shape):
        params, state, shape = body.init(key, input_shape)
        skip = input_shape
        for layer in shortcut:
            skip = layer.init(key, skip)[2]
        if tuple(skip) != tuple(shape):
            raise ValueError(f"{name}: the shortcut gives shape {tuple(skip)} where the body gives {tuple(shape)}.")
        return params, state, shape

    def apply(params, state, x, *, training=False, key=None):
        y, state = body.apply(params, state, x, training=training, key=key)
        for layer in shortcut:
            x, _ = layer.apply((), (), x)
        return relu.apply((), (), y + x)[0], state

    return nn.Layer(init, apply, name=name, children=(body, *shortcut, relu),
                    keys=((), *[None] * (len(shortcut) + 1)), count=body.count, kind="basic_block")


def vgg_small(num_classes: int = 10, *, dropout: float = 0.25, dropout_fc: float = 0.5,
              ops: Optional[ModuleType] = None,
              conventions: str = "lectures") -> nn.Layer:
    """A small VGG-style network (Simonyan & Zisserman's stacks of 3×3 convolutions, with
    batch norm and dropout) for ``(N, H, W, C)`` images:
    ``[conv 3×3 → BN → ReLU] × 2 → 2×2 max-pool → dropout`` with 32 and then 64 maps →
    flatten → fc 256 → ReLU → dropout → fc ``num_classes``. Params and state are keyed
    ``conv1``…``conv4``, ``bn1``…``bn4``, ``fc1``, ``fc2``."""
    L = nn.bind(ops, conventions=conventions)

    def conv_bn_relu(i, features):
        return [(f"conv{i}", L.Conv(features, (3, 3), padding="SAME", use_bias=False,
                                    w_init=nn.initializers.he_normal())),
                (f"bn{i}", L.BatchNorm()), L.Relu()]

    return L.serial(
        *conv_bn_relu(1, 32), *conv_bn_relu(2, 32), L.MaxPool((2, 2)), L.Dropout(dropout),  # 14×14×32
        *conv_bn_relu(3, 64), *conv_bn_relu(4, 64), L.MaxPool((2, 2)), L.Dropout(dropout),  # 7×7×64
        L.Flatten(), ("fc1", L.Dense(256, w_init=nn.initializers.he_normal())), L.Relu(), L.Dropout(dropout_fc),
        ("fc2", L.Dense(num_classes)),
        name="vgg_small",
    )


# --------------------------------------------------------------------------- catalogue


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """A zoo model with what training it needs: its input shape (batch axis ``-1``) and loss."""

    build: Callable[..., nn.Layer]
    input_shape: tuple[int, ...]
    loss: str  # "softmax_cross_entropy" or "euclidean_loss" (against one-hot labels)


ZOO: dict[str, ZooEntry] = {
    "seesaw_mlp_sigmoid": ZooEntry(lambda ops=None: seesaw_mlp("sigmoid", ops=ops), (-1, 5), "euclidean_loss"),
    "seesaw_mlp": ZooEntry(seesaw_mlp, (-1, 5), "softmax_cross_entropy"),
    "seesaw_cnn": ZooEntry(seesaw_cnn, (-1, 5, 1), "softmax_cross_entropy"),
    "seesaw_cnn_pool2": ZooEntry(lambda ops=None: seesaw_cnn(2, 2, ops=ops), (-1, 5, 1), "softmax_cross_entropy"),
    "linear_perceptron": ZooEntry(linear_perceptron, (-1, 14, 14, 1), "euclidean_loss"),
    "perceptron": ZooEntry(perceptron, (-1, 14, 14, 1), "softmax_cross_entropy"),
    "mlp": ZooEntry(mlp, (-1, 14, 14, 1), "softmax_cross_entropy"),
    "homework_cnn": ZooEntry(homework_cnn, (-1, 14, 14, 1), "softmax_cross_entropy"),
    "lenet5": ZooEntry(lenet5, (-1, 32, 32, 1), "softmax_cross_entropy"),
    "lenet5_full_c3": ZooEntry(lambda ops=None: lenet5(full_c3=True, ops=ops), (-1, 32, 32, 1),
                               "softmax_cross_entropy"),
    "mnist1d_cnn": ZooEntry(mnist1d_cnn, (-1, 40, 1), "softmax_cross_entropy"),
    "mnist1d_mlp": ZooEntry(mnist1d_mlp, (-1, 40), "softmax_cross_entropy"),
    "mnist1d_logistic": ZooEntry(mnist1d_logistic, (-1, 40), "softmax_cross_entropy"),
    "small_resnet": ZooEntry(small_resnet, (-1, 28, 28, 1), "softmax_cross_entropy"),
    "small_densenet": ZooEntry(small_densenet, (-1, 28, 28, 1), "softmax_cross_entropy"),
    "resnet20": ZooEntry(resnet20, (-1, 28, 28, 1), "softmax_cross_entropy"),
    "resnet20_gn": ZooEntry(lambda ops=None: resnet20(norm="group", ops=ops), (-1, 28, 28, 1), "softmax_cross_entropy"),
    "resnet20_plain": ZooEntry(lambda ops=None: resnet20(norm="none", ops=ops), (-1, 28, 28, 1),
                               "softmax_cross_entropy"),
    "vgg_small": ZooEntry(vgg_small, (-1, 28, 28, 1), "softmax_cross_entropy"),
}
