"""model.batchnorm: gradients, batch and running statistics, saliency, and the buffers' way through the
optimizer, the weights file and the trainer's best-epoch choice."""
from __future__ import annotations

import json

import numpy as np
import pytest

from model import train as train_module
from model.batchnorm import EPS, BatchNorm
from model.layers import build_layer
from model.network import Ensemble, Network
from model.optim import SGD, Adam
from model.train import Recipe, train
from model.weights import META_KEY, WeightsError, load_model, make_version, save_model

from gradients import as_float64, numerical_gradient

N, D, H, C = 4, 6, 8, 10
SHAPES = {"dense": (N, 5), "conv": (2, 3, 3, 4)}  # (N, C) rows and channels-last (N, H, W, C) maps

BN_SPEC = {"name": "bn", "layers": [
    {"type": "dense", "n_in": D, "n_out": H}, {"type": "batchnorm", "n_features": H}, {"type": "relu"},
    {"type": "dense", "n_in": H, "n_out": C},
]}
CONV_BN_SPEC = {"name": "convbn", "layers": [
    {"type": "reshape", "shape": [4, 4, 1]},
    {"type": "conv2d", "n_in": 1, "n_out": 2, "kernel": 3}, {"type": "batchnorm", "n_features": 2}, {"type": "relu"},
    {"type": "flatten"}, {"type": "dense", "n_in": 4 * 4 * 2, "n_out": C},
]}
MNIST_BN_SPEC = {"name": "mnistbn", "layers": [
    {"type": "dense", "n_in": 784, "n_out": 8}, {"type": "batchnorm", "n_features": 8}, {"type": "relu"},
    {"type": "dense", "n_in": 8, "n_out": 10},
]}


def features_axes(X: np.ndarray) -> tuple[int, ...]:
    return tuple(range(X.ndim - 1))


def trained_a_little(network: Network, n_in: int, rng, steps: int = 3) -> Network:
    """A few SGD steps on random data, so that gamma, beta and the running statistics are not their initial values."""
    optimizer = SGD(0.1)
    for _ in range(steps):
        X = (rng.standard_normal((16, n_in)) * 2 + 1).astype(np.float32)
        network.loss_and_gradients(X, rng.integers(0, C, 16))
        optimizer.step(network.parameters(), network.gradients())
    return network


# --- the layer -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_batchnorm_gradients_match_central_differences(rng, shape):
    layer = as_float64(BatchNorm(shape[-1]))
    layer.params["gamma"][:] = rng.standard_normal(shape[-1])
    layer.params["beta"][:] = rng.standard_normal(shape[-1])
    X = rng.standard_normal(shape) * 3 + 1
    R = rng.standard_normal(shape)  # loss = sum(Y * R), so dY = R

    def loss():
        return float((layer.forward(X, training=True) * R).sum())

    layer.forward(X, training=True)
    dX = layer.backward(R.copy())
    np.testing.assert_allclose(dX, numerical_gradient(loss, X), rtol=1e-5, atol=1e-8)
    for key in ("gamma", "beta"):
        np.testing.assert_allclose(layer.grads[key], numerical_gradient(loss, layer.params[key]),
                                   rtol=1e-5, atol=1e-8, err_msg=key)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_a_training_pass_normalises_each_feature_to_mean_0_and_variance_1(rng, shape):
    layer = BatchNorm(shape[-1])
    X = (rng.standard_normal((50,) + shape[1:]) * 5 + 3).astype(np.float32)
    Y = layer.forward(X, training=True)
    assert Y.shape == X.shape and Y.dtype == np.float32
    np.testing.assert_allclose(Y.mean(axis=features_axes(Y)), 0, atol=1e-5)
    np.testing.assert_allclose(Y.var(axis=features_axes(Y)), 1, rtol=1e-3)
    layer.params["gamma"][:] = 2.0
    layer.params["beta"][:] = -1.0
    Y = layer.forward(X, training=True)
    np.testing.assert_allclose(Y.mean(axis=features_axes(Y)), -1, atol=1e-5)
    np.testing.assert_allclose(Y.std(axis=features_axes(Y)), 2, rtol=1e-3)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_running_statistics_converge_to_the_batch_mean_and_unbiased_variance(rng, shape):
    layer = BatchNorm(shape[-1])
    X = (rng.standard_normal((20,) + shape[1:]) * 4 - 2).astype(np.float32)
    for _ in range(200):  # 0.9 ** 200: nothing of the initial 0 and 1 is left
        layer.forward(X, training=True)
    axes = features_axes(X)
    np.testing.assert_allclose(layer.buffers["running_mean"], X.mean(axis=axes), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.buffers["running_var"], X.astype(np.float64).var(axis=axes, ddof=1), rtol=1e-4)
    assert all(b.dtype == np.float32 for b in layer.buffers.values())


