"""The serving path of one worker process: admission (shed load instead of queueing without end),
preprocessing off the event loop, and micro-batched forward passes on one model thread.

The event loop only parses, admits and answers. Decoding and preprocessing run in a small bounded
pool; every forward pass (and saliency) runs on one model thread, so a model is never used by two
threads at once. Concurrent requests that arrive while that thread is busy are gathered into one batch
(forward passes with forward passes, saliency with saliency):
idle, a request runs at once; under load it waits for the batch in flight (plus `max_wait_ms`, off
by default), and a batch is one BLAS product instead of many small ones.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger("digits")


class Overloaded(Exception):
    """The worker's queue is full: answer 503 with Retry-After rather than wait."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class _Item:
    fn: Callable
    model: object
    X: np.ndarray
    row_args: tuple
    future: asyncio.Future
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = len(self.X)


def _probabilities(model, X: np.ndarray) -> np.ndarray:
    return model.predict_proba(X)


class Admission:
    """A bounded count of requests in this worker; past `limit`, `enter` raises `Overloaded` at once."""

    def __init__(self, limit: int) -> None:
        self.limit, self.inside = limit, 0

    @property
    def full(self) -> bool:
        return self.inside >= self.limit

    def __enter__(self) -> "Admission":
        if self.inside >= self.limit:
            raise Overloaded(f"this server is busy ({self.inside} requests waiting); retry in a second")
        self.inside += 1
        return self

    def __exit__(self, *exc) -> None:
        self.inside -= 1


class MicroBatcher:
    """Gathers concurrent `predict_proba` calls into one forward pass per model, in arrival order.

    Each caller gets exactly its own rows back. A caller whose future was cancelled (its client left)
    before its batch started costs nothing. If a batch fails, its requests are run one by one, so one
    bad request's error stays its own.
    """

    def __init__(self, max_batch_rows: int = 256, max_wait_ms: float = 0.0) -> None:
        self.max_batch_rows, self.max_wait_s = max_batch_rows, max_wait_ms / 1000
        self._pending: deque[_Item] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="digits-model")
        self.batches = self.rows = 0  # counters, for tests and logs

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=True, cancel_futures=True)

    async def predict_proba(self, model, X: np.ndarray) -> np.ndarray:
        """`model.predict_proba(X)`, computed in a batch with whatever else is waiting."""
        return await self.run(_probabilities, model, X)

    async def run(self, fn: Callable, model, X: np.ndarray, *row_args: np.ndarray) -> np.ndarray:
        """`fn(model, X, *row_args)`, one output row per row of X (and of each of `row_args`), computed
        in one call with the other waiting calls of the same `fn` and model, rows concatenated."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(fn, model, X, row_args, future))
        self._wake.set()
        return await future

    def _take_batch(self) -> list[_Item]:
        """The oldest live requests for one model, up to `max_batch_rows` rows (at least one request)."""
        while self._pending and self._pending[0].future.done():  # cancelled while waiting
            self._pending.popleft()
        if not self._pending:
            return []
        first = self._pending.popleft()
        batch, rows = [first], first.rows
        while self._pending:
            item = self._pending[0]
            if item.future.done():
                self._pending.popleft()
                continue
            if item.fn is not first.fn or item.model is not first.model or rows + item.rows > self.max_batch_rows:
                break
            batch.append(self._pending.popleft())
            rows += item.rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            if self.max_wait_s and len(self._pending) > 1:  # under load: let a few more join
                await asyncio.sleep(self.max_wait_s)
            batch = self._take_batch()
            if not batch:
                continue
            try:
                await self._compute(loop, batch)
            except asyncio.CancelledError:
                for item in batch:
                    item.future.cancel()
                raise

    async def _compute(self, loop, batch: list[_Item]) -> None:
        fn, model = batch[0].fn, batch[0].model
        if len(batch) == 1:
            X, row_args = batch[0].X, batch[0].row_args
        else:
            X = np.concatenate([item.X for item in batch])
            row_args = tuple(np.concatenate(column) for column in zip(*(item.row_args for item in batch)))
        try:
            out = await loop.run_in_executor(self._thread, fn, model, X, *row_args)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exception=exc)
                return
            for item in batch:  # isolate the failing request: each on its own
                try:
                    _settle(item.future, await loop.run_in_executor(self._thread, fn, model, item.X, *item.row_args))
                except Exception as item_exc:
                    _settle(item.future, exception=item_exc)
            return
        self.batches += 1
        self.rows += len(X)
        start = 0
        for item in batch:
            _settle(item.future, out[start:start + item.rows])
            start += item.rows


def _settle(future: asyncio.Future, result=None, exception: BaseException | None = None) -> None:
    if future.done():  # the client left while its batch ran
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)


class Serving:
    """What one worker needs to answer /predict: admission, the preprocessing pool, the batcher."""

    def __init__(self, max_queue: int, prep_threads: int, max_batch_rows: int, max_wait_ms: float) -> None:
        self.admission = Admission(max_queue)
        self.prep = ThreadPoolExecutor(prep_threads, thread_name_prefix="digits-prep")
        self.batcher = MicroBatcher(max_batch_rows, max_wait_ms)

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.prep.shutdown(wait=False, cancel_futures=True)

    async def preprocess(self, fn: Callable, *args):
        """Run `fn(*args)` (decoding, preprocessing) in the bounded pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.prep, fn, *args)


async def until_disconnected(receive) -> None:
    """Return when the client has gone (after the body was read, the next ASGI message is the disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(awaitable, receive):
    """Await `awaitable`; if the client disconnects first, cancel it and raise `ClientGone`."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    finally:
        watch.cancel()
    if work not in done:
        work.cancel()
        raise ClientGone()
    return work.result()


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its work was dropped."""


class RateLimiter:
    """At most `limit` events per `window_s` seconds per key (a client's address), in this process.

    A sliding window of event times per key; keys with no recent events are dropped, so memory stays
    bounded by the clients active in the last window.
    """

    def __init__(self, limit: int, window_s: float = 60.0, clock: Callable[[], float] | None = None) -> None:
        self.limit, self.window_s = limit, window_s
        self.clock = clock or time.monotonic
        self._events: dict[str, deque[float]] = {}

    def wait_s(self, key: str) -> float:
        """0 and the event counted if `key` is under its limit; else seconds until it may try again."""
        now = self.clock()
        if len(self._events) > 10_000:  # forget idle clients
            self._events = {k: q for k, q in self._events.items() if q and now - q[-1] < self.window_s}
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= self.window_s:
            events.popleft()
        if len(events) >= self.limit:
            return self.window_s - (now - events[0])
        events.append(now)
        return 0.0


class ShedWhenFull:
    """Answer 503 to POST `paths` while the worker's admission is full, before routing, parsing or
    even reading the body (pure ASGI). Under a storm of requests every refusal costs event-loop time
    that the admitted requests need; this is the cheapest refusal there is. The route checks admission
    again, so a request that slips past here is still counted."""

    def __init__(self, app, paths: tuple[str, ...] = ("/predict",)) -> None:
        self.app, self.paths = app, paths
        body = b'{"detail":"this server is busy; retry in a second"}'
        self._start = {"type": "http.response.start", "status": 503,
                       "headers": [(b"content-type", b"application/json"), (b"retry-after", b"1"),
                                   (b"content-length", str(len(body)).encode())]}
        self._body = {"type": "http.response.body", "body": body}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            serving = getattr(scope["app"].state, "serving", None)
            if serving is not None and serving.admission.full:
                await send(self._start)
                await send(self._body)
                return
        await self.app(scope, receive, send)
