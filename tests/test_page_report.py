"""The drawing page's link to the active model's evaluation report, in real headless Chromium against a
real server with the shipped weights (whose reports are in weights/reports/)."""
from __future__ import annotations

import pytest

from browser_support import require_playwright

require_playwright()
from playwright.sync_api import Page, expect  # noqa: E402

from browser_support import ROOT  # noqa: E402
from browser_support import browser_context_args, browser_type_launch_args, shipped_server  # noqa: E402, F401
from model.active import active_path  # noqa: E402
from model.weights import read_meta  # noqa: E402

pytestmark = pytest.mark.browser


def test_the_model_line_links_to_the_active_models_report_in_a_new_tab(page: Page):
    version = read_meta(active_path(ROOT / "weights"))["version"]
    page.goto("/")
    link = page.get_by_role("link", name="Evaluation report")
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", f"/reports/{version}/index.html")
    expect(link).to_have_attribute("target", "_blank")

    with page.context.expect_page() as opened:
        link.click()
    report = opened.value
    report.wait_for_load_state()
    expect(report.locator("#model-version")).to_have_text(version)
    images = report.locator("img")
    assert images.count() >= 4
    for img in images.all():  # each one shown (the page's security policy lets its own images load)
        img.scroll_into_view_if_needed()
        expect(img).to_have_js_property("complete", True)
        assert img.evaluate("img => img.naturalWidth") > 300, img.get_attribute("src")


def test_without_a_report_there_is_no_link(page: Page):
    def no_report(route):
        answer = route.fetch()
        route.fulfill(response=answer, json={**answer.json(), "report_url": None})

    page.route("**/model", no_report)
    page.goto("/")
    expect(page.locator("#model-info")).to_have_attribute("data-state", "ready")
    expect(page.get_by_role("link", name="Evaluation report")).to_be_hidden()
