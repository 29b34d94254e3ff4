"""The serving path against a real uvicorn server: heavy requests do not stall it, overload is shed
with 503 and Retry-After, micro-batched answers equal one-by-one answers, feedback is rate-limited."""
from __future__ import annotations

import asyncio
import base64
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from server_support import STROKES_ONE, Server, run_async

pytestmark = pytest.mark.slow


def png(side: int, ring: bool = False) -> str:
    """A white side x side PNG, flat or with a thick ring (a 0) drawn across it, base64: a few KB to
    send, and (with the ring) about 0.25 s of decoding and preprocessing at side 2000."""
    img = Image.new("L", (side, side), 255)
    if ring:
        ImageDraw.Draw(img).ellipse((side * 0.15, side * 0.1, side * 0.85, side * 0.9), outline=0, width=side // 16)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def longest_healthz_during(srv: Server, send) -> tuple[float, httpx.Response]:
    """Run `send(client)` in a thread while polling /healthz; the longest healthz (s) and send's response."""
    result: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: result.append(send(srv.client())))
    longest = 0.0
    with srv.client(timeout=30) as client:
        thread.start()
        while thread.is_alive():
            start = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            longest = max(longest, time.perf_counter() - start)
            time.sleep(0.01)
    thread.join()
    return longest, result[0]


def test_a_request_over_the_work_budget_gets_413_and_never_stalls_healthz(tmp_state, mnist_dir):
    srv = Server(tmp_state, mnist_dir).start()
    try:
        images = [png(2000)] * 64  # 256 M pixels: what froze the service for 15 s before
        longest, response = longest_healthz_during(srv, lambda c: c.post("/predict", json={"images": images}))
        assert response.status_code == 413
        assert response.json() == {"detail": "the images hold 256,000,000 pixels in all; one request may hold "
                                             "16,000,000; send smaller images or fewer per request"}
        # A heavy request within the budget (4 x 4 M pixels) is decoded off the event loop: health
        # checks keep answering while it runs. (The timing target itself is measured by
        # benchmarks/serve_load.py; this bound only catches a stalled loop, which takes seconds.)
        images = [png(2000, ring=True)] * 4
        longest, response = longest_healthz_during(srv, lambda c: c.post("/predict", json={"images": images}))
        assert response.status_code == 200
        assert [p["digit"] for p in response.json()["predictions"]] == [0, 0, 0, 0]
        assert longest < 0.5, f"/healthz took {longest:.3f} s while the heavy request ran"
    finally:
        srv.stop()


def test_overload_is_shed_with_503_and_retry_after_and_no_connection_hangs(tmp_state, mnist_dir):
    srv = Server(tmp_state, mnist_dir, DIGITS_MAX_QUEUE="2").start()

    async def storm() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=srv.url, timeout=20, limits=limits) as client:
            return await asyncio.gather(*(client.post("/predict", json={"strokes": STROKES_ONE})
                                          for _ in range(64)))

    try:
        responses = run_async(storm())  # an httpx timeout here (a hung connection) fails the test
        statuses = [r.status_code for r in responses]
        assert set(statuses) == {200, 503}, statuses
        refused = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" for r in refused)
        assert all(r.json()["detail"].startswith("this server is busy") for r in refused)
        assert all(r.json()["digit"] == 1 for r in responses if r.status_code == 200)
        with srv.client() as client:  # and once the storm is over, every request is served again
            assert client.post("/predict", json={"strokes": STROKES_ONE}).status_code == 200
    finally:
        srv.stop()


def test_concurrent_answers_equal_one_by_one_answers_in_order(tmp_state, mnist_dir, mnist):
    srv = Server(tmp_state, mnist_dir).start()
    X = mnist.X_test[:48]
    try:
        with srv.client() as client:
            alone = [client.post("/predict", json={"pixels": x.tolist()}).json() for x in X]

        async def together():
            async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
                return await asyncio.gather(*(client.post("/predict", json={"pixels": x.tolist()}) for x in X))

        concurrent = [r.json() for r in run_async(together())]
        for one, many in zip(alone, concurrent):
            assert many["digit"] == one["digit"]
            np.testing.assert_allclose(many["probabilities"], one["probabilities"], rtol=1e-5, atol=1e-7)
        assert np.mean([a["digit"] for a in alone] == mnist.y_test[:48]) >= 0.95  # real answers, not noise
    finally:
        srv.stop()


def test_feedback_answers_429_past_the_per_client_limit_and_past_the_row_cap(tmp_state, mnist_dir):
    srv = Server(tmp_state, mnist_dir, DIGITS_FEEDBACK_PER_MINUTE="3", DIGITS_FEEDBACK_MAX_ROWS="5").start()
    body = {"strokes": STROKES_ONE, "label": 1}
    try:
        with srv.client() as client:
            statuses = [client.post("/feedback", json=body).status_code for _ in range(4)]
            assert statuses == [201, 201, 201, 429]
            limited = client.post("/feedback", json=body)
            assert limited.status_code == 429 and 55 <= int(limited.headers["retry-after"]) <= 60
            assert limited.json()["detail"].startswith("too many corrections from this address (the limit is 3 a "
                                                       "minute); try again in ")
            assert client.get("/feedback").json()["total"] == 3  # refused ones were not stored
        # Another client (another loopback address) fills the store to its cap; then it refuses everyone.
        answers = []
        for host, n in (("127.0.0.2", 2), ("127.0.0.3", 1)):
            with srv.client(transport=httpx.HTTPTransport(local_address=host)) as client:
                answers += [client.post("/feedback", json=body) for _ in range(n)]
        assert [a.status_code for a in answers] == [201, 201, 429]
        assert answers[2].json()["detail"].startswith("the feedback store is full (5 drawings)")
        assert answers[2].headers["retry-after"] == "3600"
        with srv.client() as client:
            assert client.get("/feedback").json()["total"] == 5
    finally:
        srv.stop()


def test_workers_auto_starts_one_process_per_core_each_serving_the_model(tmp_state, mnist_dir):
    import os
    import subprocess

    srv = Server(tmp_state, mnist_dir, workers="auto").start()
    try:
        children = subprocess.run(["pgrep", "-P", str(srv.proc.pid)], capture_output=True, text=True).stdout.split()
        workers = [pid for pid in children
                   if "spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")]
        assert len(workers) == len(os.sched_getaffinity(0))
        with srv.client() as client:
            answers = [client.post("/predict", json={"strokes": STROKES_ONE}) for _ in range(20)]
        assert {a.status_code for a in answers} == {200} and {a.json()["digit"] for a in answers} == {1}
    finally:
        srv.stop()
