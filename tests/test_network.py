"""model.network: the whole network's gradients with L2, probabilities, parameters and architectures."""
from __future__ import annotations

import numpy as np
import pytest

from model.layers import Dense
from model.network import ARCHITECTURES, Network, architecture_spec

from gradients import as_float64, numerical_gradient

N, D, H, C = 4, 6, 8, 10
SMALL_SPEC = {"name": "small", "layers": [
    {"type": "dense", "n_in": D, "n_out": H},
    {"type": "relu"},
    {"type": "dense", "n_in": H, "n_out": C},
]}


def to_float64(network: Network) -> Network:
    for layer in network.layers:
        as_float64(layer)
    return network


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_network_gradients_with_l2_match_central_differences(rng, l2):
    network = to_float64(Network(SMALL_SPEC, rng))
    for key, P in network.parameters().items():
        if key.endswith(".b"):
            P[:] = rng.standard_normal(P.shape) * 0.1
    X = rng.standard_normal((N, D))
    y = rng.integers(0, C, N)
    network.loss_and_gradients(X, y, l2)
    analytic = {key: G.copy() for key, G in network.gradients().items()}
    for key, P in network.parameters().items():
        numeric = numerical_gradient(lambda: network.loss_and_gradients(X, y, l2), P)
        np.testing.assert_allclose(analytic[key], numeric, rtol=1e-5, atol=1e-8, err_msg=key)


