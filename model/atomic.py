"""Atomic `.npz` writes: a temporary file in the same folder, flushed to disk, then renamed over the target.

A reader sees the old file or the new one, never half of one, and a crash leaves no partial file under
the real name (only a `.tmp` that the next write does not read).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def savez_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez(path, **arrays), atomically; the file is readable by other users (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; other users (a container's app user) must read it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
