"""Augmentation: seeded, shape-preserving, the identity at zero strength, and really distorting otherwise."""
import numpy as np
import pytest

from model.augment import Augmentation, augment
from model.train import Recipe, train

NONE = Augmentation(max_shift=0, max_rotation=0, max_scale=0, max_shear=0, elastic_alpha=0)


@pytest.fixture
def digits(mnist):
    return mnist.X_test[:64]


def test_zero_strength_is_the_identity(digits):
    out = augment(digits, np.random.default_rng(0), NONE)
    np.testing.assert_allclose(out, digits, atol=1e-6)


def test_the_same_seed_gives_the_same_distortions_and_another_seed_others(digits):
    aug = Augmentation(elastic_alpha=34)
    a = augment(digits, np.random.default_rng(1), aug)
    b = augment(digits, np.random.default_rng(1), aug)
    c = augment(digits, np.random.default_rng(2), aug)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 0.01


def test_output_keeps_shape_dtype_range_and_most_of_the_ink(digits):
    out = augment(digits, np.random.default_rng(0), Augmentation(elastic_alpha=34))
    assert out.shape == digits.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    ratio = out.sum(axis=1) / digits.sum(axis=1)
    assert 0.7 < np.median(ratio) < 1.3
    assert np.abs(out - digits).mean() > 0.02  # it really moved the strokes


def test_a_pure_shift_moves_the_digit_without_changing_it():
    img = np.zeros((8, 28, 28), np.float32)
    img[:, 10:18, 12:14] = 1
    aug = Augmentation(max_shift=3, max_rotation=0, max_scale=0, max_shear=0)
    out = augment(img.reshape(8, 784), np.random.default_rng(5), aug).reshape(8, 28, 28)
    grid = np.arange(28)
    for before, after in zip(img, out):
        moved = [(after.sum(axis=1 - a) @ grid) / after.sum() - (before.sum(axis=1 - a) @ grid) / before.sum()
                 for a in (0, 1)]
        assert all(abs(m) <= 3 + 1e-4 for m in moved)
        assert after.sum() == pytest.approx(before.sum(), rel=1e-4)  # bilinear shifts keep the ink
    assert np.abs(out - img).max() > 0.5


def test_training_with_augmentation_is_reproducible_and_differs_from_without(mnist):
    X, y = mnist.X_train[:1500], mnist.y_train[:1500]
    Xv, yv = mnist.X_val[:500], mnist.y_val[:500]
    recipe = Recipe(epochs=1, augment=True, seed=3)
    a = train(recipe, X, y, Xv, yv).network.parameters()
    b = train(recipe, X, y, Xv, yv).network.parameters()
    plain = train(Recipe(epochs=1, augment=False, seed=3), X, y, Xv, yv).network.parameters()
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.W"], plain["0.W"])


def test_thickening_adds_ink_and_thinning_removes_it_in_proportion(digits):
    from model.augment import thicken
    imgs = digits.reshape(-1, 28, 28)
    N = len(imgs)
    mass = {t: thicken(imgs, np.full(N, t, np.float32)).sum(axis=(1, 2)) for t in (-1.0, -0.5, 0.0, 0.5, 1.0)}
    np.testing.assert_array_equal(mass[0.0], imgs.sum(axis=(1, 2)))  # amount 0: the image as it was
    assert np.all(mass[-1.0] < mass[-0.5]) and np.all(mass[-0.5] < mass[0.0])
    assert np.all(mass[0.0] < mass[0.5]) and np.all(mass[0.5] < mass[1.0])
    assert np.median(mass[1.0] / mass[0.0]) > 1.3 and np.median(mass[-1.0] / mass[0.0]) < 0.7  # a real change
    out = thicken(imgs, np.linspace(-1, 1, N, dtype=np.float32))
    assert out.min() >= 0 and out.max() <= imgs.max() + 1e-6  # blends of min and max filters stay in range


def test_a_one_pixel_dilation_grows_a_stroke_by_the_cross():
    from model.augment import thicken
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 14, 14] = 1
    grown = thicken(img, np.ones(1, np.float32))[0]
    assert sorted(zip(*np.nonzero(grown))) == [(13, 14), (14, 13), (14, 14), (14, 15), (15, 14)]
    assert thicken(img, -np.ones(1, np.float32)).sum() == 0  # eroded away: no neighbour holds ink


def test_stroke_thickness_is_drawn_per_sample_from_the_seed(digits):
    aug = Augmentation(max_shift=0, max_rotation=0, max_scale=0, max_shear=0, max_thickness=1.0)
    a = augment(digits, np.random.default_rng(7), aug)
    np.testing.assert_array_equal(a, augment(digits, np.random.default_rng(7), aug))
    assert np.abs(a - augment(digits, np.random.default_rng(8), aug)).mean() > 0.01
    # The amounts are the generator's last draw, after the affine ranges': replay them.
    replay = np.random.default_rng(7)
    N = len(digits)
    for size in (N, N, N, (N, 2)):
        replay.uniform(0, 0, size)
    amount = replay.uniform(-1, 1, N)
    change = a.sum(axis=1) - digits.sum(axis=1)
    clear = np.abs(amount) > 0.1
    assert clear.sum() > N // 2
    np.testing.assert_array_equal(np.sign(change[clear]), np.sign(amount[clear]))


def test_without_stroke_thickness_the_distortions_are_those_of_before(digits):
    # max_thickness 0 draws nothing more: every older recipe's augmentation stream stays as it was.
    rng = np.random.default_rng(3)
    augment(digits, rng, Augmentation(elastic_alpha=34))
    other = np.random.default_rng(3)
    augment(digits, other, Augmentation(elastic_alpha=34, max_thickness=0.0))
    assert rng.bit_generator.state == other.bit_generator.state
