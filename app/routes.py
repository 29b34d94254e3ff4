"""HTTP routes: validate, call one `model` function, shape the response."""
from __future__ import annotations

import asyncio
import math
from typing import TypeVar

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pydantic_core import to_json
from starlette.requests import ClientDisconnect

from app.images import ImageError, decode_base64, open_image, to_rgba
from app.reports import report_url
from app.schemas import BatchPrediction, FeedbackRequest, ModelInfo, Prediction, PredictRequest, json_context
from app.serving import ClientGone, Overloaded, unless_disconnected
from model.preprocess import EmptyDrawingError, preprocess_image, preprocess_strokes

Body = TypeVar("Body", bound=BaseModel)

router = APIRouter()
FULL_RETRY_AFTER_S = 3600  # a full feedback store stays full until someone acts


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

    Raises HTTPException with a 4xx for anything unusable. Strokes and images cost real time (decoding,
    rendering, resampling): call this off the event loop (`Serving.preprocess`) for those.
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
        return images_to_inputs([body.image] if body.kind == "image" else body.images, body.kind == "images",
                                settings), body.kind == "images"
    except ImageError as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


def images_to_inputs(texts: list[str], batch: bool, settings) -> np.ndarray:
    """Base64 images -> (N, 784) inputs. Every header is read first, so a request whose images hold more
    than `max_request_pixels` in all is refused (413) before any of them is decoded."""
    if len(texts) > settings.max_image_batch:
        raise HTTPException(413, f"images holds {len(texts)} images; the limit is {settings.max_image_batch}")

    def named(i: int, exc: ImageError) -> ImageError:
        return ImageError(f"images[{i}]: {exc}" if batch else str(exc), exc.status)

    opened = []
    for i, text in enumerate(texts):
        try:
            opened.append(open_image(decode_base64(text), settings.max_image_pixels))
        except ImageError as exc:
            raise named(i, exc) from exc
    total = sum(img.width * img.height for img in opened)
    if total > settings.max_request_pixels:
        raise ImageError(f"the images hold {total:,} pixels in all; one request may hold "
                         f"{settings.max_request_pixels:,}; send smaller images or fewer per request", 413)
    X = np.empty((len(opened), 784), dtype=np.float32)
    for i, img in enumerate(opened):
        try:
            X[i] = preprocess_image(to_rgba(img)).ravel()
        except EmptyDrawingError as exc:
            raise EmptyDrawingError() if not batch else ValueError(f"images[{i}]: {exc}") from exc
        except ImageError as exc:
            raise named(i, exc) from exc
    return X


async def prepared_inputs(body, request: Request) -> tuple[np.ndarray, bool]:
    """`drawing_to_inputs`, with strokes and images done in the worker's preprocessing pool."""
    settings = request.app.state.settings
    if body.kind == "pixels":  # already an array: reshaping it costs nothing
        return drawing_to_inputs(body, settings)
    return await request.app.state.serving.preprocess(drawing_to_inputs, body, settings)


def busy(exc: Overloaded) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})


async def read_body(request: Request) -> bytes:
    """The raw JSON body; 415-style 422 for another content type, 400 if it did not arrive in full."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not (media_type.startswith("application/")
                                                 and media_type.endswith("+json")):
        raise RequestValidationError([{"type": "content_type", "loc": (), "input": media_type,
                                       "msg": "send the body as JSON, with Content-Type: application/json"}])
    try:
        return await request.body()
    except ClientDisconnect as exc:  # or refused by BodyLimitMiddleware, which has answered already
        raise HTTPException(400, "the request body did not arrive in full") from exc


def parse_json(raw: bytes, model: type[Body]) -> Body:
    """The body, parsed and validated by pydantic-core in one pass straight from the bytes.

    FastAPI's own body handling runs `json.loads` and then validates the Python objects; for 784 pixel
    values that costs more than the forward pass. Errors go to the app's 422 handler all the same.
    """
    try:
        return model.model_validate_json(raw, context=json_context(raw))
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def json_body_docs(model: type[BaseModel]) -> dict:
    """OpenAPI for a body that the route reads itself with `read_body` and `parse_json` (FastAPI cannot see it)."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/predict", response_model=Prediction | BatchPrediction, response_model_exclude_none=True,
             tags=["model"], openapi_extra=json_body_docs(PredictRequest),
             responses={413: {"description": "body, image or batch over its limit"},
                        415: {"description": "not a PNG, JPEG or WebP"},
                        422: {"description": "invalid or empty drawing"}})
async def predict(request: Request):
    """Classify a drawing (image, strokes or pixels) or a batch of them."""
    raw = await read_body(request)
    serving = request.app.state.serving
    try:
        with serving.admission:  # a full worker answers 503 at once, before any parsing
            body = parse_json(raw, PredictRequest)
            model = request.app.state.models.current
            X, batch = await prepared_inputs(body, request)
            probs = await unless_disconnected(serving.batcher.predict_proba(model, X), request.receive)
            digits = probs.argmax(axis=1)
            saliency = await serving.batcher.run(saliency_maps, model, X, digits) if body.explain else None
    except Overloaded as exc:
        return busy(exc)
    except ClientGone:
        return Response(status_code=499)  # nobody is left to read it; uvicorn drops it
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


@router.post("/feedback", status_code=201, tags=["feedback"],
             responses={429: {"description": "this client sent too many, or the feedback store is full"}})
async def feedback(body: FeedbackRequest, request: Request):
    """Store a drawing (preprocessed to 28x28) with the digit it really is, and what the model said."""
    settings = request.app.state.settings
    wait_s = request.app.state.feedback_limiter.wait_s(request.client.host if request.client else "")
    if wait_s:
        return JSONResponse({"detail": f"too many corrections from this address (the limit is "
                                       f"{settings.feedback_per_minute} a minute); try again in {math.ceil(wait_s)} s"},
                            status_code=429, headers={"Retry-After": str(math.ceil(wait_s))})
    serving = request.app.state.serving
    try:
        with serving.admission:
            X, batch = await prepared_inputs(body, request)
            if batch:
                raise HTTPException(422, "feedback takes one drawing at a time, not a batch")
            model = request.app.state.models.current
            probs = (await serving.batcher.predict_proba(model, X))[0]
    except Overloaded as exc:
        return busy(exc)
    predicted = int(probs.argmax())
    sample_id = await asyncio.to_thread(request.app.state.store.add_feedback, X[0], body.label, predicted,
                                        float(probs.max()), model.version, settings.feedback_max_rows)
    if sample_id is None:
        return JSONResponse({"detail": f"the feedback store is full ({settings.feedback_max_rows:,} drawings); "
                                       f"it takes more once an administrator clears or raises "
                                       f"DIGITS_FEEDBACK_MAX_ROWS"},
                            status_code=429, headers={"Retry-After": str(FULL_RETRY_AFTER_S)})
    return JSONResponse({"id": sample_id, "label": body.label, "predicted": predicted,
                         "model_was_right": predicted == body.label,
                         "message": f"Thanks! Saved as {'an' if body.label == 8 else 'a'} {body.label}."},
                        status_code=201)


@router.get("/feedback", tags=["feedback"])
def feedback_summary(request: Request) -> dict:
    """How many labelled drawings people sent, per digit, and how often the model was right."""
    return request.app.state.store.feedback_summary()
