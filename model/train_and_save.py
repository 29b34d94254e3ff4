"""Train a recipe on MNIST, measure it and write the versioned weights file: what `digits train` and the
service's training jobs both run."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

import numpy as np

from model.calibrate import calibrate
from model.data import Dataset
from model.preprocess import PREPROCESSING_VERSION
from model.train import Progress, Recipe, accuracy, fraction_size, seeded_subset, train
from model.weights import Model, load_servable, save_model


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


def training_subset(X_train: np.ndarray, y_train: np.ndarray, recipe: Recipe) -> tuple[np.ndarray, np.ndarray]:
    """The recipe's `train_size` images of the training set (`seeded_subset`); all at 0."""
    if not recipe.train_size:
        return X_train, y_train
    return seeded_subset(X_train, y_train, recipe.train_size, recipe.seed, 2)


CALIBRATION_SCRIBBLES = (400, 1)  # (count, seed) of the non-digit scribbles the threshold is fitted on;
                                  # reports use other seeds


def calibration_of(network, X_val: np.ndarray, y_val: np.ndarray) -> dict | None:
    """Temperature, "not sure" threshold and ECE before/after, fitted on validation data (None without it).
    The threshold also keeps most synthetic non-digit scribbles out (`model.calibrate.REJECT_SHARE`)."""
    from model.drawn_digits import fixed_inputs

    if not len(y_val):
        return None
    junk = fixed_inputs("scribbles", *CALIBRATION_SCRIBBLES)[0]
    return calibrate(network.logits(X_val), y_val, reject_logits=network.logits(junk)).to_dict()


def beyond_mnist_of(network, calibration: dict | None) -> dict:
    """`model.drawn_digits.beyond_mnist` for a network and its calibration (or none)."""
    from model.calibrate import scaled_probabilities
    from model.drawn_digits import beyond_mnist

    calibration = calibration or {}
    T = calibration.get("temperature", 1.0)
    return beyond_mnist(lambda X: scaled_probabilities(network.logits(X), T), calibration.get("threshold", 0.0))


def measured_meta(network, data: Dataset, val_accuracy: float, metrics: dict, **fields) -> dict:
    """A new model's metadata: `metrics` with test accuracy (reported, never used for choices), the
    calibration fitted on validation and behaviour beyond MNIST; `fields` (recipe, ...); and what it was
    made from and on."""
    calibration = calibration_of(network, data.X_val, data.y_val)
    metrics = {"val_accuracy": val_accuracy, "test_accuracy": accuracy(network, data.X_test, data.y_test),
               **metrics, "n_val": len(data.y_val), "n_test": len(data.y_test),
               **beyond_mnist_of(network, calibration)}
    return {"calibration": calibration, "preprocessing_version": PREPROCESSING_VERSION, **fields,
            "metrics": metrics, "data_checksums": data.checksums,
            "machine": f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}"}


def train_and_save(recipe: Recipe, data: Dataset, out_path: Path,
                   on_progress: Callable[[Progress], None] | None = None,
                   should_stop: Callable[[], bool] | None = None,
                   extra_meta: dict | None = None,
                   feedback: tuple[np.ndarray, np.ndarray] | None = None,
                   checkpoint: Path | None = None, start_from: Model | None = None) -> dict:
    """Train, report test accuracy (never used for choices), save atomically; returns the metadata.

    `feedback` (X (N, 784), y (N,)) is users' labelled drawings: mixed in, with accuracy on a held-out
    part reported separately from MNIST's. `checkpoint`: see `model.train.train`. `start_from` (with a
    fine-tuning recipe): the saved model whose weights training starts from; its accuracy on validation
    and on the held-out feedback are reported too (`*_before`), beside the new model's. A distillation
    recipe's teacher is loaded from `recipe.distill_from` (WeightsError if it is not a model this code
    can serve); its path and version are saved as `distilled_from`.
    """
    teacher = load_servable(Path(recipe.distill_from)) if recipe.distill_from else None
    X_train, y_train = training_subset(data.X_train, data.y_train, recipe)
    X_fb_held = y_fb_held = None
    if feedback is not None and len(feedback[1]):
        X_train, y_train, X_fb_held, y_fb_held = mix_feedback(X_train, y_train, *feedback, seed=recipe.seed)
    result = train(recipe, X_train, y_train, data.X_val, data.y_val, on_progress=on_progress, should_stop=should_stop,
                   checkpoint=checkpoint, start_from=None if start_from is None else start_from.network,
                   teacher=None if teacher is None else teacher.network)
    metrics = {
        "best_epoch": result.best_epoch,
        "train_seconds": round(result.seconds, 2),
        "n_train": fraction_size(len(y_train), recipe.train_fraction),  # feedback copies included
    }
    held_out = y_fb_held is not None and len(y_fb_held) > 0
    if feedback is not None:
        metrics["n_feedback"] = len(feedback[1])
        metrics["n_feedback_held_out"] = 0 if y_fb_held is None else len(y_fb_held)
        metrics["feedback_accuracy"] = accuracy(result.network, X_fb_held, y_fb_held) if held_out else None
    fields = {}
    if start_from is not None:
        metrics["val_accuracy_before"] = accuracy(start_from.network, data.X_val, data.y_val)
        if feedback is not None:
            metrics["feedback_accuracy_before"] = (accuracy(start_from.network, X_fb_held, y_fb_held)
                                                   if held_out else None)
        fields["fine_tuned_from"] = start_from.version
    if teacher is not None:
        fields["distilled_from"] = {"path": recipe.distill_from, "version": teacher.version}
    meta = measured_meta(result.network, data, result.val_accuracy, metrics, recipe=recipe.to_dict(),
                         seed=recipe.seed, history=result.history, **fields)
    return save_model(out_path, result.network, {**meta, **(extra_meta or {})})