def test_float32_gradients_agree_with_float64_ones(rng):
    X = rng.standard_normal((N, D)).astype(np.float32)
    y = rng.integers(0, C, N)
    network32 = Network(SMALL_SPEC, np.random.default_rng(1))
    network64 = to_float64(Network(SMALL_SPEC, np.random.default_rng(1)))
    loss32 = network32.loss_and_gradients(X, y, 0.1)
    loss64 = network64.loss_and_gradients(X.astype(np.float64), y, 0.1)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for key, G in network32.gradients().items():
        assert G.dtype == np.float32
        np.testing.assert_allclose(G, network64.gradients()[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_l2_penalises_weights_but_not_biases(rng):
    network = Network(SMALL_SPEC, rng)
    X, y = rng.standard_normal((N, D)).astype(np.float32), rng.integers(0, C, N)
    plain = network.loss_and_gradients(X, y, 0.0)
    grads_plain = {k: g.copy() for k, g in network.gradients().items()}
    penalised = network.loss_and_gradients(X, y, 0.5)
    W_sq = sum(float((network.parameters()[k] ** 2).sum()) for k in ("0.W", "2.W"))
    assert penalised == pytest.approx(plain + 0.25 * W_sq, rel=1e-5)
    assert network.weight_keys() == ["0.W", "2.W"]
    for key in ("0.b", "2.b"):
        np.testing.assert_array_equal(network.gradients()[key], grads_plain[key])


def test_the_first_dense_layer_returns_no_input_gradient(rng):
    network = Network(SMALL_SPEC, rng)
    first, second = network.layers[0], network.layers[2]
    assert first.needs_input_grad is False and second.needs_input_grad is True
    X = rng.standard_normal((N, D)).astype(np.float32)
    network.forward(X, training=True)
    assert first.backward(np.ones((N, H), dtype=np.float32)) is None
    assert first.grads["W"].any()


def test_a_network_starting_with_relu_still_trains_its_dense_layer_and_skips_the_input_gradient(rng):
    spec = {"layers": [{"type": "relu"}, {"type": "dense", "n_in": D, "n_out": C}]}
    network = Network(spec, rng)
    assert network.layers[1].needs_input_grad is False  # nothing below it has parameters
    assert network.name == "custom"
    network.loss_and_gradients(rng.standard_normal((N, D)).astype(np.float32), rng.integers(0, C, N))
    assert network.layers[1].grads["W"].any()


def test_predict_proba_gives_one_probability_row_per_input(tiny_network, rng):
    X = rng.random((7, 784), dtype=np.float32)
    probs = tiny_network.predict_proba(X)
    assert probs.shape == (7, 10) and probs.dtype == np.float32
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(tiny_network.predict(X), probs.argmax(axis=1))


def test_predict_proba_is_the_same_in_any_batch_size_and_for_28x28_input(tiny_network, rng):
    X = rng.random((7, 784), dtype=np.float32)
    whole = tiny_network.predict_proba(X)
    np.testing.assert_allclose(tiny_network.predict_proba(X, batch_size=3), whole, rtol=1e-6)
    np.testing.assert_allclose(tiny_network.predict_proba(X.reshape(7, 28, 28)), whole, rtol=1e-6)
    np.testing.assert_allclose(tiny_network.predict_proba(X[2]), whole[2:3], rtol=1e-6)


def test_predict_proba_leaves_its_input_unchanged(tiny_network, rng):
    X = rng.standard_normal((5, 784)).astype(np.float32)
    before = X.copy()
    tiny_network.predict_proba(X)
    np.testing.assert_array_equal(X, before)


def test_parameters_are_keyed_by_layer_index_and_attribute(tiny_network):
    shapes = {key: P.shape for key, P in tiny_network.parameters().items()}
    assert shapes == {"0.W": (784, 8), "0.b": (8,), "2.W": (8, 10), "2.b": (10,)}


def test_set_parameters_copies_the_values_in(tiny_network, rng):
    new = {key: rng.standard_normal(P.shape).astype(np.float32) for key, P in tiny_network.parameters().items()}
    tiny_network.set_parameters(new)
    for key, P in tiny_network.parameters().items():
        np.testing.assert_array_equal(P, new[key])
        assert P is not new[key]


def good_arrays(network: Network) -> dict:
    return {key: P.copy() for key, P in network.parameters().items()}


def drop(arrays, key):
    del arrays[key]
    return arrays


def put(arrays, key, value):
    arrays[key] = value
    return arrays


def poison(arrays, key, value):
    arrays[key] = arrays[key].copy()
    arrays[key].flat[3] = value
    return arrays


@pytest.mark.parametrize("change, message", [
    (lambda a: drop(a, "2.b"), r"missing \['2.b'\], unexpected \[\]"),
    (lambda a: put(a, "4.W", np.zeros((2, 2), np.float32)), r"missing \[\], unexpected \['4.W'\]"),
    (lambda a: put(a, "0.W", np.zeros((8, 784), np.float32)),
     r"'0.W' has shape \(8, 784\), the architecture needs \(784, 8\)"),
    (lambda a: put(a, "2.b", np.zeros(11, np.float32)), r"'2.b' has shape \(11,\)"),
    (lambda a: poison(a, "2.W", np.nan), "'2.W' holds NaN or infinity"),
    (lambda a: poison(a, "0.b", np.inf), "'0.b' holds NaN or infinity"),
], ids=["missing", "extra", "transposed", "wrong-length", "nan", "inf"])
def test_set_parameters_rejects_arrays_that_do_not_fit(tiny_network, change, message):
    with pytest.raises(ValueError, match=message):
        tiny_network.set_parameters(change(good_arrays(tiny_network)))


@pytest.mark.parametrize("spec, message", [
    ({"layers": [{"type": "conv"}]}, "unknown layer type 'conv'"),
    ({"layers": []}, "non-empty 'layers' list"),
    ({"name": "x"}, "non-empty 'layers' list"),
    ([{"type": "relu"}], "must be an object"),
    ({"layers": [{"type": "dense", "n_in": 784}]}, "positive integer 'n_out'"),
], ids=["unknown-layer", "no-layers", "layers-missing", "not-an-object", "dense-without-size"])
def test_a_bad_spec_raises_value_error(spec, message):
    with pytest.raises(ValueError, match=message):
        Network(spec)


def test_an_unknown_architecture_name_raises_value_error_listing_the_known_ones():
    known = r"\('seed', 'mlp', 'cnn', 'cnn_bn', 'cnn_deep'\)"
    with pytest.raises(ValueError, match=rf"unknown architecture 'resnet'; known: {known}"):
        Network.from_architecture("resnet")


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_named_architecture_maps_784_pixels_to_10_classes(name):
    network = Network.from_architecture(name, seed=0)
    assert network.spec == architecture_spec(name) and network.name == name
    probs = network.predict_proba(np.zeros((2, 784), np.float32))
    assert probs.shape == (2, 10)


def test_the_seed_architecture_is_784_1024_10():
    network = Network.from_architecture("seed")
    dense = [layer for layer in network.layers if isinstance(layer, Dense)]
    assert [(layer.n_in, layer.n_out) for layer in dense] == [(784, 1024), (1024, 10)]


def test_from_architecture_is_seeded():
    a, b, c = (Network.from_architecture("seed", seed=s).parameters()["0.W"] for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_input_gradient_is_d_log_p_d_pixels_with_dropout_off(rng):
    spec = {"name": "drop", "layers": [
        {"type": "dense", "n_in": D, "n_out": H}, {"type": "relu"}, {"type": "dropout", "rate": 0.5},
        {"type": "dense", "n_in": H, "n_out": C}]}
    network = to_float64(Network(spec, rng))
    X = rng.standard_normal((3, D))
    classes = np.array([1, 4, 7])

    def log_p():
        Z = network.forward(X)  # inference: dropout is the identity
        Z = Z - Z.max(axis=1, keepdims=True)
        lp = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
        return float(lp[np.arange(3), classes].sum())

    before = {k: g.copy() for k, g in network.gradients().items()}
    G = network.input_gradient(X, classes)
    for key, grad in network.gradients().items():
        np.testing.assert_array_equal(grad, before[key], err_msg=f"{key}: parameter gradients were skipped")
    assert all(layer.param_grads for layer in network.layers), "training computes them again"
    np.testing.assert_allclose(G, numerical_gradient(log_p, X), rtol=1e-5, atol=1e-8)
    assert network.layers[2].rate == 0.5, "the dropout rate is restored"
    assert network.layers[0].needs_input_grad is False, "training still skips the input gradient"


def test_input_gradient_through_convolution_matches_finite_differences(rng):
    spec = {"name": "conv", "layers": [
        {"type": "reshape", "shape": [28, 28, 1]},
        {"type": "conv2d", "n_in": 1, "n_out": 2, "kernel": 3}, {"type": "maxpool2d"}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "n_in": 14 * 14 * 2, "n_out": C}]}
    network = to_float64(Network(spec, rng))
    X = rng.random((1, 784))
    G = network.input_gradient(X, np.array([3]))

    def log_p():
        Z = network.forward(X)[0]
        return float(Z[3] - Z.max() - np.log(np.exp(Z - Z.max()).sum()))

    pixels = rng.choice(784, 12, replace=False)  # a sample of pixels: 784 differences would be slow
    for i in pixels:
        saved = X[0, i]
        X[0, i] = saved + 1e-6
        plus = log_p()
        X[0, i] = saved - 1e-6
        minus = log_p()
        X[0, i] = saved
        assert G[0, i] == pytest.approx((plus - minus) / 2e-6, rel=1e-4, abs=1e-7)


def test_an_ensemble_averages_its_members_and_round_trips_through_a_weights_file(tmp_path):
    from model.network import Ensemble, build_network
    from model.weights import load_model, save_model
    members = [Network(architecture_spec("seed"), np.random.default_rng(s)) for s in (1, 2, 3)]
    ensemble = Ensemble.of(members)
    X = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    expected = sum(m.predict_proba(X) for m in members) / 3
    np.testing.assert_allclose(ensemble.predict_proba(X), expected, rtol=1e-6)
    from model.layers import softmax
    np.testing.assert_allclose(softmax(ensemble.logits(X)), expected, rtol=1e-5)
    assert isinstance(build_network(ensemble.spec), Ensemble)
    save_model(tmp_path / "e.npz", ensemble, {"version": "e-1", "preprocessing_version": 2})
    loaded = load_model(tmp_path / "e.npz")
    assert isinstance(loaded.network, Ensemble) and len(loaded.network.members) == 3
    np.testing.assert_array_equal(loaded.network.predict_proba(X), ensemble.predict_proba(X))
    G = loaded.network.input_gradient(X, np.zeros(5, int))
    np.testing.assert_allclose(G, sum(m.input_gradient(X, np.zeros(5, int)) for m in members) / 3, rtol=1e-5)
    with pytest.raises(ValueError, match="missing"):
        loaded.network.set_parameters({k: v for k, v in ensemble.parameters().items() if not k.startswith("m2.")})


def test_the_cnn_architecture_maps_images_to_ten_logits():
    network = Network.from_architecture("cnn", seed=0)
    X = np.random.default_rng(0).random((3, 784)).astype(np.float32)
    assert network.forward(X).shape == (3, 10)
    np.testing.assert_allclose(network.predict_proba(X, batch_size=2), network.predict_proba(X), rtol=1e-5)
    assert network.inference_batch < Network.from_architecture("seed").inference_batch


def test_the_deep_cnn_has_no_pooling_and_ends_in_a_one_pixel_map_of_128_channels():
    network = Network.from_architecture("cnn_deep", seed=0)
    X = np.random.default_rng(0).random((3, 784)).astype(np.float32)
    A, sides = X, []
    for layer in network.layers:
        A = layer.forward(A)
        if layer.kind == "conv2d":
            sides.append(A.shape[1:])
    assert sides == [(26, 26, 32), (24, 24, 32), (12, 12, 32), (10, 10, 64), (8, 8, 64), (4, 4, 64), (1, 1, 128)]
    assert A.shape == (3, 10)
    assert [layer.kind for layer in network.layers].count("batchnorm") == 7
    assert "maxpool2d" not in [layer.kind for layer in network.layers]


def randomise_norms(network: Network, rng) -> Network:
    """Running statistics and affine parameters away from their initial 0/1, so they all matter."""
    for layer in network.layers:
        if layer.kind == "batchnorm":
            for arrays in (layer.params, layer.buffers):
                for key, value in arrays.items():
                    value[...] = rng.random(value.shape) + (0.5 if key in ("gamma", "running_var") else -0.5)
        elif "b" in layer.params:
            layer.params["b"][...] = rng.standard_normal(layer.params["b"].shape) * 0.1
    return network


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_fused_inference_pass_equals_the_layers_run_one_by_one(name, rng):
    network = randomise_norms(Network.from_architecture(name, seed=1), rng)
    X = rng.random((5, 784), dtype=np.float32)
    A = X
    for layer in network.layers:
        A = layer.forward(A, training=False)
    np.testing.assert_allclose(network.forward(X), A, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(network.forward(X[:1]), network.forward(X)[:1], rtol=1e-5, atol=1e-5)


def test_concurrent_predict_proba_calls_from_several_threads_match_single_threaded_ones(rng):
    import threading
    network = Network.from_architecture("cnn", seed=0)
    batches = [rng.random((n, 784), dtype=np.float32) for n in (1, 3, 8, 21, 2, 5)]
    expected = [network.predict_proba(X) for X in batches]
    start, results = threading.Barrier(len(batches)), {}

    def work(i):
        start.wait()
        results[i] = [network.predict_proba(batches[i]) for _ in range(15)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i, answers in results.items():
        for probs in answers:
            np.testing.assert_array_equal(probs, expected[i])
    assert len(results) == len(batches)


@pytest.mark.parametrize("architecture", ["cnn", "cnn_bn"])
def test_concurrent_saliency_calls_on_one_network_match_single_threaded_ones(rng, architecture):
    """Saliency (explain) runs the training-mode passes with their caches; several threads asking one
    network at once must not see each other's caches, flags or dropout."""
    import threading
    network = Network.from_architecture(architecture, seed=0)
    batches = [rng.random((n, 784), dtype=np.float32) for n in (1, 3, 8, 2, 5, 4)]
    classes = [np.arange(len(X)) % 10 for X in batches]
    expected = [network.input_gradient(X, c) for X, c in zip(batches, classes)]
    start, results, failures = threading.Barrier(len(batches)), {}, []

    def work(i):
        start.wait()
        try:
            results[i] = [network.input_gradient(batches[i], classes[i]) for _ in range(10)]
        except Exception as exc:  # a race shows as a shape error as often as a wrong answer
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    for i, answers in results.items():
        for saliency in answers:
            np.testing.assert_array_equal(saliency, expected[i])
    # and the network itself was left as it was: training still uses dropout and its own flags
    assert all(layer.param_grads for layer in network.layers)
    assert [layer.rate for layer in network.layers if layer.kind == "dropout"] == [0.5]


def test_the_shipped_cnn_answers_as_the_layer_by_layer_forward_did_on_real_mnist(mnist_dir):
    """The convolution's training-path forward is the inference code as it was before fusing, and it is
    bit-for-bit unchanged: its answers are the old answers."""
    from pathlib import Path

    from model.calibrate import scaled_probabilities
    from model.data import load_split
    from model.weights import load_model
    model = load_model(Path(__file__).resolve().parents[1] / "weights" / "cnn-20261125-155927-2001767b.npz")
    X = load_split(mnist_dir, "t10k")[0][:300]
    A = X
    for layer in model.network.layers:
        A = A if layer.kind == "dropout" else layer.forward(A, training=True)
    old = scaled_probabilities(A, model.temperature)
    for probs in (model.predict_proba(X), np.concatenate([model.predict_proba(x) for x in X[:40]])):
        np.testing.assert_allclose(probs, old[:len(probs)], rtol=1e-5)
        np.testing.assert_array_equal(probs.argmax(axis=1), old[:len(probs)].argmax(axis=1))
