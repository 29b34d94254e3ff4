"""The evaluation report: `model.report.write_report` on real MNIST images, `digits evaluate --report`,
`GET /reports/...` with `report_url` in `GET /model`, and the shipped models' reports."""
from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.cli import main
from app.main import create_app
from app.settings import ROOT, Settings
from model.active import set_active
from model.calibrate import expected_calibration_error, scaled_probabilities
from model.data import load_split
from model.network import Network
from model.report import FIGURE_FILES, N_MISTAKES_SHOWN, write_report
from model.report_html import format_confidence
from model.weights import Model, load_model, read_meta

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VOID_TAGS = {"img", "meta", "link", "br", "hr", "input"}
N_IMAGES = 300
HISTORY = [{"epoch": e, "loss": 1 / e, "val_accuracy": 0.9 + e / 100, "learning_rate": 0.5 * 0.9 ** e,
            "seconds": 1.0} for e in range(1, 6)]


class Page(HTMLParser):
    """What a test needs from a report page: its images, its tables (by id, as cell text), and the
    attributes of every element with an id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.ids: dict[str, dict] = {}
        self.text_of: dict[str, str] = {}
        self._table = self._cell = None
        self._open: list[tuple[str, str | None]] = []  # (tag, id) of the elements the parser is inside
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if "id" in attrs:
            self.ids[attrs["id"]] = attrs
            self.text_of[attrs["id"]] = ""
        if tag not in VOID_TAGS:
            self._open.append((tag, attrs.get("id")))
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag == "td" and self._table is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        while self._open and self._open.pop()[0] != tag:
            pass
        if tag == "td" and self._cell is not None:
            self._table[-1].append(self._cell)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        for _, element_id in self._open:
            if element_id is not None:
                self.text_of[element_id] += data

    def body_rows(self, table_id: str) -> list[list[str]]:
        return [row for row in self.tables[table_id] if row]  # the header row has <th>s only


def read_page(index: Path) -> Page:
    return Page(index.read_text(encoding="utf-8"))


class FixedLogits:
    """A stand-in network that answers the given logits, so a test decides exactly which answers are wrong."""

    def __init__(self, Z: np.ndarray) -> None:
        self.Z = Z

    def logits(self, X: np.ndarray) -> np.ndarray:
        assert len(X) == len(self.Z), f"{len(X)} images for {len(self.Z)} rows of logits"
        return self.Z

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The drawn digits, which the report reads too: always a 0."""
        return np.zeros(len(X), dtype=np.int64)


@pytest.fixture(scope="module")
def test_slice(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    X, y = load_split(mnist_dir, "t10k")
    return X[:N_IMAGES], y[:N_IMAGES]


@pytest.fixture(scope="module")
def seed_model() -> Model:
    """The seed architecture, untrained: plenty of mistakes, each with its own confidence."""
    return Model(Network.from_architecture("seed", seed=3),
                 {"version": "seed-test", "architecture": {"name": "seed"}, "created_at": "2026-01-01T00:00:00+00:00",
                  "metrics": {"test_accuracy": 0.25, "best_epoch": 4, "n_test": N_IMAGES}, "history": HISTORY})


def softmax64(Z: np.ndarray) -> np.ndarray:
    Z = Z.astype(np.float64) - Z.max(axis=1, keepdims=True)
    return np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)


def logits_with_mistakes(y: np.ndarray, wrong: dict[int, float]) -> np.ndarray:
    """Confident right answers everywhere but at `wrong`: {index: margin}, answered (true + 1) % 10."""
    Z = 12 * np.eye(10)[y]
    for i, margin in wrong.items():
        Z[i] = 0
        Z[i, (y[i] + 1) % 10] = margin
    return Z


# ---- write_report ------------------------------------------------------------------------------------

