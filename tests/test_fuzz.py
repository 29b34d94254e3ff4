"""Property tests of the JSON endpoints: whatever the body, the answer is a prediction or a clear 4xx.

Hypothesis (a well-kept property-testing library) generates the bodies: arbitrary JSON, bodies that are
nearly right (pixel lists of wrong shapes and values, strokes of odd points, base64 that is not an image,
real images of odd sizes and modes), and bytes that are not JSON. The hand-written cases in test_api.py
say what each mistake is told; these look for any input that gets a 500, a crash or a wrong shape.
Derandomised, so a CI run tests the same examples every time; a failure prints the smallest body found.
"""
import base64
import io
import json
import math
import sqlite3

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from app.main import create_app
from app.settings import ROOT, Settings
from model.active import set_active
from model.preprocess import PREPROCESSING_VERSION

from conftest import save_tiny_model

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    weights = tmp_path_factory.mktemp("weights")
    save_tiny_model(weights / "tiny.npz", version="tiny-1", metrics={"test_accuracy": 0.5})
    set_active(weights, "tiny.npz")
    config = Settings(weights_dir=weights, static_dir=ROOT / "static", db_path=weights / "db.sqlite3",
                      max_image_pixels=250_000, max_stroke_points=2_000, feedback_per_minute=100_000)
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        yield client


# --- strategies -------------------------------------------------------------------------------------

numbers = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(0, 1), st.sampled_from([0, 1, 0.5, -0.0, 1e-45, 1 + 1e-7, 255]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30)

VALID_SHAPES = [(28, 28), (784,), (1, 28, 28), (2, 28, 28), (3, 784), (1, 784)]
INVALID_SHAPES = [(28, 27), (27, 28), (783,), (785,), (0, 784), (0, 28, 28), (28,), (2, 28, 29), (2, 2, 28, 28),
                  (2, 783), (1,), (257, 784)]
good_pixels = st.one_of(st.floats(0, 1, width=32), st.sampled_from([0, 1, 0.0, 1.0, -0.0, 1e-45]))
bad_pixels = st.one_of(  # one kind of mistake each, so that every kind turns up in a run
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.booleans(),
    st.sampled_from([None, "0.5", "", [0.5], {}]),
    st.sampled_from([-1e-6, 1 + 1e-6, 255, -1, 10**20, 2**64]),
    st.one_of(st.floats(1.0001, 1e300), st.floats(-1e300, -1e-30)))


@st.composite
def pixel_arrays(draw) -> tuple[list, bool]:
    """(pixels as a client would send them, whether the service must accept them): right or wrong
    shapes, a few values overwritten with good or bad ones, sometimes one row made ragged."""
    valid = draw(st.booleans())
    shape = draw(st.sampled_from(VALID_SHAPES if valid else VALID_SHAPES + INVALID_SHAPES))
    valid = shape in VALID_SHAPES
    X = np.full(shape, draw(good_pixels), dtype=object)
    flat = X.reshape(-1)
    bad_at = set()  # a later good value may overwrite an earlier bad one: what counts is what is left
    for _ in range(draw(st.integers(0, 4)) if flat.size else 0):
        bad, i = draw(st.booleans()), draw(st.integers(0, flat.size - 1))
        flat[i] = draw(bad_pixels if bad else good_pixels)
        (bad_at.add if bad else bad_at.discard)(i)
    valid &= not bad_at
    value = X.tolist()
    if X.ndim > 1 and value and draw(st.integers(0, 4)) == 0:
        row = draw(st.integers(0, len(value) - 1))
        value[row] = value[row][:-1] if draw(st.booleans()) else value[row] + [0.0]
        valid = False
    return value, valid


coordinates = st.one_of(st.floats(-1e4, 1e4), numbers, st.sampled_from([1e308, -1e308, 1e-308]))
points = st.one_of(st.tuples(coordinates, coordinates).map(list), st.lists(coordinates, max_size=3), json_values)
strokes = st.lists(st.one_of(st.lists(points, max_size=40), json_values), max_size=5)


