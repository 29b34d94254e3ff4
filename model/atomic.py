"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A reader sees the old file or the new one, never half of one, and a failure or crash leaves no partial
file under the real name (at most a hidden `.tmp` after a crash, which nothing reads).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import numpy as np


@contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; it replaces `path` when the block ends, and is
    removed instead if the block raises. `file.name` is the temporary's path (to check it before it
    counts). The file is readable by other users (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users (a container's app user) must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomically(path: Path, data: bytes | str) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path`, atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def savez_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez(path, **arrays), atomically."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
