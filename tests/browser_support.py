"""Helpers for the real-browser page tests: a live uvicorn server, the system Chromium, and pen strokes
drawn with the mouse or with touch. Imported by tests/test_page*.py; no tests here."""
from __future__ import annotations

import importlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from mnist_support import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DIGITS_CHROMIUM", "/usr/lib/chromium/chromium"))

Point = tuple[float, float]  # a fraction of the pad's width and height: (0, 0) top left, (1, 1) bottom right
Stroke = list[Point]


def require_playwright() -> None:
    """Skip the calling page-test module without Playwright and its pytest plugin, or fail it under CI.

    Every tests/test_page*.py calls this before importing Playwright."""
    for module, package in (("playwright", "playwright"), ("pytest_playwright", "pytest-playwright")):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            skip_or_fail(f"the page tests need {package} ({exc}); install the dev extras: pip install -e '.[dev]'")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright's launch arguments, pointed at the system Chromium (never `playwright install`).

    A fixture: test modules import it to override the plugin's."""
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM}; install it with `apt-get install chromium`")
    return {**browser_type_launch_args, "executable_path": str(CHROMIUM)}


@pytest.fixture(scope="session")
def shipped_server() -> Iterator[str]:
    """One real server for the session, serving the repository's weights/ and static/ (with a temporary
    database, so nothing is written outside the test's folders); yields its URL."""
    with live_server(ROOT / "weights") as url:
        yield url


@pytest.fixture
def browser_context_args(browser_context_args, shipped_server):
    """Pages open on the shipped server. A module with a server of its own overrides this fixture."""
    return {**browser_context_args, "base_url": shipped_server}