def test_the_report_writes_index_html_and_every_png_it_links_to(seed_model, test_slice, tmp_path):
    X, y = test_slice
    out = tmp_path / "report"
    index = write_report(seed_model, X, y, out)

    assert index == out / "index.html"
    page = read_page(index)
    assert sorted(img["src"] for img in page.images) == sorted(FIGURE_FILES)
    for img in page.images:
        assert len(img.get("alt", "")) > 20, f"{img['src']} needs alt text"
        data = (out / img["src"]).read_bytes()
        assert data.startswith(PNG_SIGNATURE), img["src"]
        with Image.open(out / img["src"]) as png:
            assert 300 <= png.width <= 1200 and png.height <= 1200, (img["src"], png.size)
    assert sorted(p.name for p in out.iterdir()) == sorted([*FIGURE_FILES, "index.html"]), "no temporary files left"
    assert sum(p.stat().st_size for p in out.iterdir()) < 1_000_000
    predicted = softmax64(seed_model.network.logits(X)).argmax(axis=1)
    assert page.text_of["test-accuracy"] == f"{100 * (predicted == y).mean():.1f}%"
    assert page.text_of["model-version"] == "seed-test"
    assert ["test_accuracy", "25.0%"] in page.body_rows("metrics")
    assert "no-history" not in page.ids and "no-calibration" in page.ids


def test_the_mistakes_shown_are_the_most_confident_wrong_answers(seed_model, test_slice, tmp_path):
    X, y = test_slice
    page = read_page(write_report(seed_model, X, y, tmp_path))
    probs = softmax64(seed_model.network.logits(X))
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.nonzero(predicted != y)[0]
    assert len(wrong) > N_MISTAKES_SHOWN  # an untrained network: the grid is full

    summary = page.ids["mistakes-summary"]
    assert (int(summary["data-mistakes"]), int(summary["data-total"])) == (len(wrong), N_IMAGES)
    assert int(summary["data-shown"]) == N_MISTAKES_SHOWN
    rows = page.body_rows("mistakes")
    assert [row[0] for row in rows] == [str(k) for k in range(1, N_MISTAKES_SHOWN + 1)]
    shown = [int(row[1]) for row in rows]
    for (_, i, true, said, conf) in rows:
        i = int(i)
        assert int(true) == y[i] and int(said) == predicted[i] and int(said) != int(true)
        assert conf == format_confidence(confidence[i])
    assert np.all(np.diff(confidence[shown]) <= 0), "most confident first"
    left_out = np.setdiff1d(wrong, shown)
    assert confidence[shown].min() >= confidence[left_out].max()


def test_precision_and_recall_per_digit_match_the_predictions(seed_model, test_slice, tmp_path):
    X, y = test_slice
    page = read_page(write_report(seed_model, X, y, tmp_path))
    predicted = softmax64(seed_model.network.logits(X)).argmax(axis=1)

    def pct(hits: int, total: int) -> str:
        return f"{100 * hits / total:.1f}%" if total else "—"

    expected = [[str(d), pct(np.sum((predicted == d) & (y == d)), np.sum(predicted == d)),
                 pct(np.sum((predicted == d) & (y == d)), np.sum(y == d)),
                 f"{np.sum(y == d):,}", f"{np.sum(predicted == d):,}"] for d in range(10)]
    assert page.body_rows("per-class") == expected


def test_the_page_shows_the_drawn_digits_per_style_as_the_model_reads_them(seed_model, test_slice, tmp_path):
    from model.drawn_digits import evaluate_drawn, report_drawn_set, stroke_templates
    X, y = test_slice
    page = read_page(write_report(seed_model, X, y, tmp_path))
    ds, X_drawn = report_drawn_set()
    result = evaluate_drawn(seed_model.network.predict, ds, X_drawn)
    rows = page.body_rows("drawn-styles")
    assert [row[0] for row in rows] == list(stroke_templates())
    assert rows == [[style, f"{100 * acc:.1f}%", f"{ds.styles.count(style):,}"]
                    for style, acc in result["per_style"].items()]
    assert page.text_of["drawn-accuracy"] == f"{100 * result['accuracy']:.1f}%"
    always_zero = read_page(write_report(Model(FixedLogits(seed_model.network.logits(X)), {"version": "z"}), X, y,
                                         tmp_path / "zero"))
    assert [row[1] for row in always_zero.body_rows("drawn-styles")] == [
        "100.0%" if style.startswith("0") else "0.0%" for style in stroke_templates()]
    assert "drawn-styles" not in read_page(write_report(seed_model, X, y, tmp_path / "without", drawn=False)).tables


