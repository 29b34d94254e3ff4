"""BLAS thread control for the products that threads make slower.

OpenBLAS splits a product over its threads by output blocks, whatever the inner dimension. For a
product with a tiny inner dimension, such as a classifier's input gradient (N, 10) @ (10, 1024), the
threads' start-up and synchronisation cost more than the arithmetic: measured here at batch 128, 2
threads took 300-550 µs where one took 82 µs, up to 15% of a whole training step of the seed network.
`one_thread()` runs such a product on one thread and restores the previous count afterwards (about
10 µs); threadpoolctl finds the BLAS that NumPy loaded, whichever it is. The threshold suits the batch
of 128 that every recipe here trains at: at batch 256 two threads won again (124 against 190 µs).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np

# Products whose inner dimension is at most this run on one thread (see the module docstring).
SMALL_INNER = 32

_libraries: list | None = None


def _blas_libraries() -> list:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (found once)."""
    global _libraries
    if _libraries is None:
        from threadpoolctl import ThreadpoolController
        _libraries = list(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _libraries


@contextmanager
def one_thread() -> Iterator[None]:
    """BLAS on one thread inside the block; the previous thread counts are restored on exit."""
    libraries = [(lib, lib.num_threads) for lib in _blas_libraries()]
    busy = [(lib, n) for lib, n in libraries if n != 1]
    for lib, _ in busy:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in busy:
            lib.set_num_threads(n)


def matmul(A: np.ndarray, B: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A @ B, on one BLAS thread when the inner dimension is small enough that threads cost more."""
    if A.shape[-1] <= SMALL_INNER:
        with one_thread():
            return np.matmul(A, B, out=out)
    return np.matmul(A, B, out=out)
