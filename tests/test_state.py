"""Where the service keeps its state: one folder (DIGITS_HOME), filled from the shipped models, so a
checkout's weights/ and the MNIST folder are only read."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from app.settings import Settings
from model.active import ACTIVE_FILE, active_path, seed_models
from server_support import STROKES_ONE, Server

ROOT = Path(__file__).resolve().parents[1]


def test_the_models_database_and_job_logs_default_to_the_home_folder(tmp_path):
    settings = Settings(home=tmp_path / "home", data_dir=tmp_path / "mnist")
    assert settings.weights_dir == tmp_path / "home" / "models"
    assert settings.database == tmp_path / "home" / "digits.sqlite3"  # not in the MNIST folder any more
    assert Settings(_env_file=None).home == Path(os.environ["DIGITS_HOME"])  # the variable names it


def test_a_new_home_is_filled_from_the_shipped_models_once_and_never_overwritten(tmp_path):
    shipped = ROOT / "weights"
    settings = Settings(home=tmp_path / "home")
    settings.check_paths()
    models = settings.weights_dir
    assert (models / ACTIVE_FILE).read_text() == (shipped / ACTIVE_FILE).read_text()
    assert active_path(models).read_bytes() == active_path(shipped).read_bytes()
    assert sorted(p.name for p in models.glob("*.npz")) == sorted(p.name for p in shipped.glob("*.npz"))
    version = active_path(shipped).stem
    assert (models / "reports" / version / "index.html").is_file()
    # the user's choice and files stay as they are at the next start
    (models / ACTIVE_FILE).write_text("mlp-20261125-151035-5eec12f8.npz\n")
    (models / "mine.npz").write_bytes(b"a user's model")
    assert seed_models(models, shipped) == []
    assert (models / ACTIVE_FILE).read_text() == "mlp-20261125-151035-5eec12f8.npz\n"
    assert (models / "mine.npz").read_bytes() == b"a user's model"


def test_a_folder_named_by_digits_weights_dir_is_used_as_it_is(tmp_path):
    with pytest.raises(ValueError, match="DIGITS_WEIGHTS_DIR=.* is not a folder"):
        Settings(home=tmp_path / "home", weights_dir=tmp_path / "missing").check_paths()
    assert not (tmp_path / "home").exists()


def git_status() -> list[str]:
    """What the service could have written into the checkout: new files anywhere, and changes to the
    shipped models (`git status` of a clean clone is empty; a working copy's own edits to tracked code
    are not the service's)."""
    lines = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    return [line for line in lines if line.startswith("??") or line[3:].startswith("weights/")]


def folder_state(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.slow
def test_serving_and_retraining_from_a_checkout_write_only_to_the_home_folder(tmp_path, mnist_dir):
    """`digits serve` from the checkout with a fresh HOME: a training job and feedback leave `git status`
    and the MNIST folder as they were, and the feedback is still there after a restart."""
    before, mnist_before = git_status(), folder_state(mnist_dir)
    srv = Server(None, mnist_dir, HOME=str(tmp_path / "user")).start()
    try:
        with srv.client() as client:
            job = client.post("/train", json={"architecture": "seed", "epochs": 1, "validation_size": 1000}).json()
            deadline = time.monotonic() + 300
            while (state := client.get(f"/train/{job['job_id']}").json())["status"] in ("queued", "running"):
                assert time.monotonic() < deadline, state
                time.sleep(0.5)
            assert state["status"] == "succeeded", state
            assert client.post("/feedback", json={"strokes": STROKES_ONE, "label": 1}).status_code == 201
    finally:
        srv.stop()
    home = tmp_path / "user" / ".local" / "share" / "digits"
    assert (home / "models" / f"{state['model_version']}.npz").is_file()
    assert (home / "jobs" / f"{job['job_id']}.log").is_file() and (home / "digits.sqlite3").is_file()
    assert git_status() == before
    assert folder_state(mnist_dir) == mnist_before

    srv.start()
    try:
        with srv.client() as client:
            assert client.get("/feedback").json()["total"] == 1
            assert state["model_version"] in {m["version"] for m in client.get("/models").json()["models"]}
    finally:
        srv.stop()