@st.composite
def encoded_images(draw):
    """Base64 text: real images of odd sizes, modes and formats, or bytes that are no image."""
    kind = draw(st.sampled_from(["image", "image", "garbage", "truncated"]))
    if kind == "garbage":
        raw = draw(st.binary(max_size=200))
    else:
        mode = draw(st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "F"]))
        size = (draw(st.sampled_from([1, 2, 28, 280, 600])), draw(st.sampled_from([1, 3, 28, 280, 600])))
        fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]))
        colour = draw(st.integers(0, 255))
        img = Image.new(mode, size, float(colour) if mode == "F" else colour)
        buf = io.BytesIO()
        try:
            img.save(buf, fmt)
        except (OSError, ValueError, KeyError):  # that mode cannot be written in that format
            img.convert("RGB").save(buf, fmt)
        raw = buf.getvalue()
        if kind == "truncated":
            raw = raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    text = base64.b64encode(raw).decode()
    prefix = draw(st.sampled_from(["", "data:image/png;base64,", "data:image/jpeg;base64,", "data:,",
                                   "data:text/plain;base64,"]))
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.sampled_from(["", "=", "!!", " ", "\n", "é"])) + text[cut:]
    return prefix + text


INPUT_VALUES = {"pixels": st.one_of(pixel_arrays().map(lambda pair: pair[0]), json_values),
                "strokes": st.one_of(strokes, json_values),
                "image": st.one_of(encoded_images(), json_values),
                "images": st.one_of(st.lists(encoded_images(), max_size=3), json_values)}


@st.composite
def near_valid_bodies(draw):
    """Objects with one or more of the real input keys (or none), an explain flag, and stray keys."""
    keys = draw(st.lists(st.sampled_from(sorted(INPUT_VALUES)), max_size=2, unique=True))
    body = {key: draw(INPUT_VALUES[key]) for key in keys}
    if draw(st.booleans()):
        body["explain"] = draw(st.one_of(st.booleans(), json_values))
    if draw(st.integers(0, 5)) == 0:
        body[draw(st.text(max_size=8))] = draw(json_values)
    return body


def encode(body) -> bytes:
    """JSON text as a careless client writes it: Python's json emits NaN and Infinity, which JSON lacks."""
    return json.dumps(body, allow_nan=True).encode()


# --- the properties ---------------------------------------------------------------------------------

def check_answer(response, body_sent) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code == 200:
        answer = response.json()
        items = answer["predictions"] if "predictions" in answer else [answer]
        for item in items:
            assert len(item["probabilities"]) == 10
            assert all(math.isfinite(p) and 0 <= p <= 1 for p in item["probabilities"])
            assert math.isclose(sum(item["probabilities"]), 1, abs_tol=1e-6)
            assert item["digit"] == int(np.argmax(item["probabilities"]))
            if "saliency" in item:
                assert np.all(np.isfinite(item["saliency"])) and np.shape(item["saliency"]) == (28, 28)
    else:
        assert 400 <= response.status_code < 500
        detail = response.json()["detail"]
        assert isinstance(detail, str) and len(detail) > 5, detail  # a sentence, not a code


@FUZZ
@given(body=json_values)
def test_any_json_body_gets_a_prediction_or_a_clear_4xx(client, body):
    check_answer(client.post("/predict", content=encode(body), headers={"content-type": "application/json"}), body)


@FUZZ
@given(body=near_valid_bodies())
def test_nearly_right_predict_bodies_get_a_prediction_or_a_clear_4xx(client, body):
    check_answer(client.post("/predict", content=encode(body), headers={"content-type": "application/json"}), body)


@FUZZ
@given(pixels=pixel_arrays(), explain=st.booleans())
def test_pixels_are_accepted_exactly_when_right(client, pixels, explain):
    value, valid = pixels
    body = {"pixels": value, "explain": explain}
    response = client.post("/predict", content=encode(body), headers={"content-type": "application/json"})
    check_answer(response, body)
    assert (response.status_code == 200) == valid, (valid, response.status_code, response.text[:300])
    if valid:
        answer = response.json()
        single = np.shape(value) in ((28, 28), (784,))
        assert ("predictions" in answer) != single
        assert len(answer["predictions"]) == len(value) if not single else "digit" in answer


# coordinates a client might send: numbers (accepted) or what merely reads like one (refused, as in pixels);
# canvas coordinates, to a hundredth of a pixel
good_coordinates = st.one_of(st.integers(0, 280), st.floats(0, 280).map(lambda v: round(v, 2)))
bad_coordinates = st.one_of(good_coordinates.map(str), st.booleans(), st.none(), st.just("12"))


