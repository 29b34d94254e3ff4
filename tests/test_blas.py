"""model.blas: products with a small inner dimension run on one BLAS thread, and the count comes back."""
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from model import blas


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_one_thread_inside_the_block_and_the_count_restored_after():
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() and set(blas_threads()) == {2}
        with blas.one_thread():
            assert set(blas_threads()) == {1}
        assert set(blas_threads()) == {2}


def test_the_count_is_restored_when_the_block_raises():
    with threadpool_limits(limits=2, user_api="blas"):
        with pytest.raises(RuntimeError):
            with blas.one_thread():
                raise RuntimeError("boom")
        assert set(blas_threads()) == {2}


@pytest.mark.parametrize("inner", [1, 10, blas.SMALL_INNER, blas.SMALL_INNER + 1, 300])
def test_matmul_equals_numpy_for_every_inner_size(inner):
    rng = np.random.default_rng(inner)
    A = rng.standard_normal((64, inner), dtype=np.float32)
    B = rng.standard_normal((inner, 96), dtype=np.float32).T.copy().T  # a transposed view, as Dense passes
    np.testing.assert_array_equal(blas.matmul(A, B), A @ B)
    out = np.empty((64, 96), np.float32)
    assert blas.matmul(A, B, out=out) is out
    np.testing.assert_array_equal(out, A @ B)
