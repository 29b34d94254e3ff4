"""HTTP routes: validate, call one `model` function, shape the response."""
from __future__ import annotations

from typing import TypeVar

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect

from app.images import ImageError, decode_base64, decode_image
from app.reports import report_url
from app.schemas import BatchPrediction, FeedbackRequest, ModelInfo, Prediction, PredictRequest, json_context
from model.preprocess import EmptyDrawingError, preprocess_image, preprocess_strokes

Body = TypeVar("Body", bound=BaseModel)

router = APIRouter()


@router.get("/healthz", tags=["service"])
async def healthz() -> dict:
    """Liveness: answers without touching the model."""
    return {"status": "ok"}


@router.get("/model", response_model=ModelInfo, tags=["model"])
async def model_info(request: Request) -> ModelInfo:
    """The active model: version, architecture and metrics."""
    holder = request.app.state.models
    meta = holder.current.meta
    return ModelInfo(version=meta["version"], architecture=meta["architecture"].get("name", "custom"),
                     created_at=meta["created_at"], preprocessing_version=meta["preprocessing_version"],
                     metrics=meta.get("metrics", {}), recipe=meta.get("recipe"), spec=meta["architecture"],
                     calibration=meta.get("calibration"), problem=holder.problem,
                     report_url=report_url(holder.weights_dir, meta["version"]))


def drawing_to_inputs(body, settings) -> tuple[np.ndarray, bool]:
    """Any accepted input form -> (N, 784) float32 model inputs, and whether it was a batch.

    Raises HTTPException with a 4xx for anything unusable.
    """
    try:
        if body.kind == "pixels":
            X = body.pixels
            batch = X.ndim == 3 or (X.ndim == 2 and X.shape[1] == 784)
            if batch and len(X) > settings.max_pixel_batch:
                raise HTTPException(413, f"pixels holds {len(X)} images; the limit is {settings.max_pixel_batch}")
            return X.reshape(-1, 784), batch
        if body.kind == "strokes":
            n_points = sum(len(s) for s in body.strokes)
            if n_points > settings.max_stroke_points:
                raise HTTPException(413, f"the strokes hold {n_points} points; the limit is "
                                         f"{settings.max_stroke_points}")
            return preprocess_strokes(body.strokes).reshape(1, 784), False
        images = [body.image] if body.kind == "image" else body.images
        if len(images) > settings.max_image_batch:
            raise HTTPException(413, f"images holds {len(images)} images; the limit is {settings.max_image_batch}")
        X = np.empty((len(images), 784), dtype=np.float32)
        for i, text in enumerate(images):
            try:
                X[i] = preprocess_image(decode_image(decode_base64(text), settings.max_image_pixels)).ravel()
            except EmptyDrawingError as exc:
                raise EmptyDrawingError() if len(images) == 1 else ValueError(f"images[{i}]: {exc}") from exc
            except ImageError as exc:
                raise ImageError(f"images[{i}]: {exc}" if body.kind == "images" else str(exc), exc.status) from exc
        return X, body.kind == "images"
    except ImageError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


async def read_json(request: Request, model: type[Body]) -> Body:
    """The JSON body, parsed and validated by pydantic-core in one pass straight from the bytes.

    FastAPI's own body handling runs `json.loads` and then validates the Python objects; for 784 pixel
    values that costs more than the forward pass. Errors go to the app's 422 handler all the same.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not (media_type.startswith("application/")
                                                 and media_type.endswith("+json")):
        raise RequestValidationError([{"type": "content_type", "loc": (), "input": media_type,
                                       "msg": "send the body as JSON, with Content-Type: application/json"}])
    try:
        raw = await request.body()
    except ClientDisconnect as exc:  # or refused by BodyLimitMiddleware, which has answered already
        raise HTTPException(400, "the request body did not arrive in full") from exc
    try:
        return model.model_validate_json(raw, context=json_context(raw))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def json_body_docs(model: type[BaseModel]) -> dict:
    """OpenAPI for a body that the route reads itself with `read_json` (FastAPI cannot see it)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/predict", response_model=Prediction | BatchPrediction, response_model_exclude_none=True,
             tags=["model"], openapi_extra=json_body_docs(PredictRequest),
             responses={413: {"description": "body, image or batch over its limit"},
                        415: {"description": "not a PNG, JPEG or WebP"},
                        422: {"description": "invalid or empty drawing"}})
async def predict(request: Request):
    """Classify a drawing (image, strokes or pixels) or a batch of them."""
    # async on purpose: the work is a millisecond or two of NumPy with one BLAS thread, cheaper inline
    # than a hop to the thread pool; the answer is built directly (the response model documents it).
    body = await read_json(request, PredictRequest)
    model = request.app.state.models.current
    X, batch = drawing_to_inputs(body, request.app.state.settings)
    probs = model.predict_proba(X)  # calibrated, float64
    digits = probs.argmax(axis=1)
    saliency = saliency_maps(model, X, digits) if body.explain else None
    predictions = []
    for i, (p, x) in enumerate(zip(probs, X)):
        confidence = float(p[digits[i]])
        item = {"digit": int(digits[i]), "confidence": confidence, "sure": confidence >= model.threshold,
                "probabilities": p.tolist(), "model_version": model.version}
        if body.explain:
            item["input"] = np.round(x.reshape(28, 28), 4).tolist()
            item["saliency"] = saliency[i].tolist()
        predictions.append(item)
    # pydantic-core's serializer writes the same JSON as JSONResponse's json.dumps, several times faster
    return Response(to_json({"predictions": predictions} if batch else predictions[0]),
                    media_type="application/json")


def saliency_maps(model, X: np.ndarray, digits: np.ndarray) -> np.ndarray:
    """(N, 28, 28) in [-1, 1]: d log p(digit) / d pixel, each map scaled by its largest magnitude.
    Positive where more ink would make the answer more likely, negative where it argues against it."""
    G = model.network.input_gradient(X, digits).astype(np.float64).reshape(-1, 28, 28)
    scale = np.abs(G).max(axis=(1, 2), keepdims=True)
    return np.round(np.divide(G, scale, out=np.zeros_like(G), where=scale > 0), 3)


@router.post("/feedback", status_code=201, tags=["feedback"])
def feedback(body: FeedbackRequest, request: Request) -> dict:
    """Store a drawing (preprocessed to 28x28) with the digit it really is, and what the model said."""
    X, batch = drawing_to_inputs(body, request.app.state.settings)
    if batch:
        raise HTTPException(422, "feedback takes one drawing at a time, not a batch")
    model = request.app.state.models.current
    probs = model.predict_proba(X)[0]
    predicted = int(probs.argmax())
    sample_id = request.app.state.store.add_feedback(X[0], body.label, predicted, float(probs.max()), model.version)
    return {"id": sample_id, "label": body.label, "predicted": predicted, "model_was_right": predicted == body.label,
            "message": f"Thanks! Saved as {'an' if body.label == 8 else 'a'} {body.label}."}


@router.get("/feedback", tags=["feedback"])
def feedback_summary(request: Request) -> dict:
    """How many labelled drawings people sent, per digit, and how often the model was right."""
    return request.app.state.store.feedback_summary()
