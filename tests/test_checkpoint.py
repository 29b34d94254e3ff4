"""model.checkpoint and train(..., checkpoint=): a stopped run resumes to the same weights, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import learnable_data
from model.atomic import savez_atomically
from model.checkpoint import CheckpointError, load_checkpoint
from model.train import Recipe, TrainingCancelled, fraction_size, member_checkpoint, train


@pytest.fixture(scope="module")
def data():
    return learnable_data()


RECIPES = {
    # dropout layers (their own generators), momentum, cosine with warm-up, affine + elastic augmentation
    "mlp": Recipe(architecture="mlp", epochs=3, batch_size=50, learning_rate=0.05, momentum=0.9, schedule="cosine",
                  warmup_epochs=0.5, l2=1e-5, augment=True, elastic_alpha=20, seed=5),
    "seed-adam": Recipe(architecture="seed", epochs=3, batch_size=64, optimizer="adam", learning_rate=1e-3, seed=2),
    "seed-sgd": Recipe(architecture="seed", epochs=3, batch_size=64, learning_rate=0.3, lr_decay=0.8, seed=1),
    # a seeded share of the training set, as each member of the record ensemble trains on
    "seed-share": Recipe(architecture="seed", epochs=3, batch_size=64, learning_rate=0.3, train_fraction=0.8, seed=4),
    # strided and 'valid' convolutions, batch normalisation, stroke thickness and the weight average
    "cnn_deep-ema": Recipe(architecture="cnn_deep", epochs=3, batch_size=100, optimizer="adam", learning_rate=1e-3,
                           lr_decay=0.9, l2=0.0, augment=True, max_thickness=0.5, max_rotation=15.0, ema_decay=0.9,
                           seed=3),
}


def stop_after(steps: int):
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) > steps
    return should_stop


def assert_same_result(a, b):
    for key, P in a.network.parameters().items():
        np.testing.assert_array_equal(b.network.parameters()[key], P, err_msg=key)
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(b.history) == strip(a.history)
    assert (b.best_epoch, b.val_accuracy) == (a.best_epoch, a.val_accuracy)


@pytest.mark.parametrize("name", RECIPES)
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights_bit_for_bit(name, data, tmp_path):
    recipe = RECIPES[name]
    steps_per_epoch = -(-fraction_size(len(data[1]), recipe.train_fraction) // recipe.batch_size)
    straight = train(recipe, *data)
    path = tmp_path / "run.ckpt.npz"
    with pytest.raises(TrainingCancelled):  # stopped in the middle of epoch 2
        train(recipe, *data, should_stop=stop_after(steps_per_epoch + 3), checkpoint=path)
    assert load_checkpoint(path).epoch == 1
    reports = []
    resumed = train(recipe, *data, on_progress=reports.append, checkpoint=path)
    assert_same_result(straight, resumed)
    assert {p.epoch for p in reports} == {2, 3}  # epoch 1 was not run again
    assert load_checkpoint(path).epoch == 3


def test_a_finished_checkpoint_gives_back_the_best_epoch_without_training(data, tmp_path):
    recipe, path = RECIPES["seed-sgd"], tmp_path / "done.npz"
    first = train(recipe, *data, checkpoint=path)
    again = train(recipe, *data, should_stop=lambda: True, checkpoint=path)  # would cancel any step
    assert_same_result(first, again)
    assert again.seconds == pytest.approx(first.seconds, abs=0.5)  # the time of the run, not of the reload


def test_another_recipe_is_refused_naming_what_differs(data, tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(TrainingCancelled):
        train(RECIPES["seed-sgd"], *data, should_stop=stop_after(8), checkpoint=path)
    other = Recipe(**{**RECIPES["seed-sgd"].to_dict(), "learning_rate": 0.1})
    with pytest.raises(CheckpointError, match=r"another recipe \(learning_rate: 0.3 there, 0.1 here\)"):
        train(other, *data, checkpoint=path)


def test_a_run_without_validation_data_checkpoints_and_resumes(data, tmp_path):
    X, y, _, _ = data
    no_val = (np.empty((0, 784), np.float32), np.empty(0, int))
    recipe, path = RECIPES["seed-sgd"], tmp_path / "c.npz"
    straight = train(recipe, X, y, *no_val)
    with pytest.raises(TrainingCancelled):
        train(recipe, X, y, *no_val, should_stop=stop_after(8), checkpoint=path)
    for key, P in train(recipe, X, y, *no_val, checkpoint=path).network.parameters().items():
        np.testing.assert_array_equal(straight.network.parameters()[key], P, err_msg=key)


def test_other_data_is_refused(data, tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(TrainingCancelled):
        train(RECIPES["seed-sgd"], *data, should_stop=stop_after(8), checkpoint=path)
    X, y, Xv, yv = data
    with pytest.raises(CheckpointError, match="other training or validation data"):
        train(RECIPES["seed-sgd"], X, (y + 1) % 10, Xv, yv, checkpoint=path)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_an_unreadable_checkpoint_is_refused_with_its_name(content, data, tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.npz"):
        train(RECIPES["seed-sgd"], *data, checkpoint=path)


def test_an_npz_that_is_not_a_checkpoint_is_refused(data, tmp_path):
    path = tmp_path / "weights.npz"
    savez_atomically(path, {"0.W": np.zeros((2, 2), np.float32)})
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(RECIPES["seed-sgd"], *data, checkpoint=path)


def test_an_ensemble_resumes_member_by_member(data, tmp_path):
    recipe = Recipe(architecture="ensemble", members=2, member_architecture="seed", epochs=2, batch_size=64,
                    learning_rate=0.3, seed=4)
    straight = train(recipe, *data)
    path = tmp_path / "ens.npz"
    steps = -(-len(data[1]) // 64)
    with pytest.raises(TrainingCancelled):  # member 0 done, member 1 stopped in its first epoch
        train(recipe, *data, should_stop=stop_after(2 * steps + 2), checkpoint=path)
    assert load_checkpoint(member_checkpoint(path, 0)).epoch == 2
    assert not member_checkpoint(path, 1).exists()
    resumed = train(recipe, *data, checkpoint=path)
    for key, P in straight.network.parameters().items():
        np.testing.assert_array_equal(resumed.network.parameters()[key], P, err_msg=key)
    assert resumed.val_accuracy == straight.val_accuracy


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "state.npz"
    savez_atomically(path, {"a": np.arange(3)})

    def broken_savez(file, **arrays):
        file.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        savez_atomically(path, {"a": np.arange(5)})
    monkeypatch.undo()
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["a"], np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]
