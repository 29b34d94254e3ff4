"""Train a recipe on MNIST, measure it and write the versioned weights file: what `digits train` and the
service's training jobs both run."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

from model.data import Dataset
from model.preprocess import PREPROCESSING_VERSION
from model.train import Progress, Recipe, accuracy, train
from model.weights import save_model


def train_and_save(recipe: Recipe, data: Dataset, out_path: Path,
                   on_progress: Callable[[Progress], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   extra_meta: dict | None = None) -> dict:
    """Train, report test accuracy (never used for choices), save atomically; returns the metadata."""
    result = train(recipe, data.X_train, data.y_train, data.X_val, data.y_val, on_progress, should_stop)
    metrics = {
        "val_accuracy": result.val_accuracy,
        "test_accuracy": accuracy(result.network, data.X_test, data.y_test),
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 2),
        "n_train": len(data.y_train),
        "n_val": len(data.y_val),
        "n_test": len(data.y_test),
    }
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
