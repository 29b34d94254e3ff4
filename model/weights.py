"""Save and load a model as one `.npz`: its state arrays (parameters and buffers) plus a JSON `meta` entry.

Loading uses allow_pickle=False, rebuilds the network from the spec in `meta` and checks every array
against it; anything wrong raises WeightsError naming the file. Writes are atomic (temp file, rename).
`load_model` reads any preprocessing version; serving and activation go through `load_servable`.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model.atomic import savez_atomically
from model.calibrate import scaled_probabilities
from model.network import Ensemble, Network, build_network
from model.preprocess import PREPROCESSING_VERSION

FORMAT_VERSION = 1
META_KEY = "meta"
REQUIRED_META = ("format_version", "version", "architecture", "preprocessing_version", "created_at")


class WeightsError(ValueError):
    """A weights file is missing, corrupt, truncated or does not match its own architecture."""


class PreprocessingMismatch(WeightsError):
    """A sound weights file of a model trained on another preprocessing version than this code's."""


@dataclass
class Model:
    """A loaded network with its metadata."""
    network: Network | Ensemble
    meta: dict
    path: Path | None = None

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def temperature(self) -> float:
        """The softmax temperature fitted on validation data (`model.calibrate`); 1 if never fitted."""
        return float((self.meta.get("calibration") or {}).get("temperature", 1.0))

    @property
    def threshold(self) -> float:
        """Calibrated confidence below which an answer is "not sure"; 0 (always sure) if never chosen."""
        return float((self.meta.get("calibration") or {}).get("threshold", 0.0))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 784) -> calibrated (N, 10) float64 probabilities."""
        return scaled_probabilities(self.network.logits(X), self.temperature)


def make_version(architecture_name: str, arrays: dict[str, np.ndarray], created_at: datetime) -> str:
    """A readable, unique model version: architecture, UTC time and a hash of the arrays (`state()`)."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return f"{architecture_name}-{created_at:%Y%m%d-%H%M%S}-{digest.hexdigest()[:8]}"


def save_model(path: Path, network: Network | Ensemble, meta: dict) -> dict:
    """Write `network` and `meta` (plus format version, version, architecture, creation time) atomically.

    Returns the full metadata as written.
    """
    path = Path(path)
    arrays = network.state()  # parameters and buffers: what a file needs to predict
    created = datetime.now(timezone.utc).replace(microsecond=0)
    full_meta = {
        "created_at": created.isoformat(),
        **meta,
        "format_version": FORMAT_VERSION,
        "architecture": network.spec,
    }
    full_meta.setdefault("version", make_version(network.name, arrays, created))
    for key in REQUIRED_META:
        if key not in full_meta:
            raise ValueError(f"metadata needs {key!r}")
    savez_atomically(path, {**arrays, META_KEY: np.array(json.dumps(full_meta, sort_keys=True))})
    return full_meta


def update_meta(path: Path, changes: dict) -> dict:
    """Rewrite a weights file with `changes` merged into its metadata (same arrays, same version),
    atomically; returns the new metadata. For facts learned after training, such as a calibration."""
    model = load_model(path)
    meta = {**model.meta, **changes}
    return save_model(path, model.network, meta)


def read_meta(path: Path) -> dict:
    """Only the metadata of a weights file (cheap: the arrays are not read)."""
    path = Path(path)
    try:
        with _open_npz(path) as npz:
            return _parse_meta(npz, path)
    except WeightsError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"{path}: not a readable weights file ({exc})") from exc


def _open_npz(path: Path):
    """np.load that accepts only an .npz archive (a bare .npy array is not a weights file)."""
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise WeightsError(f"{path}: a single array, not an .npz archive of weights")
    return loaded


def _parse_meta(npz, path: Path) -> dict:
    if META_KEY not in npz.files:
        raise WeightsError(f"{path}: no '{META_KEY}' entry; this is not a digits weights file")
    try:
        meta = json.loads(str(npz[META_KEY]))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: metadata is not a JSON object")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise WeightsError(f"{path}: metadata lacks {missing}")
    if meta["format_version"] != FORMAT_VERSION:
        raise WeightsError(f"{path}: format version {meta['format_version']!r}, this code reads {FORMAT_VERSION}")
    return meta


def load_model(path: Path) -> Model:
    """Load and fully check a weights file; never returns a half-built model."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    try:
        with _open_npz(path) as npz:
            meta = _parse_meta(npz, path)
            arrays = {key: npz[key] for key in npz.files if key != META_KEY}
        network = build_network(meta["architecture"])
        network.set_state(arrays)
    except WeightsError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise WeightsError(f"{path}: {exc}") from exc
    return Model(network, meta, path)


def check_preprocessing(meta: dict, path: Path) -> None:
    """Raise PreprocessingMismatch unless the model was trained on inputs preprocessed as this code does."""
    trained = meta.get("preprocessing_version")
    if trained != PREPROCESSING_VERSION:
        raise PreprocessingMismatch(
            f"{path}: trained on preprocessing version {trained!r}, but this code preprocesses with version "
            f"{PREPROCESSING_VERSION}, so its answers on drawings would be wrong; retrain it (`digits train` "
            f"or POST /train): recalibrating or re-evaluating does not help")


def load_servable(path: Path) -> Model:
    """`load_model`, refusing a model of another preprocessing version: for serving and activation."""
    model = load_model(path)
    check_preprocessing(model.meta, model.path)
    return model
