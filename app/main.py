"""Build the FastAPI app: settings, the active model loaded once at start-up, routes, the page."""
from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from threadpoolctl import threadpool_limits

from app.reports import router as reports_router
from app.routes import router
from app.routes_train import router as train_router
from app.serving import RateLimiter, Serving, ShedWhenFull
from app.settings import Settings
from app.store import Store
from model.active import active_path
from model.malloc_tuning import SERVING, keep_freed_memory
from model.weights import Model, WeightsError, load_servable

log = logging.getLogger("digits")


class ModelHolder:
    """The model being served, swapped for a new active one without a restart.

    Replacing `current` is one reference assignment, so a request holds either the old model or the
    new one, never half of either. A broken new file, or one of another preprocessing version, is logged
    and reported (`problem`, on GET /model); the last good model stays.
    """

    def __init__(self, weights_dir: Path) -> None:
        self.weights_dir = weights_dir
        path = active_path(weights_dir)
        self._identity = _identity(path)
        self.current: Model = load_servable(path)
        self.problem: str | None = None

    def refresh(self) -> bool:
        """Load the active model if ACTIVE names another file, or the same name rewritten; True if it changed."""
        try:
            path = active_path(self.weights_dir)
            identity = _identity(path)
            if identity == self._identity:
                return False
            model = load_servable(path)
        except WeightsError as exc:
            if str(exc) != self.problem:
                log.error("keeping model %s: %s", self.current.version, exc)
            self.problem = str(exc)
            return False
        self.current, self.problem, self._identity = model, None, identity
        log.info("now serving model %s", model.version)
        return True


def _identity(path: Path) -> tuple:
    """What tells one weights file from another, even under the same name."""
    stat = path.stat()
    return path.name, stat.st_ino, stat.st_mtime_ns, stat.st_size


async def watch_active_model(holder: ModelHolder, interval: float, children: list) -> None:
    """Every `interval` seconds: pick up a new active model, and reap finished training processes."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(holder.refresh)
        except Exception:  # an unexpected failure must not end the watching for this process's life
            log.exception("checking for a new active model failed; keeping %s", holder.current.version)
        children[:] = [proc for proc in children if proc.poll() is None]


class BodyLimitMiddleware:
    """Refuse bodies over `limit` bytes with 413, whether or not Content-Length is sent (pure ASGI).

    Without Content-Length the body is counted as it arrives; past the limit the 413 goes out at once,
    the app is told the client left, and whatever the app then tries to send is dropped.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received, refused = 0, False

        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit and not refused:
                    refused = True
                    await self._refuse(send)
            return {"type": "http.disconnect"} if refused else message

        async def guarded_send(message):
            if not refused:
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _refuse(self, send):
        response = JSONResponse({"detail": f"the request body is over {self.limit} bytes; send a smaller "
                                           f"image or fewer items"}, status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


def describe_validation_error(exc: RequestValidationError) -> str:
    """One readable sentence per problem, e.g. "pixels: pixels has shape (3,); send 28x28 ..."."""
    parts = []
    for error in exc.errors():
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "")
            parts.append(f"the body is not valid JSON ({reason}); send a JSON object")
            continue
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {message}" if loc else message)
    return "; ".join(parts)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The digits service. Fails at start-up (not on first request) if settings or weights are unusable."""
    settings = settings or Settings()
    settings.check_paths()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # One BLAS thread per process: concurrent requests each running a multi-threaded matmul
        # oversubscribe the cores and collapse throughput (see benchmarks/serve_load.py).
        with threadpool_limits(limits=settings.blas_threads):
            app.state.models = ModelHolder(settings.weights_dir)
            app.state.store = Store(settings.database)
            app.state.children = []  # training processes this server started
            app.state.serving = Serving(settings.max_queue, settings.prep_threads, settings.max_batch_rows,
                                        settings.batch_wait_ms)
            app.state.serving.start()
            app.state.feedback_limiter = RateLimiter(settings.feedback_per_minute)
            log.info("serving model %s", app.state.models.current.version)
            watcher = asyncio.create_task(watch_active_model(app.state.models, settings.reload_interval_s,
                                                             app.state.children))
            # What start-up built (modules, the app, pydantic's validators) lives as long as the process:
            # keep it out of garbage collections. Otherwise each full collection walks all of it, pausing
            # every request in flight for tens of milliseconds (the p99 under load).
            gc.freeze()
            # Decoding canvases allocates the same large blocks per request: keep them (model.malloc_tuning).
            if not keep_freed_memory(**SERVING):
                log.info("malloc left as it is (not glibc): large blocks are mapped afresh per request")
            try:
                yield
            finally:
                gc.unfreeze()
                watcher.cancel()
                await app.state.serving.stop()

    # /docs and /redoc with Swagger UI and ReDoc served by the app itself (fastapi-offline ships them),
    # not from a CDN: the documentation works on a machine without internet.
    app = FastAPIOffline(title="digits", summary="Draw a digit; a NumPy network classifies it.",
                         version="0.1.0", lifespan=lifespan, favicon_url="/favicon.ico")
    app.state.settings = settings

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": describe_validation_error(exc)}, status_code=422)

    app.include_router(router)
    app.include_router(train_router)
    app.include_router(reports_router)
    app.mount("/", StaticFiles(directory=settings.static_dir, html=True), name="static")
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ShedWhenFull)  # added last: it runs first
    return app
