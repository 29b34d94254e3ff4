"""Where the tests find real MNIST, and the one rule for what is missing: skip locally, fail under CI."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from model.data import FILES, DataError, find_file

ROOT = Path(__file__).resolve().parents[1]


def skip_or_fail(message: str) -> None:
    """Skip the test (or the whole module, when called at import), or fail it under CI (any `CI` variable),
    where nothing may be silently left out."""
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def real_mnist_dir() -> Path:
    """$DIGITS_DATA_DIR, else `../shared/mnist` next to the repository; skips (fails under CI) without it."""
    data_dir = Path(os.environ.get("DIGITS_DATA_DIR") or ROOT.parent / "shared" / "mnist")
    try:
        for stem in FILES.values():
            find_file(data_dir, stem)
    except DataError as exc:
        skip_or_fail(f"real MNIST is needed for this test: {exc}; or set DIGITS_DATA_DIR")
    return data_dir