def active_accuracy(weights_dir: Path, X_val: np.ndarray, y_val: np.ndarray) -> tuple[str, float]:
    """The active model's version and its accuracy on these validation images (a candidate's own, so
    the two compare like with like); WeightsError if there is no active model this code can serve."""
    from model.active import active_path
    from model.weights import load_servable

    active = load_servable(active_path(weights_dir))
    return active.version, accuracy(active.network, X_val, y_val)


def calibrate_saved(path: Path, data: Dataset) -> dict:
    """Fit (or refit) a saved model's calibration on the validation split it was chosen with, in place.

    The split must be the one the model was trained beside: `data` is loaded with the model's own
    validation size, so no image the model was trained on is used.
    """
    from model.weights import load_model, update_meta

    model = load_model(path)
    calibration = calibration_of(model.network, data.X_val, data.y_val)
    metrics = {**model.meta.get("metrics", {}), **beyond_mnist_of(model.network, calibration)}
    return update_meta(path, {"calibration": calibration, "metrics": metrics})


def ensemble_and_save(paths: list[Path], data: Dataset, out_path: Path) -> dict:
    """Average several saved models into one ensemble file, measured and calibrated like a trained one.

    Every member must use this code's preprocessing and have held out the same validation split (their
    recipes' validation_size and the split seed), so validation stays unseen by all of them.
    """
    from model.network import Ensemble
    from model.weights import load_model

    if len(paths) < 2:
        raise ValueError("an ensemble needs at least two models")
    models = [load_model(p) for p in paths]
    for m in models:
        if m.meta["preprocessing_version"] != PREPROCESSING_VERSION:
            raise ValueError(f"{m.version} was made for preprocessing version {m.meta['preprocessing_version']}, "
                             f"this code has {PREPROCESSING_VERSION}")
        size = (m.meta.get("recipe") or {}).get("validation_size")
        if size != len(data.y_val):
            raise ValueError(f"{m.version} held out {size} validation images, not the {len(data.y_val)} "
                             f"of this split: its validation accuracy would not be comparable")
        if isinstance(m.network, Ensemble):
            raise ValueError(f"{m.version} is already an ensemble; list its members instead")
    ensemble = Ensemble.of([m.network for m in models])
    metrics = {
        "train_seconds": round(sum(m.meta.get("metrics", {}).get("train_seconds", 0.0) for m in models), 2),
        "members": {m.version: {k: m.meta.get("metrics", {}).get(k) for k in ("val_accuracy", "test_accuracy")}
                    for m in models},
    }
    meta = measured_meta(ensemble, data, accuracy(ensemble, data.X_val, data.y_val), metrics,
                         recipe={"ensemble_of": [m.version for m in models], "validation_size": len(data.y_val)},
                         members=[{"version": m.version, "recipe": m.meta.get("recipe")} for m in models])
    return save_model(out_path, ensemble, meta)
