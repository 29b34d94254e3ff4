"""The built distribution runs on its own: the page and the default model ship inside it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest

from server_support import STROKES_ONE, Server

ROOT = Path(__file__).resolve().parents[1]


def test_the_distribution_ships_the_model_that_active_names_and_its_report():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    active = (ROOT / "weights" / "ACTIVE").read_text().strip()
    shipped = config["package-data"]["app.shipped"]
    assert config["package-dir"] == {"app.static": "static", "app.shipped": "weights"}
    assert "ACTIVE" in shipped and active in shipped, f"pyproject.toml ships {shipped}, ACTIVE names {active}"
    assert f"reports/{Path(active).stem}/*" in shipped


@pytest.mark.slow
def test_an_installed_wheel_serves_the_page_and_the_default_model_from_any_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("digits-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITS_", "XDG_"))}
    env.update(HOME=str(tmp_path / "user"), PYTHONPATH=str(tmp_path / "site"))
    where = subprocess.run([sys.executable, "-c", "import app, model; print(app.__file__, model.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout
    assert where.split() == [str(tmp_path / "site" / "app" / "__init__.py"),
                             str(tmp_path / "site" / "model" / "__init__.py")]  # not the checkout

    srv = Server(None, None, cwd=elsewhere, HOME=str(tmp_path / "user"), PYTHONPATH=str(tmp_path / "site")).start()
    url = srv.url
    try:
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "<canvas" in page.text
        for asset in re.findall(r'(?:src|href)="([\w./-]+\.(?:js|css|svg))"', page.text):
            assert httpx.get(f"{url}/{asset}").status_code == 200, asset
        model = httpx.get(url + "/model").json()
        assert f"{model['version']}.npz" == (ROOT / "weights" / "ACTIVE").read_text().strip()
        assert model["report_url"] and httpx.get(url + model["report_url"]).status_code == 200
        assert httpx.post(url + "/predict", json={"strokes": STROKES_ONE}).json()["digit"] == 1
    finally:
        srv.stop()
    assert (tmp_path / "user" / ".local" / "share" / "digits" / "models" / "ACTIVE").is_file()
