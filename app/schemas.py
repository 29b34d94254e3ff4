"""Request and response models; they do the validation, so bad input is refused before NumPy runs."""
from __future__ import annotations

import dataclasses
import json
from itertools import chain
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model,
                      field_validator, model_validator)
from pydantic_core.core_schema import ValidatorFunctionWrapHandler

if TYPE_CHECKING:
    from model.recipe import RecipeField

# strict: a JSON number only, as pixels take ("12" and true are refused, not read as 12.0 and 1.0)
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]
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

    @field_validator("strokes", mode="wrap")
    @classmethod
    def _strokes_hold_numbers_only(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:  # one sentence for a coordinate that is not a number, as pixels give
            bad = next((e for e in exc.errors() if e["type"] == "float_type"), None)
            if bad is None:
                raise
            where = "".join(f"[{i}]" for i in bad["loc"])
            shown = json.dumps(bad["input"])
            shown = shown if len(shown) <= 40 else shown[:36] + " ..."
            raise ValueError(f"must be lists of [x, y] points, numbers only (no strings, nulls or booleans); "
                             f"strokes{where} is {shown}") from None

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
    explain: bool = Field(False, strict=True,  # true or false: not "yes", "false" or 0
                          description="also return the 28x28 input the model saw and a saliency map")

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


def choice_of(name: str, choices: tuple[str, ...]):
    """A validator: `value` must be one of `choices` (the 422 says which ones)."""
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"unknown {name.replace('_', ' ')} {value!r}; choose one of {', '.join(choices)}")
        return value
    return check


def request_field(f: RecipeField) -> tuple[Any, Any]:
    """A request field from a recipe field: its service bounds, choices and help. A field whose default
    depends on the architecture is optional (None: the architecture's recipe fills it in)."""
    from model.recipe import PER_ARCHITECTURE
    # a bound naming another field (warmup_epochs <= epochs) is checked with the whole recipe, below
    numeric = {k: v for k, v in f.service_bounds.items() if not isinstance(v, str)}
    hint, extra = f.type, None
    if f.choices:
        hint, extra = Annotated[hint, AfterValidator(choice_of(f.name, f.choices))], {"enum": list(f.choices)}
    if f.name in PER_ARCHITECTURE:
        return hint | None, Field(None, description=f"{f.help} (left out: the architecture's recipe, "
                                                    "GET /architectures)", json_schema_extra=extra, **numeric)
    return hint, Field(f.default, description=f.help, json_schema_extra=extra, **numeric)


# What a training request adds to the recipe
SERVICE_FIELDS: dict[str, Any] = {
    "include_feedback": (bool, Field(False, description="mix users' labelled drawings into training")),
    "promote": (Literal["if_better", "always"], Field("if_better", description="make the new model the active "
                                                      "one if it beats the active one on validation, or always")),
}


class TrainRequestBase(BaseModel):
    """The behaviour of a training request; its fields are added by `build_train_request`."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"architecture": "seed", "epochs": 1},
        {"architecture": "seed", "epochs": 10, "include_feedback": True, "promote": "always"},
    ]})

    @model_validator(mode="after")
    def _architecture_defaults(self) -> "TrainRequestBase":
        """Fill what was left out from the architecture's recipe, so the stored job says it all."""
        from model.recipe import recipe_for
        if getattr(self, "distill_from", ""):
            # It names a file for the server to load: no client may point the trainer at a server path.
            raise ValueError("distill_from names a file on the server, so distilling is offered on the command "
                             "line only (digits train --distill-from FILE)")
        given = self.model_dump(exclude=set(SERVICE_FIELDS))
        recipe = recipe_for(**given)
        try:
            recipe.validate()
        except ValueError as exc:
            raise ValueError(f"the recipe is not valid: {exc}") from exc
        for key, value in dataclasses.asdict(recipe).items():  # every field: to_dict() leaves later ones out
            if getattr(self, key) is None:
                setattr(self, key, value)
        return self


def build_train_request() -> type[BaseModel]:
    """The request model of POST /train: every field of model.recipe.Recipe, bounded as the service allows."""
    from model.recipe import recipe_fields
    return create_model("TrainRequest", __base__=TrainRequestBase, __module__=__name__,
                        __doc__="A training recipe; every field is bounded. Omitted fields take the "
                                "architecture's defaults.", **{f.name: request_field(f) for f in recipe_fields()},
                        **SERVICE_FIELDS)


TrainRequest = build_train_request()


class JobCreated(BaseModel):
    job_id: str
    status: str


class JobCancelling(BaseModel):
    """DELETE /train/{id}'s answer: the job is asked to stop, and ends as `cancelled` (GET its Location)."""
    job_id: str
    status: Literal["cancelling"] = "cancelling"


class FeedbackRequest(DrawingInput):
    label: int = Field(ge=0, le=9, strict=True, description="the digit the person meant (a number: not \"7\")")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"strokes": [[[40, 40], [200, 40], [90, 250]]], "label": 7},
    ]})