def test_running_statistics_converge_to_the_datas_mean_and_variance_over_many_batches(rng):
    mean, std = np.array([-3.0, 0.0, 2.0, 10.0]), np.array([0.5, 1.0, 2.0, 4.0])
    layer = BatchNorm(4, momentum=0.95)
    for _ in range(400):
        layer.forward((rng.standard_normal((64, 4)) * std + mean).astype(np.float32), training=True)
    np.testing.assert_allclose(layer.buffers["running_mean"], mean, atol=0.1 * std.max())
    np.testing.assert_allclose(layer.buffers["running_var"], std ** 2, rtol=0.15)


def test_the_momentum_weights_old_statistics_against_the_batchs():
    layer = BatchNorm(1, momentum=0.5)
    X = np.array([[1.0], [3.0]], np.float32)  # mean 2, unbiased variance 2
    layer.forward(X, training=True)
    np.testing.assert_allclose(layer.buffers["running_mean"], [0.5 * 0 + 0.5 * 2])
    np.testing.assert_allclose(layer.buffers["running_var"], [0.5 * 1 + 0.5 * 2])


def test_a_batch_of_one_value_per_feature_leaves_the_running_statistics_unchanged():
    layer = BatchNorm(3)
    Y = layer.forward(np.array([[1.0, 2.0, 3.0]], np.float32), training=True)
    np.testing.assert_array_equal(Y, 0)  # normalised by its own (zero) variance: beta
    np.testing.assert_array_equal(layer.buffers["running_mean"], 0)
    np.testing.assert_array_equal(layer.buffers["running_var"], 1)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_inference_uses_the_running_statistics_so_a_row_does_not_depend_on_its_batch(rng, shape):
    layer = BatchNorm(shape[-1])
    layer.buffers["running_mean"][:] = rng.standard_normal(shape[-1])
    layer.buffers["running_var"][:] = rng.random(shape[-1]) + 0.5
    layer.params["gamma"][:] = rng.standard_normal(shape[-1])
    layer.params["beta"][:] = rng.standard_normal(shape[-1])
    before = {k: b.copy() for k, b in layer.buffers.items()}
    X = (rng.standard_normal(shape) * 3).astype(np.float32)
    Y = layer.forward(X)
    expected = ((X - before["running_mean"]) / np.sqrt(before["running_var"] + EPS) * layer.params["gamma"]
                + layer.params["beta"])
    np.testing.assert_allclose(Y, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.forward(X[:1]), Y[:1], rtol=1e-6)
    X_other = X.copy()
    X_other[1:] = rng.standard_normal(X[1:].shape) * 100  # the rest of the batch changes, row 0 does not
    np.testing.assert_array_equal(layer.forward(X_other)[:1], Y[:1])
    for key, value in before.items():
        np.testing.assert_array_equal(layer.buffers[key], value, err_msg=f"{key}: inference changed it")
    assert Y.dtype == np.float32


