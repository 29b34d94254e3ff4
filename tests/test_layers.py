"""model.layers and model.optim: gradients against central differences, softmax stability, SGD arithmetic."""
from __future__ import annotations

import numpy as np
import pytest

from model.layers import Dense, DistillationLoss, ReLU, SoftmaxCrossEntropy, build_layer, softmax
from model.optim import SGD

from gradients import as_float64, numerical_gradient

N, D, H, C = 4, 5, 8, 10


def test_dense_gradients_match_central_differences(rng):
    dense = as_float64(Dense(D, H, rng))
    dense.params["b"][:] = rng.standard_normal(H)  # nonzero, so a wrong db would show
    X = rng.standard_normal((N, D))
    R = rng.standard_normal((N, H))  # loss = sum(Z * R), so dZ = R

    def loss():
        return float((dense.forward(X) * R).sum())

    dense.forward(X, training=True)
    dX = dense.backward(R.copy())
    np.testing.assert_allclose(dX, numerical_gradient(loss, X), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dense.grads["W"], numerical_gradient(loss, dense.params["W"]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(dense.grads["b"], numerical_gradient(loss, dense.params["b"]), rtol=1e-6, atol=1e-9)


def test_dense_forward_is_X_at_W_plus_b(rng):
    dense = Dense(D, H, rng)
    X = rng.standard_normal((N, D)).astype(np.float32)
    np.testing.assert_allclose(dense.forward(X), X @ dense.params["W"] + dense.params["b"], rtol=1e-6)
    assert dense.forward(X).shape == (N, H)


def test_dense_is_he_initialised_with_zero_bias():
    dense = Dense(784, 1024, np.random.default_rng(0))
    assert dense.params["W"].dtype == np.float32
    assert dense.params["W"].std() == pytest.approx(np.sqrt(2 / 784), rel=0.01)
    assert not dense.params["b"].any()


def test_relu_gradient_matches_central_differences(rng):
    X = rng.standard_normal((N, H))
    X += np.sign(X) * 0.1  # keep every input away from the kink at 0
    R = rng.standard_normal((N, H))
    relu = ReLU()

    def loss():
        return float((relu.forward(X.copy()) * R).sum())  # forward works in place: give it a copy

    relu.forward(X.copy(), training=True)
    dX = relu.backward(R.copy())
    np.testing.assert_allclose(dX, numerical_gradient(loss, X), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(dX, R * (X > 0))


def test_softmax_cross_entropy_gradient_matches_central_differences(rng):
    logits = rng.standard_normal((N, C)) * 3
    y = rng.integers(0, C, N)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(logits, y)
    dlogits = loss_fn.backward()
    numeric = numerical_gradient(lambda: loss_fn.forward(logits, y), logits)
    np.testing.assert_allclose(dlogits, numeric, rtol=1e-6, atol=1e-9)


def test_softmax_cross_entropy_is_the_mean_negative_log_probability(rng):
    logits = rng.standard_normal((N, C))
    y = rng.integers(0, C, N)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.log(probs[np.arange(N), y]).mean()
    assert SoftmaxCrossEntropy().forward(logits, y) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("T, alpha", [(1.0, 0.5), (4.0, 0.7), (2.5, 1.0)])
def test_distillation_gradient_matches_central_differences(rng, T, alpha):
    Z, Z_teacher, y = rng.normal(size=(4, 10)) * 2, rng.normal(size=(4, 10)) * 2, rng.integers(0, 10, 4)
    loss = DistillationLoss(T, alpha)
    numeric = numerical_gradient(lambda: loss.forward(Z, y, Z_teacher), Z)
    loss.forward(Z, y, Z_teacher)
    np.testing.assert_allclose(loss.backward(), numeric, atol=1e-7)
    loss.forward(Z, y, Z_teacher)
    np.testing.assert_allclose(loss.backward(scale=0.3), 0.3 * numeric, atol=1e-7)


def test_distillation_loss_is_alpha_t_squared_kl_plus_the_rest_cross_entropy(rng):
    Z, Z_teacher, y = rng.normal(size=(4, 10)), rng.normal(size=(4, 10)), rng.integers(0, 10, 4)
    p, q = softmax(Z_teacher / 3), softmax(Z / 3)
    kl = np.mean(np.sum(p * np.log(p / q), axis=1))
    cross_entropy = -np.mean(np.log(softmax(Z)[np.arange(4), y]))
    assert DistillationLoss(3.0, 0.7).forward(Z, y, Z_teacher) == pytest.approx(0.7 * 9 * kl + 0.3 * cross_entropy)
    # a student that already matches its teacher has nothing to learn from it
    matched = DistillationLoss(3.0, 1.0)
    assert matched.forward(Z, y, Z.copy()) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(matched.backward(), 0.0, atol=1e-12)


def test_a_teacher_probability_of_zero_gives_a_finite_loss(rng):
    Z, y = rng.normal(size=(2, 10)).astype(np.float32), np.array([1, 2])
    Z_teacher = np.full((2, 10), -1e4, dtype=np.float32)
    Z_teacher[:, 0] = 50.0
    loss = DistillationLoss(1.0, 0.7)
    assert np.isfinite(loss.forward(Z, y, Z_teacher)) and np.isfinite(loss.backward()).all()


def test_distillation_with_weight_zero_is_the_cross_entropy_bit_for_bit(rng):
    Z, Z_teacher, y = rng.normal(size=(8, 10)).astype(np.float32), rng.normal(size=(8, 10)), rng.integers(0, 10, 8)
    plain, distilled = SoftmaxCrossEntropy(), DistillationLoss(4.0, 0.0)
    assert distilled.forward(Z, y, Z_teacher) == plain.forward(Z, y)
    np.testing.assert_array_equal(distilled.backward(0.05), plain.backward(0.05))


def test_softmax_rows_are_probabilities(rng):
    probs = softmax(rng.standard_normal((N, C)).astype(np.float32))
    assert probs.shape == (N, C)
    assert (probs > 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)


def test_softmax_is_stable_for_huge_logits():
    Z = np.array([[1e38, -1e38, 0.0, 1e38],
                  [3e4, 3e4 - 1, 0.0, -3e4],
                  [-1e30, -1e30, -1e30, -1e30]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise"):  # no overflow, no NaN
        probs = softmax(Z)
    assert not np.isnan(probs).any()
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(probs[0], [0.5, 0, 0, 0.5])
    np.testing.assert_allclose(probs[2], 0.25)
    assert probs[1, 0] == pytest.approx(1 / (1 + np.exp(-1)), rel=1e-5)


def test_cross_entropy_of_a_confidently_wrong_prediction_is_large_but_finite():
    loss = SoftmaxCrossEntropy().forward(np.array([[1e4, -1e4]], dtype=np.float32), np.array([1]))
    assert np.isfinite(loss) and loss > 80


@pytest.mark.parametrize("spec, message", [
    ({"type": "conv"}, "unknown layer type 'conv'"),
    ({}, "unknown layer type None"),
    ({"type": "dense", "n_in": 0, "n_out": 3}, "positive integer 'n_in'"),
    ({"type": "dense", "n_in": 3, "n_out": -1}, "positive integer 'n_out'"),
    ({"type": "dense", "n_in": "3", "n_out": 3}, "positive integer 'n_in'"),
    ({"type": "dense", "n_in": 3.0, "n_out": 3}, "positive integer 'n_in'"),
    ({"type": "dense", "n_in": 3}, "positive integer 'n_out'"),
])
def test_build_layer_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        build_layer(spec)


@pytest.mark.parametrize("layer", [Dense(3, 2), ReLU()], ids=["dense", "relu"])
def test_a_layer_rebuilds_from_its_spec(layer):
    rebuilt = build_layer(layer.spec())
    assert type(rebuilt) is type(layer) and rebuilt.spec() == layer.spec()


# --- SGD -------------------------------------------------------------------------------------------

def sgd_run(optimizer: SGD, grads: list[list[float]], start=(1.0, -2.0)) -> np.ndarray:
    params = {"w": np.array(start, dtype=np.float32)}
    for g in grads:
        optimizer.step(params, {"w": np.array(g, dtype=np.float32)})
    return params["w"]


def test_plain_sgd_subtracts_learning_rate_times_gradient():
    np.testing.assert_allclose(sgd_run(SGD(0.1), [[0.5, 0.25]]), [0.95, -2.025], rtol=1e-6)


def test_momentum_sgd_accumulates_velocity():
    # v1 = g1 = (1, -1); p1 = p0 - 0.1 v1 = (0.9, -1.9)
    # v2 = 0.9 v1 + g2 = (0.9 + 0.5, -0.9 + 0.5) = (1.4, -0.4); p2 = p1 - 0.1 v2 = (0.76, -1.86)
    np.testing.assert_allclose(sgd_run(SGD(0.1, momentum=0.9), [[1, -1], [0.5, 0.5]]), [0.76, -1.86], rtol=1e-6)


def test_nesterov_sgd_looks_ahead_along_the_velocity():
    # v1 = g1 = (1, -1); step g1 + 0.9 v1 = (1.9, -1.9); p1 = (0.81, -1.81)
    # v2 = 0.9 v1 + g2 = (1.4, -0.4); step g2 + 0.9 v2 = (1.76, 0.14); p2 = (0.634, -1.824)
    result = sgd_run(SGD(0.1, momentum=0.9, nesterov=True), [[1, -1], [0.5, 0.5]])
    np.testing.assert_allclose(result, [0.634, -1.824], rtol=1e-6)


def test_sgd_updates_parameters_in_place():
    P = np.ones(3, dtype=np.float32)
    SGD(1.0).step({"p": P}, {"p": np.full(3, 0.5, dtype=np.float32)})
    np.testing.assert_array_equal(P, 0.5)


@pytest.mark.parametrize("learning_rate, momentum, message", [
    (0.0, 0.0, "learning_rate must be positive"),
    (-0.1, 0.0, "learning_rate must be positive"),
    (0.1, 1.0, r"momentum must be in \[0, 1\)"),
    (0.1, -0.5, r"momentum must be in \[0, 1\)"),
])
def test_sgd_rejects_bad_hyperparameters(learning_rate, momentum, message):
    with pytest.raises(ValueError, match=message):
        SGD(learning_rate, momentum)


def test_sgd_weight_decay_is_the_same_as_adding_l2_times_the_weights_to_the_gradient():
    from model.optim import SGD
    rng = np.random.default_rng(0)
    P1 = rng.standard_normal((5, 4)).astype(np.float32)
    G = rng.standard_normal((5, 4)).astype(np.float32)
    P2 = P1.copy()
    SGD(0.1).step({"W": P1}, {"W": G.copy()}, weight_decay={"W": 0.01})
    SGD(0.1).step({"W": P2}, {"W": G + np.float32(0.01) * P2})
    np.testing.assert_allclose(P1, P2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [lambda: SGD(0.1), lambda: SGD(0.1, momentum=0.9), lambda: SGD(0.1, 0.9, True)],
                         ids=["plain", "momentum", "nesterov"])
def test_gradients_given_pre_scaled_by_gradient_scale_make_the_same_steps(make):
    """The trainer scales the loss gradient by `gradient_scale` (the rate, for plain SGD) and says so."""
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]
    P_plain = rng.standard_normal((5, 4)).astype(np.float32)
    P_scaled = P_plain.copy()
    plain, scaled = make(), make()
    for G in grads:
        plain.step({"W": P_plain}, {"W": G.copy()}, weight_decay={"W": 0.01})
        s = scaled.gradient_scale
        scaled.step({"W": P_scaled}, {"W": G * np.float32(s)}, weight_decay={"W": 0.01}, gradient_scale=s)
    np.testing.assert_allclose(P_scaled, P_plain, rtol=1e-5, atol=1e-6)
    assert scaled.gradient_scale == (0.1 if not scaled.momentum else 1.0)


def test_loss_gradients_scale_linearly_with_gradient_scale():
    from model.network import Network
    net = Network.from_architecture("seed", seed=0)
    rng = np.random.default_rng(1)
    X, y = rng.random((8, 784), dtype=np.float32), rng.integers(0, 10, 8)
    loss = net.loss_and_gradients(X, y)
    plain = {k: v.copy() for k, v in net.gradients().items()}
    assert net.loss_and_gradients(X, y, gradient_scale=0.25) == loss  # the loss itself is unscaled
    for key, G in net.gradients().items():
        np.testing.assert_allclose(G, 0.25 * plain[key], rtol=1e-5, atol=1e-8)


def test_a_zero_rate_at_the_end_of_a_cosine_schedule_scales_nothing():
    opt = SGD(0.1)
    opt.learning_rate = 0.0
    P = np.ones(3, np.float32)
    opt.step({"p": P}, {"p": np.ones(3, np.float32)}, gradient_scale=opt.gradient_scale)
    assert opt.gradient_scale == 1.0
    np.testing.assert_array_equal(P, 1.0)


def test_dropout_zeroes_about_its_rate_scales_the_rest_and_is_off_at_inference():
    from model.layers import Dropout
    layer = Dropout(0.25, np.random.default_rng(0))
    X = np.ones((200, 100), np.float32)
    out = layer.forward(X.copy(), training=True)
    assert abs((out == 0).mean() - 0.25) < 0.02
    np.testing.assert_allclose(out[out > 0], 1 / 0.75)
    dX = layer.backward(np.ones_like(X))
    np.testing.assert_array_equal(dX == 0, out == 0)
    np.testing.assert_array_equal(layer.forward(X, training=False), X)
    assert build_layer(layer.spec()).rate == 0.25
    with pytest.raises(ValueError, match="dropout rate"):
        Dropout(1.0)


def test_convolution_layers_are_built_from_their_specs():
    layer = build_layer({"type": "conv2d", "n_in": 1, "n_out": 8, "kernel": 5})
    assert layer.params["W"].shape == (25, 8)
    with pytest.raises(ValueError, match="positive integer 'kernel'"):
        build_layer({"type": "conv2d", "n_in": 1, "n_out": 8, "kernel": 0})
    with pytest.raises(ValueError, match="bad conv2d layer spec"):
        build_layer({"type": "conv2d", "n_in": 1})


def test_adams_first_step_moves_each_weight_by_the_learning_rate_against_its_gradient_sign():
    from model.optim import Adam
    P = np.array([1.0, -2.0, 3.0], np.float32)
    G = np.array([0.5, -4.0, 1e-3], np.float32)
    Adam(0.01).step({"W": P}, {"W": G.copy()})
    np.testing.assert_allclose(P, [0.99, -1.99, 2.99], atol=1e-4)


def test_adam_minimises_a_quadratic_and_decays_weights_when_asked():
    from model.optim import Adam
    P = np.array([5.0, -3.0], np.float32)
    opt = Adam(0.1)
    for _ in range(500):
        opt.step({"W": P}, {"W": 2 * P})  # gradient of sum(P^2)
    np.testing.assert_allclose(P, 0, atol=0.05)
    Q = np.ones(3, np.float32)
    Adam(0.1).step({"W": Q}, {"W": np.zeros(3, np.float32)}, weight_decay={"W": 0.5})
    np.testing.assert_allclose(Q, 0.95)  # decoupled decay: P *= 1 - lr * l2, with no gradient at all
