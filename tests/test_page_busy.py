"""The page when the server sheds load, in real headless Chromium against a real server with the shipped
model: a 503 from /predict is retried once after Retry-After, a second one ends calmly, a newer drawing
replaces a pending retry, and a 429 from /feedback shows its sentence. The refusals are faked with
page.route; every other answer comes from the real server."""
from __future__ import annotations

import time

import pytest

from browser_support import require_playwright

require_playwright()
from playwright.sync_api import Page, expect  # noqa: E402

from browser_support import ONE, SEVEN_BAR, SEVEN_STEM, ZERO, DigitsPage, draw_with_mouse  # noqa: E402
from browser_support import browser_context_args, browser_type_launch_args, shipped_server  # noqa: E402, F401

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1100, "height": 820}
BUSY = {"detail": "The server is busy: 64 predictions are waiting. Try again in a second."}
CALM = "The service is busy right now; your drawing will be read on your next stroke."


@pytest.fixture
def digits(page: Page) -> DigitsPage:
    page.set_viewport_size(DESKTOP)
    return DigitsPage(page).open()


class BusyPredict:
    """A route handler for /predict: the first `n_busy` requests get a 503 (with `retry_after` as the
    Retry-After header, or none), the rest go to the real server. Records every request and its time."""

    def __init__(self, n_busy: int, retry_after: str | None = "1") -> None:
        self.n_busy = n_busy
        self.headers = {} if retry_after is None else {"Retry-After": retry_after}
        self.requests: list = []
        self.times: list[float] = []

    def __call__(self, route) -> None:
        self.requests.append(route.request)
        self.times.append(time.monotonic())
        if len(self.requests) <= self.n_busy:
            route.fulfill(status=503, headers=self.headers, json=BUSY)
        else:
            route.continue_()

    @property
    def bodies(self) -> list[dict]:
        return [request.post_data_json for request in self.requests]


def ready_to_undo(digits: DigitsPage, n_busy: int, retry_after: str | None = "1") -> BusyPredict:
    """Draw a 1 and a bar over it, then fake the busy server: an Undo then sends exactly one request
    (the 1 alone), where a stroke drawn under the fake would also send throttled requests mid-stroke."""
    digits.draw(ONE)
    digits.draw([SEVEN_BAR], n_before=1)
    busy = BusyPredict(n_busy, retry_after)
    digits.page.route("**/predict", busy)
    return busy


def is_answer(response) -> bool:
    return response.request.method == "POST" and response.url.endswith("/predict") and response.status == 200


@pytest.mark.parametrize(("retry_after", "wait_s"), [("1", 1), ("soon", 1), ("600", 5)],
                         ids=["asked", "unreadable-default", "capped"])
def test_a_busy_answer_shows_busy_then_the_real_answer_after_exactly_one_retry(digits: DigitsPage,
                                                                               retry_after: str, wait_s: float):
    page = digits.page
    busy = ready_to_undo(digits, n_busy=1, retry_after=retry_after)

    with page.expect_response(is_answer, timeout=wait_s * 1000 + 10_000) as answered:
        page.get_by_role("button", name="Undo").click()
        expect(digits.result).to_have_attribute("data-state", "busy")
        expect(page.locator("#verdict-text")).to_have_text("Busy, retrying…")
        expect(digits.result).to_have_attribute("aria-busy", "true")
        expect(page.locator("#status")).to_have_text("")  # shown where the answer shows, not as an error
    answer = digits.settled(answered.value)

    assert answer["digit"] == 1
    expect(digits.result).not_to_have_attribute("data-state", "busy")
    expect(page.locator("#verdict-text")).not_to_contain_text("Busy")
    assert len(busy.requests) == 2
    assert busy.bodies[1] == busy.bodies[0], "the retry sends the same drawing"
    assert len(busy.bodies[0]["strokes"]) == 1
    assert wait_s - 0.1 <= busy.times[1] - busy.times[0] <= wait_s + 2, "waits as Retry-After asks, capped"
    page.wait_for_timeout(1500)
    assert len(busy.requests) == 2, "nothing more is sent"
    assert [e for e in digits.errors if "503" not in e] == []


