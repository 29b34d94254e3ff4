"""Request and response models; they do the validation, so bad input is refused before NumPy runs."""
from __future__ import annotations

from dataclasses import asdict
from itertools import chain
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

Coordinate = Annotated[float, Field(allow_inf_nan=False)]
INPUTS = ("image", "images", "pixels", "strokes")


def holds_booleans(value: list, depth: int) -> bool:
    """Whether a rectangular nested list `depth` levels deep holds True or False anywhere."""
    for _ in range(depth - 1):
        value = chain.from_iterable(value)
    return bool in set(map(type, value))


def json_context(raw: bytes) -> dict:
    """What the validators may skip for this JSON body: with no "true" or "false" in its text, no value
    in it is a boolean."""
    return {"may_hold_booleans": b"true" in raw or b"false" in raw}


class DrawingInput(BaseModel):
    """Exactly one of: image, images, pixels, strokes."""
    model_config = ConfigDict(extra="forbid")

    image: str | None = Field(None, description="PNG, JPEG or WebP as a data URL or plain base64")
    images: list[str] | None = Field(None, min_length=1, description="a batch of images")
    pixels: Any = Field(None, description="28x28 or 784 values in [0, 1] (1 = ink), or a batch of those")
    strokes: list[list[tuple[Coordinate, Coordinate]]] | None = Field(
        None, description="pen strokes, each a list of [x, y] points in canvas pixels")

    @field_validator("pixels")
    @classmethod
    def _pixels_are_images(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            raise ValueError("must be a list: 28x28 nested lists, 784 numbers, or a batch of those")
        try:
            X = np.asarray(value)
            if X.dtype.kind not in "iuf":  # strings, nulls and booleans are not pixel values
                raise TypeError
            # NumPy reads true and false among numbers as 1 and 0. Finding them takes a pass over every
            # value in Python (20-35 µs for one image), so a JSON body without those words skips it.
            if (info.context or {}).get("may_hold_booleans", True) and holds_booleans(value, X.ndim):
                raise TypeError
        except (ValueError, TypeError):
            raise ValueError("must be a rectangular list of numbers (rows of equal length, no "
                             "strings, nulls or booleans)") from None
        if X.ndim == 2 and X.shape == (28, 28) or X.ndim == 1 and X.shape == (784,):
            pass
        elif X.ndim == 3 and X.shape[1:] == (28, 28) or X.ndim == 2 and X.shape[1] == 784:
            if len(X) == 0:
                raise ValueError("is an empty batch")
        else:
            raise ValueError(f"has shape {X.shape}; send 28x28, 784, Nx28x28 or Nx784")
        low, high = X.min(), X.max()
        if not (low >= 0 and high <= 1):  # also true for NaN, which fails every comparison
            if not np.all(np.isfinite(X)):
                raise ValueError("holds NaN or infinity; send numbers in [0, 1]")
            raise ValueError(f"must be in [0, 1] (0 background, 1 ink); got values from "
                             f"{low:g} to {high:g}. Divide 0-255 values by 255")
        return X.astype(np.float32)  # after the range check: 1e300 is out of range, not an overflow

    @model_validator(mode="after")
    def _exactly_one_input(self) -> "DrawingInput":
        given = [name for name in INPUTS if getattr(self, name) is not None]
        if len(given) != 1:
            found = f"got {', '.join(given)}" if given else "got none"
            raise ValueError(f"give exactly one of {', '.join(INPUTS)} ({found})")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in INPUTS if getattr(self, name) is not None)


class PredictRequest(DrawingInput):
    explain: bool = Field(False, description="also return the 28x28 input the model saw and a saliency map")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"strokes": [[[40, 40], [200, 40], [90, 250]]], "explain": True},
        {"image": "data:image/png;base64,iVBORw0KGgo..."},
        {"pixels": [[0.0] * 784]},
    ]})


