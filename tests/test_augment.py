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