def test_a_batchnorm_layer_rebuilds_from_its_spec_and_refuses_bad_ones():
    layer = BatchNorm(7, momentum=0.8)
    assert layer.spec() == {"type": "batchnorm", "n_features": 7, "momentum": 0.8}
    rebuilt = build_layer(json.loads(json.dumps(layer.spec())))
    assert isinstance(rebuilt, BatchNorm) and rebuilt.spec() == layer.spec()
    assert build_layer({"type": "batchnorm", "n_features": 3}).momentum == 0.9
    assert rebuilt.params["gamma"].dtype == np.float32 and (rebuilt.params["gamma"] == 1).all()
    assert (rebuilt.params["beta"] == 0).all()
    for spec, message in [
        ({"type": "batchnorm"}, "positive integer 'n_features', got None"),
        ({"type": "batchnorm", "n_features": 0}, "positive integer 'n_features'"),
        ({"type": "batchnorm", "n_features": 2.0}, "positive integer 'n_features'"),
        ({"type": "batchnorm", "n_features": 2, "momentum": 1.0}, r"momentum must be a number in \[0, 1\)"),
        ({"type": "batchnorm", "n_features": 2, "momentum": "0.9"}, r"momentum must be a number in \[0, 1\)"),
        ({"type": "batchnorm", "n_features": 2, "eps": 1e-3}, "bad batchnorm layer spec"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_layer(spec)
    with pytest.raises(ValueError, match=r"expects 7 features on the last axis, got shape \(2, 3\)"):
        layer.forward(np.zeros((2, 3), np.float32))


# --- in a network ----------------------------------------------------------------------------------

def test_the_optimizer_sees_gamma_and_beta_but_never_the_running_statistics(rng):
    network = Network(BN_SPEC, rng)
    assert set(network.parameters()) == {"0.W", "0.b", "1.gamma", "1.beta", "3.W", "3.b"}
    assert set(network.gradients()) == set(network.parameters())
    assert set(network.state()) == set(network.parameters()) | {"1.running_mean", "1.running_var"}
    assert network.weight_keys() == ["0.W", "3.W"], "no L2 on gamma and beta"
    X = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, C, N)
    for optimizer in (SGD(0.1, momentum=0.9), Adam(0.01)):
        network.loss_and_gradients(X, y)
        after_forward = {k: b.copy() for k, b in network.layers[1].buffers.items()}
        gamma = network.parameters()["1.gamma"].copy()
        optimizer.step(network.parameters(), network.gradients(), dict.fromkeys(network.weight_keys(), 0.1))
        for key, value in after_forward.items():
            np.testing.assert_array_equal(network.layers[1].buffers[key], value, err_msg=key)
        assert not np.array_equal(network.parameters()["1.gamma"], gamma), "gamma is trained"
    assert not any("running" in key for key in (*optimizer._m, *optimizer._v))


def test_network_gradients_through_batchnorm_match_central_differences(rng):
    network = Network(BN_SPEC, rng)
    for layer in network.layers:
        as_float64(layer)
    network.layers[1].params["gamma"][:] = rng.random(H) + 0.5
    network.layers[1].params["beta"][:] = rng.standard_normal(H) * 0.1
    X = rng.standard_normal((N, D))
    y = rng.integers(0, C, N)
    network.loss_and_gradients(X, y, 0.1)
    analytic = {key: G.copy() for key, G in network.gradients().items()}
    for key, P in network.parameters().items():
        numeric = numerical_gradient(lambda: network.loss_and_gradients(X, y, 0.1), P)
        np.testing.assert_allclose(analytic[key], numeric, rtol=1e-5, atol=1e-8, err_msg=key)


def test_batchnorm_as_the_first_trainable_layer_skips_the_input_gradient(rng):
    network = Network({"layers": [{"type": "batchnorm", "n_features": D}, {"type": "dense", "n_in": D, "n_out": C}]},
                      rng)
    assert network.layers[0].needs_input_grad is False
    network.loss_and_gradients(rng.standard_normal((N, D)).astype(np.float32), rng.integers(0, C, N))
    assert network.layers[0].grads["gamma"].any() and network.layers[0].grads["beta"].any()
    assert network.input_gradient(rng.random((2, D)), np.array([1, 2])).shape == (2, D)
    assert network.layers[0].needs_input_grad is False


@pytest.mark.parametrize("spec", [BN_SPEC, CONV_BN_SPEC], ids=["dense", "conv"])
def test_input_gradient_uses_the_running_statistics_and_leaves_them_unchanged(rng, spec):
    network = Network(spec, rng)
    n_in = D if spec is BN_SPEC else 16
    trained_a_little(network, n_in, rng)
    for layer in network.layers:
        as_float64(layer)
    norm = next(layer for layer in network.layers if isinstance(layer, BatchNorm))
    before = {k: b.copy() for k, b in norm.buffers.items()}
    assert not np.allclose(before["running_mean"], 0), "trained: the running statistics moved"
    X = rng.standard_normal((3, n_in))
    classes = np.array([1, 4, 7])

    def log_p():
        Z = network.forward(X)  # inference: the running statistics
        Z = Z - Z.max(axis=1, keepdims=True)
        lp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
        return float(lp[np.arange(3), classes].sum())

    G = network.input_gradient(X, classes)
    for key, value in before.items():
        np.testing.assert_array_equal(norm.buffers[key], value, err_msg=f"{key}: saliency changed it")
    np.testing.assert_allclose(G, numerical_gradient(log_p, X), rtol=1e-5, atol=1e-8)
    assert norm.use_running_stats is False, "training uses batch statistics again"
    network.forward(X, training=True)
    assert not np.array_equal(norm.buffers["running_mean"], before["running_mean"])


# --- state: the weights file, ensembles, the trainer -------------------------------------------------

def test_a_batchnorm_network_round_trips_through_a_weights_file_with_its_buffers(tmp_path, rng):
    network = trained_a_little(Network(MNIST_BN_SPEC, rng), 784, rng)
    path = tmp_path / "bn.npz"
    save_model(path, network, {"preprocessing_version": 1})
    with np.load(path) as npz:
        assert {"1.running_mean", "1.running_var", "1.gamma", "1.beta"} <= set(npz.files)
    loaded = load_model(path).network
    for key, value in network.state().items():
        np.testing.assert_array_equal(loaded.state()[key], value, err_msg=key)
        assert loaded.state()[key].dtype == np.float32
    X = rng.random((20, 784), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), network.predict_proba(X))


