"""End to end against real uvicorn servers: training jobs, cancellation, auth, restarts, feedback
durability and hot-swap under load with two workers. Trains on the real MNIST (one epoch at a time)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from model.active import ACTIVE_FILE
from model.weights import read_meta
from server_support import STROKES_ONE, Server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
@pytest.fixture
def server(tmp_state, mnist_dir):
    srv = Server(tmp_state, mnist_dir).start()
    yield srv
    srv.stop()


def wait_for(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/train/{job_id}").json()
        if job["status"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}")


def wait_until_training(client: httpx.Client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/train/{job_id}").json()
        if job["status"] == "running" and job["step"]:
            return job
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never started its steps")


def test_a_training_job_succeeds_and_predict_then_answers_with_the_new_version(server):
    with server.client() as client:
        old_version = client.get("/model").json()["version"]
        response = client.post("/train", json={"architecture": "seed", "epochs": 1, "promote": "always"})
        assert response.status_code == 202
        job_id = response.json()["job_id"]
        assert response.json()["status"] == "queued"
        assert response.headers["location"] == f"/train/{job_id}"
        job = wait_for(client, job_id, ("succeeded", "failed", "interrupted"))
        assert job["status"] == "succeeded", job
        assert job["progress"] == 1.0 and job["promoted"] is True
        assert job["decision"].startswith("promoted")
        assert len(job["history"]) == 1 and 0.9 < job["history"][0]["val_accuracy"] <= 1
        assert job["metrics"]["val_accuracy"] == job["history"][0]["val_accuracy"]
        assert job["curve"] and all(0 < p["progress"] <= 1 for p in job["curve"])
        new_version = job["model_version"]
        assert new_version != old_version
        deadline = time.monotonic() + 5
        while client.post("/predict", json={"strokes": STROKES_ONE}).json()["model_version"] != new_version:
            assert time.monotonic() < deadline, "the server did not switch to the new model"
            time.sleep(0.1)
        info = client.get("/model").json()
        assert info["version"] == new_version
        assert info["report_url"] == f"/reports/{new_version}/index.html"  # the job wrote its report
        report = client.get(info["report_url"])
        assert report.status_code == 200 and new_version in report.text
        versions = {m["version"]: m for m in client.get("/models").json()["models"]}
        assert versions[new_version]["active"] and not versions[old_version]["active"]
        assert versions[new_version]["job_id"] == job_id
        # roll back, then the job list shows the finished job
        assert client.post(f"/models/{old_version}/activate").json() == {"active": old_version}
        assert client.post("/predict", json={"strokes": STROKES_ONE}).json()["model_version"] == old_version
        assert client.get("/train").json()["jobs"][0]["job_id"] == job_id


def test_a_worse_model_is_not_promoted_unless_asked(server):
    with server.client() as client:
        active = client.get("/model").json()["version"]
        job_id = client.post("/train", json={"epochs": 1, "learning_rate": 0.001, "lr_decay": 1.0}).json()["job_id"]
        job = wait_for(client, job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded" and job["promoted"] is False
        assert job["decision"].startswith(f"kept {active}")
        assert client.get("/model").json()["version"] == active


def test_events_stream_progress_and_end_with_done(server):
    with server.client() as client:
        job_id = client.post("/train", json={"epochs": 1}).json()["job_id"]
        events = []
        with client.stream("GET", f"/train/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
        assert events[-1] == "done" and events.count("done") == 1
        assert events.count("progress") >= 2
        assert client.get(f"/train/{job_id}").json()["status"] == "succeeded"


def test_a_second_job_gets_409_and_delete_cancels_within_two_seconds(server):
    with server.client() as client:
        job_id = client.post("/train", json={"epochs": 30}).json()["job_id"]
        second = client.post("/train", json={"epochs": 1})
        assert second.status_code == 409
        assert job_id in second.json()["detail"]
        wait_until_training(client, job_id)
        started = time.monotonic()
        assert client.delete(f"/train/{job_id}").status_code == 202
        job = wait_for(client, job_id, ("cancelled", "failed", "succeeded"), timeout=10)
        assert job["status"] == "cancelled"
        assert time.monotonic() - started < 2.0
        assert client.delete(f"/train/{job_id}").status_code == 409
        assert client.post("/train", json={"epochs": 1}).status_code == 202  # free again
        assert client.get("/train/nope").status_code == 404


def test_with_a_token_training_needs_it(tmp_state, mnist_dir):
    srv = Server(tmp_state, mnist_dir, DIGITS_ADMIN_TOKEN="s3cret").start()
    try:
        with srv.client() as client:
            assert client.post("/train", json={"epochs": 1}).status_code == 401
            wrong = client.post("/train", json={"epochs": 1}, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403
            version = client.get("/model").json()["version"]
            assert client.post(f"/models/{version}/activate").status_code == 401
            right = client.post("/train", json={"epochs": 1}, headers={"Authorization": "Bearer s3cret"})
            assert right.status_code == 202
            job_id = right.json()["job_id"]
            assert client.delete(f"/train/{job_id}").status_code == 401
            assert client.delete(f"/train/{job_id}", headers={"Authorization": "Bearer s3cret"}).status_code == 202
            assert client.get(f"/train/{job_id}").status_code == 200  # reading needs no token
    finally:
        srv.stop()


def test_a_job_whose_process_died_with_the_server_is_interrupted_after_restart(tmp_state, mnist_dir):
    srv = Server(tmp_state, mnist_dir).start()
    with srv.client() as client:
        job_id = client.post("/train", json={"epochs": 30}).json()["job_id"]
        job = wait_until_training(client, job_id)
    pid = int(subprocess.check_output(["pgrep", "-f", "--", f"--job {job_id}"]).split()[0])
    srv.kill()
    os.kill(pid, signal.SIGKILL)  # the machine went down: server and trainer both gone
    srv.start()
    try:
        with srv.client() as client:
            job = client.get(f"/train/{job_id}").json()
            assert job["status"] == "interrupted"
            assert "stopped without finishing" in job["error"]
            assert client.post("/train", json={"epochs": 1}).status_code == 202  # not blocked by the dead job
    finally:
        srv.stop()


def test_an_interrupted_job_resumes_from_its_last_epoch_on_the_same_data(tmp_state, mnist_dir):
    srv = Server(tmp_state, mnist_dir).start()
    checkpoint = tmp_state / "weights"
    try:
        with srv.client() as client:
            for _ in range(10):
                assert client.post("/feedback", json={"strokes": STROKES_ONE, "label": 1}).status_code == 201
            job_id = client.post("/train", json={"epochs": 3, "include_feedback": True}).json()["job_id"]
            deadline = time.monotonic() + 240
            while not (client.get(f"/train/{job_id}").json()["epoch"] or 0) >= 2:  # epoch 1 checkpointed
                assert time.monotonic() < deadline, client.get(f"/train/{job_id}").json()
                time.sleep(0.2)
            assert [p.name for p in checkpoint.glob(f".job-{job_id}.ckpt*")] == [f".job-{job_id}.ckpt.npz"]
            first_epoch = client.get(f"/train/{job_id}").json()["history"][0]
            pid = int(subprocess.check_output(["pgrep", "-f", "--", f"--job {job_id}"]).split()[0])
            os.kill(pid, signal.SIGKILL)  # the trainer dies mid-epoch; the server lives on
            job = wait_for(client, job_id, ("interrupted",), timeout=30)
            assert job["resumable"] is True and job["checkpointed"] is True
            # Feedback sent after the job started is not part of its data, before or after resuming.
            assert client.post("/feedback", json={"strokes": STROKES_ONE, "label": 7}).status_code == 201

            resumed = client.post(f"/train/{job_id}/resume")
            assert resumed.status_code == 202, resumed.text
            assert resumed.headers["location"] == f"/train/{job_id}"
            again = client.post(f"/train/{job_id}/resume")
            assert again.status_code == 409 and "only an interrupted job" in again.json()["detail"]
            job = wait_for(client, job_id, ("succeeded", "failed", "interrupted", "cancelled"))
            assert job["status"] == "succeeded", job
            assert [h["epoch"] for h in job["history"]] == [1, 2, 3]
            assert job["history"][0] == first_epoch  # kept from before the kill, not trained again
            assert job["metrics"]["n_feedback"] == 10
            assert job["resumable"] is False
            assert list(checkpoint.glob(f".job-{job_id}*")) == []  # nothing left behind
            done = client.post(f"/train/{job_id}/resume")
            assert done.status_code == 409 and "succeeded" in done.json()["detail"]
            assert client.post("/train/nosuchjob/resume").status_code == 404
    finally:
        srv.stop()


def test_feedback_survives_concurrent_writes_a_killed_server_and_a_restart(tmp_state, mnist_dir):
    # 60 corrections from one address: over the default per-client limit, which this test is not about
    srv = Server(tmp_state, mnist_dir, workers=2, DIGITS_FEEDBACK_PER_MINUTE="1000").start()
    try:
        def send(i):
            with srv.client() as client:
                return client.post("/feedback", json={"strokes": STROKES_ONE, "label": i % 10}).status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(send, range(60)))
        assert codes == [201] * 60
        srv.kill()
        srv.start()
        with srv.client() as client:
            summary = client.get("/feedback").json()
        assert summary["total"] == 60
        assert all(summary["per_label"][str(d)]["count"] == 6 for d in range(10))
        assert summary["per_label"]["1"]["model_right"] == 6  # a vertical stroke is a 1
    finally:
        srv.stop()


def test_two_workers_swap_models_under_load_without_one_failed_request(tmp_state, mnist_dir):
    weights = tmp_state / "weights"
    shipped = read_meta(weights / (weights / ACTIVE_FILE).read_text().strip())
    # A second version to swap to: the same network under another version name.
    second = weights / "second.npz"
    with np.load(weights / (weights / ACTIVE_FILE).read_text().strip()) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "meta"}
    import json
    meta = {**shipped, "version": "second-version"}
    np.savez(second, **arrays, meta=np.array(json.dumps(meta)))
    srv = Server(tmp_state, mnist_dir, workers=2).start()
    try:
        stop_at = time.monotonic() + 8
        seen, failures = set(), []

        def hammer(_):
            with srv.client() as client:
                count = 0
                while time.monotonic() < stop_at:
                    r = client.post("/predict", json={"strokes": STROKES_ONE})
                    if r.status_code != 200:
                        failures.append(r.status_code)
                    else:
                        seen.add(r.json()["model_version"])
                    count += 1
                return count

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(hammer, i) for i in range(5)]
            with srv.client() as admin:
                for version in ["second-version", shipped["version"]] * 3:
                    time.sleep(1)
                    assert admin.post(f"/models/{version}/activate").status_code == 200
            total = sum(f.result() for f in futures)
        assert failures == []
        assert seen == {"second-version", shipped["version"]}
        assert total > 100
    finally:
        srv.stop()


def test_a_job_with_include_feedback_trains_on_it_and_reports_it_apart(server):
    with server.client() as client:
        for i in range(10):
            assert client.post("/feedback", json={"strokes": STROKES_ONE, "label": 1}).status_code == 201
        job_id = client.post("/train", json={"epochs": 1, "include_feedback": True}).json()["job_id"]
        job = wait_for(client, job_id, ("succeeded", "failed", "interrupted"))
        assert job["status"] == "succeeded", job
        metrics = job["metrics"]
        assert metrics["n_feedback"] == 10 and metrics["n_feedback_held_out"] == 2
        assert metrics["feedback_accuracy"] == 1.0  # a vertical stroke is a 1
        assert metrics["n_train"] > 50_000


SEED_SHIPPED = "seed-20261125-150552-e40856a3"   # a shipped network that fine-tunes in seconds
ENSEMBLE_SHIPPED = "ensemble-20261125-162143-d45b5add"


def test_fine_tuning_the_active_model_on_feedback_reports_held_out_corrections_before_and_after(server, tmp_state):
    from model.drawn_digits import drawn_digits
    drawn = drawn_digits(per_style=1, seed=3)  # one drawing of each style; 25 of them (the feedback limit: 30/min)
    with server.client() as client:
        assert client.post(f"/models/{ENSEMBLE_SHIPPED}/activate").status_code == 200
        refused = client.post("/train", json={"fine_tune": True})
        assert refused.status_code == 422
        assert refused.json() == {"detail": f"{ENSEMBLE_SHIPPED} is an ensemble; fine-tuning starts from one "
                                            f"network of seed, mlp, cnn, cnn_bn, cnn_deep: activate one, or "
                                            f"train a new model"}
        assert client.post(f"/models/{SEED_SHIPPED}/activate").status_code == 200
        for strokes, label in zip(drawn.strokes[:25], drawn.labels[:25]):
            body = {"strokes": [s.tolist() for s in strokes], "label": int(label)}
            assert client.post("/feedback", json=body).status_code == 201
        response = client.post("/train", json={"fine_tune": True, "epochs": 1, "train_size": 2000})
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["job_id"], ("succeeded", "failed", "interrupted"))
        assert job["status"] == "succeeded", job
        recipe = job["recipe"]
        assert (recipe["architecture"], recipe["fine_tune"]) == ("seed", True)
        assert recipe["start_from"] == f"{SEED_SHIPPED}.npz"
        assert (recipe["learning_rate"], recipe["include_feedback"]) == (0.05, True)  # seed's 0.5 / 10; feedback on
        metrics = job["metrics"]
        assert (metrics["n_feedback"], metrics["n_feedback_held_out"]) == (25, 5)
        assert metrics["n_train"] > 2000
        before, after = metrics["feedback_accuracy_before"], metrics["feedback_accuracy"]
        assert 0 <= before <= 1 and 0 <= after <= 1
        held_out = f"held-out corrections {100 * before:.1f}% before, {100 * after:.1f}% after (5 drawings)"
        assert held_out in job["decision"]
        assert f"{100 * metrics['val_accuracy']:.1f}%" in job["decision"]
        assert read_meta(tmp_state / "weights" / f"{job['model_version']}.npz")["fine_tuned_from"] == SEED_SHIPPED
