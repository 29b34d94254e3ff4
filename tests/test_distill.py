"""Distillation in training: train(..., teacher=) and train_and_save with `distill_from` (the loss itself:
test_layers.py)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_SPEC, learnable_data, save_tiny_model
from model.checkpoint import CheckpointError, load_checkpoint
from model.data import Dataset
from model.layers import DistillationLoss, softmax
from model.network import Ensemble, Network
from model.train import Recipe, TrainingCancelled, distillation_step, start_run, train
from model.train_and_save import train_and_save


@pytest.fixture(scope="module")
def data():
    return learnable_data()


def confident_teacher(seed: int = 0) -> Network:
    """A fixed tiny network whose outputs are far from uniform and unrelated to the labels."""
    teacher = Network(TINY_SPEC, np.random.default_rng(seed))
    teacher.set_parameters({k: v * 3 for k, v in teacher.parameters().items()})
    return teacher


def distilling(**changes) -> Recipe:
    return Recipe(**{"epochs": 2, "batch_size": 50, "learning_rate": 0.1, "seed": 3, "distill_from": "teacher.npz",
                     **changes})


def soft_kl(teacher: Network, student: Network, X: np.ndarray, T: float) -> float:
    """Mean KL(softmax(teacher / T) || softmax(student / T)) over the rows of X."""
    p, q = softmax(teacher.logits(X) / T), softmax(student.logits(X) / T)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def test_with_weight_zero_distilling_trains_exactly_as_plain_cross_entropy(data):
    plain = train(distilling(distill_from="", augment=True), *data)
    distilled = train(distilling(distill_weight=0.0, augment=True), *data, teacher=confident_teacher())
    for key, P in plain.network.state().items():
        np.testing.assert_array_equal(distilled.network.state()[key], P, err_msg=key)
    assert [h["loss"] for h in distilled.history] == [h["loss"] for h in plain.history]


def test_a_student_distilled_from_a_fixed_teacher_moves_towards_its_soft_outputs(data):
    X, y = data[0], data[1]
    none = X[:0], y[:0]  # no validation: the last epoch is kept, not the one that reads the labels best
    shifted = (3 * y + 1) % 10  # the teacher learnt other labels, so only distillation can follow it
    teacher = train(Recipe(epochs=10, batch_size=50, learning_rate=0.5, seed=8), X, shifted, *none).network
    T = 2.0
    untrained = Network.from_architecture("seed", seed=int(np.random.default_rng(3).integers(2**31)))
    student = train(distilling(epochs=8, learning_rate=0.5, distill_weight=1.0, distill_temperature=T), X, y, *none,
                    teacher=teacher).network
    on_labels = train(distilling(epochs=8, learning_rate=0.5, distill_from=""), X, y, *none).network
    before, after, labels_only = (soft_kl(teacher, net, X, T) for net in (untrained, student, on_labels))
    assert after < 0.4 * before and after < 0.4 * labels_only, (before, after, labels_only)
    agreement = (student.predict(X) == teacher.predict(X)).mean()
    assert agreement > 0.5 and (on_labels.predict(X) == teacher.predict(X)).mean() < 0.2, agreement


def test_an_ensemble_teacher_teaches_the_log_of_its_averaged_probabilities(data):
    X, y = data[0][:50], data[1][:50]
    members = [confident_teacher(1), confident_teacher(2)]
    run = start_run(distilling(distill_weight=1.0), "", teacher=Ensemble.of(members))
    student_logits = run.network.logits(X)
    loss = distillation_step(run, X, y, 1.0)
    averaged = (softmax(members[0].logits(X)) + softmax(members[1].logits(X))) / 2
    expected = DistillationLoss(4.0, 1.0).forward(student_logits, y, np.log(averaged))
    assert loss == pytest.approx(expected, rel=1e-5)


def test_only_a_distillation_recipe_takes_a_teacher(data):
    with pytest.raises(ValueError, match="a distillation recipe .* needs the teacher"):
        train(distilling(), *data)
    with pytest.raises(ValueError, match="a distillation recipe .* needs the teacher"):
        train(distilling(distill_from=""), *data, teacher=confident_teacher())


def test_the_teacher_is_never_trained(data):
    teacher = confident_teacher()
    before = {k: v.copy() for k, v in teacher.state().items()}
    train(distilling(epochs=1), *data, teacher=teacher)
    for key, value in before.items():
        np.testing.assert_array_equal(teacher.state()[key], value, err_msg=key)


def test_a_distillation_run_resumes_bit_for_bit_and_only_with_the_same_teacher(data, tmp_path):
    recipe, path, teacher = distilling(epochs=3, augment=True), tmp_path / "run.ckpt.npz", confident_teacher()
    straight = train(recipe, *data, teacher=teacher)
    calls = []
    with pytest.raises(TrainingCancelled):  # stopped in the middle of epoch 2
        train(recipe, *data, teacher=teacher, checkpoint=path, should_stop=lambda: calls.append(1) or len(calls) > 11)
    assert load_checkpoint(path).epoch == 1
    assert load_checkpoint(path).recipe["distill_from"] == "teacher.npz"
    with pytest.raises(CheckpointError, match="other training or validation data"):
        train(recipe, *data, teacher=confident_teacher(seed=7), checkpoint=path)
    resumed = train(recipe, *data, teacher=teacher, checkpoint=path)
    for key, P in straight.network.state().items():
        np.testing.assert_array_equal(resumed.network.state()[key], P, err_msg=key)


def test_train_and_save_distils_the_file_named_and_records_its_path_and_version(data, tmp_path):
    from model.weights import load_model
    rng = np.random.default_rng(1)
    dataset = Dataset(*data, rng.random((30, 784), dtype=np.float32), rng.integers(0, 10, 30),
                      checksums={"fake": "0" * 64})
    teacher_path = save_tiny_model(tmp_path / "teacher.npz", seed=4)
    recipe = distilling(epochs=1, distill_from=str(teacher_path), train_fraction=0.5, validation_size=100)
    meta = train_and_save(recipe, dataset, tmp_path / "student.npz")
    assert meta["distilled_from"] == {"path": str(teacher_path), "version": load_model(teacher_path).version}
    assert meta["recipe"]["distill_from"] == str(teacher_path) and "distill_temperature" not in meta["recipe"]
    assert meta["metrics"]["n_train"] == 200
    assert load_model(tmp_path / "student.npz").meta["distilled_from"] == meta["distilled_from"]
    # a teacher that is not a weights file stops the run before it trains
    with pytest.raises(ValueError, match="missing.npz"):
        train_and_save(distilling(distill_from=str(tmp_path / "missing.npz")), dataset, tmp_path / "no.npz")
    assert not (tmp_path / "no.npz").exists()


def test_digits_train_takes_the_distillation_flags_from_the_recipe():
    from app.cli import build_parser
    from model.recipe import recipe_fields, recipe_for
    args = build_parser().parse_args(["train", "--arch", "cnn", "--distill-from", "weights/ensemble.npz",
                                      "--distill-temperature", "3", "--distill-weight", "0.5"])
    recipe = recipe_for(**{f.name: getattr(args, f.name) for f in recipe_fields()})
    recipe.validate()
    assert (recipe.distill_from, recipe.distill_temperature, recipe.distill_weight) == ("weights/ensemble.npz", 3, 0.5)
    assert recipe.to_dict()["distill_from"] == "weights/ensemble.npz"
    assert "distill_from" not in recipe_for("cnn").to_dict()