class Prediction(BaseModel):
    digit: int = Field(ge=0, le=9)
    confidence: float = Field(description="calibrated probability of `digit`")
    sure: bool = Field(description="false when the confidence is below the model's 'not sure' threshold, "
                                   "chosen on validation data; show 'not sure' rather than the digit")
    probabilities: list[float] = Field(min_length=10, max_length=10)
    model_version: str
    input: list[list[float]] | None = Field(None, description="the 28x28 input the model saw (explain)")
    saliency: list[list[float]] | None = Field(
        None, description="28x28 in [-1, 1]: how each pixel pushed the answer, d log p(digit)/d pixel scaled "
                          "by its largest magnitude; positive means more ink there supports the digit (explain)")


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    version: str
    architecture: str
    created_at: str
    preprocessing_version: int
    metrics: dict[str, Any]
    recipe: dict[str, Any] | None = None
    spec: dict[str, Any]
    calibration: dict[str, Any] | None = Field(
        None, description="temperature, 'not sure' threshold and calibration error before/after, "
                          "fitted on validation data")
    report_url: str | None = Field(None, description="the model's evaluation report (`digits evaluate --report`), "
                                                     "if one was written to WEIGHTS_DIR/reports/<version>/")
    problem: str | None = Field(None, description="why a newer active model could not be loaded, if so")


class TrainRequest(BaseModel):
    """A training recipe; every field is bounded. Omitted fields take the trainer's defaults."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"architecture": "seed", "epochs": 1},
        {"architecture": "seed", "epochs": 10, "include_feedback": True, "promote": "always"},
    ]})

    architecture: str = Field("seed", description="a named architecture the trainer knows")
    # Fields left out (or null) take the architecture's default recipe (GET /architectures lists them).
    epochs: int | None = Field(None, ge=1, le=200)
    learning_rate: float | None = Field(None, gt=0, le=10)
    lr_decay: float | None = Field(None, gt=0, le=1, description="per-epoch learning-rate factor (exponential)")
    schedule: Literal["exponential", "step", "cosine"] | None = None
    warmup_epochs: float | None = Field(None, ge=0, le=20, description="linear warm-up from 0 over this many epochs")
    momentum: float | None = Field(None, ge=0, lt=1, description="SGD only")
    optimizer: Literal["sgd", "adam"] | None = None
    batch_size: int | None = Field(None, ge=1, le=8192)
    l2: float | None = Field(None, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    augment: bool | None = Field(None, description="random shifts, rotations, scaling and shear on the fly")
    elastic_alpha: float | None = Field(None, ge=0, le=100, description="with augment: elastic distortions "
                                                                        "of this strength (Simard et al.: 34)")
    max_shift: float | None = Field(None, ge=0, le=10, description="with augment: largest shift, pixels")
    max_rotation: float | None = Field(None, ge=0, le=90, description="with augment: largest rotation, degrees")
    max_scale: float | None = Field(None, ge=0, lt=1, description="with augment: zoom in [1 - s, 1 + s]")
    max_shear: float | None = Field(None, ge=0, le=1, description="with augment: largest shear factor")
    max_thickness: float | None = Field(None, ge=0, le=1, description="with augment: thinning/thickening of "
                                                                      "the ink, pixels (0 = off)")
    ema_decay: float | None = Field(None, ge=0, lt=1, description="> 0: validate and save a moving average "
                                                                  "of the weights")
    include_feedback: bool = Field(False, description="mix users' labelled drawings into training")
    validation_size: int = Field(10_000, ge=1_000, le=20_000)
    promote: Literal["if_better", "always"] = "if_better"
    members: int = Field(3, ge=2, le=10, description="ensemble only: how many networks to train and average")
    member_architecture: str = Field("cnn", description="ensemble only: the members' architecture")

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        from model.train import TRAINABLE
        if value not in TRAINABLE:
            raise ValueError(f"unknown architecture {value!r}; choose one of {', '.join(TRAINABLE)}")
        return value

    @field_validator("member_architecture")
    @classmethod
    def _known_member_architecture(cls, value: str) -> str:
        from model.network import ARCHITECTURES
        if value not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {value!r}; choose one of {', '.join(ARCHITECTURES)}")
        return value

    @model_validator(mode="after")
    def _architecture_defaults(self) -> "TrainRequest":
        """Fill what was left out from the architecture's recipe, so the stored job says it all."""
        from model.train import recipe_for
        given = self.model_dump(exclude={"promote", "include_feedback"})
        recipe = recipe_for(**given)
        try:
            recipe.validate()
        except ValueError as exc:
            raise ValueError(f"the recipe is not valid: {exc}") from exc
        for key, value in asdict(recipe).items():  # every field: to_dict() leaves later ones out at defaults
            if getattr(self, key, None) is None:
                setattr(self, key, value)
        return self


class JobCreated(BaseModel):
    job_id: str
    status: str


class FeedbackRequest(DrawingInput):
    label: int = Field(ge=0, le=9, description="the digit the person meant")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"strokes": [[[40, 40], [200, 40], [90, 250]]], "label": 7},
    ]})