def test_an_ensemble_of_batchnorm_networks_keeps_every_members_buffers(tmp_path, rng):
    members = [trained_a_little(Network(MNIST_BN_SPEC, np.random.default_rng(s)), 784, rng) for s in (1, 2)]
    ensemble = Ensemble.of(members)
    assert "m1.1.running_var" in ensemble.state() and "m1.1.running_var" not in ensemble.parameters()
    save_model(tmp_path / "e.npz", ensemble, {"preprocessing_version": 1})
    loaded = load_model(tmp_path / "e.npz").network
    for key, value in ensemble.state().items():
        np.testing.assert_array_equal(loaded.state()[key], value, err_msg=key)
    X = rng.random((5, 784), dtype=np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), ensemble.predict_proba(X))
    with pytest.raises(ValueError, match=r"missing \['m0.1.running_mean'\]"):
        loaded.set_state({k: v for k, v in ensemble.state().items() if k != "m0.1.running_mean"})


def test_the_model_version_hashes_the_buffers_too(rng):
    a = Network(MNIST_BN_SPEC, np.random.default_rng(0))
    b = Network(MNIST_BN_SPEC, np.random.default_rng(0))
    b.layers[1].buffers["running_var"][0] = 2.0
    created = __import__("datetime").datetime(2026, 1, 1)
    assert make_version("bn", a.state(), created) != make_version("bn", b.state(), created)