def test_a_second_busy_answer_shows_a_calm_message_and_sends_no_third_request(digits: DigitsPage):
    page = digits.page
    busy = ready_to_undo(digits, n_busy=2)

    page.get_by_role("button", name="Undo").click()
    expect(page.locator("#verdict-text")).to_have_text("Busy, retrying…")
    expect(page.locator("#verdict-detail")).to_have_text(CALM, timeout=10_000)
    expect(page.locator("#verdict-text")).to_have_text("Busy right now")
    expect(digits.result).to_have_attribute("data-state", "busy")
    expect(digits.result).to_have_attribute("aria-busy", "false")
    expect(page.locator("#status")).to_have_text("")
    page.wait_for_timeout(2500)  # more than the Retry-After of the second 503
    assert len(busy.requests) == 2
    assert busy.bodies[1] == busy.bodies[0]
    expect(page.locator("#verdict-detail")).to_have_text(CALM)

    # The next stroke is read as usual once the server has room again.
    page.unroute("**/predict")
    answer = digits.draw([SEVEN_STEM], n_before=1)
    expect(digits.result).not_to_have_attribute("data-state", "busy")
    expect(page.locator("#verdict-text")).not_to_contain_text("Busy")
    expect(digits.bars).to_have_count(len(answer["probabilities"]))
    assert [e for e in digits.errors if "503" not in e] == []


@pytest.mark.parametrize("newer", ["cleared-and-a-0", "another-stroke"])
def test_a_newer_drawing_replaces_a_pending_retry_and_its_answer_shows(digits: DigitsPage, newer: str):
    page = digits.page
    busy = ready_to_undo(digits, n_busy=1, retry_after="3")

    page.get_by_role("button", name="Undo").click()
    expect(page.locator("#verdict-text")).to_have_text("Busy, retrying…")
    with page.expect_response(is_answer, timeout=15_000) as answered:  # while the retry of the 1 waits:
        if newer == "cleared-and-a-0":
            page.get_by_role("button", name="Clear").click()
            draw_with_mouse(page, digits.pad.bounding_box(), ZERO[0])
        else:
            draw_with_mouse(page, digits.pad.bounding_box(), SEVEN_STEM)
    answer = digits.settled(answered.value)

    first_answered = answered.value.request.post_data_json["strokes"]  # no answer for the 1 alone came first
    if newer == "cleared-and-a-0":
        assert answer["digit"] == 0
        assert len(first_answered) == 1 and len(first_answered[0]) > len(ONE[0])
    else:
        assert len(first_answered) == 2
    assert len(busy.requests) == 2, "the 1 alone is not sent again"
    assert busy.bodies[1]["strokes"] == first_answered
    assert busy.times[1] - busy.times[0] >= 2.9, "the newer drawing still waits out Retry-After"
    page.wait_for_timeout(1000)
    assert len(busy.requests) == 2
    expect(digits.result).not_to_have_attribute("data-state", "busy")
    assert [e for e in digits.errors if "503" not in e] == []


def test_a_feedback_limit_shows_the_servers_sentence_and_the_buttons_keep_working(digits: DigitsPage):
    page = digits.page
    limit = "You have sent 20 corrections in the last minute; please wait a minute before sending more."
    digits.draw(ONE)

    page.route("**/feedback", lambda route: route.fulfill(status=429, headers={"Retry-After": "60"},
                                                          json={"detail": limit})
               if route.request.method == "POST" else route.fallback())
    page.get_by_role("button", name="It's a 7").click()
    status = page.locator("#feedback-status")
    expect(status).to_have_text(limit)
    expect(status).to_have_attribute("data-kind", "warning")
    for button in page.locator("#feedback-digits button").all():
        expect(button).to_be_enabled()

    page.unroute("**/feedback")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/feedback")) as answered:
        page.get_by_role("button", name="It's a 7").click()
    assert answered.value.status == 201
    expect(status).to_have_text(answered.value.json()["message"])
    expect(status).to_have_attribute("data-kind", "ok")
    assert [e for e in digits.errors if "429" not in e] == []
