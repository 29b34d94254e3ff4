"""model.atomic: the one way files are replaced (weights, checkpoints, ACTIVE, reports, MNIST downloads)."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from model import atomic
from model.atomic import atomic_open, savez_atomically, write_atomically


def test_a_write_replaces_the_file_readable_by_other_users(tmp_path):
    path = tmp_path / "new" / "ACTIVE"
    write_atomically(path, "a.npz\n")
    write_atomically(path, "b.npz\n")
    assert path.read_text() == "b.npz\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["ACTIVE"]


def test_until_the_block_ends_readers_see_the_old_file_and_the_temporary_is_beside_it(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"old")
    with atomic_open(path) as f:
        f.write(b"new, half written")
        f.flush()
        assert path.read_bytes() == b"old"
        assert os.path.dirname(f.name) == str(tmp_path) and os.path.basename(f.name).startswith(".")
    assert path.read_bytes() == b"new, half written"


def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="download broke"):
        with atomic_open(path) as f:
            f.write(b"half")
            raise RuntimeError("download broke")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["w.npz"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failing_flush_or_rename_leaves_the_old_arrays_and_no_temporary(tmp_path, monkeypatch, failing):
    path = tmp_path / "w.npz"
    savez_atomically(path, {"W": np.ones(3)})

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, failing, disk_full)
    with pytest.raises(OSError, match="No space left"):
        savez_atomically(path, {"W": np.zeros(3)})
    monkeypatch.undo()
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["W"], np.ones(3))
    assert os.listdir(tmp_path) == ["w.npz"]
