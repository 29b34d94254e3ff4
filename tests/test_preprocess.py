"""model.preprocess: drawings of any kind become MNIST-like 28x28 inputs; MNIST digits pass through."""
from __future__ import annotations

import numpy as np
import pytest

from model.preprocess import BOX, SIZE, EmptyDrawingError, preprocess_image, preprocess_ink, preprocess_strokes

CENTRE = SIZE / 2  # 14.0: where MNIST puts the centre of mass, in pixel-index coordinates


@pytest.fixture(scope="module")
def mnist_digits(mnist):
    """The first 50 MNIST test digits as (28, 28) float32 ink."""
    return mnist.X_test[:50].reshape(-1, 28, 28)


@pytest.fixture(scope="module")
def drawn_digit(mnist_digits) -> np.ndarray:
    """An MNIST 7 drawn 4x larger, off-centre on a 150x130 canvas, as uint8 ink (255 = ink)."""
    canvas = np.zeros((150, 130), np.float32)
    canvas[30:142, 4:116] = np.kron(mnist_digits[0], np.ones((4, 4), np.float32))
    return np.round(canvas * 255).astype(np.uint8)


def ink_box(out: np.ndarray) -> tuple[int, int]:
    """Height and width of the bounding box of the nonzero pixels."""
    rows, cols = np.nonzero(out)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def centre_of_mass(out: np.ndarray) -> tuple[float, float]:
    total = out.sum()
    return (out.sum(axis=1) @ np.arange(SIZE)) / total, (out.sum(axis=0) @ np.arange(SIZE)) / total


def assert_mnist_like(out: np.ndarray, tolerance: float = 1.0) -> None:
    assert out.shape == (SIZE, SIZE) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() == pytest.approx(1.0)
    assert max(ink_box(out)) == BOX
    cy, cx = centre_of_mass(out)
    assert abs(cy - CENTRE) <= tolerance and abs(cx - CENTRE) <= tolerance, (cy, cx)


# --- MNIST digits ----------------------------------------------------------------------------------

def test_mnist_digits_come_out_mnist_like(mnist_digits):
    for digit in mnist_digits:
        assert_mnist_like(preprocess_ink(digit))


def test_preprocessing_is_idempotent(mnist_digits):
    for digit in mnist_digits:
        once = preprocess_ink(digit)
        np.testing.assert_allclose(preprocess_ink(once), once, atol=1e-6)


