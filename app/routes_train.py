"""Retraining and model versions: /train jobs (run in separate processes), /models, activation."""
from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import secrets
import subprocess
import sys
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.schemas import JobCancelling, JobCreated, TrainRequest
from app.store import FINAL_STATES, JobConflict, job_checkpoints
from model.active import active_path, list_models, set_active
from model.data import DataError, FILES, find_file
from model.recipe import fine_tune_recipe
from model.weights import PreprocessingMismatch, WeightsError, check_preprocessing, load_servable, read_meta

router = APIRouter(tags=["training"])
EVENT_POLL_S = 0.5


def require_admin(request: Request) -> None:
    """With DIGITS_ADMIN_TOKEN set: a matching bearer token. Without: loopback clients only."""
    token = request.app.state.settings.admin_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPException(401, "this needs `Authorization: Bearer <DIGITS_ADMIN_TOKEN>`",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise HTTPException(403, "the bearer token is wrong")
        return
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in ("testclient", "localhost")
    if not loopback:
        raise HTTPException(403, "training and activation answer only this machine unless the server "
                                 "sets DIGITS_ADMIN_TOKEN")


def job_view(job: dict, weights_dir: Path) -> dict:
    """What clients see of a job: status, progress, ETA, curves, outcome, and whether it can resume."""
    progress = job["progress"] or {}
    interrupted = job["status"] == "interrupted"
    return {
        "job_id": job["id"], "status": job["status"], "recipe": job["recipe"],
        "created_at": job["created_at"], "started_at": job["started_at"], "finished_at": job["finished_at"],
        "epoch": progress.get("epoch"), "n_epochs": progress.get("n_epochs", job["recipe"].get("epochs")),
        "step": progress.get("step"), "n_steps": progress.get("n_steps"),
        "progress": 1.0 if job["status"] == "succeeded" else progress.get("fraction", 0.0),
        "eta_s": None if job["status"] in FINAL_STATES else progress.get("eta_s"),
        "loss": progress.get("loss"), "samples_per_s": progress.get("samples_per_s"),
        "history": job["history"] or [], "curve": job["curve"] or [],
        "metrics": job["metrics"], "model_version": job["model_version"], "promoted": job["promoted"],
        "decision": job["decision"], "error": job["error"], "cancel_requested": job["cancel_requested"],
        # POST /train/{id}/resume: from the last finished epoch when a checkpoint was written, else anew
        "resumable": interrupted,
        "checkpointed": interrupted and bool(job_checkpoints(weights_dir, job["id"])),
    }


def existing_job(job_id: str, request: Request) -> dict:
    job = request.app.state.store.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"no training job {job_id!r}; GET /train lists them")
    return job


def start_worker(request: Request, job_id: str) -> subprocess.Popen:
    """Launch the training process for a queued job, in its own session, logging beside the database."""
    settings = request.app.state.settings
    log_path = settings.database.parent / "jobs" / f"{job_id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "app.worker", "--db", str(settings.database), "--job", job_id,
             "--weights-dir", str(settings.weights_dir), "--data-dir", str(settings.mnist_dir)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            cwd=Path(__file__).resolve().parents[1])


@router.get("/architectures")
def architectures() -> dict:
    """The architectures a recipe may name, the default recipe, and each architecture's own defaults."""
    from model.train import TRAINABLE
    return {"architectures": list(TRAINABLE), "default_recipe": TrainRequest().model_dump(),
            "recipes": {name: TrainRequest(architecture=name).model_dump() for name in TRAINABLE}}


@router.post("/train", status_code=202, response_model=JobCreated, dependencies=[Depends(require_admin)],
             responses={409: {"description": "a job is already queued or running, or no active model to fine-tune"},
                        422: {"description": "a bad recipe, or fine-tuning an ensemble"},
                        503: {"description": "MNIST is not available to the server"}})
def start_training(request: Request, response: Response, recipe: TrainRequest | None = None) -> JobCreated:
    """Start retraining in the background; follow it at the Location given. With `"fine_tune": true`,
    the active model is improved: its weights, architecture and validation split, a few epochs on part of
    MNIST plus the feedback drawings (unless `include_feedback` is false)."""
    recipe = recipe or TrainRequest()
    settings = request.app.state.settings
    require_mnist(settings)
    job = fine_tuning_job(recipe, settings.weights_dir) if recipe.fine_tune else recipe.model_dump()
    store = request.app.state.store
    try:
        job_id = store.create_job(job)
    except JobConflict as exc:
        raise HTTPException(409, f"job {exc.job_id} is already training; follow /train/{exc.job_id} or "
                                 f"cancel it with DELETE /train/{exc.job_id}") from exc
    launch(request, response, job_id)
    return JobCreated(job_id=job_id, status="queued")


def fine_tuning_job(recipe: TrainRequest, weights_dir: Path) -> dict:
    """The stored recipe of a fine-tuning request: the active model's file (`start_from`), its architecture
    and split, the fine-tuning defaults for what the request left out, and the feedback unless refused."""
    try:
        source = active_path(weights_dir)
        meta = read_meta(source)
        check_preprocessing(meta, source)
    except WeightsError as exc:
        raise HTTPException(409, f"there is no active model to fine-tune: {exc}") from exc
    given = recipe.model_dump(include=recipe.model_fields_set - {"include_feedback", "promote"})
    try:
        fine = fine_tune_recipe(meta, **given)
        fine.validate()
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    include_feedback = recipe.include_feedback if "include_feedback" in recipe.model_fields_set else True
    return {**dataclasses.asdict(fine), "include_feedback": include_feedback, "promote": recipe.promote,
            "start_from": source.name}


