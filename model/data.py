"""Read MNIST IDX files (gzip or raw), checked, and split the training set for validation.

No downloading here: see `model.fetch`. Images come out as (N, 784) float32 in [0, 1].
"""
from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# SHA-256 of the uncompressed IDX files: identical for every mirror and compression.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
EXPECTED_COUNT = {"train": 60_000, "t10k": 10_000}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
VALIDATION_SIZE = 10_000
SPLIT_SEED = 20_131  # fixed, so every model is chosen on the same validation images


class DataError(ValueError):
    """An MNIST file is missing, truncated, corrupt or not an IDX file of the expected kind."""


def default_data_dir() -> Path:
    """The per-user cache folder used when neither --data-dir nor DIGITS_DATA_DIR is given: on Linux
    $XDG_CACHE_HOME/digits/mnist (~/.cache/digits/mnist), on macOS ~/Library/Caches/digits/mnist, on
    Windows %LOCALAPPDATA%\\digits\\Cache\\mnist (platformdirs knows each system's convention)."""
    return platformdirs.user_cache_path("digits", appauthor=False) / "mnist"


def find_file(data_dir: Path, stem: str) -> Path:
    """The path of `stem` in `data_dir`, preferring the raw file over `stem.gz`."""
    for name in (stem, stem + ".gz"):
        path = Path(data_dir) / name
        if path.is_file():
            return path
    raise DataError(
        f"{stem}(.gz) not found in {data_dir}; run `digits data fetch --data-dir {data_dir}` "
        f"or copy the four MNIST files there"
    )


def read_raw(path: Path) -> bytes:
    """The uncompressed bytes of an IDX file, gzip or raw; a broken gzip stream is a DataError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as gz:
                    return gz.read()
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: cannot read ({exc}); the file is corrupt or truncated, fetch it again") from exc


def parse_idx(raw: bytes, path: Path, kind: str) -> np.ndarray:
    """Parse IDX bytes: kind 'images' -> (N, 28, 28) uint8, 'labels' -> (N,) uint8."""
    magic, n_dims = (IMAGE_MAGIC, 3) if kind == "images" else (LABEL_MAGIC, 1)
    header_len = 4 + 4 * n_dims
    if len(raw) < header_len:
        raise DataError(f"{path}: only {len(raw)} bytes, shorter than an IDX header; the file is truncated")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise DataError(
            f"{path}: magic number {found_magic} is not {magic}; this is not an MNIST {kind} file"
        )
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(n_dims)]
    if kind == "images" and dims[1:] != [28, 28]:
        raise DataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header_len + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path}: {len(raw)} bytes but the header promises {expected}; the file is "
            f"{'truncated' if len(raw) < expected else 'followed by extra data'}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def load_split(data_dir: Path, split: str, checksums: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load 'train' or 't10k': X (N, 784) float32 in [0, 1], y (N,) int64, checked for count and labels.

    If `checksums` is a dict, the SHA-256 of each file's uncompressed content is stored in it by file stem.
    """
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images", "labels"):
        stem = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        path = find_file(data_dir, stem)
        raw = read_raw(path)
        if checksums is not None:
            checksums[stem] = hashlib.sha256(raw).hexdigest()
        arrays.append((parse_idx(raw, path, kind), path))
    (images, img_path), (labels, lbl_path) = arrays
    if len(images) != len(labels):
        raise DataError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    if len(images) != EXPECTED_COUNT[prefix]:
        raise DataError(f"{img_path}: {len(images)} images, expected {EXPECTED_COUNT[prefix]}")
    if labels.max(initial=0) > 9:
        raise DataError(f"{lbl_path}: label {labels.max()} is not a digit 0-9")
    X = images.reshape(len(images), 784).astype(np.float32) / np.float32(255)
    return X, labels.astype(np.int64)


@dataclass
class Dataset:
    """MNIST split three ways; the test part is for reporting only."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    checksums: dict = field(default_factory=dict)  # SHA-256 of each uncompressed file, by stem


def split_validation(X: np.ndarray, y: np.ndarray, validation_size: int = VALIDATION_SIZE,
                     seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded split of the training set: (X_train, y_train, X_val, y_val)."""
    if not 0 <= validation_size < len(X):
        raise ValueError(f"validation_size must be in [0, {len(X)}), got {validation_size}")
    order = np.random.default_rng(seed).permutation(len(X))
    val, train = order[:validation_size], order[validation_size:]
    return X[train], y[train], X[val], y[val]


def load_mnist(data_dir: Path, validation_size: int = VALIDATION_SIZE) -> Dataset:
    """Load all four files from `data_dir` and split a seeded validation set off the training images."""
    checksums: dict = {}
    X, y = load_split(data_dir, "train", checksums)
    X_test, y_test = load_split(data_dir, "t10k", checksums)
    return Dataset(*split_validation(X, y, validation_size), X_test, y_test, checksums)