def test_an_mnist_digit_comes_back_unchanged_up_to_a_one_pixel_shift(mnist_digits):
    for i, digit in enumerate(mnist_digits):
        out = preprocess_ink(digit)
        best = min(np.abs(np.roll(out, (dy, dx), axis=(0, 1)) - digit).max()
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert best < 0.05, f"test digit {i} changed by {best}"


def test_an_mnist_digit_comes_back_unchanged(mnist_digits):
    for i, digit in enumerate(mnist_digits):
        assert np.abs(preprocess_ink(digit) - digit).max() < 0.05, f"test digit {i} moved"


# --- any image -------------------------------------------------------------------------------------

def variants(ink: np.ndarray) -> dict[str, np.ndarray]:
    """The same uint8 ink drawn in the ways a browser or a scanner might deliver it."""
    zeros, full = np.zeros_like(ink), np.full_like(ink, 255)
    return {
        "white-on-black grey": ink,
        "dark-on-white grey": 255 - ink,
        "white-on-black rgb": np.stack([ink] * 3, axis=2),
        "blue-on-white rgb": np.stack([255 - ink, 255 - ink, full], axis=2),
        "red-on-yellow rgb": np.stack([full, 255 - ink, zeros], axis=2),
        "black-on-transparent rgba": np.stack([zeros, zeros, zeros, ink], axis=2),
        "dark-on-white opaque rgba": np.stack([255 - ink] * 3 + [full], axis=2),
    }


def test_every_colour_scheme_of_a_drawing_gives_the_same_input(drawn_digit, mnist_digits):
    expected = preprocess_ink(mnist_digits[0])
    for name, image in variants(drawn_digit).items():
        out = preprocess_image(image)
        assert_mnist_like(out)
        np.testing.assert_allclose(out, expected, atol=1e-3, err_msg=name)


@pytest.mark.parametrize("image", [
    np.zeros((0, 0), np.float32),
    np.zeros((40, 40), np.float32),
    np.full((40, 40), 0.05, np.float32),  # fainter than the ink floor
], ids=["0x0", "blank", "faint"])
def test_empty_ink_raises_empty_drawing_error(image):
    with pytest.raises(EmptyDrawingError, match="^the drawing is empty$"):
        preprocess_ink(image)


@pytest.mark.parametrize("image", [
    np.full((40, 30), 255, np.uint8),
    np.zeros((40, 30), np.uint8),
    np.full((40, 30, 3), (255, 255, 255), np.uint8),
    np.full((40, 30, 3), (20, 120, 200), np.uint8),
    np.zeros((40, 30, 4), np.uint8),
    np.full((40, 30, 4), (255, 0, 0, 0), np.uint8),  # red, but all transparent
    np.zeros((1, 1), np.uint8),
], ids=["all-white", "all-black", "white-rgb", "one-colour-rgb", "transparent", "transparent-red", "1x1"])
def test_an_image_without_ink_raises_empty_drawing_error(image):
    with pytest.raises(EmptyDrawingError, match="^the drawing is empty$"):
        preprocess_image(image)


def test_a_zero_size_image_raises_empty_drawing_error():
    with pytest.raises(EmptyDrawingError):
        preprocess_image(np.zeros((0, 0, 3), np.uint8))


@pytest.mark.parametrize("shape", [(5,), (4, 4, 2), (4, 4, 5), (2, 4, 4, 3)])
def test_an_image_of_the_wrong_shape_raises_value_error(shape):
    with pytest.raises(ValueError, match=r"expected a \(H, W\), \(H, W, 3\) or \(H, W, 4\) image"):
        preprocess_image(np.zeros(shape, np.uint8))


def test_a_tiny_drawing_is_scaled_up_to_fill_the_box():
    image = np.zeros((50, 50), np.uint8)
    image[10:13, 30:33] = 255
    out = preprocess_image(image)
    assert_mnist_like(out)
    assert ink_box(out) == (BOX, BOX)
    np.testing.assert_allclose(out[out > 0], 1.0)  # a solid block stays solid


def test_a_huge_drawing_is_scaled_down_keeping_its_aspect():
    image = np.zeros((2000, 2000), np.uint8)
    image[300:1700, 900:1100] = 255  # a 1400 x 200 bar
    out = preprocess_image(image)
    assert_mnist_like(out)
    assert ink_box(out) == (BOX, 3)  # 200 / 1400 * 20 = 2.9 columns


def test_thin_lines_keep_strong_ink_after_shrinking():
    image = np.zeros((1000, 1000), np.uint8)
    image[100:900, 100] = 255  # an L of one-pixel lines, 800 px tall and wide: shrunk 40 times,
    image[899, 100:900] = 255  # each line covers 1/40 of an output pixel
    out = preprocess_image(image)
    # An L's mass sits near its corner: centring it would push the box out of the frame, so it stops
    # at the edge, a little short of the centre.
    assert_mnist_like(out, tolerance=1.5)
    assert out[out > 0].min() > 0.4  # rescaled to full strength, not 1/40 grey


def test_faint_pencil_is_normalised_to_full_ink(drawn_digit):
    np.testing.assert_allclose(preprocess_image(drawn_digit // 3), preprocess_image(drawn_digit), atol=0.02)


# --- strokes ---------------------------------------------------------------------------------------

def test_a_vertical_stroke_becomes_a_thin_centred_one():
    out = preprocess_strokes([[[5, 0], [5, 100]]])
    assert_mnist_like(out)
    height, width = ink_box(out)
    assert height == BOX and width <= 4
    assert abs(centre_of_mass(out)[0] - CENTRE) <= 0.5 + 1e-6  # even-sized: half a pixel off at most
    columns = np.flatnonzero(out.sum(axis=0))
    assert abs(columns.mean() - CENTRE) <= 1


SEVEN = [[[10, 10], [60, 10], [30, 90]], [[20, 50], [50, 50]]]


@pytest.mark.parametrize("transform", [
    lambda x, y: (10 * x, 10 * y),
    lambda x, y: (x / 7, y / 7),
    lambda x, y: (x + 500, y - 300),
    lambda x, y: (3 * x + 1000, 3 * y + 1000),
], ids=["10x", "smaller", "shifted", "scaled-and-shifted"])
def test_strokes_give_the_same_input_at_any_scale_and_position(transform):
    moved = [[list(transform(x, y)) for x, y in stroke] for stroke in SEVEN]
    np.testing.assert_allclose(preprocess_strokes(moved), preprocess_strokes(SEVEN), atol=1e-5)


def test_many_points_along_a_stroke_draw_the_same_as_its_ends():
    dense = [[[10, 10 + t] for t in np.linspace(0, 80, 2000)]]
    np.testing.assert_allclose(preprocess_strokes(dense), preprocess_strokes([[[10, 10], [10, 90]]]), atol=0.02)


def test_a_single_point_becomes_a_round_dot():
    out = preprocess_strokes([[[3, 4]]])
    assert_mnist_like(out)
    np.testing.assert_allclose(out, out.T, atol=1e-6)


@pytest.mark.parametrize("apart", [5e-324, 1e-300, 1e-9])
def test_points_closer_than_a_millionth_of_a_pixel_are_a_dot_not_an_overflow(apart):
    np.testing.assert_array_equal(preprocess_strokes([[[0, 0], [0, apart]]]), preprocess_strokes([[[0, 0]]]))


def test_a_stroke_drawn_twice_is_the_same_as_once():
    np.testing.assert_allclose(preprocess_strokes(SEVEN + SEVEN), preprocess_strokes(SEVEN), atol=1e-6)


@pytest.mark.parametrize("strokes", [[], [[]], [[], []]], ids=["no-strokes", "one-empty", "two-empty"])
def test_no_stroke_points_raise_empty_drawing_error(strokes):
    with pytest.raises(EmptyDrawingError, match="^the drawing is empty$"):
        preprocess_strokes(strokes)


def test_the_pen_width_sets_the_stroke_thickness_and_defaults_to_the_shipped_one():
    from model.preprocess import STROKE_WIDTH
    line = [[[5, 0], [5, 100]]]
    np.testing.assert_array_equal(preprocess_strokes(line, stroke_width=STROKE_WIDTH), preprocess_strokes(line))
    widths = [ink_box(preprocess_strokes(line, stroke_width=w))[1] for w in (0.06, 0.12, 0.24)]
    assert widths[0] < widths[1] < widths[2], widths