def test_without_batchnorm_the_state_is_the_parameters(tiny_network):
    """So a file without buffers holds the same arrays and hashes to the same version as before."""
    assert tiny_network.state().keys() == tiny_network.parameters().keys()
    for key, value in tiny_network.state().items():
        assert value is tiny_network.parameters()[key]


def rewrite_arrays(path, change):
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def drop(key):
    return lambda arrays: arrays.pop(key)


def set_to(key, value):
    def change(arrays):
        arrays[key] = value
    return change


def set_first(key, value):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key][0] = value
    return change


@pytest.mark.parametrize("damage, message", [
    (drop("1.running_mean"), r"missing \['1.running_mean'\], unexpected \[\]"),
    (drop("1.gamma"), r"missing \['1.gamma'\]"),
    (set_to("1.running_sum", np.zeros(8, np.float32)), r"unexpected \['1.running_sum'\]"),
    (set_first("1.running_var", np.nan), "buffer '1.running_var' holds NaN or infinity"),
    (set_first("1.running_mean", np.inf), "buffer '1.running_mean' holds NaN or infinity"),
    (set_first("1.running_var", -0.5), "buffer '1.running_var' is negative somewhere"),
    (set_to("1.running_mean", np.zeros(9, np.float32)), r"buffer '1.running_mean' has shape \(9,\)"),
    (set_to("1.running_var", np.ones(8, np.int32)), "buffer '1.running_var' has dtype int32, not floating point"),
], ids=["missing-buffer", "missing-gamma", "extra", "nan", "inf", "negative-variance", "shape", "dtype"])
def test_a_weights_file_with_a_bad_buffer_is_refused_naming_the_key(tmp_path, rng, damage, message):
    path = tmp_path / "bn.npz"
    save_model(path, trained_a_little(Network(MNIST_BN_SPEC, rng), 784, rng), {"preprocessing_version": 1})
    rewrite_arrays(path, damage)
    with pytest.raises(WeightsError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_a_bad_array_leaves_the_network_unchanged(rng):
    network = trained_a_little(Network(MNIST_BN_SPEC, rng), 784, rng)
    before = {k: v.copy() for k, v in network.state().items()}
    arrays = {k: np.zeros_like(v) for k, v in before.items()}
    arrays["3.b"] = np.full(10, np.nan, np.float32)  # the last key: every other one was good
    with pytest.raises(ValueError, match="'3.b' holds NaN"):
        network.set_state(arrays)
    for key, value in before.items():
        np.testing.assert_array_equal(network.state()[key], value, err_msg=key)


def test_keeping_the_best_epoch_restores_its_buffers_too(monkeypatch, rng):
    """A tiny run whose validation accuracies are scripted so that epoch 2 of 3 is the best."""
    built: list[Network] = []

    def bn_network(cls, name, seed=0):
        built.append(Network(MNIST_BN_SPEC, np.random.default_rng(seed)))
        return built[-1]

    scripted = iter([0.5, 0.9, 0.3])
    monkeypatch.setattr(Network, "from_architecture", classmethod(bn_network))
    monkeypatch.setattr(train_module, "accuracy", lambda network, X, y: next(scripted))
    snapshots = {}

    def snapshot(progress):
        if progress.epoch_done:
            snapshots[progress.epoch] = {k: v.copy() for k, v in built[0].state().items()}

    X = (rng.standard_normal((64, 784)) + 0.5).astype(np.float32)
    y = rng.integers(0, C, 64)
    result = train(Recipe(epochs=3, batch_size=16, seed=1), X, y, X[:8], y[:8], on_progress=snapshot)
    assert result.best_epoch == 2 and result.network is built[0]
    assert not np.array_equal(snapshots[3]["1.running_mean"], snapshots[2]["1.running_mean"])
    for key, value in snapshots[2].items():
        np.testing.assert_array_equal(result.network.state()[key], value, err_msg=key)
