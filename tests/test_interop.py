"""PyTorch state_dict import and export (jaxcnn.interop): PyTorch's MNIST example and a
CIFAR ResNet-20, written here in torch, load into jaxcnn and agree in float64; export
round-trips bit for bit. torch is an optional test dependency (the bench extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import interop, models, nn, ops

torch = pytest.importorskip("torch")
F = torch.nn.functional
KEY = jax.random.PRNGKey(0)


# --------------------------------------------------------------------------- the torch models


class TorchMnistNet(torch.nn.Module):
    """pytorch/examples' mnist/main.py ``Net``, as published."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = torch.nn.Dropout(0.25)
        self.dropout2 = torch.nn.Dropout(0.5)
        self.fc1 = torch.nn.Linear(9216, 128)
        self.fc2 = torch.nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


def mnist_net():
    """The same network in jaxcnn, its layers named as the torch module's attributes."""
    return nn.serial(("conv1", nn.Conv(32, 3)), nn.Relu(), ("conv2", nn.Conv(64, 3)), nn.Relu(), nn.MaxPool(2),
                     nn.Dropout(0.25), nn.Flatten(), ("fc1", nn.Dense(128)), nn.Relu(), nn.Dropout(0.5),
                     ("fc2", nn.Dense(10)), nn.LogSoftmax())


class TorchBasicBlock(torch.nn.Module):
    """He et al.'s basic block with the zoo's option-A shortcut: every second pixel, zero channels appended."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c_out)
        self.conv2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c_out)
        self.stride, self.extra = stride, c_out - c_in

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        skip = F.pad(x[:, :, ::self.stride, ::self.stride], (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + skip)


class TorchResNet20(torch.nn.Module):
    def __init__(self, c_in=3, num_classes=10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c_in, 16, 3, 1, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        stage = [(16, 16, 1), (16, 32, 2), (32, 64, 2)]
        self.layer1, self.layer2, self.layer3 = (
            torch.nn.Sequential(TorchBasicBlock(a, b, s), TorchBasicBlock(b, b, 1), TorchBasicBlock(b, b, 1))
            for a, b, s in stage)
        self.fc = torch.nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class TorchVggSmall(torch.nn.Module):
    def __init__(self, c_in=1, num_classes=10):
        super().__init__()
        for i, (a, b) in enumerate([(c_in, 32), (32, 32), (32, 64), (64, 64)], 1):
            setattr(self, f"conv{i}", torch.nn.Conv2d(a, b, 3, 1, 1, bias=False))
            setattr(self, f"bn{i}", torch.nn.BatchNorm2d(b))
        self.fc1 = torch.nn.Linear(64 * 7 * 7, 256)
        self.fc2 = torch.nn.Linear(256, num_classes)

    def forward(self, x):
        for i in range(1, 5):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if i % 2 == 0:
                x = F.max_pool2d(x, 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def _randomise_running_statistics(module, rng):
    """Running statistics away from their (0, 1) start, so that evaluation tests their import."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.from_numpy(rng.normal(size=m.num_features)))
            m.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, size=m.num_features)))
    return module


def _nhwc(x):
    return jnp.asarray(x.detach().numpy().transpose(0, 2, 3, 1))


def _assert_params_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert u.dtype == v.dtype
        np.testing.assert_array_equal(u, v)


def _assert_round_trip(model, state_dict, input_shape):
    """Import then export gives the torch tensors back bit for bit (num_batches_tracked aside)."""
    params, state = interop.from_torch_state_dict(model, state_dict, input_shape)
    back = interop.to_torch_state_dict(model, params, state, input_shape)
    kept = [k for k in state_dict if not k.endswith("num_batches_tracked")]
    assert list(back) == kept
    for k in kept:
        assert back[k].dtype == np.float64
        np.testing.assert_array_equal(back[k], state_dict[k].numpy(), err_msg=k)
    again = interop.from_torch_state_dict(model, back, input_shape)
    _assert_params_equal(again, (params, state))
    return params, state


# --------------------------------------------------------------------------- PyTorch's MNIST example


