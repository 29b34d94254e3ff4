"""Convolution, pooling and reshape layers: shapes, a direct reference, and numerical gradient checks."""
import numpy as np
import pytest

import model.conv
from model.conv import Conv2D, Flatten, MaxPool2D, Reshape
from model.layers import build_layer

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


def test_even_kernels_are_refused_with_same_padding_only():
    with pytest.raises(ValueError, match="kernel must be odd"):
        Conv2D(1, 1, kernel=2)
    assert Conv2D(1, 1, kernel=4, padding="valid").forward(np.zeros((1, 4, 5, 1), np.float32)).shape == (1, 1, 2, 1)


def direct_convolution(X, W, b, stride, pad):
    """The textbook sum over kernel offsets, one output pixel per (row, col) read at stride steps."""
    N, H, Wd, C = X.shape
    k = int(round(np.sqrt(W.shape[0] // C)))
    Wk = W.reshape(k, k, C, -1)
    Xp = np.pad(X, ((0, 0), (pad, pad), (pad, pad), (0, 0))).astype(np.float64)
    Ho, Wo = (H + 2 * pad - k) // stride + 1, (Wd + 2 * pad - k) // stride + 1
    out = np.zeros((N, Ho, Wo, Wk.shape[-1]))
    for r in range(Ho):
        for c in range(Wo):
            window = Xp[:, r * stride:r * stride + k, c * stride:c * stride + k, :]  # (N, k, k, C)
            out[:, r, c] = np.einsum("nijc,ijcf->nf", window, Wk)
    return out + b


# (kernel, stride, padding, c_in, height, width): odd and even sizes, so a stride-2 'same' map has a
# last row that no window ends on, and a 'valid' one drops pixels at the bottom and right.
STRIDED = [(5, 2, "same", 2, 7, 6), (5, 2, "same", 1, 6, 7), (3, 2, "same", 3, 5, 5), (3, 1, "valid", 2, 6, 5),
           (3, 1, "valid", 1, 5, 6), (4, 1, "valid", 2, 5, 4), (3, 2, "valid", 2, 7, 6), (1, 2, "same", 2, 5, 4)]


@pytest.mark.parametrize("kernel, stride, padding, c_in, H, W", STRIDED)
def test_strided_and_valid_conv2d_match_a_direct_sum(kernel, stride, padding, c_in, H, W):
    rng = np.random.default_rng(kernel + 10 * stride)
    conv = Conv2D(c_in, 4, kernel=kernel, stride=stride, padding=padding, rng=rng)
    conv.params["b"][:] = rng.standard_normal(4)
    X = rng.standard_normal((3, H, W, c_in)).astype(np.float32)
    pad = kernel // 2 if padding == "same" else 0
    expected = direct_convolution(X, conv.params["W"], conv.params["b"], stride, pad)
    out = conv.forward(X)
    assert out.shape == expected.shape == (3, *conv.output_size(H, W), 4)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, padding, c_in, H, W", STRIDED)
def test_strided_and_valid_conv2d_gradients_match_finite_differences(kernel, stride, padding, c_in, H, W):
    rng = np.random.default_rng(kernel + 10 * stride + 1)
    conv = as_float64(Conv2D(c_in, 3, kernel=kernel, stride=stride, padding=padding, rng=rng))
    conv.params["b"][:] = rng.standard_normal(3)
    X = rng.standard_normal((2, H, W, c_in))
    R = rng.standard_normal((2, *conv.output_size(H, W), 3))

    def loss():
        return float((conv.forward(X, training=True) * R).sum())

    loss()
    dX = conv.backward(R.copy())
    grads = {k: v.copy() for k, v in conv.grads.items()}
    assert dX.shape == X.shape
    np.testing.assert_allclose(dX, numerical_gradient(loss, X), atol=1e-6)
    for key in ("W", "b"):
        np.testing.assert_allclose(grads[key], numerical_gradient(loss, conv.params[key]), atol=1e-6)


def test_the_deep_cnn_shapes_go_28_26_24_12_10_8_4_1():
    X = np.zeros((2, 28, 28, 1), np.float32)
    sides = []
    for c_in, c_out, kernel, stride, padding in [(1, 32, 3, 1, "valid"), (32, 32, 3, 1, "valid"),
                                                 (32, 32, 5, 2, "same"), (32, 64, 3, 1, "valid"),
                                                 (64, 64, 3, 1, "valid"), (64, 64, 5, 2, "same"),
                                                 (64, 128, 4, 1, "valid")]:
        X = Conv2D(c_in, c_out, kernel, stride, padding).forward(X)
        sides.append(X.shape[1])
        assert X.shape == (2, X.shape[1], X.shape[1], c_out)
    assert sides == [26, 24, 12, 10, 8, 4, 1]


def test_conv2d_specs_name_stride_and_padding_only_when_not_the_defaults():
    assert Conv2D(3, 4, kernel=5).spec() == {"type": "conv2d", "n_in": 3, "n_out": 4, "kernel": 5}  # as older files
    spec = Conv2D(3, 4, kernel=5, stride=2, padding="valid").spec()
    assert spec == {"type": "conv2d", "n_in": 3, "n_out": 4, "kernel": 5, "stride": 2, "padding": "valid"}
    rebuilt = build_layer(spec)
    assert (rebuilt.stride, rebuilt.padding, rebuilt.kernel) == (2, "valid", 5)


@pytest.mark.parametrize("changes, message", [({"stride": 3}, "stride must be 1 or 2"),
                                              ({"stride": True}, "stride must be 1 or 2"),
                                              ({"padding": "full"}, "padding must be 'same' or 'valid'")])
def test_bad_strides_and_paddings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        build_layer({"type": "conv2d", "n_in": 1, "n_out": 2, "kernel": 3, **changes})


def test_a_kernel_larger_than_a_valid_map_is_refused():
    with pytest.raises(ValueError, match="does not fit a 3x3 map"):
        Conv2D(1, 1, kernel=5, padding="valid").forward(np.zeros((1, 3, 3, 1), np.float32))


def test_reshape_and_flatten_round_trip_with_their_gradients():
    X = np.random.default_rng(0).random((3, 784)).astype(np.float32)
    reshape, flatten = Reshape([28, 28, 1]), Flatten()
    images = reshape.forward(X, training=True)
    assert images.shape == (3, 28, 28, 1)
    flat = flatten.forward(images, training=True)
    np.testing.assert_array_equal(flat, X)
    assert reshape.backward(flatten.backward(flat)).shape == (3, 784)
    assert reshape.spec() == {"type": "reshape", "shape": [28, 28, 1]}


def layer_by_layer(conv, X, pool, scale, shift, relu):
    """The training-path forward (the convolution as it always ran) followed by the separate layers."""
    Z = conv.forward(X, training=True)
    if pool:
        Z = MaxPool2D().forward(Z)
    if scale is not None:
        Z = Z * scale + shift
    return np.maximum(Z, 0) if relu else Z


# (c_in, kernel, stride, padding, H, pool, norm, relu): one channel and several, 'same' and 'valid', strides 1 and 2,
# with and without each fused step
FUSED = [(1, 5, 1, "same", 8, True, False, True), (3, 5, 1, "same", 6, True, True, True),
         (2, 3, 1, "valid", 7, False, True, True), (3, 5, 2, "same", 7, False, True, False),
         (1, 3, 1, "valid", 6, False, False, False), (2, 4, 1, "valid", 5, True, False, False)]


@pytest.mark.parametrize("c_in, kernel, stride, padding, H, pool, norm, relu", FUSED)
@pytest.mark.parametrize("chunk_bytes", [1, 2000, 1 << 19])  # one image a chunk, a few with a remainder, all
def test_fused_inference_equals_convolution_then_pooling_normalisation_and_relu(
        monkeypatch, c_in, kernel, stride, padding, H, pool, norm, relu, chunk_bytes):
    monkeypatch.setattr(model.conv, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(kernel + H)
    conv = Conv2D(c_in, 4, kernel=kernel, stride=stride, padding=padding, rng=rng)
    conv.params["b"][:] = rng.standard_normal(4)
    scale, shift = (rng.random(4).astype(np.float32) + 0.5, rng.standard_normal(4).astype(np.float32)) if norm \
        else (None, None)
    X = rng.standard_normal((7, H, H + 1 if not pool else H, c_in)).astype(np.float32)
    out = conv.infer(X, pool, scale, shift, relu)
    expected = layer_by_layer(conv, X, pool, scale, shift, relu)
    assert out.shape == expected.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(conv.forward(X), layer_by_layer(conv, X, False, None, None, False), rtol=1e-6, atol=1e-6)


def test_the_zero_border_of_a_padded_scratch_array_is_never_written(monkeypatch):
    # Two layers whose padded inputs are both 10x10: 6x6 padded by 2 and 8x8 padded by 1 (one image a
    # chunk for both). Had they shared one scratch array, the second's input would sit where the first
    # reads its border.
    monkeypatch.setattr(model.conv, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(0)
    wide, narrow = Conv2D(2, 3, kernel=5, rng=rng), Conv2D(2, 3, kernel=3, rng=rng)
    X_wide, X_narrow = rng.standard_normal((2, 6, 6, 2)).astype(np.float32), np.full((2, 8, 8, 2), 1e3, np.float32)
    expected = direct_convolution(X_wide, wide.params["W"], wide.params["b"], 1, 2)
    for _ in range(2):
        np.testing.assert_allclose(wide.forward(X_wide), expected, rtol=1e-5, atol=1e-5)
        narrow.forward(X_narrow)


def test_inference_returns_a_fresh_array_and_keeps_one_scratch_size_per_layer_shape():
    rng = np.random.default_rng(0)
    conv = Conv2D(3, 4, kernel=5, rng=rng)
    X1, X2 = rng.standard_normal((2, 2, 6, 6, 3)).astype(np.float32)
    first = conv.infer(X1, pool=True, relu=True)
    kept = first.copy()
    conv.infer(X2, pool=True, relu=True)
    np.testing.assert_array_equal(first, kept)  # not a view of a scratch array the second call wrote
    n_arrays = len(model.conv._scratch.arrays)
    for n in (1, 5, 17, 40):
        conv.infer(rng.standard_normal((n, 6, 6, 3)).astype(np.float32), pool=True, relu=True)
    assert len(model.conv._scratch.arrays) == n_arrays  # batch sizes do not each get scratch arrays of their own


def test_reshape_and_flatten_write_nothing_to_the_layer_at_inference(rng):
    from model.conv import Flatten, Reshape
    for layer, X in ((Reshape([28, 28, 1]), rng.random((2, 784), dtype=np.float32)),
                     (Flatten(), rng.random((2, 4, 4, 3), dtype=np.float32))):
        before = dict(vars(layer))
        layer.forward(X)
        assert vars(layer) == before
        layer.forward(X, training=True)
        np.testing.assert_array_equal(layer.backward(layer.forward(X, training=True)), X)
