"""Training checkpoints: everything `model.train.train` needs to go on after the last finished epoch.

A long run (a cnn takes half an hour or more on two cores) can be stopped, by a cancelled job, a closed
terminal or the machine going down, and resumed where it was: `train(..., checkpoint=PATH)` writes one
after every epoch and, when PATH exists, starts from it. Resuming gives the same weights, bit for bit,
as a run that was never stopped (same machine and BLAS): the file holds the network, the best epoch's
parameters, the optimizer's state, and the state of every random generator (shuffling, augmentation,
each dropout layer), next to the recipe and a fingerprint of the data, which must both match.

One `.npz` (loaded with allow_pickle=False), written atomically: array entries `net/<key>`,
`best/<key>`, `opt/<key>` and a JSON `checkpoint` entry with the rest.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.atomic import savez_atomically

CHECKPOINT_FORMAT = 1
META_KEY = "checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from: unreadable, or written for another recipe or data."""


@dataclass
class Checkpoint:
    recipe: dict
    data_fingerprint: str
    epoch: int                               # epochs finished
    network: dict[str, np.ndarray]           # the network as the epoch left it
    best: dict[str, np.ndarray] | None       # the best validation epoch's arrays
    best_accuracy: float
    best_epoch: int
    history: list[dict]
    optimizer: tuple[dict, dict[str, np.ndarray]]
    rng_states: dict[str, dict]              # name -> numpy bit-generator state
    seconds: float                           # training time so far
    extra: dict = field(default_factory=dict)


def data_fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 over the arrays' shapes, dtypes and bytes: the same training and validation data, or not."""
    digest = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        digest.update(f"{a.shape}{a.dtype}".encode())
        if a.size:  # an empty array has no bytes, and memoryview refuses to cast its zero strides
            digest.update(memoryview(a).cast("B"))
    return digest.hexdigest()


def save_checkpoint(path: Path, ckpt: Checkpoint) -> None:
    scalars, opt_arrays = ckpt.optimizer
    meta = {
        "format": CHECKPOINT_FORMAT, "recipe": ckpt.recipe, "data_fingerprint": ckpt.data_fingerprint,
        "epoch": ckpt.epoch, "best_accuracy": ckpt.best_accuracy, "best_epoch": ckpt.best_epoch,
        "has_best": ckpt.best is not None, "history": ckpt.history, "optimizer": scalars,
        "rng_states": ckpt.rng_states, "seconds": ckpt.seconds, "extra": ckpt.extra,
    }
    arrays = {f"net/{k}": v for k, v in ckpt.network.items()}
    arrays.update({f"best/{k}": v for k, v in (ckpt.best or {}).items()})
    arrays.update({f"opt/{k}": v for k, v in opt_arrays.items()})
    # NaN best accuracy (no validation data) is written as null: strict JSON
    meta["best_accuracy"] = None if np.isnan(ckpt.best_accuracy) else ckpt.best_accuracy
    savez_atomically(path, {**arrays, META_KEY: np.array(json.dumps(meta))})


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; CheckpointError naming the file if it is not one this code can resume."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile) or META_KEY not in npz.files:
                raise CheckpointError(f"{path}: not a training checkpoint (no '{META_KEY}' entry)")
            meta = json.loads(str(npz[META_KEY]))
            arrays = {key: npz[key] for key in npz.files if key != META_KEY}
    except CheckpointError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                              f"this code reads {CHECKPOINT_FORMAT}")

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    try:
        best_accuracy = meta["best_accuracy"]
        return Checkpoint(
            recipe=meta["recipe"], data_fingerprint=meta["data_fingerprint"], epoch=int(meta["epoch"]),
            network=part("net/"), best=part("best/") if meta["has_best"] else None,
            best_accuracy=float("nan") if best_accuracy is None else float(best_accuracy),
            best_epoch=int(meta["best_epoch"]), history=list(meta["history"]),
            optimizer=(dict(meta["optimizer"]), part("opt/")), rng_states=dict(meta["rng_states"]),
            seconds=float(meta["seconds"]), extra=dict(meta.get("extra") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: incomplete training checkpoint ({exc!r} missing or malformed)") from exc


def check_resumable(path: Path, ckpt: Checkpoint, recipe: dict, fingerprint: str) -> None:
    """CheckpointError unless the checkpoint was written by this recipe on this data."""
    if ckpt.recipe != recipe:
        changed = sorted(k for k in set(recipe) | set(ckpt.recipe) if recipe.get(k) != ckpt.recipe.get(k))
        details = ", ".join(f"{k}: {ckpt.recipe.get(k)!r} there, {recipe.get(k)!r} here" for k in changed)
        raise CheckpointError(f"{path} was written by another recipe ({details}); resume with the same "
                              f"options, or delete it to start afresh")
    if ckpt.data_fingerprint != fingerprint:
        raise CheckpointError(f"{path} was written for other training or validation data; resume with the same "
                              f"data (and feedback), or delete it to start afresh")