def test_pytorch_mnist_example_loads_and_matches_in_float64(rng):
    torch.manual_seed(0)
    net = TorchMnistNet().double().eval()
    model = mnist_net()
    params, state = _assert_round_trip(model, net.state_dict(), (-1, 28, 28, 1))
    assert params["fc1"]["w"].shape == (128, 9216) and params["conv1"]["w"].shape == (3, 3, 1, 32)

    x = torch.from_numpy(rng.normal(size=(3, 1, 28, 28)))
    labels = np.array([3, 1, 4])
    out = net(x)
    F.nll_loss(out, torch.from_numpy(labels)).backward()
    y, _ = model.apply(params, state, _nhwc(x))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=0, atol=1e-12)

    grads = jax.grad(lambda p: -jnp.mean(model.apply(p, state, _nhwc(x))[0][jnp.arange(3), labels]))(params)
    exported = interop.to_torch_state_dict(model, grads, state, (-1, 28, 28, 1))
    for name, p in net.named_parameters():
        np.testing.assert_allclose(exported[name], p.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def test_the_flatten_order_is_what_makes_the_dense_after_it_agree(rng):
    """Without the column permutation (fc1 loaded as it stands) the logits differ: the test above pins it."""
    torch.manual_seed(0)
    net = TorchMnistNet().double().eval()
    model = mnist_net()
    params, state = interop.from_torch_state_dict(model, net.state_dict(), (-1, 28, 28, 1))
    as_is = {**params, "fc1": {"w": jnp.asarray(net.fc1.weight.detach().numpy()), "b": params["fc1"]["b"]}}
    x = torch.from_numpy(rng.normal(size=(2, 1, 28, 28)))
    y, _ = model.apply(as_is, state, _nhwc(x))
    assert np.abs(np.asarray(y) - net(x).detach().numpy()).max() > 1e-3


# --------------------------------------------------------------------------- the zoo's ResNet-20


def test_zoo_resnet20_loads_a_torch_resnet20_and_matches_logits_gradients_and_running_statistics(rng):
    torch.manual_seed(0)
    net = _randomise_running_statistics(TorchResNet20().double(), rng)
    model, shape = models.resnet20(), (-1, 16, 16, 3)
    params, state = _assert_round_trip(model, net.state_dict(), shape)
    assert params["layer2"][0]["conv1"]["w"].shape == (3, 3, 16, 32)
    assert list(state["layer3"][2]["bn2"]) == ["mean", "var"]
    x = torch.from_numpy(rng.normal(size=(4, 3, 16, 16)))
    labels = np.array([0, 3, 9, 3])

    net.eval()
    y, _ = model.apply(params, state, _nhwc(x))
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=0, atol=1e-12)

    net.train()  # batch statistics; PyTorch's momentum 0.1 is jaxcnn's 0.9
    F.cross_entropy(net(x), torch.from_numpy(labels)).backward()

    def loss(p):
        logits, new = model.apply(p, state, _nhwc(x), training=True)
        return ops.softmax_cross_entropy(logits, jnp.asarray(labels)), new

    grads, new_state = jax.grad(loss, has_aux=True)(params)
    exported = interop.to_torch_state_dict(model, grads, new_state, shape)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(exported[name], p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    for name, b in net.named_buffers():
        if not name.endswith("num_batches_tracked"):
            np.testing.assert_allclose(exported[name], b.numpy(), rtol=1e-13, atol=1e-14, err_msg=name)


# --------------------------------------------------------------------------- VGG-small, LeNet-5, other layouts


def test_zoo_vgg_small_loads_a_torch_vgg_small_and_matches(rng):
    torch.manual_seed(0)
    net = _randomise_running_statistics(TorchVggSmall().double(), rng).eval()
    model = models.vgg_small()
    params, state = _assert_round_trip(model, net.state_dict(), (-1, 28, 28, 1))
    x = torch.from_numpy(rng.normal(size=(2, 1, 28, 28)))
    y, _ = model.apply(params, state, _nhwc(x))
    np.testing.assert_allclose(y, net(x).detach().numpy(), rtol=0, atol=1e-12)


def test_zoo_lenet5_exports_the_keys_and_layouts_a_torch_lenet5_loads(rng):
    model = models.lenet5(full_c3=True)
    params, state, _ = model.init(KEY, (-1, 32, 32, 1))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
    act = torch.nn.Tanh()
    net = torch.nn.ModuleDict({"c1": torch.nn.Conv2d(1, 6, 5), "c3": torch.nn.Conv2d(6, 16, 5),
                               "c5": torch.nn.Conv2d(16, 120, 5), "f6": torch.nn.Linear(120, 84),
                               "output": torch.nn.Linear(84, 10)}).double()
    state_dict = interop.to_torch_state_dict(model, params, state, (-1, 32, 32, 1))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    x = torch.from_numpy(rng.normal(size=(2, 1, 32, 32)))
    h = F.avg_pool2d(act(net["c3"](F.avg_pool2d(act(net["c1"](x)), 2))), 2)
    out = net["output"](act(net["f6"](torch.flatten(act(net["c5"](h)), 1))))
    y, _ = model.apply(params, state, _nhwc(x))
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=0, atol=1e-12)