def test_a_model_with_few_mistakes_shows_exactly_those_in_a_smaller_grid(test_slice, tmp_path):
    X, y = test_slice
    Z = logits_with_mistakes(y, {5: 1.0, 17: 3.0, 30: 2.0})
    model = Model(FixedLogits(Z), {"version": "few", "history": HISTORY})
    page = read_page(write_report(model, X, y, tmp_path))

    assert page.ids["mistakes-summary"]["data-mistakes"] == "3"
    rows = page.body_rows("mistakes")
    assert [(int(r[1]), int(r[2]), int(r[3])) for r in rows] == [(i, y[i], (y[i] + 1) % 10) for i in (17, 30, 5)]
    assert rows[0][4] == format_confidence(np.exp(3) / (np.exp(3) + 9))
    with Image.open(tmp_path / "mistakes.png") as png:
        assert png.width == 3 * 130  # three columns of 1.3 inches at 100 dpi


def test_without_mistakes_there_is_no_grid_and_an_older_one_is_removed(test_slice, tmp_path):
    X, y = test_slice
    write_report(Model(FixedLogits(logits_with_mistakes(y, {0: 2.0})), {"version": "m"}), X, y, tmp_path)
    assert (tmp_path / "mistakes.png").is_file()

    page = read_page(write_report(Model(FixedLogits(logits_with_mistakes(y, {})), {"version": "m"}), X, y, tmp_path))
    assert page.ids["mistakes-summary"]["data-mistakes"] == "0"
    assert page.text_of["test-accuracy"] == "100.0%"
    assert "mistakes.png" not in [img["src"] for img in page.images]
    assert not (tmp_path / "mistakes.png").exists()


@pytest.mark.parametrize("meta", [{}, {"history": []}, {"history": None}, {"metrics": None, "history": [{}]}],
                         ids=["no-key", "empty", "null", "entries-without-epochs"])
def test_a_model_without_training_history_says_so_instead_of_drawing_curves(test_slice, tmp_path, meta):
    X, y = test_slice
    model = Model(FixedLogits(logits_with_mistakes(y, {3: 2.0})), {"version": "no-history", **meta})
    page = read_page(write_report(model, X, y, tmp_path))

    assert "no training history" in page.text_of["no-history"]
    srcs = [img["src"] for img in page.images]
    assert "training.png" not in srcs and not (tmp_path / "training.png").exists()
    assert all((tmp_path / src).read_bytes().startswith(PNG_SIGNATURE) for src in srcs)


def test_a_calibrated_model_is_reported_with_scaled_confidences_and_ece_before_and_after(test_slice, tmp_path):
    X, y = test_slice
    rng = np.random.default_rng(1)
    Z = logits_with_mistakes(y, {2: 4.0, 9: 6.0}) + rng.normal(0, 1.5, (len(y), 10))
    T = 2.5
    model = Model(FixedLogits(Z), {"version": "calibrated", "calibration": {
        "temperature": T, "threshold": 0.8, "ece_before": 0.02, "ece_after": 0.004}})
    page = read_page(write_report(model, X, y, tmp_path))

    plain, scaled = scaled_probabilities(Z, 1.0), scaled_probabilities(Z, T)
    ece_text = page.text_of["ece"]
    assert f"{100 * expected_calibration_error(plain, y):.1f}% with the plain softmax" in ece_text
    assert f"{100 * expected_calibration_error(scaled, y):.1f}% after temperature scaling (T = 2.500)" in ece_text
    wrong = np.nonzero(scaled.argmax(axis=1) != y)[0]
    rows = page.body_rows("mistakes")
    assert len(rows) == len(wrong) > 0
    for row in rows:
        assert row[4] == format_confidence(scaled[int(row[1])].max())
    assert ["“not sure” below", "80.0%"] in page.body_rows("calibration")
    with Image.open(tmp_path / "reliability.png") as png:
        assert png.width == 840  # two panels: before and after


