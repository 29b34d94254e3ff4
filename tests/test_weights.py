"""model.weights (the .npz format: round trip, atomic writes, every way a file can be bad) and
model.active (the ACTIVE file)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from model.active import ACTIVE_FILE, active_path, list_models, set_active
from model.preprocess import PREPROCESSING_VERSION
from model.weights import (FORMAT_VERSION, META_KEY, PreprocessingMismatch, WeightsError, load_model, load_servable,
                           read_meta, save_model)


def arrays_and_meta(path: Path) -> tuple[dict, dict]:
    """The raw contents of a weights file: parameter arrays and parsed metadata."""
    with np.load(path) as npz:
        arrays = {key: npz[key] for key in npz.files if key != META_KEY}
        meta = json.loads(str(npz[META_KEY]))
    return arrays, meta


def write_npz(path: Path, arrays: dict, meta) -> Path:
    """Write a weights-like file by hand; meta may be a dict (JSON-encoded), a raw string or None (absent)."""
    entries = dict(arrays)
    if meta is not None:
        entries[META_KEY] = np.array(meta if isinstance(meta, str) else json.dumps(meta))
    with open(path, "wb") as f:
        np.savez(f, **entries)
    return path


def only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- round trip ------------------------------------------------------------------------------------

def test_save_then_load_gives_identical_predictions_and_metadata(tmp_path, tiny_network, rng):
    path = tmp_path / "model.npz"
    written = save_model(path, tiny_network, {"preprocessing_version": 1, "seed": 7, "metrics": {"test_accuracy": 0.5}})
    model = load_model(path)
    X = rng.random((20, 784), dtype=np.float32)
    np.testing.assert_array_equal(model.network.predict_proba(X), tiny_network.predict_proba(X))
    for key, P in tiny_network.parameters().items():
        np.testing.assert_array_equal(model.network.parameters()[key], P)
    assert model.meta == written
    assert model.path == path and model.version == written["version"]
    assert model.network.spec == tiny_network.spec


def test_saved_metadata_records_format_architecture_time_and_a_version(tmp_path, tiny_network):
    meta = save_model(tmp_path / "m.npz", tiny_network, {"preprocessing_version": 1, "seed": 7})
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["architecture"] == tiny_network.spec
    assert meta["seed"] == 7
    assert meta["version"].startswith("tiny-") and meta["created_at"][:2] == "20"
    assert read_meta(tmp_path / "m.npz") == meta


def test_the_version_depends_on_the_parameters(tmp_path, write_tiny_model):
    a = read_meta(write_tiny_model(tmp_path / "a.npz", seed=1))["version"]
    b = read_meta(write_tiny_model(tmp_path / "b.npz", seed=2))["version"]
    assert a.rsplit("-", 1)[1] != b.rsplit("-", 1)[1]


def test_save_model_requires_the_preprocessing_version(tmp_path, tiny_network):
    with pytest.raises(ValueError, match="metadata needs 'preprocessing_version'"):
        save_model(tmp_path / "m.npz", tiny_network, {})
    assert only_files(tmp_path) == []


# --- atomic writes ---------------------------------------------------------------------------------

def test_saving_leaves_only_the_final_file_readable_by_everyone(tmp_path, write_tiny_model):
    path = write_tiny_model(tmp_path / "m.npz")
    write_tiny_model(path, seed=1)  # overwrite in place
    assert only_files(tmp_path) == ["m.npz"]
    assert stat.S_IMODE(path.stat().st_mode) & 0o444 == 0o444


def test_a_failed_save_leaves_the_old_file_intact_and_no_temp_file(tmp_path, write_tiny_model, tiny_network,
                                                                  monkeypatch):
    path = write_tiny_model(tmp_path / "m.npz", seed=5)
    before = path.read_bytes()

    def savez_that_fails_halfway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_that_fails_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, tiny_network, {"preprocessing_version": 1})
    monkeypatch.undo()
    assert only_files(tmp_path) == ["m.npz"]
    assert path.read_bytes() == before
    assert load_model(path).meta["seed"] == 5


# --- bad files -------------------------------------------------------------------------------------

def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def empty_file(path):
    path.write_bytes(b"")


def rewrite(arrays_change=None, meta_change=None):
    """A file change: rewrite the file with its arrays and/or metadata changed."""
    def change(path):
        arrays, meta = arrays_and_meta(path)
        if arrays_change:
            arrays_change(arrays)
        if meta_change:
            meta = meta_change(meta)
        write_npz(path, arrays, meta)
    return change


def set_item(key, value):
    def change(d):
        d[key] = value
    return change


def with_meta(key, value):
    def change(meta):
        meta[key] = value
        return meta
    return change


def without_meta(key):
    def change(meta):
        del meta[key]
        return meta
    return change


def nan_in(key):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan
    return change


@pytest.mark.parametrize("damage, message", [
    (truncate, None),  # the rest of the message is numpy's or zipfile's own
    (random_bytes, None),
    (empty_file, None),
    (rewrite(meta_change=lambda meta: None), "no 'meta' entry; this is not a digits weights file"),
    (rewrite(meta_change=lambda meta: "{not json"), "metadata is not valid JSON"),
    (rewrite(meta_change=lambda meta: "[1, 2]"), "metadata is not a JSON object"),
    (rewrite(meta_change=with_meta("format_version", 2)), "format version 2, this code reads 1"),
    (rewrite(meta_change=without_meta("architecture")), r"metadata lacks \['architecture'\]"),
    (rewrite(meta_change=with_meta("architecture", {"layers": [{"type": "conv"}]})), "unknown layer type 'conv'"),
    (rewrite(set_item("0.W", np.zeros((784, 9), np.float32))), r"'0.W' has shape \(784, 9\)"),
    (rewrite(lambda arrays: arrays.pop("2.b")), r"missing \['2.b'\]"),
    (rewrite(set_item("extra", np.zeros(3, np.float32))), r"unexpected \['extra'\]"),
    (rewrite(nan_in("2.W")), "'2.W' holds NaN or infinity"),
    (rewrite(set_item("0.b", np.array([None] * 8, dtype=object))), "allow_pickle=False"),
], ids=["truncated", "random-bytes", "empty", "no-meta", "meta-not-json", "meta-not-object", "format-version",
        "meta-lacks-key", "unknown-layer", "shape-mismatch", "missing-array", "extra-array", "nan",
        "object-array"])
def test_a_bad_weights_file_raises_weights_error_naming_the_file(tiny_weights_path, damage, message):
    damage(tiny_weights_path)
    with pytest.raises(WeightsError, match=message) as info:
        load_model(tiny_weights_path)
    assert str(tiny_weights_path) in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI and the app catch ValueError


@pytest.mark.parametrize("damage", [truncate, random_bytes, empty_file])
def test_read_meta_of_a_corrupt_file_raises_weights_error_naming_it(tiny_weights_path, damage):
    damage(tiny_weights_path)
    with pytest.raises(WeightsError, match="not a readable weights file") as info:
        read_meta(tiny_weights_path)
    assert str(info.value).startswith(f"{tiny_weights_path}: ")


def test_a_missing_weights_file_raises_weights_error_naming_it(tmp_path):
    with pytest.raises(WeightsError, match=f"no weights file at {tmp_path / 'nope.npz'}"):
        load_model(tmp_path / "nope.npz")
    with pytest.raises(WeightsError, match="not a readable weights file") as info:
        read_meta(tmp_path / "nope.npz")
    assert str(tmp_path / "nope.npz") in str(info.value)


def test_read_meta_does_not_need_valid_arrays(tiny_weights_path):
    rewrite(nan_in("0.W"))(tiny_weights_path)
    assert read_meta(tiny_weights_path)["architecture"]["name"] == "tiny"


def test_an_object_array_as_metadata_is_rejected_without_unpickling(tiny_weights_path):
    arrays, meta = arrays_and_meta(tiny_weights_path)
    with open(tiny_weights_path, "wb") as f:
        np.savez(f, **arrays, meta=np.array([meta], dtype=object))
    with pytest.raises(WeightsError, match="allow_pickle=False"):
        read_meta(tiny_weights_path)


def test_a_npy_file_instead_of_npz_raises_weights_error(tmp_path):
    path = tmp_path / "m.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(WeightsError, match=str(path)):
        load_model(path)


def test_a_text_array_raises_weights_error(tiny_weights_path):
    rewrite(set_item("0.b", np.array(["x"] * 8)))(tiny_weights_path)
    with pytest.raises(WeightsError, match="0.b"):
        load_model(tiny_weights_path)


def test_a_layer_spec_that_is_not_an_object_raises_weights_error(tiny_weights_path):
    rewrite(meta_change=with_meta("architecture", {"layers": ["dense"]}))(tiny_weights_path)
    with pytest.raises(WeightsError):
        load_model(tiny_weights_path)


# --- registry --------------------------------------------------------------------------------------

def test_set_active_points_active_path_at_the_file(tmp_path, write_tiny_model):
    write_tiny_model(tmp_path / "a.npz", seed=1)
    write_tiny_model(tmp_path / "b.npz", seed=2)
    set_active(tmp_path, "a.npz")
    assert active_path(tmp_path) == tmp_path / "a.npz"
    set_active(tmp_path, "b.npz")
    assert active_path(tmp_path) == tmp_path / "b.npz"
    assert (tmp_path / ACTIVE_FILE).read_text() == "b.npz\n"
    assert only_files(tmp_path) == ["ACTIVE", "a.npz", "b.npz"]  # no temp files left


def test_set_active_refuses_a_file_that_is_not_a_weights_file(tmp_path, write_tiny_model):
    write_tiny_model(tmp_path / "a.npz")
    set_active(tmp_path, "a.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="junk.npz"):
        set_active(tmp_path, "junk.npz")
    with pytest.raises(WeightsError, match="missing.npz"):
        set_active(tmp_path, "missing.npz")
    assert active_path(tmp_path) == tmp_path / "a.npz"


def test_set_active_refuses_a_file_outside_the_folder(tmp_path, write_tiny_model):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    write_tiny_model(tmp_path / "outside.npz")
    with pytest.raises(WeightsError):
        set_active(weights_dir, "../outside.npz")


@pytest.mark.parametrize("active, message", [
    (None, r"no active model in .* \(no ACTIVE file\); run `digits train --activate`"),
    ("", "names '', not a weights file in"),
    ("gone.npz", r"names gone.npz, but .*gone.npz does not exist"),
    ("../outside.npz", r"names '../outside.npz', not a weights file in"),
    ("sub/a.npz", r"names 'sub/a.npz', not a weights file in"),
    (".hidden.npz", r"names '.hidden.npz', not a weights file in"),
], ids=["no-active-file", "empty", "missing-file", "parent-folder", "subfolder", "hidden"])
def test_active_path_refuses_an_active_file_naming_nothing_usable(tmp_path, write_tiny_model, active, message):
    weights_dir = tmp_path / "weights"
    write_tiny_model(weights_dir / "sub" / "a.npz")
    write_tiny_model(weights_dir / ".hidden.npz")
    write_tiny_model(tmp_path / "outside.npz")  # exists, so only the name check can refuse it
    if active is not None:
        (weights_dir / ACTIVE_FILE).write_text(active + "\n")
    with pytest.raises(WeightsError, match=message):
        active_path(weights_dir)


def test_list_models_lists_every_npz_oldest_first_with_errors_for_broken_ones(tmp_path, write_tiny_model):
    write_tiny_model(tmp_path / "a-new.npz", created_at="2026-01-02T00:00:00+00:00")
    write_tiny_model(tmp_path / "b-old.npz", created_at="2025-01-01T00:00:00+00:00")
    (tmp_path / "c-broken.npz").write_bytes(b"not a zip")
    (tmp_path / "notes.txt").write_text("not a model")
    listed = list_models(tmp_path)
    assert [path.name for path, _ in listed] == ["c-broken.npz", "b-old.npz", "a-new.npz"]
    assert isinstance(listed[0][1], WeightsError)
    assert listed[1][1]["created_at"] == "2025-01-01T00:00:00+00:00"


def test_list_models_of_an_empty_folder_is_empty(tmp_path):
    assert list_models(tmp_path) == []


def test_no_temp_file_survives_a_failed_activation(tmp_path, write_tiny_model, monkeypatch):
    write_tiny_model(tmp_path / "a.npz")

    def replace_fails(src, dst):
        raise OSError("read-only file system")

    monkeypatch.setattr(os, "replace", replace_fails)
    with pytest.raises(OSError, match="read-only"):
        set_active(tmp_path, "a.npz")
    monkeypatch.undo()
    assert only_files(tmp_path) == ["a.npz"]


# --- preprocessing version -------------------------------------------------------------------------

def mismatch_message(path: Path) -> str:
    return (rf"{path}: trained on preprocessing version {PREPROCESSING_VERSION - 1}, but this code preprocesses "
            rf"with version {PREPROCESSING_VERSION}, .*retrain it \(`digits train` or POST /train\)")


def test_a_model_of_another_preprocessing_version_loads_but_is_not_servable(tmp_path, write_tiny_model):
    path = write_tiny_model(tmp_path / "old.npz", preprocessing_version=PREPROCESSING_VERSION - 1)
    assert load_model(path).meta["preprocessing_version"] == PREPROCESSING_VERSION - 1  # evaluate, tests
    with pytest.raises(PreprocessingMismatch, match=mismatch_message(path)):
        load_servable(path)
    current = write_tiny_model(tmp_path / "new.npz")
    assert load_servable(current).meta["preprocessing_version"] == PREPROCESSING_VERSION


def test_set_active_refuses_a_model_of_another_preprocessing_version(tmp_path, write_tiny_model):
    write_tiny_model(tmp_path / "a.npz")
    set_active(tmp_path, "a.npz")
    write_tiny_model(tmp_path / "old.npz", preprocessing_version=PREPROCESSING_VERSION - 1)
    with pytest.raises(PreprocessingMismatch, match=mismatch_message(tmp_path / "old.npz")):
        set_active(tmp_path, "old.npz")
    assert active_path(tmp_path) == tmp_path / "a.npz"
