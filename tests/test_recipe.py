"""The recipe's one declaration (model.recipe) and what is built from it: `Recipe.validate`, the
`digits train` flags and the POST /train request model agree on fields, bounds, choices and defaults."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic import ValidationError

from app.cli import RECIPE_FLAGS, build_parser, main
from app.schemas import TrainRequest
from model.data import Dataset
from model.recipe import TRAINABLE, Recipe, fine_tune_recipe, recipe_fields, recipe_for

FIELDS = recipe_fields()


def flag_of(name: str) -> str:
    return RECIPE_FLAGS.get(name, "--" + name.replace("_", "-"))


def train_actions() -> dict:
    """dest -> argparse action of `digits train`."""
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    return {action.dest: action for action in train._actions}


def just_outside(f, bounds: dict) -> list:
    """For each bound, a value just beyond it (a bound naming a field is beyond that field's default)."""
    step = 1 if f.type is int else 1e-6
    values = []
    for kind, limit in bounds.items():
        if isinstance(limit, str):  # the other field's default for the architecture the flags default to
            limit = getattr(recipe_for(Recipe.architecture), limit)
        values.append({"ge": limit - step, "gt": limit, "le": limit + step, "lt": limit}[kind])
    return values


OUT_OF_BOUNDS = [pytest.param(f.name, value, id=f"{f.name}={value}")
                 for f in FIELDS for value in just_outside(f, f.bounds)]
OUT_OF_SERVICE_BOUNDS = [pytest.param(f.name, value, id=f"{f.name}={value}")
                         for f in FIELDS if f.service_bounds != f.bounds
                         for value in just_outside(f, f.service_bounds)]


@pytest.fixture
def no_data(monkeypatch):
    """`digits train` must refuse before it reads any data."""
    monkeypatch.setattr("model.data.load_mnist", lambda *a, **k: pytest.fail("loaded data for a bad recipe"))


def test_every_recipe_field_is_a_train_flag_and_a_request_field():
    actions = train_actions()
    for f in FIELDS:
        assert flag_of(f.name) in actions[f.name].option_strings, f.name
        assert f.name in TrainRequest.model_fields, f.name
    assert set(TrainRequest.model_fields) == {f.name for f in FIELDS} | {"include_feedback", "promote"}


def test_every_number_is_bounded_for_the_service_and_within_the_trainers_bounds():
    for f in FIELDS:
        if f.type in (int, float):
            kinds = set(f.service_bounds)
            assert kinds & {"ge", "gt"} and kinds & {"le", "lt"}, f"{f.name} is unbounded for the service"
            for value in [f.service_bounds.get(k) for k in ("ge", "le")]:
                if value is not None and not isinstance(value, str):  # the closed ends: accepted by the trainer
                    Recipe(**{f.name: value, "epochs": 200}).validate()


@pytest.mark.parametrize("name, value", OUT_OF_BOUNDS)
def test_a_value_just_outside_a_bound_is_refused_by_recipe_cli_and_api_naming_the_field(
        name, value, no_data, capsys, tmp_path):
    with pytest.raises(ValueError, match=f"^{name} must be "):
        Recipe(**{name: value}).validate()

    assert main(["train", f"{flag_of(name)}={value}", "--weights-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"digits: error: {name} must be ")

    with pytest.raises(ValidationError) as info:
        TrainRequest(**{name: value})
    error = info.value.errors()[0]
    assert error["loc"] == (name,) or f"{name} must be" in error["msg"], error


@pytest.mark.parametrize("name, value", OUT_OF_SERVICE_BOUNDS)
def test_the_service_refuses_a_value_beyond_its_tighter_limit_naming_the_field(name, value):
    with pytest.raises(ValidationError) as info:
        TrainRequest(**{name: value})
    assert info.value.errors()[0]["loc"] == (name,)


@pytest.mark.parametrize("f", [f for f in FIELDS if f.choices], ids=lambda f: f.name)
def test_a_value_outside_the_choices_is_refused_by_recipe_cli_and_api(f, no_data, capsys):
    with pytest.raises(ValueError, match=f"^{f.name} must be ") as refused:
        Recipe(**{f.name: "nonsense"}).validate()
    assert all(choice in str(refused.value) for choice in f.choices)

    with pytest.raises(SystemExit) as exit_info:
        main(["train", flag_of(f.name), "nonsense"])
    assert exit_info.value.code == 2
    assert f"argument {flag_of(f.name)}: invalid choice: 'nonsense'" in capsys.readouterr().err

    with pytest.raises(ValidationError) as info:
        TrainRequest(**{f.name: "nonsense"})
    assert info.value.errors()[0]["loc"] == (f.name,)


@pytest.mark.parametrize("architecture", TRAINABLE)
def test_left_out_the_cli_and_the_api_both_take_the_architectures_recipe(architecture, monkeypatch, tmp_path):
    built = []

    def capture(recipe, *args, **kwargs):
        built.append(recipe)
        raise KeyboardInterrupt  # stop before training

    one_image = (np.zeros((1, 784), np.float32), np.zeros(1, np.int64))
    monkeypatch.setattr("model.data.load_mnist", lambda *a, **k: Dataset(*one_image * 3, checksums={}))
    monkeypatch.setattr("model.train_and_save.train_and_save", capture)
    assert main(["train", "--arch", architecture, "--weights-dir", str(tmp_path)]) == 130
    assert built == [recipe_for(architecture)]
    request = TrainRequest(architecture=architecture).model_dump(exclude={"include_feedback", "promote"})
    assert request == dataclasses.asdict(recipe_for(architecture))


def test_help_shows_each_architectures_default_where_they_differ_and_one_default_where_not():
    actions = train_actions()
    assert actions["epochs"].help.endswith("default: 30 (seed), 100 (mlp), 22 (cnn, cnn_bn, ensemble), 35 (cnn_deep)")
    assert actions["augment"].help.endswith("default: on (seed, mlp, cnn, cnn_bn, cnn_deep, ensemble)")
    assert actions["momentum"].help.endswith("default: 0.0 (seed, cnn_deep), 0.9 (mlp, cnn, cnn_bn, ensemble)")
    assert actions["seed"].help.endswith("; non-negative; default: 0")
    assert actions["ema_decay"].help.endswith("; in [0, 1); default: 0.0")
    for f in FIELDS[1:]:  # every field's help (but the architecture's own) names each architecture's value
        for architecture in TRAINABLE:
            value = getattr(recipe_for(architecture), f.name)
            shown = {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)
            assert shown in actions[f.name].help or f"default: {value}" in actions[f.name].help, (f.name, architecture)


def test_the_recipes_that_checkpoints_compare_are_as_they_were():
    # A checkpoint stores Recipe.to_dict() and resume refuses any other: these must not change
    # (weights/README.md, "Record runs in progress").
    older = {"architecture": "seed", "epochs": 20, "batch_size": 128, "learning_rate": 0.5, "lr_decay": 0.9,
             "schedule": "exponential", "warmup_epochs": 0.0, "momentum": 0.0, "optimizer": "sgd", "l2": 1e-4,
             "seed": 0, "augment": False, "elastic_alpha": 0.0, "validation_size": 10_000, "members": 3,
             "member_architecture": "cnn"}
    assert Recipe().to_dict() == older
    assert recipe_for("cnn_deep", seed=22, max_thickness=0.5, ema_decay=0.999).to_dict() == {
        **older, "architecture": "cnn_deep", "epochs": 35, "batch_size": 64, "learning_rate": 0.001, "lr_decay": 0.95,
        "optimizer": "adam", "l2": 0.0, "seed": 22, "augment": True, "max_shift": 2.5, "max_rotation": 15.0,
        "max_scale": 0.15, "max_thickness": 0.5, "ema_decay": 0.999}



def recipe_of_flags(*flags: str) -> Recipe:
    """The recipe `digits train FLAGS` trains, built as `cmd_train` builds it."""
    args = build_parser().parse_args(["train", *flags])
    return recipe_for(**{f.name: getattr(args, f.name) for f in FIELDS})


def test_a_seeded_training_share_and_distillation_are_recorded_only_when_asked_for():
    member = recipe_of_flags("--arch", "cnn_deep", "--train-fraction", "0.9", "--seed", "31")
    member.validate()
    assert member.to_dict() == {**recipe_for("cnn_deep", seed=31).to_dict(), "train_fraction": 0.9}
    student = recipe_of_flags("--arch", "cnn", "--distill-from", "weights/ensemble.npz")
    assert (student.distill_temperature, student.distill_weight) == (4.0, 0.7)
    assert student.to_dict() == {**recipe_for("cnn").to_dict(), "distill_from": "weights/ensemble.npz"}
    assert Recipe(**student.to_dict()) == student
    assert recipe_of_flags("--arch", "cnn_deep").to_dict() == recipe_for("cnn_deep").to_dict()
    later = {"train_fraction", "distill_from", "distill_temperature", "distill_weight"}
    assert later.isdisjoint(recipe_of_flags("--arch", "cnn_deep").to_dict())

def shipped_networks() -> dict[str, list[dict]]:
    """The metadata of every single network in weights/, by architecture."""
    from pathlib import Path

    from model.weights import read_meta
    by_architecture: dict[str, list[dict]] = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "weights").glob("*.npz")):
        meta = read_meta(path)
        if meta["architecture"]["name"] != "ensemble":
            by_architecture.setdefault(meta["architecture"]["name"], []).append(meta)
    return by_architecture


def test_each_architectures_defaults_are_the_recipe_of_its_best_shipped_model():
    # best on validation, ties broken by validation log-loss (weights/README.md, "Which single cnn")
    shipped = shipped_networks()
    assert {"seed", "mlp", "cnn"} <= set(shipped)
    for architecture, metas in shipped.items():
        best = min(metas, key=lambda m: (-m["metrics"]["val_accuracy"], m["calibration"]["nll_before"]))
        assert recipe_for(architecture, seed=best["seed"]).to_dict() == best["recipe"], best["version"]


def test_seed_defaults_are_the_augmented_30_epoch_recipe_while_a_bare_recipe_is_unchanged():
    assert (recipe_for("seed").epochs, recipe_for("seed").augment) == (30, True)
    assert (Recipe().epochs, Recipe().augment) == (20, False)  # what older weights files and checkpoints hold


CNN_META = {"version": "cnn-x", "architecture": {"name": "cnn"}, "recipe": {"validation_size": 5_000}}


def test_fine_tuning_keeps_the_networks_architecture_and_split_at_a_tenth_of_its_rate():
    recipe = fine_tune_recipe(CNN_META)
    assert (recipe.architecture, recipe.validation_size, recipe.fine_tune) == ("cnn", 5_000, True)
    assert (recipe.epochs, recipe.train_size, recipe.schedule, recipe.warmup_epochs) == (2, 10_000, "cosine", 0.0)
    assert recipe.learning_rate == recipe_for("cnn").learning_rate / 10
    assert recipe.momentum == 0.9 and recipe.augment  # the rest is the architecture's recipe
    assert fine_tune_recipe({**CNN_META, "architecture": {"name": "cnn_deep"}}).learning_rate == 1e-4  # Adam's / 10
    given = fine_tune_recipe(CNN_META, epochs=1, learning_rate=0.01, architecture="cnn", train_size=None)
    assert (given.epochs, given.learning_rate, given.train_size) == (1, 0.01, 10_000)
    assert recipe.to_dict()["fine_tune"] is True and "fine_tune" not in recipe_for("cnn").to_dict()


@pytest.mark.parametrize("meta, overrides, message", [
    ({**CNN_META, "architecture": {"name": "ensemble"}}, {},
     "cnn-x is an ensemble; fine-tuning starts from one network"),
    (CNN_META, {"architecture": "mlp"}, r"fine-tuning keeps cnn-x's architecture \(cnn\), not mlp"),
    (CNN_META, {"validation_size": 10_000}, r"fine-tuning keeps cnn-x's validation_size \(5000\), not 10000"),
])
def test_fine_tuning_refuses_an_ensemble_and_another_architecture_or_split(meta, overrides, message):
    with pytest.raises(ValueError, match=message):
        fine_tune_recipe(meta, **overrides)
    with pytest.raises(ValueError, match="an ensemble cannot be fine-tuned"):
        recipe_for("ensemble", fine_tune=True).validate()
