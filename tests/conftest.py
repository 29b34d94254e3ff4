"""Shared fixtures: a seeded generator, the real MNIST folder, and tiny weights files.

Real MNIST comes from $DIGITS_DATA_DIR, else `../shared/mnist` next to the repository. Without it the
tests that need it skip, except under CI (any `CI` variable), where a missing data set is a failure.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mnist_support import real_mnist_dir
from server_support import copy_shipped_weights
from model.data import Dataset, load_mnist
from model.network import Network
from model.preprocess import PREPROCESSING_VERSION
from model.weights import save_model

ROOT = Path(__file__).resolve().parents[1]

# No test touches the user's own state folder: whatever falls back to the default DIGITS_HOME (the
# service's models, database and job logs) gets a throwaway one for this test session.
os.environ["DIGITS_HOME"] = tempfile.mkdtemp(prefix="digits-test-home-")

# 784 -> 8 ReLU -> 10: the smallest network that reads MNIST-shaped input.
TINY_SPEC = {"name": "tiny", "layers": [
    {"type": "dense", "n_in": 784, "n_out": 8},
    {"type": "relu"},
    {"type": "dense", "n_in": 8, "n_out": 10},
]}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The folder holding the four real MNIST files (raw or .gz)."""
    return real_mnist_dir()


@pytest.fixture(scope="session")
def mnist(mnist_dir) -> Dataset:
    """Real MNIST, loaded once: 50k train, 10k validation, 10k test. The arrays are read-only, so a test
    (or code under test) that writes into them fails instead of corrupting the data for later tests."""
    dataset = load_mnist(mnist_dir)
    for array in (dataset.X_train, dataset.y_train, dataset.X_val, dataset.y_val, dataset.X_test, dataset.y_test):
        array.setflags(write=False)
    return dataset


def make_tiny_network(seed: int = 0) -> Network:
    return Network(TINY_SPEC, np.random.default_rng(seed))


def save_tiny_model(path: Path, seed: int = 0, **meta) -> Path:
    """Write a tiny (untrained) model with valid metadata to `path`; returns `path`."""
    save_model(path, make_tiny_network(seed), {"preprocessing_version": PREPROCESSING_VERSION, "seed": seed, **meta})
    return Path(path)


@pytest.fixture
def tiny_network() -> Network:
    """The tiny network, seeded: 784 -> 8 ReLU -> 10."""
    return make_tiny_network()


@pytest.fixture
def write_tiny_model():
    """`write_tiny_model(path, seed=0, **meta) -> path`: save a tiny, untrained model with valid metadata."""
    return save_tiny_model


@pytest.fixture
def tiny_weights_path(tmp_path) -> Path:
    """A valid weights file of the tiny network, alone in tmp_path/weights."""
    return save_tiny_model(tmp_path / "weights" / "tiny.npz")


@pytest.fixture
def tmp_state(tmp_path) -> Path:
    """A private copy of the shipped weights folder and an empty database folder, for real servers."""
    return copy_shipped_weights(tmp_path)


def learnable_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic digits-shaped data with a learnable label (which quarter of the image is brightest):
    (X_train, y_train, X_val, y_val), 400 and 100 rows."""
    rng = np.random.default_rng(0)
    X = rng.random((500, 784), dtype=np.float32) ** 3
    y = (X.reshape(-1, 4, 196).sum(axis=2).argmax(axis=1) + 3 * (X[:, 0] > 0.5)) % 10
    return X[:400], y[:400], X[400:], y[400:]