@contextmanager
def live_server(weights_dir: Path, timeout: float = 30.0, *, db_path: Path | None = None,
                data_dir: Path | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run the real app under uvicorn in a subprocess; yields its base URL once /healthz answers.

    The server sees no DIGITS_* variables from the environment but these: its weights folder, its
    database (a temporary folder unless `db_path` is given, so tests never write to the user's cache),
    if given, the MNIST folder that training reads, and any in `env` (e.g. DIGITS_ADMIN_TOKEN).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="digits-test-db-") as db_folder, \
            tempfile.TemporaryFile() as log:
        server_env = {key: value for key, value in os.environ.items() if not key.startswith("DIGITS_")}
        server_env["DIGITS_WEIGHTS_DIR"] = str(weights_dir)
        server_env["DIGITS_DB_PATH"] = str(db_path or Path(db_folder) / "digits.sqlite3")
        if data_dir is not None:
            server_env["DIGITS_DATA_DIR"] = str(data_dir)
        server_env.update(env or {})
        command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        process = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_health(url, process, log, timeout)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_health(url: str, process: subprocess.Popen, log, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited with {process.returncode} before answering /healthz:\n"
                               f"{log.read().decode(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.05)
    raise RuntimeError(f"the server at {url} did not answer /healthz within {timeout:g} s")


# ---- shapes, in fractions of the pad ----------------------------------------------------------------

def line(start: Point, end: Point, n_steps: int = 12) -> Stroke:
    """A straight stroke from start to end in n_steps small moves."""
    return [(start[0] + (end[0] - start[0]) * i / n_steps, start[1] + (end[1] - start[1]) * i / n_steps)
            for i in range(n_steps + 1)]


def ellipse(centre: Point, radii: Point, n_steps: int = 24) -> Stroke:
    """A closed stroke starting and ending at the top of the ellipse."""
    return [(centre[0] + radii[0] * math.sin(2 * math.pi * i / n_steps),
             centre[1] - radii[1] * math.cos(2 * math.pi * i / n_steps)) for i in range(n_steps + 1)]


ONE = [line((0.52, 0.18), (0.48, 0.82))]
SEVEN_BAR, SEVEN_STEM = line((0.28, 0.2), (0.72, 0.2)), line((0.72, 0.2), (0.44, 0.82))
SEVEN = [SEVEN_BAR + SEVEN_STEM[1:]]
ZERO = [ellipse((0.5, 0.5), (0.2, 0.32))]
SHAPES = {"1": ONE, "7": SEVEN, "0": ZERO}


# ---- drawing --------------------------------------------------------------------------------------

def to_page(box: dict, point: Point) -> Point:
    """A pad fraction -> page coordinates inside the canvas `box` (Playwright's bounding_box())."""
    return box["x"] + point[0] * box["width"], box["y"] + point[1] * box["height"]


def draw_with_mouse(page, box: dict, stroke: Stroke) -> Point:
    """Press, move in small steps, release. Returns the last point in the pad's CSS pixels."""
    x, y = to_page(box, stroke[0])
    page.mouse.move(x, y)
    page.mouse.down()
    for point in stroke[1:]:
        x, y = to_page(box, point)
        page.mouse.move(x, y)
    page.mouse.up()
    return x - box["x"], y - box["y"]


def draw_with_touch(cdp, box: dict, stroke: Stroke) -> Point:
    """The same with one finger, through the DevTools protocol (Playwright has no touch move)."""
    def send(kind: str, point: Point | None) -> None:
        touches = [] if point is None else [{"x": point[0], "y": point[1], "id": 1}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": touches})

    points = [to_page(box, p) for p in stroke]
    send("touchStart", points[0])
    for point in points[1:]:
        send("touchMove", point)
    send("touchEnd", None)
    return points[-1][0] - box["x"], points[-1][1] - box["y"]


def is_predict_request_for(request, n_strokes: int, last_stroke_len: int, last_point: Point,
                           tolerance: float = 1.5) -> bool:
    """Whether `request` is a POST /predict with the whole drawing: `n_strokes` strokes, the last of them
    (about) `last_stroke_len` points long and ending at `last_point` (the pad's CSS pixels)."""
    if request.method != "POST" or not request.url.endswith("/predict"):
        return False
    strokes = json.loads(request.post_data or "{}").get("strokes") or []
    if len(strokes) != n_strokes or len(strokes[-1]) < last_stroke_len // 2:
        return False
    x, y = strokes[-1][-1]
    return abs(x - last_point[0]) <= tolerance and abs(y - last_point[1]) <= tolerance


def percentages(texts: list[str]) -> list[float]:
    """["12.5%", "0.0%", ...] -> [12.5, 0.0, ...]."""
    return [float(text.strip().rstrip("%")) for text in texts]


# JavaScript: how many pixels of a canvas hold any ink (alpha > 0).
COUNT_INK_JS = """(selector) => {
  const canvas = document.querySelector(selector);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) count++;
  return count;
}"""


def ink_pixels(page, selector: str) -> int:
    return page.evaluate(COUNT_INK_JS, selector)


def collect_errors(page) -> list[str]:
    """A list that fills with console errors, uncaught exceptions and failed responses from `page`."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(f"console: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("response", lambda response: errors.append(f"HTTP {response.status}: {response.url}")
            if response.status >= 400 else None)
    page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
    return errors


class DigitsPage:
    """The page under test, with the errors it has logged so far."""

    def __init__(self, page) -> None:
        from playwright.sync_api import expect  # the modules that use this class skip without Playwright

        self.expect = expect
        self.page = page
        self.errors = collect_errors(page)
        self.pad = page.locator("#pad")
        self.digit = page.locator("#digit")
        self.result = page.locator("#result")
        self.bars = page.locator("#bars > li")

    def open(self, url: str = "/") -> "DigitsPage":
        self.page.goto(url)
        self.expect(self.page.locator("#model-info")).to_have_attribute("data-state", "ready")
        return self

    def draw(self, strokes, n_before: int = 0, touch_session=None) -> dict:
        """Draw `strokes` (pad fractions) after `n_before` strokes already there; returns the /predict
        answer for the whole drawing (the request sent on the last pen-up, not a throttled earlier one)."""
        box = self.pad.bounding_box()
        end = (strokes[-1][-1][0] * box["width"], strokes[-1][-1][1] * box["height"])
        n_strokes = n_before + len(strokes)
        with self.page.expect_response(lambda r: is_predict_request_for(r.request, n_strokes, len(strokes[-1]), end)) as info:
            for stroke in strokes:
                if touch_session is None:
                    draw_with_mouse(self.page, box, stroke)
                else:
                    draw_with_touch(touch_session, box, stroke)
        return self.settled(info.value)

    def settled(self, response) -> dict:
        """Wait until the page has shown `response` and has nothing more in flight; returns its JSON."""
        assert response.ok, response.text()
        answer = response.json()
        self.expect(self.result).to_have_attribute("aria-busy", "false")
        # a "not sure" answer shows a "?" instead of the digit
        self.expect(self.digit).to_have_text(str(answer["digit"]) if answer.get("sure", True) else "?")
        return answer

    def expect_prompt(self) -> None:
        self.expect(self.result).to_have_attribute("data-state", "empty")
        self.expect(self.digit).to_have_text("?")
        self.expect(self.page.locator("#verdict-text")).to_have_text("Draw a digit")
        self.expect(self.bars).to_have_count(0)
        assert ink_pixels(self.page, "#pad") == 0

    def sent_strokes(self, request) -> list:
        return request.post_data_json["strokes"]
