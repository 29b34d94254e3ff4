"""The HTTP API through FastAPI's TestClient, with a tiny model made in a fixture."""
import base64
import os
import time
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.main import create_app
from app.settings import ROOT, Settings
from model.active import set_active
from model.network import Network
from model.preprocess import PREPROCESSING_VERSION
from model.train import TRAINABLE
from model.weights import save_model

from conftest import TINY_SPEC, make_tiny_network, save_tiny_model



@pytest.fixture
def weights_dir(tmp_path):
    save_tiny_model(tmp_path / "tiny.npz", version="tiny-1", metrics={"test_accuracy": 0.5})
    set_active(tmp_path, "tiny.npz")
    return tmp_path


@pytest.fixture
def client(weights_dir):
    settings = Settings(weights_dir=weights_dir, static_dir=ROOT / "static", db_path=weights_dir / "db.sqlite3",
                        max_image_pixels=1_000_000)
    with TestClient(create_app(settings)) as client:
        yield client


def png_data_url(size=(280, 280), mode="RGB", background="white", ink="black", fmt="PNG", draw=True):
    img = Image.new(mode, size, background)
    if draw:
        ImageDraw.Draw(img).line([(size[0] // 2, size[1] // 5), (size[0] // 2, 4 * size[1] // 5)],
                                 fill=ink, width=max(2, size[0] // 15))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def assert_prediction(item):
    """The shape of one answer; which digit it names is checked on digits whose answer is known
    (test_the_shipped_model_names_known_digits_in_every_input_form)."""
    assert set(item) == {"digit", "confidence", "sure", "probabilities", "model_version"}
    assert item["sure"] is True  # the tiny model has no calibration: threshold 0
    assert len(item["probabilities"]) == 10
    assert sum(item["probabilities"]) == pytest.approx(1.0, abs=1e-9)
    assert item["model_version"] == "tiny-1"


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_model_describes_the_active_model(client):
    response = client.get("/model")
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == "tiny-1"
    assert body["architecture"] == "tiny"
    assert body["metrics"] == {"test_accuracy": 0.5}
    assert body["spec"] == TINY_SPEC


@pytest.mark.parametrize("body", [
    {"pixels": [[0.0] * 28 for _ in range(14)] + [[1.0] * 28 for _ in range(14)]},
    {"pixels": [0.5] * 784},
    {"strokes": [[[10, 10], [10, 200]], [[40, 40]]]},
    {"image": png_data_url()},
    {"image": png_data_url().split(",", 1)[1]},  # plain base64, no data URL
    {"image": png_data_url(fmt="JPEG")},
    {"image": png_data_url(fmt="WEBP")},
    {"image": png_data_url(mode="RGBA", background=(0, 0, 0, 0), ink=(0, 0, 0, 255))},
    {"image": png_data_url(background="black", ink="white")},
    {"image": png_data_url(background="white", ink="red")},
    {"image": png_data_url(size=(17, 900))},
], ids=["pixels-28x28", "pixels-784", "strokes", "png", "plain-base64", "jpeg", "webp", "transparent",
        "inverted", "coloured", "odd-size"])
def test_predict_accepts_every_input_form(client, body):
    response = client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    assert_prediction(response.json())


def test_the_same_drawing_gives_the_same_answer_in_any_colour_scheme(client):
    answers = [client.post("/predict", json={"image": png_data_url(background=bg, ink=ink)}).json()
               for bg, ink in [("white", "black"), ("black", "white"), ("white", "blue")]]
    assert answers[0]["probabilities"] == pytest.approx(answers[1]["probabilities"], abs=1e-3)
    assert answers[0]["probabilities"] == pytest.approx(answers[2]["probabilities"], abs=1e-3)


def test_a_batch_answers_one_prediction_per_item_in_order(client):
    pixels = np.random.default_rng(1).random((5, 784)).round(3).tolist()
    response = client.post("/predict", json={"pixels": pixels})
    assert response.status_code == 200
    batch = response.json()["predictions"]
    assert len(batch) == 5
    singles = [client.post("/predict", json={"pixels": p}).json() for p in pixels]
    for item, single in zip(batch, singles):
        assert_prediction(item)
        assert item["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)


def test_a_batch_of_28x28_pixels_and_a_batch_of_images_answer_each_item_as_alone_in_order(client):
    grids = np.random.default_rng(2).random((3, 28, 28)).round(3).tolist()
    images = [png_data_url(), png_data_url(size=(120, 300)), png_data_url(fmt="JPEG", size=(60, 60))]
    for key, single_key, items in [("pixels", "pixels", grids), ("images", "image", images)]:
        response = client.post("/predict", json={key: items})
        assert response.status_code == 200, response.text
        batch = response.json()["predictions"]
        singles = [client.post("/predict", json={single_key: item}).json() for item in items]
        assert len({tuple(single["probabilities"]) for single in singles}) == len(items), "items must differ"
        assert len(batch) == len(items)
        for item, single in zip(batch, singles):
            assert item["probabilities"] == pytest.approx(single["probabilities"], abs=1e-6)
            assert item["digit"] == single["digit"]


def mnist_png_data_url(image: np.ndarray, size: int = 280) -> str:
    """An MNIST digit as a user would draw it: black ink on white, scaled up to a canvas."""
    img = Image.fromarray((255 - image.reshape(28, 28) * 255).astype(np.uint8)).resize((size, size))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_the_shipped_model_names_known_digits_in_every_input_form(tmp_state, mnist):
    from server_support import ROOT as REPO
    X, y = mnist.X_test[:12], mnist.y_test[:12]
    settings = Settings(weights_dir=tmp_state / "weights", static_dir=REPO / "static", db_path=tmp_state / "db")
    with TestClient(create_app(settings)) as client:
        pixels = client.post("/predict", json={"pixels": X.reshape(-1, 28, 28).tolist()}).json()["predictions"]
        images = client.post("/predict", json={"images": [mnist_png_data_url(x) for x in X]}).json()["predictions"]
        alone = client.post("/predict", json={"pixels": X[3].tolist()}).json()
    assert [p["digit"] for p in pixels] == y.tolist()
    assert [p["digit"] for p in images] == y.tolist()
    assert alone["digit"] == y[3]
    for answer, label in zip(pixels, y):
        assert answer["confidence"] == answer["probabilities"][label] > 0.5


def test_explain_returns_the_28x28_input_the_model_saw(client):
    response = client.post("/predict", json={"strokes": [[[50, 10], [50, 300]]], "explain": True})
    assert response.status_code == 200
    seen = np.array(response.json()["input"])
    assert seen.shape == (28, 28)
    assert seen.max() == pytest.approx(1.0, abs=1e-3)
    cols = np.nonzero(seen.sum(axis=0) > 0.5)[0]
    assert cols.min() >= 11 and cols.max() <= 16  # a thin vertical line, centred


def test_explain_returns_a_saliency_map_that_follows_the_network_gradient(client, weights_dir):
    from model.weights import load_model
    body = {"pixels": np.random.default_rng(3).random(784).round(3).tolist(), "explain": True}
    item = client.post("/predict", json=body).json()
    saliency = np.array(item["saliency"])
    assert saliency.shape == (28, 28)
    assert np.abs(saliency).max() == pytest.approx(1.0)
    network = load_model(weights_dir / "tiny.npz").network
    G = network.input_gradient(np.array(body["pixels"], np.float32)[None], np.array([item["digit"]]))[0]
    np.testing.assert_allclose(saliency.ravel(), G / np.abs(G).max(), atol=2e-3)


def test_a_calibrated_model_scales_its_logits_and_says_when_it_is_not_sure(tmp_path):
    from model.calibrate import scaled_probabilities
    network = make_tiny_network(0)
    X = np.random.default_rng(1).random((40, 784)).round(3).astype(np.float32)
    expected = scaled_probabilities(network.logits(X), 3.0)
    calibration = {"temperature": 3.0, "threshold": float(np.median(expected.max(axis=1)))}
    save_model(tmp_path / "cal.npz", network, {"version": "cal-1", "preprocessing_version": PREPROCESSING_VERSION,
                                               "calibration": calibration})
    set_active(tmp_path, "cal.npz")
    settings = Settings(weights_dir=tmp_path, static_dir=ROOT / "static", db_path=tmp_path / "db.sqlite3")
    with TestClient(create_app(settings)) as client:
        predictions = client.post("/predict", json={"pixels": X.tolist()}).json()["predictions"]
        assert client.get("/model").json()["calibration"] == calibration
    got = np.array([p["probabilities"] for p in predictions])
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    sure = np.array([p["sure"] for p in predictions])
    np.testing.assert_array_equal(sure, expected.max(axis=1) >= calibration["threshold"])
    assert sure.any() and not sure.all(), "the data should give both kinds of answer"


def png_bytes_url(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


def gif_data_url():
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, "GIF")
    return "data:image/gif;base64," + base64.b64encode(buf.getvalue()).decode()


BAD_PAYLOADS = [
    ({}, 422, "give exactly one of image, images, pixels, strokes (got none)"),
    ({"pixels": [0.0] * 784, "strokes": [[[1, 1]]]}, 422,
     "give exactly one of image, images, pixels, strokes (got pixels, strokes)"),
    ({"pixels": [0.0] * 783}, 422, "pixels: has shape (783,); send 28x28, 784, Nx28x28 or Nx784"),
    ({"pixels": [[0.0] * 28] * 27 + [[0.0] * 27]}, 422,
     "pixels: must be a rectangular list of numbers (rows of equal length, no strings, nulls or booleans)"),
    ({"pixels": ["a"] * 784}, 422,
     "pixels: must be a rectangular list of numbers (rows of equal length, no strings, nulls or booleans)"),
    ({"pixels": [None] * 784}, 422,
     "pixels: must be a rectangular list of numbers (rows of equal length, no strings, nulls or booleans)"),
    ({"pixels": [True] + [0.0] * 783}, 422,  # NumPy alone would read it as 1.0
     "pixels: must be a rectangular list of numbers (rows of equal length, no strings, nulls or booleans)"),
    ({"pixels": [[0.5] * 28] * 27 + [[0.5] * 27 + [False]], "explain": True}, 422,
     "pixels: must be a rectangular list of numbers (rows of equal length, no strings, nulls or booleans)"),
    ({"pixels": [255.0] * 784}, 422,
     "pixels: must be in [0, 1] (0 background, 1 ink); got values from 255 to 255. Divide 0-255 values by 255"),
    ({"pixels": [-0.5] + [0.0] * 783}, 422,
     "pixels: must be in [0, 1] (0 background, 1 ink); got values from -0.5 to 0. Divide 0-255 values by 255"),
    ({"pixels": [1e300] + [0.0] * 783}, 422,  # too large for float32, but out of range first
     "pixels: must be in [0, 1] (0 background, 1 ink); got values from 0 to 1e+300. Divide 0-255 values by 255"),
    ({"pixels": "zeros"}, 422,
     "pixels: must be a list: 28x28 nested lists, 784 numbers, or a batch of those"),
    ({"pixels": [[0] * 784] * 257}, 413, "pixels holds 257 images; the limit is 256"),
    ({"images": [png_data_url(size=(28, 28))] * 65}, 413, "images holds 65 images; the limit is 64"),
    ({"strokes": []}, 422, "the drawing is empty"),
    ({"strokes": [[]]}, 422, "the drawing is empty"),
    ({"strokes": [[[1, 2, 3]]]}, 422, "strokes.0.0: Tuple should have at most 2 items after validation, not 3"),
    # strokes take JSON numbers only, as pixels do: "12" is not read as 12, nor true as 1
    ({"strokes": [[[10, 10], [10, "12"]]]}, 422,
     'strokes: must be lists of [x, y] points, numbers only (no strings, nulls or booleans); strokes[0][1][1] is "12"'),
    ({"strokes": [[[10, 10]], [[True, 200]]]}, 422,
     "strokes: must be lists of [x, y] points, numbers only (no strings, nulls or booleans); strokes[1][0][0] is true"),
    ({"strokes": [[[10, None]]]}, 422,
     "strokes: must be lists of [x, y] points, numbers only (no strings, nulls or booleans); strokes[0][0][1] is null"),
    ({"strokes": [[["1" * 100, 10]]]}, 422,  # the value shown is cut short
     "strokes: must be lists of [x, y] points, numbers only (no strings, nulls or booleans); strokes[0][0][0] is "
     '"11111111111111111111111111111111111 ...'),
    # explain is true or false, nothing that reads like it
    ({"strokes": [[[10, 10], [10, 200]]], "explain": "yes"}, 422, "explain: Input should be a valid boolean"),
    ({"strokes": [[[10, 10], [10, 200]]], "explain": "false"}, 422, "explain: Input should be a valid boolean"),
    ({"pixels": [0.0] * 784, "explain": 1}, 422, "explain: Input should be a valid boolean"),
    ({"image": png_data_url(draw=False)}, 422, "the drawing is empty"),
    ({"image": "not base64!"}, 422, "the image is not valid base64 (Only base64 data is allowed)"),
    ({"image": "data:image/png,abc"}, 422, "the data URL is not base64-encoded; send canvas.toDataURL() output"),
    ({"image": ""}, 422, "the image is empty (0 bytes)"),
    ({"image": png_bytes_url(b"hello, this is text")}, 422, "the data is not a PNG, JPEG or WebP image"),
    ({"image": gif_data_url()}, 415, "the image is GIF; send PNG, JPEG or WebP"),
    ({"images": [png_data_url(), "???"]}, 422, "images[1]: the image is not valid base64 (Only base64 data is allowed)"),
    ({"images": []}, 422, "images: List should have at least 1 item after validation, not 0"),
    ({"colour": "red"}, 422, "colour: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("body, status, detail", BAD_PAYLOADS)
def test_bad_input_gets_a_clear_4xx(client, body, status, detail):
    response = client.post("/predict", json=body)
    assert response.status_code == status
    assert response.json() == {"detail": detail}


def test_truncated_png_is_refused_as_corrupt(client):
    raw = base64.b64decode(png_data_url().split(",", 1)[1])
    response = client.post("/predict", json={"image": png_bytes_url(raw[: len(raw) // 2])})
    assert response.status_code == 422
    assert response.json()["detail"].startswith("the image is corrupt or truncated")


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(client):
    # 2000x1000 single-colour PNG compresses to a few KB: a small body that would decode to 2 Mpx.
    response = client.post("/predict", json={"image": png_data_url(size=(2000, 1000), mode="L", draw=False)})
    assert response.status_code == 413
    assert response.json() == {"detail": "the image is 2000x1000 pixels, over the limit of 1000000 pixels; "
                                         "scale it down"}


def test_a_long_thin_strip_is_refused_whatever_its_pixel_count(client):
    # 1 x 5000 passes the pixel limit but resampling such a side costs far more than its pixels.
    response = client.post("/predict", json={"image": png_data_url(size=(5000, 1), mode="L", draw=False)})
    assert response.status_code == 413
    assert response.json() == {"detail": "the image is 5000x1 pixels; neither side may exceed 4096 pixels, "
                                         "scale it down"}


@pytest.mark.parametrize("content, detail", [
    (b"{not json", "the body is not valid JSON (key must be a string at line 1 column 2); send a JSON object"),
    (b'{"pixels": [NaN' + b", 0" * 783 + b"]}", "pixels: holds NaN or infinity; send numbers in [0, 1]"),
    (b'{"pixels": [Infinity' + b", 0" * 783 + b"]}", "pixels: holds NaN or infinity; send numbers in [0, 1]"),
    (b'{"strokes": [[[NaN, 1]]]}', "strokes.0.0.0: Input should be a finite number"),
    (b"[1, 2]", "Input should be an object"),
])
def test_malformed_json_and_non_finite_numbers_get_422(client, content, detail):
    response = client.post("/predict", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json() == {"detail": detail}


def test_a_body_over_the_limit_gets_413_with_or_without_content_length(client):
    big = b'{"image": "' + b"A" * 1_100_000 + b'"}'
    response = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {"detail": "the request body is over 1000000 bytes; send a smaller image or fewer items"}

    def chunks():  # no Content-Length: the server must count what arrives
        for _ in range(120):
            yield b"A" * 10_000

    response = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_too_many_stroke_points_get_413(weights_dir):
    settings = Settings(weights_dir=weights_dir, static_dir=ROOT / "static", db_path=weights_dir / "db.sqlite3",
                        max_stroke_points=100)
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict", json={"strokes": [[[i, i] for i in range(101)]]})
    assert response.status_code == 413
    assert response.json() == {"detail": "the strokes hold 101 points; the limit is 100"}


def test_the_page_and_every_file_it_loads_are_served_as_they_are_in_static(client):
    import re
    static = ROOT / "static"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.content == (static / "index.html").read_bytes()
    wanted = set(re.findall(r'(?:src|href)="([\w./-]+\.(?:js|css|svg|ico))"', page.text))
    seen = set()
    while wanted - seen:  # the ES modules the page imports, and what they import in turn
        name = sorted(wanted - seen)[0]
        seen.add(name)
        response = client.get("/" + name.removeprefix("./"))
        assert response.status_code == 200, name
        assert response.content == (static / name.removeprefix("./")).read_bytes(), name
        if name.endswith(".js"):
            assert "javascript" in response.headers["content-type"], name
            wanted |= set(re.findall(r'from\s+"\./([\w.-]+\.js)"', response.text))
    assert {"app.js", "style.css", "draw.js", "predict.js"} <= {name.removeprefix("./") for name in seen}
    docs = client.get("/openapi.json").json()
    assert "/predict" in docs["paths"]
    assert client.get("/docs").status_code == 200


def test_the_app_refuses_to_start_without_weights(tmp_path):
    app = create_app(Settings(weights_dir=tmp_path, static_dir=ROOT / "static", db_path=tmp_path / "db"))
    with pytest.raises(ValueError, match="no active model in"):
        with TestClient(app):
            pass


def test_bad_configuration_fails_at_start_naming_the_setting(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="DIGITS_WEIGHTS_DIR="):
        create_app(Settings(weights_dir=tmp_path / "missing", static_dir=ROOT / "static"))
    monkeypatch.setenv("DIGITS_MAX_BODY_BYTES", "lots")
    with pytest.raises(ValueError, match="max_body_bytes"):
        Settings()


def test_a_corrupt_new_active_model_keeps_the_last_good_one_and_says_why(client, weights_dir):
    (weights_dir / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (weights_dir / "ACTIVE").write_text("broken.npz\n")
    assert client.app.state.models.refresh() is False
    info = client.get("/model").json()
    assert info["version"] == "tiny-1"
    assert info["problem"].startswith(str(weights_dir / "broken.npz"))
    response = client.post("/predict", json={"pixels": [0.0] * 784})
    assert response.status_code == 200
    assert response.json()["model_version"] == "tiny-1"


def test_activating_an_unknown_or_broken_version_is_refused(client, weights_dir):
    assert client.post("/models/nope/activate").status_code == 404
    assert client.post("/models/nope/activate").json() == {
        "detail": "no model version 'nope'; GET /models lists them"}
    listed = client.get("/models").json()["models"]
    assert [m["version"] for m in listed] == ["tiny-1"] and listed[0]["active"] is True


def test_without_a_token_training_answers_only_loopback_clients(weights_dir):
    settings = Settings(weights_dir=weights_dir, static_dir=ROOT / "static", db_path=weights_dir / "db.sqlite3")
    with TestClient(create_app(settings), client=("203.0.113.7", 5000)) as remote:
        response = remote.post("/train", json={"epochs": 1})
        assert response.status_code == 403
        assert response.json() == {"detail": "training and activation answer only this machine unless the "
                                             "server sets DIGITS_ADMIN_TOKEN"}
        assert remote.post("/models/tiny-1/activate").status_code == 403
        assert remote.get("/train").status_code == 200  # reading is open


@pytest.mark.parametrize("body, detail", [
    ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    ({"epochs": 1000}, "epochs: Input should be less than or equal to 200"),
    ({"learning_rate": -1}, "learning_rate: Input should be greater than 0"),
    ({"architecture": "resnet"}, "architecture: unknown architecture 'resnet'; choose one of " + ", ".join(TRAINABLE)),
    ({"promote": "sometimes"}, "promote: Input should be 'if_better' or 'always'"),
    ({"validation_size": 10}, "validation_size: Input should be greater than or equal to 1000"),
    ({"batchsize": 10}, "batchsize: Extra inputs are not permitted"),
    ({"epochs": 2, "warmup_epochs": 5}, "the recipe is not valid: warmup_epochs must be in [0, epochs]"),
])
def test_a_bad_recipe_gets_422_naming_the_field(client, body, detail):
    response = client.post("/train", json=body)
    assert response.status_code == 422
    assert response.json() == {"detail": detail}


def test_training_without_mnist_says_where_it_looked(weights_dir, tmp_path):
    settings = Settings(weights_dir=weights_dir, static_dir=ROOT / "static", db_path=tmp_path / "db.sqlite3",
                        data_dir=tmp_path / "nowhere")
    with TestClient(create_app(settings)) as client:
        response = client.post("/train", json={"epochs": 1})
    assert response.status_code == 503
    assert response.json()["detail"].startswith("the server has no MNIST data: train-images-idx3-ubyte(.gz) "
                                                f"not found in {tmp_path / 'nowhere'}")


def test_feedback_is_stored_and_summarised(client):
    for label in (1, 1, 7, 8):
        response = client.post("/feedback", json={"strokes": [[[10, 10], [10, 200]]], "label": label})
        assert response.status_code == 201
        body = response.json()
        assert body["label"] == label and body["message"] == f"Thanks! Saved as {'an' if label == 8 else 'a'} {label}."
        assert body["model_was_right"] == (body["predicted"] == label)
    summary = client.get("/feedback").json()
    assert summary["total"] == 4
    assert summary["per_label"]["1"]["count"] == 2 and summary["per_label"]["7"]["count"] == 1
    assert client.post("/feedback", json={"strokes": [[[1, 1], [1, 9]]], "label": 10}).status_code == 422
    assert client.post("/feedback", json={"pixels": [[0.0] * 784] * 2, "label": 1}).json() == {
        "detail": "feedback takes one drawing at a time, not a batch"}
    assert client.post("/feedback", json={"strokes": [], "label": 3}).json() == {"detail": "the drawing is empty"}
    # feedback is validated from Python objects (no JSON text to look at): booleans are looked for always
    assert client.post("/feedback", json={"pixels": [0.0] * 783 + [True], "label": 3}).json() == {
        "detail": "pixels: must be a rectangular list of numbers (rows of equal length, no strings, nulls or booleans)"}
    assert client.get("/feedback").json()["total"] == 4


@pytest.mark.parametrize("label", ["7", 7.0, True, "seven"])
def test_a_feedback_label_is_a_number_not_text_or_a_boolean(client, label):
    response = client.post("/feedback", json={"strokes": [[[10, 10], [10, 200]]], "label": label})
    assert response.status_code == 422
    assert response.json() == {"detail": "label: Input should be a valid integer"}
    assert client.get("/feedback").json()["total"] == 0


def test_strokes_with_numeric_coordinates_of_any_json_kind_are_accepted(client):
    response = client.post("/predict", json={"strokes": [[[10, 10.5], [10, 200]], [[40.25, 40]]], "explain": False})
    assert response.status_code == 200
    assert_prediction(response.json())


def running_job(client) -> str:
    """A job in the store as a worker that has started it leaves it (this process stands for the worker)."""
    store = client.app.state.store
    job_id = store.create_job({"epochs": 1})
    assert store.transition(job_id, ("queued",), status="running", pid=os.getpid(), heartbeat=time.time())
    return job_id


def test_delete_answers_202_cancelling_and_where_to_follow_the_job(client):
    job_id = running_job(client)
    response = client.delete(f"/train/{job_id}")
    assert response.status_code == 202
    assert response.json() == {"job_id": job_id, "status": "cancelling"}
    assert response.headers["location"] == f"/train/{job_id}"
    job = client.get(response.headers["location"]).json()
    assert job["status"] == "running" and job["cancel_requested"] is True  # the worker ends it (within 2 s)
    assert client.delete(f"/train/{job_id}").json() == {"job_id": job_id, "status": "cancelling"}  # asked again
    assert client.app.state.store.finish_job(job_id, "cancelled")  # what the worker does next
    response = client.delete(f"/train/{job_id}")
    assert response.status_code == 409
    assert response.json() == {"detail": f"job {job_id} has already ended (cancelled)"}
    assert client.delete("/train/nope").status_code == 404


def test_delete_is_documented_as_202_with_its_answer(client):
    operation = client.get("/openapi.json").json()["paths"]["/train/{job_id}"]["delete"]
    assert set(operation["responses"]) >= {"202", "409"} and "200" not in operation["responses"]
    schema = operation["responses"]["202"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/JobCancelling"}


def test_only_json_text_with_true_or_false_in_it_is_searched_for_booleans():
    from app.schemas import PredictRequest, json_context
    assert json_context(b'{"pixels": [0, 1], "explain": true}') == {"may_hold_booleans": True}
    assert json_context(b'{"pixels": [0, 1]}') == {"may_hold_booleans": False}
    # the skip is only taken where the text shows it is safe: told otherwise, a boolean is missed
    raw = b'{"pixels": [true' + b', 0' * 783 + b']}'
    with pytest.raises(ValueError, match="booleans"):
        PredictRequest.model_validate_json(raw, context=json_context(raw))
    assert PredictRequest.model_validate_json(raw, context={"may_hold_booleans": False}).pixels[0] == 1.0


def test_architectures_lists_what_a_recipe_may_name(client):
    body = client.get("/architectures").json()
    assert body["architectures"] == [*TRAINABLE] and body["architectures"][:4] == ["seed", "mlp", "cnn", "cnn_bn"]
    assert body["recipes"]["cnn"]["augment"] is True and body["recipes"]["cnn"]["schedule"] == "cosine"
    assert body["recipes"]["seed"] == body["default_recipe"]
    assert body["default_recipe"]["architecture"] == "seed"
    assert body["default_recipe"]["promote"] == "if_better"


def test_a_model_rewritten_under_the_active_name_is_picked_up(client, weights_dir):
    save_tiny_model(weights_dir / "tiny.npz", seed=9, version="tiny-2")
    assert client.app.state.models.refresh() is True
    assert client.get("/model").json()["version"] == "tiny-2"
    assert client.app.state.models.refresh() is False  # nothing new since


def test_temporary_files_of_training_runs_are_not_listed_as_models(client, weights_dir):
    (weights_dir / ".job-abc.npz").write_bytes(b"half-written")
    assert [m["file"] for m in client.get("/models").json()["models"]] == ["tiny.npz"]


def test_a_recipe_without_learning_rate_gets_one_suited_to_its_optimizer():
    from app.schemas import TrainRequest
    assert TrainRequest().learning_rate == 0.5
    assert TrainRequest(optimizer="adam").learning_rate == 1e-3
    assert TrainRequest(optimizer="adam", learning_rate=0.01).learning_rate == 0.01


def test_a_job_state_moves_on_only_from_the_states_expected(tmp_path):
    from app.store import Store
    store = Store(tmp_path / "db.sqlite3")
    job_id = store.create_job({"epochs": 1})
    assert store.transition(job_id, ("queued",), status="running", pid=1) is True
    assert store.transition(job_id, ("queued",), status="running", pid=2) is False
    assert store.finish_job(job_id, "interrupted", error="gone") is True
    assert store.finish_job(job_id, "succeeded") is False  # an ended job is never overwritten
    assert store.get_job(job_id)["status"] == "interrupted"


def test_only_an_interrupted_job_resumes_and_only_while_nothing_else_trains(tmp_path):
    from app.store import JobConflict, Store
    store = Store(tmp_path / "db.sqlite3")
    job_id = store.create_job({"epochs": 1})
    with pytest.raises(ValueError, match="is queued; only an interrupted job can be resumed"):
        store.resume_job(job_id)
    assert store.transition(job_id, ("queued",), status="running", pid=os.getpid(), started_at=123.0,
                            heartbeat=time.time())
    store.request_cancel(job_id)
    assert store.finish_job(job_id, "interrupted", error="gone")
    other = store.create_job({"epochs": 2})
    with pytest.raises(JobConflict):
        store.resume_job(job_id)
    assert store.finish_job(other, "cancelled")
    store.resume_job(job_id)
    job = store.get_job(job_id)
    assert (job["status"], job["error"], job["pid"], job["finished_at"]) == ("queued", None, None, None)
    assert job["started_at"] == 123.0 and job["cancel_requested"] is False  # the same run, asked to go on
    assert store.get_job(job_id)["status"] == "queued"  # queued again just now: not expired as dead


def test_feedback_can_be_read_as_it_was_at_a_jobs_start(tmp_path):
    from app.store import Store
    store = Store(tmp_path / "db.sqlite3")
    store.add_feedback(np.full(784, 0.5, np.float32), 3, None, None, "v")
    cut = time.time()
    time.sleep(0.01)
    store.add_feedback(np.zeros(784, np.float32), 4, None, None, "v")
    assert store.feedback_samples(before=cut)[1].tolist() == [3]
    X, y = store.feedback_samples()
    assert y.tolist() == [3, 4] and X.shape == (2, 784)


def test_a_resumed_jobs_curves_drop_what_came_after_its_checkpoint(tmp_path):
    from app.store import Store
    from app.worker import JobReporter
    from model.train import Progress
    store = Store(tmp_path / "db.sqlite3")
    job_id = store.create_job({"epochs": 3})
    before = [{"progress": 0.2, "loss": 1.0}, {"progress": 0.4, "loss": 0.8}, {"progress": 0.5, "loss": 0.7}]
    history = [{"epoch": 1, "loss": 0.9, "val_accuracy": 0.9}, {"epoch": 2, "loss": 0.7, "val_accuracy": 0.95}]
    reporter = JobReporter(store, job_id, before, history)  # checkpoint after epoch 1; killed in epoch 2 or 3
    reporter.on_progress(Progress(2, 3, 5, 10, 0.75, 1000.0))  # epoch 2 again, half way: progress 0.5
    assert reporter.curve == [before[0], before[1], {"progress": 0.5, "loss": 0.75}]
    time.sleep(0.01)
    reporter.on_progress(Progress(2, 3, 10, 10, 0.72, 1000.0, 0.96, epoch_done=True))
    assert reporter.history == [history[0], {"epoch": 2, "loss": 0.72, "val_accuracy": 0.96}]
    job = store.get_job(job_id)
    assert job["history"] == reporter.history and job["curve"] == reporter.curve
    assert job["progress"]["eta_s"] > 0  # from the pace since resuming, not since the job first started


def test_a_worker_keeps_its_heartbeat_between_steps_until_it_is_done(tmp_path, monkeypatch):
    import threading
    import time

    from app import worker
    from app.store import Store
    store = Store(tmp_path / "db.sqlite3")
    job_id = store.create_job({"epochs": 1})
    monkeypatch.setattr(worker, "HEARTBEAT_EVERY_S", 0.05)
    done = threading.Event()
    thread = threading.Thread(target=worker.keep_beating, args=(store, job_id, done))
    thread.start()

    def next_beat(after: float) -> float:
        deadline = time.monotonic() + 5
        while (beat := store.get_job(job_id)["heartbeat"]) is None or beat <= after:
            assert time.monotonic() < deadline, "the heartbeat stopped"
            time.sleep(0.02)
        return beat

    next_beat(next_beat(0.0))  # it beats, and beats again, with no training step in between
    done.set()
    thread.join(2)
    assert not thread.is_alive(), "it stops when the job is done"



@pytest.mark.parametrize("architecture", TRAINABLE)
def test_every_architectures_default_request_is_a_whole_recipe_the_trainer_accepts(client, architecture):
    from model.train import Recipe, recipe_for

    recipe = client.get("/architectures").json()["recipes"][architecture]
    assert None not in recipe.values(), recipe  # a job stores every field, so a worker can rebuild it
    fields = {k: v for k, v in recipe.items() if k not in ("promote", "include_feedback")}
    assert Recipe(**fields) == recipe_for(architecture)


def test_a_full_worker_refuses_predictions_with_503_before_reading_the_body(client):
    admission = client.app.state.serving.admission
    admission.inside = admission.limit  # as if `limit` requests were being served
    try:
        response = client.post("/predict", content=b"not even JSON", headers={"content-type": "application/json"})
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json() == {"detail": "this server is busy; retry in a second"}
        assert client.get("/healthz").status_code == 200  # only /predict is shed
    finally:
        admission.inside = 0
    assert client.post("/predict", json={"strokes": [[[1, 1], [1, 30]]]}).status_code == 200


@pytest.mark.parametrize("page, assets", [
    ("/docs", ["/static-offline-docs/swagger-ui-bundle.js", "/static-offline-docs/swagger-ui.css"]),
    ("/redoc", ["/static-offline-docs/redoc.standalone.js"]),
])
def test_the_api_docs_load_every_asset_from_the_app_itself(client, page, assets):
    html = client.get(page).text
    assert "cdn." not in html and "https://" not in html.replace("https://fastapi", "")  # nothing from afar
    for asset in assets + ["/favicon.ico"]:
        assert asset in html
        response = client.get(asset)
        assert response.status_code == 200 and len(response.content) > 1000, asset


def test_the_favicon_is_served_for_pages_that_declare_none():
    from PIL import Image
    response = TestClient(create_app(Settings(static_dir=ROOT / "static"))).get("/favicon.ico")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).format == "ICO"


# --- preprocessing versions ------------------------------------------------------------------------

def save_old_preprocessing_model(path, version="old-1"):
    """A sound tiny model, but trained on the preprocessing before this code's."""
    save_tiny_model(path, seed=5, version=version, preprocessing_version=PREPROCESSING_VERSION - 1)
    return path


def mismatch_detail(path) -> str:
    return (f"{path}: trained on preprocessing version {PREPROCESSING_VERSION - 1}, but this code preprocesses "
            f"with version {PREPROCESSING_VERSION}, so its answers on drawings would be wrong; retrain it "
            f"(`digits train` or POST /train): recalibrating or re-evaluating does not help")


def test_the_app_refuses_to_start_on_a_model_of_another_preprocessing_version(tmp_path):
    path = save_old_preprocessing_model(tmp_path / "old.npz")
    (tmp_path / "ACTIVE").write_text("old.npz\n")  # as an older release's set_active would have left it
    app = create_app(Settings(weights_dir=tmp_path, static_dir=ROOT / "static", db_path=tmp_path / "db"))
    with pytest.raises(ValueError) as info:
        with TestClient(app):
            pass
    assert str(info.value) == mismatch_detail(path)


def test_a_new_active_model_of_another_preprocessing_version_keeps_the_last_good_one(client, weights_dir):
    path = save_old_preprocessing_model(weights_dir / "old.npz")
    (weights_dir / "ACTIVE").write_text("old.npz\n")
    assert client.app.state.models.refresh() is False
    info = client.get("/model").json()
    assert info["version"] == "tiny-1" and info["problem"] == mismatch_detail(path)
    assert client.post("/predict", json={"pixels": [0.0] * 784}).json()["model_version"] == "tiny-1"


def test_activating_a_model_of_another_preprocessing_version_is_a_conflict(client, weights_dir):
    path = save_old_preprocessing_model(weights_dir / "old.npz")
    response = client.post("/models/old-1/activate")
    assert response.status_code == 409
    assert response.json() == {"detail": f"model old-1 cannot be served: {mismatch_detail(path)}"}
    assert (weights_dir / "ACTIVE").read_text() == "tiny.npz\n"
    assert client.get("/model").json()["version"] == "tiny-1"


def test_activating_a_broken_model_file_is_unprocessable(client, weights_dir):
    network = Network({**TINY_SPEC, "layers": TINY_SPEC["layers"][:1]}, np.random.default_rng(0))
    save_model(weights_dir / "cut.npz", network, {"version": "cut-1", "preprocessing_version": PREPROCESSING_VERSION})
    with np.load(weights_dir / "cut.npz") as npz:  # drop the weights matrix: the metadata still reads
        entries = {key: npz[key] for key in npz.files if key != "0.W"}
    np.savez(weights_dir / "cut.npz", **entries)
    response = client.post("/models/cut-1/activate")
    assert response.status_code == 422
    assert response.json()["detail"].startswith(f"model cut-1 cannot be loaded: {weights_dir / 'cut.npz'}")
    assert (weights_dir / "ACTIVE").read_text() == "tiny.npz\n"


def feedback_rows(db_path) -> list[tuple]:
    import sqlite3
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT label, preprocessing_version FROM feedback ORDER BY id").fetchall()


def test_feedback_rows_record_the_preprocessing_version(client, weights_dir):
    assert client.post("/feedback", json={"strokes": [[[10, 10], [10, 200]]], "label": 1}).status_code == 201
    assert feedback_rows(weights_dir / "db.sqlite3") == [(1, PREPROCESSING_VERSION)]


def test_training_leaves_out_feedback_of_another_preprocessing_version_and_says_how_much(tmp_path, caplog):
    from app.store import Store
    store = Store(tmp_path / "db.sqlite3")
    store.add_feedback(np.full(784, 0.1, np.float32), 1, None, None, "v", preprocessing_version=PREPROCESSING_VERSION - 1)
    store.add_feedback(np.full(784, 0.2, np.float32), 2, None, None, "v")
    store.add_feedback(np.full(784, 0.3, np.float32), 3, None, None, "v", preprocessing_version=PREPROCESSING_VERSION + 1)
    with caplog.at_level("WARNING", logger="digits.jobs"):
        X, y = store.feedback_samples()
    assert y.tolist() == [2]
    np.testing.assert_array_equal(X, np.full((1, 784), 0.2, np.float32))
    assert (f"feedback: 2 drawing(s) of another preprocessing version than {PREPROCESSING_VERSION} left out, "
            f"1 used") in caplog.text


OLD_FEEDBACK_TABLE = """CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
    predicted INTEGER,
    confidence REAL,
    model_version TEXT,
    pixels BLOB NOT NULL
)"""


def test_a_database_from_before_feedback_versions_is_migrated_in_place_keeping_every_row(tmp_path):
    import sqlite3
    from app.store import UNVERSIONED_FEEDBACK_PREPROCESSING, Store
    path = tmp_path / "db.sqlite3"
    with sqlite3.connect(path) as db:  # the table as the release before this one made it, with two rows
        db.execute(OLD_FEEDBACK_TABLE)
        for label in (4, 7):
            db.execute("INSERT INTO feedback (created_at, label, predicted, confidence, model_version, pixels) "
                       "VALUES (?, ?, 4, 0.9, 'v', ?)", (time.time(), label, np.full(784, label / 10, np.float32).tobytes()))
    db.close()
    store = Store(path)
    Store(path)  # a second process starting on the migrated file changes nothing
    assert UNVERSIONED_FEEDBACK_PREPROCESSING == 2  # the version in force while rows had no column
    assert feedback_rows(path) == [(4, 2), (7, 2)]
    store.add_feedback(np.zeros(784, np.float32), 9, None, None, "v")
    assert feedback_rows(path) == [(4, 2), (7, 2), (9, PREPROCESSING_VERSION)]
    assert store.feedback_summary()["total"] == 3
    X, y = store.feedback_samples()
    assert y.tolist() == [label for label, version in feedback_rows(path) if version == PREPROCESSING_VERSION]
    assert X.shape == (len(y), 784)


def test_process_alive_tells_a_running_process_from_an_unreaped_and_a_reaped_one():
    import subprocess
    import sys

    from app.store import process_alive

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(proc.pid)
        proc.kill()
        deadline = time.monotonic() + 5
        while process_alive(proc.pid) and time.monotonic() < deadline:  # dead, not reaped yet: a zombie
            time.sleep(0.05)
        assert not process_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    assert not process_alive(proc.pid)


def test_a_fine_tune_that_reads_corrections_better_is_promoted_within_a_tenth_of_a_point(tmp_path):
    from app.worker import promotion_decision
    from conftest import save_tiny_model
    from model.active import set_active
    from model.train_and_save import active_accuracy

    save_tiny_model(tmp_path / "active.npz", version="active-1")
    set_active(tmp_path, "active.npz")
    rng = np.random.default_rng(0)
    X, y = rng.random((2000, 784), dtype=np.float32), rng.integers(0, 10, 2000)
    _, old = active_accuracy(tmp_path, X, y)

    def candidate(val_drop: float, before: float, after: float, fine_tuned: bool = True) -> dict:
        meta = {"metrics": {"val_accuracy": old - val_drop, "feedback_accuracy_before": before,
                            "feedback_accuracy": after, "n_feedback_held_out": 20}}
        return {**meta, "fine_tuned_from": "active-1"} if fine_tuned else meta

    promoted, reason = promotion_decision(candidate(0.0005, 0.80, 0.90), tmp_path, "if_better", X, y)
    assert promoted and reason.startswith("promoted: it reads the held-out corrections better")
    assert not promotion_decision(candidate(0.002, 0.80, 0.90), tmp_path, "if_better", X, y)[0]  # lost too much
    assert not promotion_decision(candidate(0.0005, 0.90, 0.90), tmp_path, "if_better", X, y)[0]  # no better
    assert not promotion_decision(candidate(0.0005, 0.80, 0.90, fine_tuned=False), tmp_path, "if_better", X, y)[0]
    assert promotion_decision(candidate(-0.001, 0.9, 0.8), tmp_path, "if_better", X, y)[0]  # better on validation


def test_a_training_request_cannot_name_a_server_file_to_distil_from(client):
    response = client.post("/train", json={"architecture": "cnn", "distill_from": "/etc/passwd"})
    assert response.status_code == 422
    assert response.json() == {"detail": "distill_from names a file on the server, so distilling is offered on "
                                         "the command line only (digits train --distill-from FILE)"}
