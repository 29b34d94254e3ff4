"""Keep glibc from mapping large blocks afresh on every allocation (process-wide, Linux with glibc).

glibc serves allocations above its mmap threshold (128 KiB, raised as such blocks are freed, but not
past blocks it has already trimmed) with fresh pages from the kernel and returns them on free. NumPy
code that allocates the same large temporaries over and over then pays page faults and kernel time on
every call:
- serving: decoding a 280x280 canvas and taking its ink (313 KB blocks) faulted ~120 pages and spent
  ~600 µs in the kernel per request, a quarter of the request;
- training: a cnn step at batch 128 (its second convolution's im2col matrix alone is 80 MB) faulted
  1,200-3,200 pages and spent 17-22 ms of its ~190 ms in the kernel.
Raising the thresholds keeps such blocks in the heap for reuse: no faults, no kernel time. The cost is
that up to `keep` bytes of freed memory may stay with the process.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h

MiB = 2**20
SERVING = {"largest": 16 * MiB, "keep": 64 * MiB}     # an image at the 4,000,000-pixel limit is 16 MB as RGBA
TRAINING = {"largest": 256 * MiB, "keep": 512 * MiB}  # a cnn's im2col: 80 MB at batch 128, 160 MB at 256


def keep_freed_memory(largest: int, keep: int) -> bool:
    """Serve blocks up to `largest` bytes from the heap and keep up to `keep` bytes of freed memory.

    Returns False, changing nothing, where the C library has no mallopt (not glibc) or refuses a value.
    """
    if not 0 < largest <= keep < 2**31:
        raise ValueError(f"need 0 < largest <= keep < 2 GiB, got largest={largest}, keep={keep}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, largest)) and bool(mallopt(M_TRIM_THRESHOLD, keep))
