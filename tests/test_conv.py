"""Convolution, pooling and reshape layers: shapes, a direct reference, and numerical gradient checks."""
import numpy as np
import pytest

from model.conv import Conv2D, Flatten, MaxPool2D, Reshape

from gradients import as_float64, numerical_gradient


@pytest.mark.parametrize("c_in", [1, 2])  # one channel builds its im2col matrix another way
def test_conv2d_matches_a_direct_sum_over_the_kernel(c_in):
    rng = np.random.default_rng(0)
    conv = Conv2D(c_in, 3, kernel=3, rng=rng)
    conv.params["b"][:] = rng.standard_normal(3)
    X = rng.standard_normal((2, 5, 4, c_in)).astype(np.float32)
    out = conv.forward(X)
    W = conv.params["W"].reshape(3, 3, c_in, 3)
    Xp = np.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0)))
    expected = np.zeros((2, 5, 4, 3), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            expected += np.einsum("nhwc,cf->nhwf", Xp[:, i:i + 5, j:j + 4, :], W[i, j])
    np.testing.assert_allclose(out, expected + conv.params["b"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, c_in", [(1, 2), (3, 2), (5, 2), (3, 1)])
def test_conv2d_and_maxpool_gradients_match_finite_differences(kernel, c_in):
    rng = np.random.default_rng(kernel)
    conv, pool = as_float64(Conv2D(c_in, 3, kernel=kernel, rng=rng)), MaxPool2D()
    conv.params["b"][:] = rng.standard_normal(3)
    X = rng.standard_normal((2, 4, 6, c_in))
    R = rng.standard_normal((2, 2, 3, 3))

    def loss():
        return float((pool.forward(conv.forward(X, training=True), training=True) * R).sum())

    loss()
    dX = conv.backward(pool.backward(R))
    grads = {k: v.copy() for k, v in conv.grads.items()}
    np.testing.assert_allclose(dX, numerical_gradient(loss, X), atol=1e-6)
    for key in ("W", "b"):
        np.testing.assert_allclose(grads[key], numerical_gradient(loss, conv.params[key]), atol=1e-6)


def test_maxpool_halves_height_and_width_and_refuses_odd_sizes():
    X = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    out = MaxPool2D().forward(X)
    assert out.shape == (2, 2, 2, 1)
    assert out[0, 0, 0, 0] == X[0, 1, 1, 0]
    with pytest.raises(ValueError, match="even height and width"):
        MaxPool2D().forward(np.zeros((1, 3, 4, 1), np.float32))


def test_even_kernels_are_refused():
    with pytest.raises(ValueError, match="kernel must be odd"):
        Conv2D(1, 1, kernel=2)


def test_reshape_and_flatten_round_trip_with_their_gradients():
    X = np.random.default_rng(0).random((3, 784)).astype(np.float32)
    reshape, flatten = Reshape([28, 28, 1]), Flatten()
    images = reshape.forward(X)
    assert images.shape == (3, 28, 28, 1)
    flat = flatten.forward(images)
    np.testing.assert_array_equal(flat, X)
    assert reshape.backward(flatten.backward(flat)).shape == (3, 784)
    assert reshape.spec() == {"type": "reshape", "shape": [28, 28, 1]}
