"""The weights folder: versioned `.npz` files plus an `ACTIVE` file naming the one to serve, and how a
new one is filled from the shipped models.

Plain file operations, written atomically, so several server processes can share one folder.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from model.atomic import atomic_open, write_atomically
from model.weights import WeightsError, check_preprocessing, read_meta

ACTIVE_FILE = "ACTIVE"


def active_path(weights_dir: Path) -> Path:
    """The path of the active weights file; WeightsError if none is set or it is missing."""
    weights_dir = Path(weights_dir)
    marker = weights_dir / ACTIVE_FILE
    if not marker.is_file():
        raise WeightsError(f"no active model in {weights_dir} (no {ACTIVE_FILE} file); "
                           f"run `digits train --activate` or copy the shipped weights there")
    name = marker.read_text().strip()
    if not _plain_name(name):
        raise WeightsError(f"{marker} names {name!r}, not a weights file in {weights_dir}")
    path = weights_dir / name
    if not path.is_file():
        raise WeightsError(f"{marker} names {name}, but {path} does not exist")
    return path


def _plain_name(name: str) -> bool:
    """ACTIVE may only name a plain file inside the folder: no paths, no hidden temporaries."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def set_active(weights_dir: Path, filename: str) -> None:
    """Point ACTIVE at `filename` (a readable weights file in the folder, of this code's preprocessing
    version), atomically; WeightsError otherwise."""
    weights_dir = Path(weights_dir)
    if not _plain_name(filename):
        raise WeightsError(f"{filename!r} is not the name of a weights file in {weights_dir}")
    check_preprocessing(read_meta(weights_dir / filename), weights_dir / filename)
    write_atomically(weights_dir / ACTIVE_FILE, filename + "\n")


def list_models(weights_dir: Path) -> list[tuple[Path, dict | WeightsError]]:
    """Every `.npz` in the folder with its metadata (or the error reading it), oldest first."""
    out = []
    for path in sorted(Path(weights_dir).glob("*.npz")):
        if path.name.startswith("."):  # a training run's temporary file, not a model
            continue
        try:
            out.append((path, read_meta(path)))
        except WeightsError as exc:
            out.append((path, exc))
    return sorted(out, key=lambda item: item[1].get("created_at", "") if isinstance(item[1], dict) else "")


def seed_models(models_dir: Path, shipped_dir: Path) -> list[str]:
    """Fill a models folder from the shipped, read-only one: each shipped weights file and report the
    folder lacks, and ACTIVE if it has none. Nothing already there is replaced, so a user's trained
    models and choice of active model survive new releases. Returns the names copied."""
    models_dir, shipped_dir = Path(models_dir), Path(shipped_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    shipped = [p for p in shipped_dir.glob("*.npz") if not p.name.startswith(".")]
    shipped += [p for p in (shipped_dir / "reports").glob("*/*") if p.is_file()]
    for path in shipped:
        target = models_dir / path.relative_to(shipped_dir)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_open(target) as out, open(path, "rb") as source:
                shutil.copyfileobj(source, out)
            copied.append(str(path.relative_to(shipped_dir)))
    marker = shipped_dir / ACTIVE_FILE
    if not (models_dir / ACTIVE_FILE).exists() and marker.is_file():
        write_atomically(models_dir / ACTIVE_FILE, marker.read_text())
        copied.append(ACTIVE_FILE)
    return copied