@router.post("/train/{job_id}/resume", status_code=202, response_model=JobCreated,
             dependencies=[Depends(require_admin)],
             responses={409: {"description": "the job was not interrupted, or another job is training"},
                        503: {"description": "MNIST is not available to the server"}})
def resume_training(request: Request, response: Response, job: dict = Depends(existing_job)) -> JobCreated:
    """Go on with an interrupted job (its process was killed, or the machine went down): same id and
    recipe, from its last finished epoch (`checkpointed`), or from the start if none had finished."""
    require_mnist(request.app.state.settings)
    try:
        request.app.state.store.resume_job(job["id"])
    except JobConflict as exc:
        raise HTTPException(409, f"job {exc.job_id} is training; wait for it or cancel it with "
                                 f"DELETE /train/{exc.job_id}") from exc
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from exc
    launch(request, response, job["id"])
    return JobCreated(job_id=job["id"], status="queued")


def require_mnist(settings) -> None:
    try:
        for stem in FILES.values():
            find_file(settings.mnist_dir, stem)
    except DataError as exc:
        raise HTTPException(503, f"the server has no MNIST data: {exc}") from exc


def launch(request: Request, response: Response, job_id: str) -> None:
    """Start the queued job's process; a process that cannot start fails the job with the reason."""
    try:
        request.app.state.children.append(start_worker(request, job_id))
    except OSError as exc:
        request.app.state.store.finish_job(job_id, "failed", error=f"could not start the training process: {exc}")
        raise HTTPException(503, f"could not start the training process: {exc}") from exc
    response.headers["Location"] = f"/train/{job_id}"


@router.get("/train")
def list_training_jobs(request: Request) -> dict:
    """Recent jobs, newest first."""
    weights_dir = request.app.state.settings.weights_dir
    return {"jobs": [job_view(job, weights_dir) for job in request.app.state.store.list_jobs()]}


@router.get("/train/{job_id}")
def training_job(request: Request, job: dict = Depends(existing_job)) -> dict:
    """Status, epoch and step, progress and ETA, loss and validation history, and the outcome."""
    return job_view(job, request.app.state.settings.weights_dir)


@router.get("/train/{job_id}/events", response_class=EventSourceResponse)
async def training_events(request: Request, job: dict = Depends(existing_job)):
    """The job's state as Server-Sent Events (`progress`, then one `done`), until it ends."""
    store, last, n_sent = request.app.state.store, None, 0
    while True:
        view = job_view(job, request.app.state.settings.weights_dir)
        final = job["status"] in FINAL_STATES
        if view != last:
            n_sent += 1
            yield ServerSentEvent(data=view, event="done" if final else "progress", id=str(n_sent))
            last = view
        if final or await request.is_disconnected():
            return
        await asyncio.sleep(EVENT_POLL_S)
        job = await asyncio.to_thread(store.get_job, job["id"])


@router.delete("/train/{job_id}", status_code=202, response_model=JobCancelling,
               dependencies=[Depends(require_admin)],
               responses={409: {"description": "the job has already ended"}})
def cancel_training(request: Request, response: Response, job: dict = Depends(existing_job)) -> JobCancelling:
    """Ask the job to stop: 202, `"status": "cancelling"`; it ends as `cancelled` within about two
    seconds (GET the Location to see it). Asking again while it stops answers the same."""
    if job["status"] in FINAL_STATES:
        raise HTTPException(409, f"job {job['id']} has already ended ({job['status']})")
    request.app.state.store.request_cancel(job["id"])  # the worker polls it every 0.2 s
    response.headers["Location"] = f"/train/{job['id']}"
    return JobCancelling(job_id=job["id"])


@router.get("/models", tags=["model"])
def models(request: Request) -> dict:
    """Every model version in the weights folder, with its metrics; `active` marks the one served."""
    weights_dir = request.app.state.settings.weights_dir
    try:
        active_name = active_path(weights_dir).name
    except ValueError:
        active_name = None
    items = []
    for path, meta in list_models(weights_dir):
        if isinstance(meta, dict):
            items.append({"version": meta["version"], "file": path.name, "active": path.name == active_name,
                          "architecture": meta["architecture"].get("name"), "created_at": meta["created_at"],
                          "metrics": meta.get("metrics", {}), "job_id": meta.get("job_id")})
        else:
            items.append({"version": None, "file": path.name, "active": False, "error": str(meta)})
    return {"models": items}


@router.post("/models/{version}/activate", tags=["model"], dependencies=[Depends(require_admin)])
def activate(version: str, request: Request) -> dict:
    """Serve another version (roll back or forward); every worker follows within a second."""
    weights_dir = request.app.state.settings.weights_dir
    match = [path for path, meta in list_models(weights_dir) if isinstance(meta, dict) and meta["version"] == version]
    if not match:
        raise HTTPException(404, f"no model version {version!r}; GET /models lists them")
    try:
        load_servable(match[0])  # a file that cannot be served is never made active
        set_active(weights_dir, match[0].name)
    except PreprocessingMismatch as exc:  # a sound file, but not for this code: conflict, not bad input
        raise HTTPException(409, f"model {version} cannot be served: {exc}") from exc
    except WeightsError as exc:
        raise HTTPException(422, f"model {version} cannot be loaded: {exc}") from exc
    request.app.state.models.refresh()
    return {"active": version}