def test_lenet5s_connection_table_takes_torch_weights_zero_where_it_has_no_connection():
    """The C3 table's absent weights are ignored by the op: a full torch kernel is refused, not silently cut."""
    model = models.lenet5()
    params, state, _ = model.init(KEY, (-1, 32, 32, 1))
    exported = interop.to_torch_state_dict(model, params, state, (-1, 32, 32, 1))
    table = np.asarray(ops.LENET5_C3_TABLE, bool)  # (C_in, C_out); torch's weight is (C_out, C_in, 5, 5)
    assert not exported["c3.weight"][~table.T].any()
    _assert_params_equal(interop.from_torch_state_dict(model, exported, (-1, 32, 32, 1)), (params, state))
    full = {**exported, "c3.weight": exported["c3.weight"] + 0.5}
    with pytest.raises(ValueError, match=r"from_torch_state_dict: c3.weight has 900 nonzero weights at connections "
                                         r"Conv\(16, \(5, 5\)\)'s connection table leaves out \(at "
                                         r"params\['c3'\]\['w'\]\), which it would ignore"):
        interop.from_torch_state_dict(model, full, (-1, 32, 32, 1))


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_1d_and_3d_convs_and_batch_norm_after_a_flatten_match_torch(rng, groups):
    """Layouts beyond the zoo: ConvTranspose2d (IOHW, the flipped kernel, groups), Conv1d (OIW),
    Conv3d (OIDHW), and a BatchNorm1d and Linear after a flatten (its vectors permuted too)."""
    torch.manual_seed(0)
    up = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=groups).double()
    model = nn.serial(("up", nn.ConvTranspose(6, 3, stride=2, padding=1, output_padding=1, groups=groups)),
                      nn.Flatten(), ("norm", nn.BatchNorm()), ("fc", nn.Dense(3)))
    norm, fc = torch.nn.BatchNorm1d(6 * 10 * 10).double(), torch.nn.Linear(600, 3).double()
    _randomise_running_statistics(norm, rng)
    norm.running_mean.copy_(torch.from_numpy(rng.normal(size=600)))
    norm.weight.data.copy_(torch.from_numpy(rng.normal(size=600)))
    norm.eval()
    state_dict = {**{f"up.{k}": v for k, v in up.state_dict().items()},
                  **{f"norm.{k}": v for k, v in norm.state_dict().items()},
                  **{f"fc.{k}": v for k, v in fc.state_dict().items()}}
    params, state = _assert_round_trip(model, state_dict, (-1, 5, 5, 4))
    x = torch.from_numpy(rng.normal(size=(2, 4, 5, 5)))
    y, _ = model.apply(params, state, _nhwc(x))
    np.testing.assert_allclose(y, fc(norm(torch.flatten(up(x), 1))).detach().numpy(), rtol=0, atol=1e-12)

    for conv, shape, perm in ((torch.nn.Conv1d(3, 5, 4, padding=2), (2, 3, 9), (0, 2, 1)),
                              (torch.nn.Conv3d(3, 5, (2, 3, 2), groups=1), (2, 3, 4, 5, 6), (0, 2, 3, 4, 1))):
        conv = conv.double()
        layer = nn.serial(("conv", nn.Conv(5, tuple(conv.kernel_size), padding=conv.padding[0])))
        x = torch.from_numpy(rng.normal(size=shape))
        jx = jnp.asarray(x.numpy().transpose(perm))
        sd = {f"conv.{k}": v for k, v in conv.state_dict().items()}
        params, state = _assert_round_trip(layer, sd, (-1, *jx.shape[1:]))
        y, _ = layer.apply(params, state, jx)
        np.testing.assert_allclose(y, conv(x).detach().numpy().transpose(perm), rtol=0, atol=1e-12)


