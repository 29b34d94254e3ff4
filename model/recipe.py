"""The training recipe, declared once: each field's default, help text, choices and bounds.

`Recipe.validate` checks the bounds; the API's request model (app/schemas.py) and the `digits train`
flags (app/cli.py) are built from the same declaration, so the three cannot disagree.
"""
from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field, fields
from typing import Any, get_type_hints

from model.augment import Augmentation
from model.network import ARCHITECTURES

SCHEDULES = ("exponential", "step", "cosine")
OPTIMIZERS = ("sgd", "adam")
ENSEMBLE = "ensemble"
TRAINABLE = (*ARCHITECTURES, ENSEMBLE)  # what a recipe may name: a network, or an ensemble of them
COMPARE = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def setting(default: Any, help: str, *, bounds: dict | None = None, choices: tuple | None = None,
            service_bounds: dict | None = None):
    """A recipe field. `bounds` use pydantic's names (ge, gt, le, lt); a bound that names another field
    is that field's value. `service_bounds`: tighter limits on what the web service accepts from a
    request (a remote client must not start a 10,000-epoch job); the trainer's bounds if not given."""
    bounds = bounds or {}
    return field(default=default, metadata={"help": help, "bounds": bounds, "choices": choices,
                                            "service_bounds": service_bounds or bounds})


def bounds_text(bounds: dict) -> str:
    """{"ge": 0, "lt": 1} -> "in [0, 1)"; {"gt": 0} -> "positive"; {"ge": 1} -> "at least 1"."""
    low = next(((k, v) for k, v in bounds.items() if k in ("ge", "gt")), None)
    high = next(((k, v) for k, v in bounds.items() if k in ("le", "lt")), None)
    if low and high:
        return f"in {'[(' [low[0] == 'gt']}{low[1]}, {high[1]}{'])' [high[0] == 'lt']}"
    if low:
        if low[1] == 0:
            return "non-negative" if low[0] == "ge" else "positive"
        return f"at least {low[1]}" if low[0] == "ge" else f"greater than {low[1]}"
    if high:
        return f"at most {high[1]}" if high[0] == "le" else f"less than {high[1]}"
    return "any value"


def choices_text(choices: tuple) -> str:
    """("sgd", "adam") -> "'sgd' or 'adam'"; longer -> "one of a, b, c"."""
    return " or ".join(map(repr, choices)) if len(choices) == 2 else f"one of {', '.join(choices)}"


