"""The page's feedback row, training panel and model watch in real headless Chromium against a real
uvicorn server that trains for real: a temporary copy of weights/, a temporary database, real MNIST."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser_support import require_playwright

require_playwright()
from playwright.sync_api import Page, expect  # noqa: E402

from browser_support import ONE, ROOT, SEVEN_STEM, DigitsPage, live_server  # noqa: E402
from mnist_support import real_mnist_dir  # noqa: E402
from browser_support import browser_type_launch_args  # noqa: E402, F401  (the system Chromium)
from model.active import active_path  # noqa: E402
from model.weights import load_model, save_model  # noqa: E402

pytestmark = pytest.mark.browser

DESKTOP = {"width": 1100, "height": 900}
COPY_VERSION = "seed-copy-for-page-tests"
TRAINING_TIMEOUT_MS = 150_000  # 1 epoch on a shared 2-core machine, the worker at low priority
CANCEL_TIMEOUT_MS = 15_000
ADMIN_TOKEN = "s3cret"

# JavaScript: a fingerprint of a canvas's pixels, to tell whether the chart was redrawn differently.
CANVAS_HASH_JS = """(selector) => {
  const canvas = document.querySelector(selector);
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let hash = 0, ink = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] === 0) continue;
    ink += 1;
    hash = (hash * 31 + i + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) % 2147483647;
  }
  return `${ink}:${hash}`;
}"""

# JavaScript run before the page's own: record what the job panel shows each time it changes.
WATCH_PROGRESS_JS = """
window.__progress = [];
document.addEventListener("DOMContentLoaded", () => {
  const chartHash = (""" + CANVAS_HASH_JS + """);
  const record = () => window.__progress.push({
    percent: document.getElementById("job-percent").textContent,
    status: document.getElementById("job-status").textContent,
    eta: document.getElementById("job-eta").textContent,
    epoch: document.getElementById("job-epoch").textContent,
    chart: chartHash("#train-chart"),
  });
  new MutationObserver(record).observe(document.getElementById("job"),
                                       {subtree: true, childList: true, characterData: true});
});
"""


@dataclass
class Server:
    url: str
    weights_dir: Path
    db_path: Path
    original_version: str
    admin_token: str | None = None  # the server's DIGITS_ADMIN_TOKEN, sent by send()

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def send(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def active_jobs(self) -> list[dict]:
        return [job for job in self.get("/train")["jobs"] if job["status"] in ("queued", "running")]

    def job_log(self, job_id: str) -> str:
        path = self.db_path.parent / "jobs" / f"{job_id}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else f"(no log at {path})"

    def stop_jobs(self, timeout: float = 30.0) -> None:
        """Cancel whatever still trains and wait for it to end, so no worker outlives its test."""
        for job in self.active_jobs():
            try:
                self.send("DELETE", f"/train/{job['job_id']}")
            except urllib.error.HTTPError:
                pass  # it ended meanwhile
        deadline = time.monotonic() + timeout
        while self.active_jobs() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not self.active_jobs(), "a training job did not stop after being cancelled"

    def activate(self, version: str) -> None:
        self.send("POST", f"/models/{version}/activate")


def copy_weights(folder: Path) -> Path:
    """A copy of weights/ (the .npz files and ACTIVE) in folder/weights; returns that folder."""
    weights_dir = folder / "weights"
    weights_dir.mkdir()
    for path in (ROOT / "weights").glob("*.npz"):
        shutil.copy2(path, weights_dir)
    shutil.copy2(ROOT / "weights" / "ACTIVE", weights_dir)
    return weights_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """A real server over a temporary copy of weights/ (plus a second copy of the active model under
    another version), a temporary database and, when there is one, real MNIST to train on."""
    folder = tmp_path_factory.mktemp("page-training")
    weights_dir = copy_weights(folder)
    active = load_model(active_path(weights_dir))
    kept = {k: v for k, v in active.meta.items() if k not in ("format_version", "architecture", "created_at")}
    save_model(weights_dir / f"{COPY_VERSION}.npz", active.network, {**kept, "version": COPY_VERSION})
    try:
        data_dir = real_mnist_dir()
    except (pytest.skip.Exception, pytest.fail.Exception):
        data_dir = None  # the tests that train ask for MNIST themselves
    db_path = folder / "state" / "digits.sqlite3"
    with live_server(weights_dir, db_path=db_path, data_dir=data_dir) as url:
        server = Server(url, weights_dir, db_path, active.version)
        try:
            yield server
        finally:
            server.stop_jobs()


@pytest.fixture
def token_server(tmp_path, mnist_for_training: Path) -> Server:
    """Like `server`, but started with DIGITS_ADMIN_TOKEN set: training and cancelling need the token."""
    weights_dir = copy_weights(tmp_path)
    version = load_model(active_path(weights_dir)).version
    db_path = tmp_path / "state" / "digits.sqlite3"
    with live_server(weights_dir, db_path=db_path, data_dir=mnist_for_training,
                     env={"DIGITS_ADMIN_TOKEN": ADMIN_TOKEN}) as url:
        server = Server(url, weights_dir, db_path, version, admin_token=ADMIN_TOKEN)
        try:
            yield server
        finally:
            server.stop_jobs()


@pytest.fixture
def mnist_for_training() -> Path:
    """Real MNIST; skips without it (fails under CI)."""
    return real_mnist_dir()


@pytest.fixture
def browser_context_args(browser_context_args, server: Server):
    return {**browser_context_args, "base_url": server.url, "viewport": DESKTOP}


@pytest.fixture
def digits(page: Page, server: Server):
    """The page, opened; afterwards no training job is left running and the original model is active."""
    page.add_init_script(WATCH_PROGRESS_JS)
    digits = DigitsPage(page).open()
    open_new_model_form(page)
    yield digits
    server.stop_jobs()
    if server.get("/model")["version"] != server.original_version:
        server.activate(server.original_version)


def open_new_model_form(page: Page) -> None:
    """Unfold the secondary action, "Or train a new model from scratch" (fine-tuning comes first)."""
    page.get_by_text("Or train a new model from scratch").click()
    expect(page.get_by_label("Epochs")).to_be_visible()


def canvas_hash(page: Page, selector: str = "#train-chart") -> str:
    return page.evaluate(CANVAS_HASH_JS, selector)


def shown_percent(page: Page) -> int:
    return int(page.locator("#job-percent").inner_text().rstrip("%"))


# ---- feedback ---------------------------------------------------------------------------------------

def test_a_digit_button_sends_the_drawing_with_its_label_and_thanks_the_person(digits: DigitsPage,
                                                                             server: Server):
    page = digits.page
    feedback = page.locator("#feedback")
    expect(feedback).to_be_hidden()
    before = server.get("/feedback")

    digits.draw(ONE)
    expect(feedback).to_be_visible()
    expect(page.locator("#feedback-prompt")).to_have_text("Wrong? It's a …")
    buttons = page.locator("#feedback-digits button")
    expect(buttons).to_have_count(10)
    expect(buttons).to_have_text([str(d) for d in range(10)])

    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/feedback")) as sent, \
            page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/feedback")) as answered:
        page.get_by_role("button", name="It's a 7").click()
    body = sent.value.post_data_json
    assert body["label"] == 7
    box = digits.pad.bounding_box()
    assert len(body["strokes"]) == 1
    assert body["strokes"][0][0] == pytest.approx([ONE[0][0][0] * box["width"], ONE[0][0][1] * box["height"]],
                                                  abs=1.5), "the strokes of the drawing on the pad"
    assert answered.value.status == 201
    answer = answered.value.json()
    expect(page.locator("#feedback-status")).to_have_text(answer["message"])
    assert answer["message"] == "Thanks! Saved as a 7."
    for d in range(10):
        expect(buttons.nth(d)).to_be_disabled()  # until the drawing changes

    after = server.get("/feedback")
    assert after["total"] == before["total"] + 1
    assert after["per_label"]["7"]["count"] == before["per_label"]["7"]["count"] + 1
    total = after["total"]
    expect(page.locator("#feedback-count")).to_have_text(f"({total} drawing{'' if total == 1 else 's'} so far)")

    digits.draw([SEVEN_STEM], n_before=1)  # a changed drawing can be labelled again
    expect(page.locator("#feedback-status")).to_have_text("")
    for d in range(10):
        expect(buttons.nth(d)).to_be_enabled()

    # An error answer shows the server's detail, and the buttons stay usable.
    page.route("**/feedback", lambda route: route.fulfill(status=503, json={"detail": "the database is locked"})
               if route.request.method == "POST" else route.continue_())
    page.get_by_role("button", name="It's a 4").click()
    expect(page.locator("#feedback-status")).to_have_text("the database is locked")
    expect(buttons.nth(4)).to_be_enabled()
    page.unroute("**/feedback")
    assert server.get("/feedback")["total"] == after["total"]

    page.get_by_role("button", name="Clear").click()
    expect(feedback).to_be_hidden()
    assert [e for e in digits.errors if "503" not in e] == []


# ---- the active model ---------------------------------------------------------------------------------

def test_a_newly_active_model_is_announced_and_the_drawing_predicted_again(digits: DigitsPage, server: Server):
    page = digits.page
    expect(page.locator("#model-version")).to_have_text(server.original_version)
    digits.draw(ONE)
    expect(page.locator("#model-notice")).to_be_hidden()

    with page.expect_response(lambda r: r.url.endswith("/predict") and r.ok
                              and r.json().get("model_version") == COPY_VERSION, timeout=15_000) as again:
        server.activate(COPY_VERSION)  # as a finished training job that was promoted does
    assert again.value.json()["digit"] == 1
    expect(page.locator("#model-version")).to_have_text(COPY_VERSION)
    expect(page.locator("#model-notice")).to_be_visible()
    expect(page.locator("#model-notice")).to_contain_text(f"Now using model {COPY_VERSION}")
    assert digits.errors == []


# ---- training -----------------------------------------------------------------------------------------

def test_training_from_the_page_shows_progress_a_live_chart_and_the_outcome(digits: DigitsPage, server: Server,
                                                                            mnist_for_training: Path):
    page = digits.page
    expect(page.locator("#job")).to_be_hidden()
    expect(page.get_by_label("Admin token")).to_be_hidden()  # this server asks for none
    page.get_by_label("Epochs").fill("1")
    expect(page.get_by_label("Architecture")).to_have_value("seed")
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/train")) as started:
        page.get_by_role("button", name="Start training").click()
    assert started.value.request.post_data_json == {"architecture": "seed", "epochs": 1, "include_feedback": False}
    assert started.value.status == 202, started.value.text()
    job_id = started.value.json()["job_id"]

    expect(page.locator("#job")).to_be_visible()
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.get_by_role("button", name="Start training")).to_be_disabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_visible()

    # Moving: the percent and the chart change while it runs.
    status = page.locator("#job-status")
    try:
        page.wait_for_function("""() => {
            const status = document.getElementById("job-status").textContent;
            return status !== "queued" && status !== "running" ||
                   parseInt(document.getElementById("job-percent").textContent) > 0; }""",
                               timeout=TRAINING_TIMEOUT_MS)
    finally:
        log = server.job_log(job_id)
    assert status.inner_text() in ("running", "succeeded"), log
    first_percent, first_chart = shown_percent(page), canvas_hash(page)
    expect(status).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)

    job = server.get(f"/train/{job_id}")
    assert job["status"] == "succeeded", server.job_log(job_id)
    assert shown_percent(page) == 100 > first_percent
    assert canvas_hash(page) != first_chart, "the chart was redrawn with the later steps"
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    progress = page.evaluate("window.__progress")
    running = [p for p in progress if p["status"] == "running"]
    percents = [int(p["percent"].rstrip("%")) for p in running]
    assert any(0 < p < 100 for p in percents), progress
    assert percents == sorted(percents), "the percent only grows"
    assert any(p["eta"].endswith("left") for p in running), "an ETA was shown while it ran"
    assert any(p["epoch"] == "epoch 1 of 1" for p in running)
    assert len({p["chart"] for p in running}) >= 2, "the chart moved while it ran"
    label = page.locator("#train-chart").get_attribute("aria-label")
    assert "validation accuracy" in label and "after epoch 1" in label, label

    outcome = page.locator("#job-outcome")
    expect(outcome).to_be_visible()
    accuracy = job["metrics"]["val_accuracy"]
    expect(outcome).to_contain_text(f"validation accuracy {accuracy * 100:.1f}%")
    expect(outcome).to_contain_text("Promoted" if job["promoted"] else "Not promoted")
    expect(outcome).to_contain_text(job["decision"])
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()
    if job["promoted"]:
        expect(page.locator("#model-version")).to_have_text(job["model_version"], timeout=10_000)
    assert digits.errors == []


def test_a_running_job_is_joined_on_409_and_on_load_and_can_be_cancelled(digits: DigitsPage, server: Server,
                                                                         mnist_for_training: Path):
    page = digits.page
    # Until the page itself asks to train, its regular look for running jobs must not find this one.
    hidden = [True]

    def list_without_the_job(route):
        if route.request.method == "POST":
            hidden[0] = False
            route.continue_()
        elif hidden[0]:
            route.fulfill(json={"jobs": []})
        else:
            route.continue_()

    page.route("**/train", list_without_the_job)
    job_id = server.send("POST", "/train", {"architecture": "seed", "epochs": 20})["job_id"]

    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/train")) as refused:
        page.get_by_role("button", name="Start training").click()
    assert refused.value.status == 409
    expect(page.locator("#train-message")).to_have_text(refused.value.json()["detail"])
    expect(page.locator("#job-id")).to_have_text(job_id)  # it follows the job that runs

    other = DigitsPage(page.context.new_page()).open()  # a page opened now finds the job by itself
    for each in (page, other.page):
        expect(each.locator("#job-id")).to_have_text(job_id)
        expect(each.locator("#job-status")).to_have_text("running", timeout=60_000)
        expect(each.get_by_role("button", name="Improve the current model with your corrections")).to_be_disabled()

    with other.page.expect_response(lambda r: r.request.method == "DELETE") as cancelled:
        other.page.get_by_role("button", name="Cancel").click()
    assert cancelled.value.ok, cancelled.value.text()
    for each in (other.page, page):
        expect(each.locator("#job-status")).to_have_text("cancelled", timeout=CANCEL_TIMEOUT_MS)
        expect(each.locator("#job-outcome")).to_contain_text("Cancelled")
        expect(each.get_by_role("button", name="Improve the current model with your corrections")).to_be_enabled()
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()  # the one unfolded here
    assert server.get(f"/train/{job_id}")["status"] == "cancelled", server.job_log(job_id)
    assert [e for e in digits.errors if "409" not in e] == []
    assert other.errors == []


def test_an_interrupted_job_is_shown_on_load_and_resumes_from_its_checkpoint(digits: DigitsPage, server: Server,
                                                                           mnist_for_training: Path):
    job_id = server.send("POST", "/train", {"architecture": "seed", "epochs": 3})["job_id"]
    deadline = time.monotonic() + TRAINING_TIMEOUT_MS / 1000
    while (server.get(f"/train/{job_id}")["epoch"] or 0) < 2:  # epoch 1 done and checkpointed
        assert time.monotonic() < deadline, server.job_log(job_id)
        time.sleep(0.2)
    first_epoch = server.get(f"/train/{job_id}")["history"][0]
    pid = int(subprocess.check_output(["pgrep", "-f", "--", f"--job {job_id}"]).split()[0])
    os.kill(pid, signal.SIGKILL)  # as if the machine went down under the trainer
    while server.get(f"/train/{job_id}")["status"] != "interrupted":
        assert time.monotonic() < deadline, server.job_log(job_id)
        time.sleep(0.2)

    page = DigitsPage(digits.page.context.new_page()).open()  # opened now: it shows the interrupted job
    expect(page.page.locator("#job-id")).to_have_text(job_id)
    expect(page.page.locator("#job-status")).to_have_text("interrupted")
    expect(page.page.locator("#job-outcome")).to_contain_text("Resume goes on after the last finished epoch.")
    expect(page.page.get_by_role("button", name="Cancel")).to_be_hidden()
    with page.page.expect_response(lambda r: r.url.endswith(f"/train/{job_id}/resume")) as resumed:
        page.page.get_by_role("button", name="Resume").click()
    assert resumed.value.status == 202, resumed.value.text()
    expect(page.page.get_by_role("button", name="Resume")).to_be_hidden()
    expect(page.page.locator("#job-status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    job = server.get(f"/train/{job_id}")
    assert [h["epoch"] for h in job["history"]] == [1, 2, 3], server.job_log(job_id)
    assert job["history"][0] == first_epoch  # carried on from the checkpoint, epoch 1 not trained again
    assert page.errors == []


def test_refusals_and_failed_jobs_show_the_servers_words(digits: DigitsPage):
    """Answers a test server cannot easily give (403, a job that fails), played by routes."""
    page = digits.page
    page.route("**/train", lambda route: route.fulfill(
        status=403, json={"detail": "training and activation answer only this machine"})
        if route.request.method == "POST" else route.continue_())
    page.get_by_label("Include my feedback").check()
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/train")) as sent:
        page.get_by_role("button", name="Start training").click()
    # Epochs left empty: the architecture's recipe (its count is the placeholder)
    assert sent.value.post_data_json == {"architecture": "seed", "include_feedback": True}
    assert page.get_by_label("Epochs").get_attribute("placeholder") == "30"
    expect(page.locator("#train-message")).to_have_text("training and activation answer only this machine")
    expect(page.locator("#job")).to_be_hidden()
    expect(page.get_by_label("Admin token")).to_be_hidden()  # a 403 without a token: no token would help
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()
    page.unroute("**/train")

    page.get_by_label("Epochs").fill("0")
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#train-message")).to_have_text(
        "Epochs must be a whole number from 1 to 200, or empty for the recipe's.")
    page.get_by_label("Epochs").fill("2")

    job_id = "f00dfeedbeef"
    failed = {"job_id": job_id, "status": "failed", "epoch": 1, "n_epochs": 2, "step": 3, "n_steps": 391,
              "progress": 0.004, "eta_s": None, "loss": 2.1, "samples_per_s": 9000.0, "history": [],
              "curve": [{"progress": 0.002, "loss": 2.3}, {"progress": 0.004, "loss": 2.1}], "metrics": None,
              "model_version": None, "promoted": None, "decision": None,
              "error": "MemoryError: Unable to allocate 150. MiB", "cancel_requested": False}
    page.route("**/train", lambda route: route.fulfill(status=202, json={"job_id": job_id, "status": "queued"})
               if route.request.method == "POST" else route.continue_())
    page.route(f"**/train/{job_id}/events", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        body=f"event: done\ndata: {json.dumps(failed)}\n\n"))
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#job-status")).to_have_text("failed")
    expect(page.locator("#job-outcome")).to_contain_text("MemoryError: Unable to allocate 150. MiB")
    expect(page.locator("#job-outcome")).to_contain_text("the current model stays")
    expect(page.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.get_by_role("button", name="Start training")).to_be_enabled()
    assert [e for e in digits.errors if "403" not in e] == []


# ---- the form's choices and the admin token ----------------------------------------------------------

def test_the_architecture_choices_come_from_the_server_with_seed_chosen(digits: DigitsPage, server: Server):
    page = digits.page
    architecture = page.get_by_label("Architecture")
    names = server.get("/architectures")["architectures"]
    assert "seed" in names and len(names) > 1, names
    expect(architecture.locator("option")).to_have_text(names)
    assert architecture.locator("option").evaluate_all("options => options.map(o => o.value)") == names
    expect(architecture).to_have_value("seed")

    # Without an answer, the page offers `seed` alone.
    page.route("**/architectures", lambda route: route.fulfill(status=500, json={"detail": "boom"}))
    page.reload()
    expect(page.locator("#model-info")).to_have_attribute("data-state", "ready")
    expect(architecture.locator("option")).to_have_text(["seed"])
    expect(architecture).to_have_value("seed")
    assert [e for e in digits.errors if "500" not in e] == []


def test_a_server_with_an_admin_token_gets_it_from_a_field_that_appears_on_401(page: Page, token_server: Server):
    digits = DigitsPage(page).open(token_server.url)
    open_new_model_form(page)
    token_field = page.get_by_label("Admin token")
    start = page.get_by_role("button", name="Start training")
    message = page.locator("#train-message")
    expect(token_field).to_be_hidden()
    page.get_by_label("Epochs").fill("20")

    def start_training():
        with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/train")) as answer:
            start.click()
        return answer.value

    refused = start_training()
    assert refused.status == 401
    assert "authorization" not in refused.request.headers
    expect(token_field).to_be_visible()
    expect(token_field).to_have_attribute("type", "password")
    expect(token_field).to_be_focused()
    expect(page.locator("#admin-token-hint")).to_be_visible()
    expect(message).to_contain_text("admin token")
    expect(page.locator("#job")).to_be_hidden()
    expect(start).to_be_enabled()

    token_field.fill("not-the-token")
    wrong = start_training()
    assert wrong.status == 403
    assert wrong.request.headers["authorization"] == "Bearer not-the-token"
    expect(message).to_have_text(wrong.json()["detail"])
    assert wrong.json()["detail"] == "the bearer token is wrong"
    expect(token_field).to_be_visible()
    expect(page.locator("#job")).to_be_hidden()

    token_field.fill(ADMIN_TOKEN)
    started = start_training()
    assert started.status == 202, started.text()
    assert started.request.headers["authorization"] == f"Bearer {ADMIN_TOKEN}"
    assert page.evaluate("Object.values(sessionStorage)") == [ADMIN_TOKEN]
    job_id = started.json()["job_id"]
    expect(message).to_have_text("")
    expect(page.locator("#job-id")).to_have_text(job_id)
    expect(page.locator("#job-status")).to_have_text("running", timeout=60_000)

    with page.expect_response(lambda r: r.request.method == "DELETE") as cancelled:
        page.get_by_role("button", name="Cancel").click()
    assert cancelled.value.ok, cancelled.value.text()
    assert cancelled.value.request.headers["authorization"] == f"Bearer {ADMIN_TOKEN}"
    expect(page.locator("#job-status")).to_have_text("cancelled", timeout=CANCEL_TIMEOUT_MS)
    assert token_server.get(f"/train/{job_id}")["status"] == "cancelled", token_server.job_log(job_id)
    assert [e for e in digits.errors if "401" not in e and "403" not in e] == []


SEED_SHIPPED = "seed-20261125-150552-e40856a3"  # a shipped network that fine-tunes in seconds


def test_improving_the_current_model_comes_first_and_shows_held_out_corrections_before_and_after(
        digits: DigitsPage, server: Server, mnist_for_training: Path):
    from model.drawn_digits import drawn_digits
    page = digits.page
    server.activate(SEED_SHIPPED)
    drawn = drawn_digits(per_style=1, seed=4)
    for strokes, label in zip(drawn.strokes[:10], drawn.labels[:10]):
        server.send("POST", "/feedback", {"strokes": [s.tolist() for s in strokes], "label": int(label)})
    page.reload()
    improve = page.get_by_role("button", name="Improve the current model with your corrections")
    retrain = page.get_by_text("Or train a new model from scratch")
    expect(improve).to_be_visible()
    expect(page.get_by_label("Epochs")).to_be_hidden()  # the full retrain is folded away, second
    first = page.evaluate("""() => [...document.querySelectorAll('#train button, #train summary')]
                                   .filter((e) => e.offsetParent !== null).map((e) => e.innerText.trim())""")
    assert first[:2] == [improve.inner_text().strip(), retrain.inner_text().strip()], first
    # a small budget for the test: the page's own request, with the epochs and images cut down on the way
    page.route("**/train", lambda route: route.continue_(post_data=json.dumps(
        {**route.request.post_data_json, "epochs": 1, "train_size": 1000})))
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith("/train")) as started:
        improve.click()
    assert started.value.request.post_data_json == {"fine_tune": True, "include_feedback": True, "epochs": 1,
                                                    "train_size": 1000}
    assert started.value.status == 202, started.value.text()
    job_id = started.value.json()["job_id"]
    expect(improve).to_be_disabled()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=TRAINING_TIMEOUT_MS)
    job = server.get(f"/train/{job_id}")
    assert job["recipe"]["fine_tune"] and job["recipe"]["start_from"] == f"{SEED_SHIPPED}.npz", server.job_log(job_id)
    m = job["metrics"]
    outcome = page.locator("#job-outcome")
    expect(outcome).to_contain_text(f"Improved {SEED_SHIPPED} into {job['model_version']}: validation accuracy "
                                    f"{100 * m['val_accuracy']:.1f}% (was {100 * m['val_accuracy_before']:.1f}%)")
    expect(outcome).to_contain_text(
        f"Held-out corrections (2 drawings it never trained on): {100 * m['feedback_accuracy_before']:.1f}% right "
        f"before, {100 * m['feedback_accuracy']:.1f}% after.")
    expect(outcome).to_contain_text(job["decision"])
    expect(improve).to_be_enabled()
    assert digits.errors == []