def test_a_report_replaced_while_failing_leaves_the_old_index_whole(test_slice, tmp_path, monkeypatch):
    X, y = test_slice
    model = Model(FixedLogits(logits_with_mistakes(y, {1: 2.0})), {"version": "atomic"})
    index = write_report(model, X, y, tmp_path)
    before = index.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "index.html":
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(Model(FixedLogits(logits_with_mistakes(y, {})), {"version": "atomic"}), X, y, tmp_path)
    assert index.read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_empty_test_set_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs labelled test images"):
        write_report(Model(FixedLogits(np.zeros((0, 10))), {"version": "v"}), np.zeros((0, 784)),
                     np.zeros(0, dtype=int), tmp_path)


def test_importing_the_model_package_does_not_import_matplotlib():
    code = "import sys, model.report, model.weights; sys.exit('matplotlib' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


# ---- the command --------------------------------------------------------------------------------------

def test_evaluate_with_report_prints_the_text_report_and_where_it_wrote_the_page(tiny_weights_path, mnist_dir,
                                                                                 tmp_path, capsys):
    out = tmp_path / "reports" / "tiny"
    assert main(["evaluate", str(tiny_weights_path), "--data-dir", str(mnist_dir), "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    model = load_model(tiny_weights_path)
    X, y = load_split(mnist_dir, "t10k")
    accuracy = (model.network.predict(X) == y).mean()
    assert printed.startswith(f"{model.version} on the MNIST test set: test accuracy {100 * accuracy:.2f}%")
    assert "confusion matrix (rows: true digit, columns: predicted):" in printed
    assert printed.endswith(f"\nreport written to {out / 'index.html'}\n")
    page = read_page(out / "index.html")
    assert page.text_of["test-accuracy"] == f"{100 * accuracy:.1f}%"
    assert page.ids["mistakes-summary"]["data-total"] == "10000"
    assert all((out / img["src"]).read_bytes().startswith(PNG_SIGNATURE) for img in page.images)


def test_evaluate_without_report_writes_nothing(tiny_weights_path, mnist_dir, capsys):
    before = sorted(tiny_weights_path.parent.iterdir())
    assert main(["evaluate", str(tiny_weights_path), "--data-dir", str(mnist_dir)]) == 0
    assert "report written" not in capsys.readouterr().out
    assert sorted(tiny_weights_path.parent.iterdir()) == before


# ---- serving ------------------------------------------------------------------------------------------

@pytest.fixture
def weights_dir(tmp_path, write_tiny_model) -> Path:
    write_tiny_model(tmp_path / "tiny.npz", version="tiny-1")
    set_active(tmp_path, "tiny.npz")
    return tmp_path


@pytest.fixture
def client(weights_dir):
    settings = Settings(weights_dir=weights_dir, static_dir=ROOT / "static", db_path=weights_dir / "db.sqlite3")
    with TestClient(create_app(settings)) as client:
        yield client


def add_report(weights_dir: Path, version: str = "tiny-1") -> Path:
    folder = weights_dir / "reports" / version
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><title>report</title><img src=\"confusion.png\" alt=\"x\">")
    (folder / "confusion.png").write_bytes(PNG_SIGNATURE + b"not really a picture")
    return folder


def test_model_has_no_report_url_until_the_active_model_has_a_report(client, weights_dir):
    response = client.get("/model")
    assert response.status_code == 200
    assert response.json()["report_url"] is None
    add_report(weights_dir, "another-model")
    assert client.get("/model").json()["report_url"] is None

    add_report(weights_dir)
    assert client.get("/model").json()["report_url"] == "/reports/tiny-1/index.html"


@pytest.mark.parametrize("url, content_type", [
    ("/reports/tiny-1/index.html", "text/html; charset=utf-8"),
    ("/reports/tiny-1/", "text/html; charset=utf-8"),
    ("/reports/tiny-1/confusion.png", "image/png"),
])
def test_report_files_are_served_with_their_content_type(client, weights_dir, url, content_type):
    folder = add_report(weights_dir)
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    name = url.rsplit("/", 1)[1] or "index.html"
    assert response.content == (folder / name).read_bytes()
    assert "default-src 'none'" in response.headers["content-security-policy"]


@pytest.mark.parametrize("url, version, name", [
    ("/reports/tiny-1/missing.png", "tiny-1", "missing.png"),
    ("/reports/unknown/index.html", "unknown", "index.html"),
    ("/reports/tiny-1/..%2F..%2Ftiny.npz", "tiny-1", "../../tiny.npz"),
    ("/reports/..%2Ftiny-1/index.html", "..", "tiny-1/index.html"),
    ("/reports/%2E%2E/ACTIVE", "..", "ACTIVE"),
    ("/reports/tiny-1/notes.txt", "tiny-1", "notes.txt"),
    ("/reports/tiny-1/.hidden.png", "tiny-1", ".hidden.png"),
    ("/reports/tiny-1/escape.png", "tiny-1", "escape.png"),
], ids=["missing-file", "unknown-version", "traversal-in-file", "traversal-in-version", "dot-dot-version",
        "other-extension", "hidden-file", "symlink-out"])
def test_anything_but_a_plain_report_file_gets_404_naming_it(client, weights_dir, url, version, name):
    folder = add_report(weights_dir)
    (folder / "notes.txt").write_text("not part of a report")
    (folder / ".hidden.png").write_bytes(PNG_SIGNATURE)
    (folder / "escape.png").symlink_to(weights_dir / "tiny.npz")
    response = client.get(url)
    assert response.status_code == 404
    assert response.json() == {"detail": f"no report file {name!r} for model {version!r}; reports are written "
                                         f"by `digits evaluate WEIGHTS --report WEIGHTS_DIR/reports/<version>`"}


# ---- the shipped models ---------------------------------------------------------------------------------

@pytest.mark.parametrize("weights_path", sorted((ROOT / "weights").glob("*.npz")), ids=lambda p: p.stem)
def test_every_shipped_model_has_a_current_report(weights_path):
    meta = read_meta(weights_path)
    folder = ROOT / "weights" / "reports" / meta["version"]
    regenerate = (f"regenerate it: digits evaluate weights/{weights_path.name} --report "
                  f"weights/reports/{meta['version']} --data-dir ../shared/mnist")
    assert (folder / "index.html").is_file(), f"no report for {weights_path.name}; {regenerate}"
    page = read_page(folder / "index.html")
    assert page.text_of["model-version"] == meta["version"]
    assert page.text_of["test-accuracy"] == f"{100 * meta['metrics']['test_accuracy']:.1f}%", regenerate
    assert ("calibration" in page.tables) == ("temperature" in (meta.get("calibration") or {})), regenerate
    assert all((folder / img["src"]).read_bytes().startswith(PNG_SIGNATURE) for img in page.images)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000


def test_metadata_and_titles_are_shown_as_text_never_as_markup(tiny_network):
    from types import SimpleNamespace

    from model.report import analyse
    from model.report_html import render_index
    X = np.random.default_rng(0).random((50, 784), dtype=np.float32)
    y = np.arange(50) % 10
    meta = {"version": "<script>alert(1)</script>", "architecture": {"name": "a&b"}, "created_at": '"><b>',
            "metrics": {"note": "<img src=x onerror=alert(1)>"}, "calibration": {"temperature": 1.0, "<i>": "</td>"}}
    page = render_index(meta, analyse(SimpleNamespace(network=tiny_network, meta=meta), X, y), y,
                        list(FIGURE_FILES), "<title>", 5)
    for markup in ("<script>", "<img src=x", "<b>", "<i>", "<title><"):
        assert markup not in page, markup
    for text in ("&lt;script&gt;alert(1)&lt;/script&gt;", "a&amp;b", "&lt;img src=x onerror=alert(1)&gt;",
                 "&lt;/td&gt;", "<title>&lt;title&gt;</title>"):
        assert text in page, text