@dataclass
class Recipe:
    """Hyper-parameters of one training run; stored in the weights file."""
    architecture: str = setting("seed", "a network, or 'ensemble' of `members` networks of `member_architecture`",
                                choices=TRAINABLE)
    epochs: int = setting(20, "passes over the training images", bounds={"ge": 1}, service_bounds={"ge": 1, "le": 200})
    batch_size: int = setting(128, "images per step", bounds={"ge": 1}, service_bounds={"ge": 1, "le": 8192})
    learning_rate: float = setting(0.5, "the learning rate at the start of the schedule (with adam: 0.001 unless "
                                        "given; Adam diverges at SGD's rates)",
                                   bounds={"gt": 0}, service_bounds={"gt": 0, "le": 10})
    lr_decay: float = setting(0.9, "exponential schedule: the learning rate is multiplied by this after every epoch",
                              bounds={"gt": 0, "le": 1})
    schedule: str = setting("exponential", "exponential, step (x0.1 at 50% and 75% of the epochs) or cosine (to 0)",
                            choices=SCHEDULES)
    warmup_epochs: float = setting(0.0, "linear ramp of the learning rate from 0 over this many epochs, then the "
                                        "schedule", bounds={"ge": 0, "le": "epochs"},
                                   service_bounds={"ge": 0, "le": 20})
    momentum: float = setting(0.0, "SGD only", bounds={"ge": 0, "lt": 1})
    optimizer: str = setting("sgd", "sgd or adam", choices=OPTIMIZERS)
    l2: float = setting(1e-4, "weight decay", bounds={"ge": 0}, service_bounds={"ge": 0, "le": 1})
    seed: int = setting(0, "seeds the weights, the shuffling and the augmentation", bounds={"ge": 0},
                        service_bounds={"ge": 0, "le": 2**31 - 1})
    augment: bool = setting(False, "random affine distortions of every batch (model.augment)")
    elastic_alpha: float = setting(0.0, "with augment: elastic distortions of this strength on top (Simard et al.: "
                                        "34); 0 = none", bounds={"ge": 0, "le": 100})
    validation_size: int = setting(10_000, "training images held out to choose the epoch",
                                   bounds={"ge": 0, "lt": 60_000}, service_bounds={"ge": 1_000, "le": 20_000})
    members: int = setting(3, "ensemble only: networks trained with seeds seed, seed+1, ...",
                           bounds={"ge": 2, "le": 10})
    member_architecture: str = setting("cnn", "ensemble only: the members' architecture", choices=ARCHITECTURES)
    # Fields added later (LATER_FIELDS): left out of `to_dict` while at their defaults, so the recipe
    # of every older run, in its weights file and checkpoint, reads as it was written.
    max_shift: float = setting(Augmentation.max_shift, "with augment: largest shift, pixels",
                               bounds={"ge": 0, "le": 10})
    max_rotation: float = setting(Augmentation.max_rotation, "with augment: largest rotation, degrees",
                                  bounds={"ge": 0, "le": 90})
    max_scale: float = setting(Augmentation.max_scale, "with augment: zoom in [1 - s, 1 + s]",
                               bounds={"ge": 0, "lt": 1})
    max_shear: float = setting(Augmentation.max_shear, "with augment: largest shear factor", bounds={"ge": 0, "le": 1})
    max_thickness: float = setting(Augmentation.max_thickness, "with augment: random thinning/thickening of the "
                                   "strokes up to this fraction of a pixel; 0 = none", bounds={"ge": 0, "le": 1})
    ema_decay: float = setting(0.0, "> 0: validate and save an exponential moving average of the weights with this "
                                    "decay (e.g. 0.999)", bounds={"ge": 0, "lt": 1})
    train_size: int = setting(0, "train on a seeded subset of this many MNIST training images (feedback added on "
                                 "top); 0 = all of them", bounds={"ge": 0, "lt": 60_000})
    fine_tune: bool = setting(False, "start from a trained network's weights (the active model, or `digits train "
                                     "--start-from PATH`), keeping its architecture and validation split; then "
                                     "the defaults are 2 epochs on 10,000 images at a tenth of the learning rate, "
                                     "cosine (FINE_TUNE_RECIPE)")
    train_fraction: float = setting(1.0, "train on a seeded share of the training images (drawn from the seed: each "
                                         "ensemble member, seed + i, on its own share); 1 = all of them",
                                    bounds={"gt": 0, "le": 1})
    distill_from: str = setting("", "distil: a weights file (one network or an ensemble), the teacher whose "
                                    "softened probabilities on each (augmented) batch are learnt beside the labels; "
                                    "'' = none")
    distill_temperature: float = setting(4.0, "with distill_from: the softmax temperature of the teacher's and "
                                              "student's probabilities", bounds={"gt": 0, "le": 100})
    distill_weight: float = setting(0.7, "with distill_from: the soft targets' share of the loss, the true "
                                         "labels' is the rest", bounds={"ge": 0, "le": 1})

    def validate(self) -> None:
        """ValueError naming the first field outside its choices or bounds."""
        for f in fields(self):
            value, choices, bounds = getattr(self, f.name), f.metadata["choices"], f.metadata["bounds"]
            if choices and value not in choices:
                raise ValueError(f"{f.name} must be {choices_text(choices)}")
            limits = {k: getattr(self, v) if isinstance(v, str) else v for k, v in bounds.items()}
            if not all(COMPARE[k](value, limit) for k, limit in limits.items()):
                raise ValueError(f"{f.name} must be {bounds_text(bounds)}")
        if self.fine_tune and self.architecture == ENSEMBLE:
            raise ValueError("an ensemble cannot be fine-tuned: fine-tuning starts from one network's weights")

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in LATER_FIELDS or v != LATER_FIELDS[k]}

    def augmentation(self) -> Augmentation:
        return Augmentation(max_shift=self.max_shift, max_rotation=self.max_rotation, max_scale=self.max_scale,
                            max_shear=self.max_shear, elastic_alpha=self.elastic_alpha,
                            max_thickness=self.max_thickness)


LATER_FIELDS = {name: getattr(Recipe, name) for name in
                ("max_shift", "max_rotation", "max_scale", "max_shear", "max_thickness", "ema_decay",
                 "train_size", "fine_tune", "train_fraction", "distill_from", "distill_temperature",
                 "distill_weight")}


