"""The drawing page in real headless Chromium against a real uvicorn server with the shipped model:
drawing, the prediction display, undo/clear, errors, a phone-sized screen, and a screenshot."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from browser_support import require_playwright

require_playwright()
from playwright.sync_api import Page, expect  # noqa: E402

from browser_support import (  # noqa: E402
    ONE, ROOT, SEVEN_BAR, SEVEN_STEM, SHAPES, ZERO, DigitsPage, draw_with_mouse, ink_pixels,
    percentages,
)
from browser_support import browser_context_args, browser_type_launch_args, shipped_server  # noqa: E402, F401

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1100, "height": 820}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def digits(page: Page) -> DigitsPage:
    page.set_viewport_size(DESKTOP)
    return DigitsPage(page).open()


def save_screenshot(page: Page) -> None:
    """artifacts/page.png always; docs/screenshot.png (embedded in the README) when asked to update it."""
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    page.screenshot(path=artifacts / "page.png", full_page=True)
    if os.environ.get("DIGITS_UPDATE_SCREENSHOT") == "1":
        docs: Path = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        page.screenshot(path=docs / "screenshot.png", full_page=True)


def test_drawn_digits_are_recognised_with_ten_bars_and_the_model_input(digits: DigitsPage):
    for expected in ["1", "0", "7"]:
        digits.page.get_by_role("button", name="Clear").click()
        answer = digits.draw(SHAPES[expected])

        expect(digits.digit).to_have_text(expected)
        assert answer["digit"] == int(expected)
        expect(digits.bars).to_have_count(len(answer["probabilities"]))
        values = percentages(digits.page.locator("#bars .bar-value").all_inner_texts())
        assert len(values) == 10
        assert sum(values) == pytest.approx(100, abs=1.5)
        assert max(values) == values[int(expected)]
        top = digits.page.locator("#bars > li.is-top")
        expect(top).to_have_count(1)
        expect(top.locator(".bar-label")).to_have_text(expected)
        assert ink_pixels(digits.page, "#seen") > 30, "the 28x28 preview shows the model's input"

    save_screenshot(digits.page)  # of the "7"
    assert (ROOT / "artifacts" / "page.png").stat().st_size > 10_000
    assert digits.errors == []


def test_undo_and_ctrl_z_remove_the_last_stroke_and_predict_again(digits: DigitsPage):
    page = digits.page
    assert digits.draw([SEVEN_BAR, SEVEN_STEM])["digit"] == 7

    with page.expect_request("**/predict") as sent, page.expect_response("**/predict") as answered:
        page.get_by_role("button", name="Undo").click()
    strokes = digits.sent_strokes(sent.value)
    assert len(strokes) == 1
    box = digits.pad.bounding_box()
    assert strokes[0][0] == pytest.approx([SEVEN_BAR[0][0] * box["width"], SEVEN_BAR[0][1] * box["height"]],
                                          abs=1.5), "the first stroke stays"
    digits.settled(answered.value)

    digits.draw([SEVEN_STEM], n_before=1)  # the second stroke again
    with page.expect_request("**/predict") as sent, page.expect_response("**/predict") as answered:
        page.keyboard.press("Control+z")
    assert len(digits.sent_strokes(sent.value)) == 1
    digits.settled(answered.value)

    page.keyboard.press("Control+z")  # the last stroke: nothing to send, back to the prompt
    digits.expect_prompt()
    assert digits.errors == []


def test_clear_button_escape_and_keyboard_reset_the_display_to_the_prompt(digits: DigitsPage):
    page = digits.page
    digits.draw(ONE)
    page.get_by_role("button", name="Clear").click()
    digits.expect_prompt()

    digits.draw(ZERO)
    page.keyboard.press("Escape")
    digits.expect_prompt()

    digits.draw(ONE)
    page.evaluate("document.activeElement.blur()")
    focused = []
    for _ in range(6):  # Tab from the top of the page reaches Undo, then Clear
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.id"))
        if focused[-1] == "clear":
            break
    assert focused[-2:] == ["undo", "clear"]
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    digits.expect_prompt()
    assert digits.errors == []


def test_model_version_and_test_accuracy_are_shown(digits: DigitsPage):
    model = digits.page.request.get("/model").json()
    expect(digits.page.locator("#model-version")).to_have_text(model["version"])
    accuracy = model["metrics"]["test_accuracy"]
    expect(digits.page.locator("#model-accuracy")).to_have_text(f"{accuracy * 100:.1f}%")
    assert digits.errors == []


def test_an_error_answer_shows_the_server_detail_and_the_page_keeps_working(digits: DigitsPage):
    page = digits.page
    page.route("**/predict", lambda route: route.fulfill(
        status=413, json={"detail": "the strokes hold 20001 points; the limit is 20000"}))
    with page.expect_response("**/predict"):
        draw_with_mouse(page, digits.pad.bounding_box(), ONE[0])
    expect(page.locator("#status")).to_have_text("the strokes hold 20001 points; the limit is 20000")
    page.unroute("**/predict")

    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#status")).to_have_text("")
    assert digits.draw(ONE)["digit"] == 1
    # The one console error allowed is Chromium's own log line for the refused request.
    assert [e for e in digits.errors if "413" not in e] == []


def test_phone_screen_fits_the_pad_without_sideways_scrolling_and_draws_by_touch(new_context):
    context = new_context(viewport=PHONE, has_touch=True, is_mobile=True, device_scale_factor=3)
    digits = DigitsPage(context.new_page()).open()
    page = digits.page

    box = digits.pad.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    assert box["width"] >= 0.8 * PHONE["width"]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    result_top = page.locator("#result").bounding_box()["y"]
    assert result_top >= box["y"] + box["height"], "the results stack below the pad"
    assert page.evaluate("getComputedStyle(document.getElementById('pad')).touchAction") == "none"

    scrolled = page.evaluate("window.scrollY")
    assert digits.draw(ONE, touch_session=context.new_cdp_session(page))["digit"] == 1
    assert page.evaluate("window.scrollY") == scrolled, "drawing must not scroll the page"
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert digits.errors == []