def test_an_unnamed_torch_sequential_maps_by_position(rng):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).double()
    model = nn.serial(nn.Dense(8), nn.Relu(), nn.Dense(2))
    params, state = _assert_round_trip(model, net.state_dict(), (-1, 4))
    assert isinstance(params, tuple) and params[2]["w"].shape == (2, 8)
    x = torch.from_numpy(rng.normal(size=(3, 4)))
    np.testing.assert_allclose(model.apply(params, state, jnp.asarray(x.numpy()))[0], net(x).detach().numpy(),
                               rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- errors


def test_a_state_dict_that_does_not_fit_is_refused_naming_the_key_and_shapes():
    torch.manual_seed(0)
    sd = TorchMnistNet().double().state_dict()
    model = mnist_net()
    with pytest.raises(ValueError, match=r"from_torch_state_dict: fc1.weight has shape \(128, 9216\) where "
                                         r"Dense\(128\) at params\['fc1'\]\['w'\] needs \(128, 12544\) \(PyTorch's "
                                         r"layout of jaxcnn's \(128, 12544\)\)"):
        interop.from_torch_state_dict(model, sd, (-1, 32, 32, 1))
    with pytest.raises(ValueError, match=r"from_torch_state_dict: conv1.weight has shape \(32, 1, 3, 3\) where "
                                         r"Conv\(32, 3\) at params\['conv1'\]\['w'\] needs \(32, 2, 3, 3\) "
                                         r"\(PyTorch's layout of jaxcnn's \(3, 3, 2, 32\)\)"):
        interop.from_torch_state_dict(model, sd, (-1, 28, 28, 2))
    with pytest.raises(ValueError, match=r"from_torch_state_dict: the state_dict has no \['fc2.weight', "
                                         r"'fc2.bias'\] \(2 of the 8 tensors serial needs"):
        interop.from_torch_state_dict(model, {k: v for k, v in sd.items() if not k.startswith("fc2")},
                                      (-1, 28, 28, 1))
    with pytest.raises(ValueError, match=r"the state_dict has keys serial has no place for: \['fc3.weight'\]; pass "
                                         r"strict=False to ignore them"):
        interop.from_torch_state_dict(model, {**sd, "fc3.weight": sd["fc2.weight"]}, (-1, 28, 28, 1))
    params, _ = interop.from_torch_state_dict(model, {**sd, "fc3.weight": sd["fc2.weight"]}, (-1, 28, 28, 1),
                                              strict=False)
    np.testing.assert_array_equal(params["fc2"]["w"], sd["fc2.weight"].numpy())


def test_layers_whose_torch_layout_is_unknown_are_refused():
    custom = nn.Layer.stateless(lambda key, s: ({"scale": jnp.ones(s[-1])}, s), lambda p, x: x * p["scale"],
                                name="Scale")
    with pytest.raises(ValueError, match=r"interop: Scale at params\['s'\] has params or state, but PyTorch's "
                                         r"layout for it is not known"):
        interop.to_torch_state_dict(nn.serial(("s", custom)), {"s": {"scale": jnp.ones(3)}}, {"s": ()}, (-1, 3))
    every_second = nn.Layer.stateless(lambda key, s: ((), (s[0], s[1] // 2)), lambda p, x: x[:, ::2],
                                      name="every_second")
    with pytest.raises(ValueError, match=r"interop: every_second changes the shape \(-1, 72\) between a Flatten "
                                         r"and the Dense after it"):
        interop.from_torch_state_dict(nn.serial(nn.Flatten(), every_second, ("fc", nn.Dense(2))), {}, (-1, 6, 6, 2))
