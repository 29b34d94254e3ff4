"""model.data: IDX parsing and its errors on small files made here, the validation split, real MNIST."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from model import data
from model.data import SHA256, DataError, find_file, load_mnist, load_split, parse_idx, read_raw, split_validation


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    """Write `prefix`-images and -labels IDX files into `folder`, gzip-compressed or raw."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, raw in ((f"{prefix}-images-idx3-ubyte", idx_images(images)),
                      (f"{prefix}-labels-idx1-ubyte", idx_labels(labels))):
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)


@pytest.fixture
def small_split(rng):
    """5 random 28x28 uint8 images and their labels."""
    return rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, 5, dtype=np.uint8)


@pytest.fixture
def small_counts(monkeypatch):
    """Let a 5-image file pass as a full split, so load_split's checks run on tiny files."""
    monkeypatch.setitem(data.EXPECTED_COUNT, "train", 5)
    monkeypatch.setitem(data.EXPECTED_COUNT, "t10k", 5)


# --- parsing ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_a_valid_small_split_loads_as_scaled_float_pixels_and_int_labels(tmp_path, small_split, small_counts, gz):
    images, labels = small_split
    write_split(tmp_path, "t10k", images, labels, gz=gz)
    X, y = load_split(tmp_path, "t10k")
    assert X.shape == (5, 784) and X.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_array_equal(X, images.reshape(5, 784).astype(np.float32) / 255)
    np.testing.assert_array_equal(y, labels)


def test_parse_idx_reads_images_and_labels_exactly(small_split):
    images, labels = small_split
    np.testing.assert_array_equal(parse_idx(idx_images(images), Path("x"), "images"), images)
    np.testing.assert_array_equal(parse_idx(idx_labels(labels), Path("y"), "labels"), labels)


def test_the_raw_file_is_preferred_over_the_gz_one(tmp_path):
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    assert find_file(tmp_path, "t10k-labels-idx1-ubyte").name == "t10k-labels-idx1-ubyte"


def test_read_raw_gives_the_same_bytes_for_gzip_and_raw(tmp_path, small_split):
    raw = idx_images(small_split[0])
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert read_raw(tmp_path / "a") == read_raw(tmp_path / "a.gz") == raw


IMAGES = idx_images(np.zeros((2, 28, 28), np.uint8))
LABELS = idx_labels(np.zeros(2, np.uint8))


@pytest.mark.parametrize("raw, kind, message", [
    (idx_labels(np.zeros(20, np.uint8)), "images", "magic number 2049 is not 2051"),
    (IMAGES, "labels", "magic number 2051 is not 2049"),
    (struct.pack(">IIII", 2051, 1, 28, 27) + bytes(28 * 27), "images", "images are 28x27, expected 28x28"),
    (IMAGES[:10], "images", "shorter than an IDX header; the file is truncated"),
    (LABELS[:7], "labels", "shorter than an IDX header; the file is truncated"),
    (IMAGES[:-1], "images", "the file is truncated"),
    (LABELS[:-1], "labels", "the file is truncated"),
    (IMAGES + b"\0", "images", "followed by extra data"),
    (LABELS + b"\0\0", "labels", "followed by extra data"),
    (b"", "labels", "only 0 bytes"),
], ids=["labels-as-images", "images-as-labels", "wrong-dims", "short-image-header", "short-label-header",
        "truncated-images", "truncated-labels", "extra-image-bytes", "extra-label-bytes", "empty"])
def test_bad_idx_bytes_raise_a_data_error_naming_the_file(raw, kind, message):
    with pytest.raises(DataError, match=message) as info:
        parse_idx(raw, Path("/data/some-file-ubyte"), kind)
    assert str(info.value).startswith("/data/some-file-ubyte: ")


def test_a_truncated_gzip_stream_is_a_data_error(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(LABELS * 50)[:-12])
    with pytest.raises(DataError, match="corrupt or truncated, fetch it again") as info:
        read_raw(path)
    assert str(path) in str(info.value)


def test_a_gzip_stream_with_a_bad_checksum_is_a_data_error(tmp_path):
    compressed = bytearray(gzip.compress(LABELS))
    compressed[-5] ^= 0xFF  # inside the CRC-32 trailer
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_raw(path)


def test_a_gzip_stream_with_corrupt_compressed_data_is_a_data_error(tmp_path):
    compressed = gzip.compress(LABELS)
    # A valid gzip header, then a deflate block of the reserved type 3: "invalid block type".
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(compressed[:10] + b"\xff" * 16 + compressed[-8:])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_raw(path)