# Each architecture's default recipe: what `Recipe` leaves unsaid, per architecture: the recipe of its
# best shipped model (weights/README.md), so that retraining with the defaults can match it.
ARCHITECTURE_RECIPES: dict[str, dict] = {
    "seed": {"epochs": 30, "augment": True},
    "mlp": {"epochs": 100, "learning_rate": 0.05, "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 1.0,
            "l2": 1e-5, "augment": True, "lr_decay": 0.95},  # lr_decay: unused by cosine, but as that file says
    "cnn": {"epochs": 22, "learning_rate": 0.05, "momentum": 0.9, "schedule": "cosine", "warmup_epochs": 1.0,
            "l2": 5e-4, "augment": True},
}
# cnn_bn trains with the cnn's recipe, so that the two compare on batch normalisation alone.
ARCHITECTURE_RECIPES["cnn_bn"] = ARCHITECTURE_RECIPES["cnn"]
# Deotte's Kaggle recipe: Adam at 1e-3 x 0.95 per epoch, batch 64, no weight decay, Keras's
# ImageDataGenerator at rotation 10, zoom 0.1 and shift 0.1 (2.8 px); a little wider here, with shear.
ARCHITECTURE_RECIPES["cnn_deep"] = {
    "epochs": 35, "batch_size": 64, "optimizer": "adam", "learning_rate": 1e-3, "lr_decay": 0.95,
    "schedule": "exponential", "l2": 0.0, "augment": True, "max_rotation": 15.0, "max_scale": 0.15, "max_shift": 2.5}
ADAM_LEARNING_RATE = 1e-3  # Adam diverges at SGD's rates
# Fine-tuning a trained network: a few short epochs (a subset of MNIST, so a cnn takes minutes, not half
# an hour) at a tenth of the architecture's starting rate, annealed to 0: small steps that keep what the
# network knows and add the feedback drawings, without the warm-up a random start needs.
FINE_TUNE_RECIPE = {"epochs": 2, "train_size": 10_000, "schedule": "cosine", "warmup_epochs": 0.0}
FINE_TUNE_SLOWDOWN = 10  # the starting rate divided by this (dividing keeps 0.05 -> 0.005 exact in print)
# The fields whose default depends on the architecture (the learning rate also on the optimizer) or on
# fine-tuning
PER_ARCHITECTURE = {"learning_rate", *FINE_TUNE_RECIPE,
                    *(k for overrides in ARCHITECTURE_RECIPES.values() for k in overrides)}


@dataclass(frozen=True)
class RecipeField:
    """One field of the declaration, as the API and the command line read it."""
    name: str
    type: type  # int, float, bool or str
    default: Any
    help: str
    bounds: dict
    choices: tuple | None
    service_bounds: dict


def recipe_fields() -> list[RecipeField]:
    """Recipe's fields in order, with their types resolved (the annotations are strings)."""
    hints = get_type_hints(Recipe)
    return [RecipeField(f.name, hints[f.name], f.default, **f.metadata) for f in fields(Recipe)]


def recipe_for(architecture: str, **overrides) -> Recipe:
    """The architecture's default recipe with `overrides` (None values ignored) on top. An ensemble
    takes its members' architecture's defaults; fine-tuning, FINE_TUNE_RECIPE's and a tenth of the rate."""
    given = {key: value for key, value in overrides.items() if value is not None}
    base = given.get("member_architecture", Recipe.member_architecture) if architecture == ENSEMBLE else architecture
    fine_tune = FINE_TUNE_RECIPE if given.get("fine_tune") else {}
    chosen = {**ARCHITECTURE_RECIPES.get(base, {}), **fine_tune, **given, "architecture": architecture}
    if chosen.get("optimizer") == "adam" and "learning_rate" not in given:
        chosen["learning_rate"] = ADAM_LEARNING_RATE
    if fine_tune and "learning_rate" not in given:
        chosen["learning_rate"] = chosen.get("learning_rate", Recipe.learning_rate) / FINE_TUNE_SLOWDOWN
    return Recipe(**chosen)


def fine_tune_recipe(source_meta: dict, **overrides) -> Recipe:
    """The recipe that fine-tunes a saved network (its metadata `source_meta`): its architecture and
    validation split (so validation stays unseen), FINE_TUNE_RECIPE's defaults, `overrides` on top.
    ValueError for an ensemble, or for overrides that name another architecture or split."""
    architecture = (source_meta.get("architecture") or {}).get("name")
    if architecture == ENSEMBLE or architecture not in ARCHITECTURES:
        kind = "an ensemble" if architecture == ENSEMBLE else f"a {architecture!r} network"
        raise ValueError(f"{source_meta.get('version', 'the model')} is {kind}; fine-tuning starts from one "
                         f"network of {', '.join(ARCHITECTURES)}: activate one, or train a new model")
    size = (source_meta.get("recipe") or {}).get("validation_size", Recipe.validation_size)
    for name, own in (("architecture", architecture), ("validation_size", size)):
        if overrides.get(name) not in (None, own):
            raise ValueError(f"fine-tuning keeps {source_meta.get('version', 'the model')}'s {name} ({own}), "
                             f"not {overrides[name]}")
    return recipe_for(**{**overrides, "architecture": architecture, "validation_size": size, "fine_tune": True})
