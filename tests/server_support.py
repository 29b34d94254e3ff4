"""A real `digits serve` in a subprocess for end-to-end tests, and a private copy of the shipped weights."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from model.active import ACTIVE_FILE

ROOT = Path(__file__).resolve().parents[1]
STROKES_ONE = [[[100, 20], [102, 140], [104, 260]]]


class Server:
    """`digits serve` in its own process group, so a test can kill it and all its workers at once."""

    def __init__(self, tmp: Path | None, mnist_dir: Path | None, workers: int | str = 1, *, cwd: Path = ROOT,
                 **env) -> None:
        """Over `tmp`/weights and a database in `tmp`/db, or (tmp None) over the default state folder
        of the HOME that `env` names; `env` is added to this environment less its DIGITS_ and XDG_ ones."""
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITS_", "XDG_"))}
        if tmp is not None:
            self.env.update(DIGITS_WEIGHTS_DIR=str(tmp / "weights"), DIGITS_DB_PATH=str(tmp / "db" / "digits.sqlite3"))
        if mnist_dir is not None:
            self.env["DIGITS_DATA_DIR"] = str(mnist_dir)
        self.env.update(env)
        self.workers, self.cwd, self.proc, self.url = workers, cwd, None, None

    def start(self) -> "Server":
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers",
                                      str(self.workers), "--log-level", "warning"], cwd=self.cwd, env=self.env,
                                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.proc.stderr.read().decode()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server and its workers, as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, **{"timeout": 30, **kwargs})


def copy_shipped_weights(folder: Path) -> Path:
    """A private copy of the shipped weights folder (the models and ACTIVE) in `folder`/weights."""
    (folder / "weights").mkdir()
    for path in (ROOT / "weights").glob("*.npz"):
        shutil.copy(path, folder / "weights" / path.name)
    shutil.copy(ROOT / "weights" / ACTIVE_FILE, folder / "weights" / ACTIVE_FILE)
    return folder


def run_async(coro):
    """asyncio.run(coro) in a thread of its own: Playwright's sync API (the page tests) leaves an event
    loop set in the main thread, where asyncio.run refuses to start another."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