def test_a_missing_file_names_it_and_says_how_to_fetch(tmp_path):
    with pytest.raises(DataError) as info:
        load_split(tmp_path, "train")
    message = str(info.value)
    assert "train-images-idx3-ubyte(.gz) not found in" in message
    assert f"digits data fetch --data-dir {tmp_path}" in message


def test_more_images_than_labels_is_a_data_error_naming_both_files(tmp_path, small_split, small_counts):
    images, labels = small_split
    write_split(tmp_path, "t10k", images, labels[:4])
    with pytest.raises(DataError, match=r"has 5 images but .*t10k-labels-idx1-ubyte.gz has 4 labels"):
        load_split(tmp_path, "t10k")


def test_a_split_of_the_wrong_size_is_a_data_error(tmp_path, small_split):
    write_split(tmp_path, "t10k", *small_split)
    with pytest.raises(DataError, match="5 images, expected 10000"):
        load_split(tmp_path, "t10k")


def test_a_label_above_nine_is_a_data_error(tmp_path, small_split, small_counts):
    images, labels = small_split
    labels = labels.copy()
    labels[3] = 10
    write_split(tmp_path, "t10k", images, labels)
    with pytest.raises(DataError, match="label 10 is not a digit 0-9"):
        load_split(tmp_path, "t10k")


def test_load_split_records_the_sha256_of_the_uncompressed_files(tmp_path, small_split, small_counts):
    import hashlib

    images, labels = small_split
    write_split(tmp_path, "t10k", images, labels, gz=True)
    checksums: dict = {}
    load_split(tmp_path, "t10k", checksums)
    assert checksums == {
        "t10k-images-idx3-ubyte": hashlib.sha256(idx_images(images)).hexdigest(),
        "t10k-labels-idx1-ubyte": hashlib.sha256(idx_labels(labels)).hexdigest(),
    }


# --- validation split ------------------------------------------------------------------------------

def test_split_validation_is_disjoint_covering_and_sized():
    X = np.arange(100, dtype=np.float32).reshape(100, 1)
    y = np.arange(100)
    X_train, y_train, X_val, y_val = split_validation(X, y, validation_size=30, seed=1)
    assert len(X_train) == len(y_train) == 70 and len(X_val) == len(y_val) == 30
    assert set(y_train).isdisjoint(y_val)
    assert sorted(np.concatenate([y_train, y_val])) == list(range(100))
    np.testing.assert_array_equal(X_train[:, 0], y_train)  # rows stay with their labels
    np.testing.assert_array_equal(X_val[:, 0], y_val)


def test_split_validation_is_seeded():
    X, y = np.zeros((100, 1)), np.arange(100)
    same = [split_validation(X, y, 30, seed=5)[3] for _ in range(2)]
    other = split_validation(X, y, 30, seed=6)[3]
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(same[0], other)
    assert not np.array_equal(same[0], np.arange(30))  # shuffled, not the first rows


@pytest.mark.parametrize("validation_size", [-1, 100, 101])
def test_split_validation_rejects_sizes_outside_the_data(validation_size):
    with pytest.raises(ValueError, match=r"validation_size must be in \[0, 100\)"):
        split_validation(np.zeros((100, 1)), np.arange(100), validation_size)


# --- real MNIST ------------------------------------------------------------------------------------

def test_real_mnist_loads_as_50k_10k_10k_float32_in_unit_range(mnist):
    assert mnist.X_train.shape == (50_000, 784) and mnist.y_train.shape == (50_000,)
    assert mnist.X_val.shape == (10_000, 784) and mnist.y_val.shape == (10_000,)
    assert mnist.X_test.shape == (10_000, 784) and mnist.y_test.shape == (10_000,)
    for X in (mnist.X_train, mnist.X_val, mnist.X_test):
        assert X.dtype == np.float32
        assert X.min() == 0.0 and X.max() == 1.0
    for y in (mnist.y_train, mnist.y_val, mnist.y_test):
        assert set(np.unique(y)) == set(range(10))


def test_real_mnist_checksums_match_the_published_ones(mnist):
    assert mnist.checksums == SHA256


def test_real_mnist_validation_split_is_the_same_every_time(mnist, mnist_dir):
    again = load_mnist(mnist_dir)
    np.testing.assert_array_equal(again.y_val, mnist.y_val)
    np.testing.assert_array_equal(again.X_val[:100], mnist.X_val[:100])