@st.composite
def stroke_lists(draw) -> tuple[list, bool]:
    """(strokes of [x, y] points, whether the service must accept them): a few coordinates overwritten
    with text, booleans or nulls."""
    value = draw(st.lists(st.lists(st.tuples(good_coordinates, good_coordinates).map(list), min_size=2, max_size=10),
                          min_size=1, max_size=3))
    valid = True
    for _ in range(draw(st.integers(0, 2))):
        stroke = draw(st.sampled_from(value))
        point = draw(st.sampled_from(stroke))
        point[draw(st.integers(0, 1))] = draw(bad_coordinates)
        valid = False
    return value, valid


@FUZZ
@given(strokes=stroke_lists(), explain=st.one_of(st.booleans(), st.sampled_from(["yes", "true", 1, 0, None])))
def test_strokes_and_explain_are_accepted_exactly_when_right(client, strokes, explain):
    value, numbers_only = strokes
    body = {"strokes": value, "explain": explain}
    response = client.post("/predict", content=encode(body), headers={"content-type": "application/json"})
    check_answer(response, body)
    if numbers_only and isinstance(explain, bool):
        # a drawing of points all at one spot is refused as empty: that is about the ink, not the types
        assert response.status_code == 200 or response.json() == {"detail": "the drawing is empty"}, response.text
        return
    assert response.status_code == 422, response.text[:300]
    detail = response.json()["detail"]
    assert ("strokes: must be lists of [x, y] points, numbers only" in detail) != numbers_only, detail
    assert ("explain: Input should be a valid boolean" in detail) != isinstance(explain, bool), detail


def stored_feedback(client) -> list[tuple]:
    with sqlite3.connect(client.app.state.store.path) as db:
        return db.execute("SELECT id, label, preprocessing_version, pixels FROM feedback ORDER BY id").fetchall()


# drawings the service must take: a few strokes of points on the canvas
drawings = st.lists(st.lists(st.tuples(st.floats(0, 280), st.floats(0, 280)).map(list), min_size=2, max_size=20),
                    min_size=1, max_size=3).map(lambda strokes: {"strokes": strokes})


@FUZZ
@given(body=st.one_of(near_valid_bodies(), drawings), label=st.one_of(st.integers(-3, 12), json_values))
def test_feedback_bodies_get_stored_or_a_clear_4xx(client, body, label):
    body["label"] = label
    rows_before = stored_feedback(client)
    response = client.post("/feedback", content=encode(body), headers={"content-type": "application/json"})
    assert response.status_code in (201,) or 400 <= response.status_code < 500, response.text[:300]
    rows = stored_feedback(client)
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)
        assert rows == rows_before, "a refused drawing left a row behind"
        return
    # a 201 means exactly one new row, under the id answered, with the label sent and 784 pixels in [0, 1]
    assert rows[:-1] == rows_before and len(rows) == len(rows_before) + 1
    row_id, stored_label, version, blob = rows[-1]
    assert row_id == response.json()["id"]
    assert stored_label == label == response.json()["label"] and version == PREPROCESSING_VERSION
    pixels = np.frombuffer(blob, dtype=np.float32)
    assert pixels.shape == (784,) and np.all((0 <= pixels) & (pixels <= 1))


@FUZZ
@given(raw=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                     near_valid_bodies().map(lambda b: encode(b)[:-1])))
def test_bytes_that_are_not_json_get_a_clear_4xx(client, raw):
    response = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    try:
        json.loads(raw)
    except ValueError:
        assert 400 <= response.status_code < 500, response.text[:300]
    check_answer(response, raw)


def known_answer(client) -> list[float]:
    pixels = np.zeros((28, 28))
    pixels[5:23, 13:15] = 1
    response = client.post("/predict", json={"pixels": pixels.tolist()})
    assert response.status_code == 200, response.text[:300]
    return response.json()["probabilities"]


@settings(FUZZ, max_examples=40)
@given(bodies=st.lists(st.one_of(json_values, near_valid_bodies(), st.binary(max_size=300)), min_size=1, max_size=6))
def test_the_service_answers_as_before_after_any_run_of_bad_bodies(client, bodies):
    before = known_answer(client)  # measured here, so the test stands on its own in any order
    for body in bodies:
        raw = body if isinstance(body, bytes) else encode(body)
        client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert known_answer(client) == before
