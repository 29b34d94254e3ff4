"""Train a recipe on MNIST, measure it and write the versioned weights file: what `digits train` and the
service's training jobs both run."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

import numpy as np

from model.data import Dataset
from model.preprocess import PREPROCESSING_VERSION
from model.train import Progress, Recipe, accuracy, train
from model.weights import save_model


FEEDBACK_HELD_OUT = 0.2   # share of user feedback kept apart to measure the model on it
FEEDBACK_SHARE = 0.05     # oversample feedback up to about this share of the training set
MAX_FEEDBACK_REPEATS = 50


def mix_feedback(X_train: np.ndarray, y_train: np.ndarray, X_fb: np.ndarray, y_fb: np.ndarray, seed: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out a seeded fifth of the feedback; oversample the rest into the training set.

    Returns (X_train, y_train, X_fb_held_out, y_fb_held_out).
    """
    order = np.random.default_rng(seed).permutation(len(y_fb))
    n_held = int(len(y_fb) * FEEDBACK_HELD_OUT) if len(y_fb) >= 5 else 0
    held, used = order[:n_held], order[n_held:]
    if not len(used):
        return X_train, y_train, X_fb[held], y_fb[held]
    repeats = int(np.clip(FEEDBACK_SHARE * len(y_train) / len(used), 1, MAX_FEEDBACK_REPEATS))
    X = np.concatenate([X_train, np.tile(X_fb[used], (repeats, 1))])
    y = np.concatenate([y_train, np.tile(y_fb[used], repeats)])
    return X, y, X_fb[held], y_fb[held]


def train_and_save(recipe: Recipe, data: Dataset, out_path: Path,
                   on_progress: Callable[[Progress], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   extra_meta: dict | None = None,
                   feedback: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Train, report test accuracy (never used for choices), save atomically; returns the metadata.

    `feedback` (X (N, 784), y (N,)) is users' labelled drawings: mixed in, with accuracy on a held-out
    part reported separately from MNIST's.
    """
    X_train, y_train = data.X_train, data.y_train
    X_fb_held = y_fb_held = None
    if feedback is not None and len(feedback[1]):
        X_train, y_train, X_fb_held, y_fb_held = mix_feedback(X_train, y_train, *feedback, seed=recipe.seed)
    result = train(recipe, X_train, y_train, data.X_val, data.y_val, on_progress, should_stop)
    metrics = {
        "val_accuracy": result.val_accuracy,
        "test_accuracy": accuracy(result.network, data.X_test, data.y_test),
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 2),
        "n_train": len(y_train),  # feedback copies included
        "n_val": len(data.y_val),
        "n_test": len(data.y_test),
    }
    if feedback is not None:
        metrics["n_feedback"] = len(feedback[1])
        metrics["n_feedback_held_out"] = 0 if y_fb_held is None else len(y_fb_held)
        metrics["feedback_accuracy"] = (accuracy(result.network, X_fb_held, y_fb_held)
                                        if y_fb_held is not None and len(y_fb_held) else None)
    meta = {
        "preprocessing_version": PREPROCESSING_VERSION,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "metrics": metrics,
        "history": result.history,
        "data_checksums": data.checksums,
        "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        **(extra_meta or {}),
    }
    return save_model(out_path, result.network, meta)
