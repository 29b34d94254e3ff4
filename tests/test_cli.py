"""The `digits` command through `app.cli.main`: `evaluate` on the real test set, `train` on a small
data set, and the exit status and message for bad input."""
from __future__ import annotations

import argparse
import io
import re

import numpy as np
import pytest

from app.cli import main
from model.active import active_path
from model.data import Dataset
from model.weights import load_model, read_meta

TRAIN_FLAGS = ["--epochs", "1", "--batch-size", "50", "--seed", "4"]


@pytest.fixture
def small_dataset(monkeypatch):
    """Make `digits train` load a small random data set; each call's folder and validation size are recorded."""
    rng = np.random.default_rng(0)

    def part(n):
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)

    dataset = Dataset(*part(200), *part(50), *part(50), checksums={"fake": "0" * 64})
    asked = []

    def load_mnist(data_dir, validation_size=10_000):
        asked.append((str(data_dir), validation_size))
        return dataset

    monkeypatch.setattr("model.data.load_mnist", load_mnist)
    return asked


def test_evaluate_prints_accuracy_per_class_and_the_confusion_matrix(tiny_weights_path, mnist_dir, mnist, capsys):
    assert main(["evaluate", str(tiny_weights_path), "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    model = load_model(tiny_weights_path)
    predicted, y = model.network.predict(mnist.X_test), mnist.y_test
    confusion = np.array([[np.sum((y == true) & (predicted == guess)) for guess in range(10)] for true in range(10)])
    n_right = int((predicted == y).sum())
    assert out.startswith(f"{model.version} on the MNIST test set: test accuracy "
                          f"{n_right / 100:.2f}% ({n_right}/10000)\n")
    for digit in range(10):
        n_digit = int((y == digit).sum())
        assert re.search(rf"^  {digit}: +{100 * confusion[digit, digit] / n_digit:.2f}%  \(n={n_digit}\)$", out, re.M)
    rows = out.split("confusion matrix (rows: true digit, columns: predicted):\n")[1].splitlines()
    assert rows[0].split() == [str(d) for d in range(10)]
    printed = np.array([[int(v) for v in row.split()] for row in rows[1:11]])
    np.testing.assert_array_equal(printed[:, 0], np.arange(10))
    np.testing.assert_array_equal(printed[:, 1:], confusion)


@pytest.mark.parametrize("make_path, message", [
    (lambda tmp_path: tmp_path / "missing.npz", "no weights file at {path}"),
    (lambda tmp_path: tmp_path, "no weights file at {path}"),
], ids=["missing-file", "a-folder"])
def test_evaluate_with_a_bad_weights_path_exits_2_naming_it(tmp_path, capsys, make_path, message):
    path = make_path(tmp_path)
    assert main(["evaluate", str(path), "--data-dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"digits: error: {message.format(path=path)}\n"


def test_evaluate_with_a_corrupt_weights_file_exits_2(tiny_weights_path, capsys):
    tiny_weights_path.write_bytes(b"PK\x03\x04 not really")
    assert main(["evaluate", str(tiny_weights_path), "--data-dir", str(tiny_weights_path.parent)]) == 2
    assert capsys.readouterr().err.startswith(f"digits: error: {tiny_weights_path}: ")


def test_evaluate_without_mnist_exits_2_saying_how_to_fetch_it(tiny_weights_path, tmp_path, capsys):
    empty = tmp_path / "no-data"
    assert main(["evaluate", str(tiny_weights_path), "--data-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("digits: error: t10k-images-idx3-ubyte(.gz) not found in")
    assert f"digits data fetch --data-dir {empty}" in err


def test_the_data_folder_comes_from_digits_data_dir_when_no_flag_is_given(tiny_weights_path, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path / "from-env"))
    assert main(["evaluate", str(tiny_weights_path)]) == 2
    assert f"not found in {tmp_path / 'from-env'}" in capsys.readouterr().err


def test_train_writes_a_versioned_file_and_reports_it(small_dataset, tmp_path, capsys):
    assert main(["train", *TRAIN_FLAGS, "--weights-dir", str(tmp_path), "--data-dir", "/somewhere",
                 "--validation-size", "5000"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"train seed: 100%.* 200/200 \[[\d:]+<[\d:]+, [\d.]+k?img/s, epoch=1/1, loss=[\d.]+, "
                     r"status=validating\]", err), "the bar counts images, then says it validates"
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("seed-") and files[0].endswith(".npz")
    meta = read_meta(tmp_path / files[0])
    assert meta["version"] == files[0].removesuffix(".npz")
    assert meta["recipe"]["epochs"] == 1 and meta["recipe"]["batch_size"] == 50 and meta["seed"] == 4
    assert re.match(r"epoch 1/1: loss [\d.]+, val [\d.]+%, [\d,]+ samples/s\n", out)
    assert f"\nsaved {tmp_path / files[0]}\n  version {meta['version']}\n" in out
    assert f"test {100 * meta['metrics']['test_accuracy']:.2f}%" in out
    assert small_dataset == [("/somewhere", 5000)]
    assert meta["recipe"]["validation_size"] == 5000
    assert not (tmp_path / "ACTIVE").exists()


def test_train_with_out_and_activate_writes_there_and_makes_it_active(small_dataset, tmp_path, capsys):
    out_path = tmp_path / "models" / "mine.npz"
    assert main(["train", *TRAIN_FLAGS, "--out", str(out_path), "--activate"]) == 0
    assert active_path(tmp_path / "models") == out_path
    assert sorted(p.name for p in out_path.parent.iterdir()) == ["ACTIVE", "mine.npz"]
    assert f"now the active model of {out_path.parent}" in capsys.readouterr().out


def test_train_twice_with_the_same_seed_gives_the_same_weights(small_dataset, tmp_path):
    for name in ("a.npz", "b.npz"):
        assert main(["train", *TRAIN_FLAGS, "--out", str(tmp_path / name)]) == 0
    a, b = load_model(tmp_path / "a.npz"), load_model(tmp_path / "b.npz")
    for key, P in a.network.parameters().items():
        np.testing.assert_array_equal(P, b.network.parameters()[key])


def test_train_with_checkpoint_resumes_a_stopped_run_and_removes_it_when_done(small_dataset, tmp_path, capsys,
                                                                             monkeypatch):
    from model import train as train_module
    ckpt = tmp_path / "run.ckpt.npz"
    flags = ["--epochs", "3", "--batch-size", "50", "--seed", "4", "--checkpoint", str(ckpt)]
    assert main(["train", *flags, "--out", str(tmp_path / "straight.npz")]) == 0
    assert not ckpt.exists()  # removed once the weights file is written

    real_train = train_module.train

    def stopped_in_epoch_two(*args, **kwargs):
        calls = []
        kwargs["should_stop"] = lambda: calls.append(1) or len(calls) > 6  # 4 steps an epoch
        return real_train(*args, **kwargs)

    monkeypatch.setattr("model.train_and_save.train", stopped_in_epoch_two)
    with pytest.raises(train_module.TrainingCancelled):
        main(["train", *flags, "--out", str(tmp_path / "resumed.npz")])
    assert ckpt.exists()
    monkeypatch.setattr("model.train_and_save.train", real_train)
    capsys.readouterr()
    assert main(["train", *flags, "--out", str(tmp_path / "resumed.npz")]) == 0
    out, err = capsys.readouterr()
    assert f"resuming from {ckpt}: 1 of 3 epochs done" in out
    assert "train seed:  33%|" in err and " 200/600 [" in err, "the bar starts where the checkpoint left off"
    straight, resumed = load_model(tmp_path / "straight.npz"), load_model(tmp_path / "resumed.npz")
    for key, P in straight.network.parameters().items():
        np.testing.assert_array_equal(resumed.network.parameters()[key], P, err_msg=key)
    assert not ckpt.exists()


def test_train_with_another_recipes_checkpoint_exits_2_saying_what_differs(small_dataset, tmp_path, capsys,
                                                                          monkeypatch):
    from model import train as train_module
    ckpt = tmp_path / "run.ckpt.npz"
    real_train = train_module.train
    monkeypatch.setattr("model.train_and_save.train", lambda *a, **k: real_train(
        *a, **{**k, "should_stop": (lambda calls=[]: calls.append(1) or len(calls) > 5)}))
    with pytest.raises(train_module.TrainingCancelled):
        main(["train", *TRAIN_FLAGS, "--epochs", "2", "--checkpoint", str(ckpt), "--weights-dir", str(tmp_path)])
    monkeypatch.setattr("model.train_and_save.train", real_train)
    assert main(["train", *TRAIN_FLAGS, "--epochs", "3", "--checkpoint", str(ckpt), "--weights-dir",
                 str(tmp_path)]) == 2
    assert "another recipe (epochs: 2 there, 3 here)" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "epochs must be at least 1"),
    (["--learning-rate", "-1"], "learning_rate must be positive"),
    (["--momentum", "1"], r"momentum must be in [0, 1)"),
    (["--validation-size", "60000"], r"validation_size must be in [0, 60000)"),
])
def test_train_with_a_bad_setting_exits_2_before_loading_data(small_dataset, tmp_path, capsys, flags, message):
    assert main(["train", *flags, "--weights-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"digits: error: {message}\n"
    assert small_dataset == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["train", "--arch", "resnet"],
    ["train", "--epochs", "two"],
    ["evaluate"],
    ["fly"],
    ["data", "fly"],
    ["serve", "--log-level", "loud"],
], ids=["unknown-arch", "non-integer", "no-path", "unknown-command", "unknown-data-command", "unknown-log-level"])
def test_a_usage_error_exits_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: digits" in capsys.readouterr().err


@pytest.fixture
def wide_terminal(monkeypatch):
    """Help lines unwrapped (argparse wraps at $COLUMNS, and breaks paths at their hyphens)."""
    monkeypatch.setenv("COLUMNS", "1000")


def help_of(capsys, *command: str) -> str:
    """`digits COMMAND --help`'s text, each run of spaces (the columns' alignment) made one."""
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def subcommands(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """(argv, parser) of every subcommand, `data fetch` too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from subcommands(sub, (*prefix, name))


@pytest.mark.parametrize("argv", [[], ["data"]], ids=["digits", "digits-data"])
def test_a_command_without_its_subcommand_prints_its_help_and_exits_0(argv, capsys):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"usage: {' '.join(['digits', *argv])} [-h] ")
    assert captured.err == ""
    commands = ["data", "train", "calibrate", "ensemble", "evaluate", "serve"] if not argv else ["fetch"]
    for command in commands:
        assert re.search(rf"^    {command}\b", captured.out, re.M), command


def test_version_prints_the_installed_package_version(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"digits {version('digits')}\n"


def test_every_option_with_a_default_shows_it_in_help(capsys, wide_terminal):
    from app.cli import build_parser
    checked = []
    for argv, parser in subcommands(build_parser()):
        text = help_of(capsys, *argv)
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and action.default is not None:
                assert f"default: {action.default}" in text, (argv, action.dest)
                checked.append((argv[-1], action.dest))
    assert {("serve", "host"), ("serve", "port"), ("serve", "workers"), ("serve", "log_level"),
            ("train", "architecture")} <= set(checked)
    serve = help_of(capsys, "serve")
    assert "--port PORT port to listen on (default: 8000)" in serve
    assert "--log-level {critical,error,warning,info,debug,trace} uvicorn's log level (default: info)" in serve


def test_data_dir_help_names_the_folder_it_stands_for(capsys, monkeypatch, tmp_path, wide_terminal):
    from model.data import default_data_dir
    monkeypatch.delenv("DIGITS_DATA_DIR", raising=False)
    for command in (["data", "fetch"], ["train"], ["calibrate"], ["ensemble"], ["evaluate"]):
        assert (f"--data-dir DATA_DIR the MNIST folder (default: {default_data_dir()}, the per-user cache folder; "
                f"DIGITS_DATA_DIR sets another)") in help_of(capsys, *command), command
    monkeypatch.setenv("DIGITS_DATA_DIR", str(tmp_path))
    assert f"the MNIST folder (default: {tmp_path}, from DIGITS_DATA_DIR)" in help_of(capsys, "evaluate")


def test_serve_help_names_every_setting_with_its_default_and_description(capsys, wide_terminal):
    from app.settings import Settings
    text = help_of(capsys, "serve")
    assert "settings (environment variables; a bad value stops the start and names the variable):" in text
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "(unset" if default is None else f"(default: {default}"
        assert f" DIGITS_{name.upper()} {shown}" in text, name
        if field.description:
            assert f") {field.description}" in text, name
    # bounds in words, from the fields' constraints
    assert ("DIGITS_MAX_BODY_BYTES (default: 1000000; 1024 to 50000000) larger request bodies get 413 "
            "DIGITS_MAX_IMAGE_PIXELS (default: 4000000; 784 to 100000000) width x height limit") in text
    assert ("DIGITS_RELOAD_INTERVAL_S (default: 0.5; more than 0, at most 60) how often workers look for a "
            "new active model") in text
    assert "DIGITS_ADMIN_TOKEN (unset) bearer token" in text


def test_the_training_bar_counts_images_and_says_what_runs(capsys):
    from tqdm import tqdm

    from app.cli import TrainingBar
    from model.train import Progress
    rendered = io.StringIO()
    bar = TrainingBar(tqdm(total=2 * 250, unit="img", file=rendered), n_images=250, batch_size=100)
    seen = []
    for p in [Progress(1, 2, 2, 3, 2.0, 900.0),    # 3 steps of 100, 100 and 50 images an epoch
              Progress(1, 2, 3, 3, 1.5, 900.0),    # the epoch's last step: validation runs next
              Progress(1, 2, 3, 3, 1.5, 900.0, 0.81, epoch_done=True),
              Progress(2, 2, 3, 3, 0.9, 900.0),
              Progress(2, 2, 3, 3, 0.9, 900.0, 0.9, epoch_done=True)]:  # then test accuracy and calibration
        bar.on_progress(p)
        seen.append((bar.bar.n, bar.bar.postfix))
    bar.close()
    assert seen == [
        (200, "epoch=1/2, loss=2.0000, status=training"),
        (250, "epoch=1/2, loss=1.5000, status=validating"),
        (250, "epoch=1/2, loss=1.5000, val=81.00%, status=training"),
        (500, "epoch=2/2, loss=0.9000, val=81.00%, status=validating"),
        (500, "epoch=2/2, loss=0.9000, val=90.00%, status=testing, calibrating"),
    ]
    assert re.search(r"500/500 \[[\d:]+<[\d:]+, [\d.]+img/s", rendered.getvalue())
    assert capsys.readouterr().out == ("epoch 1/2: loss 1.5000, val 81.00%, 900 samples/s\n"
                                       "epoch 2/2: loss 0.9000, val 90.00%, 900 samples/s\n")


def test_serve_warns_when_listening_beyond_loopback_without_a_token(monkeypatch, caplog, tmp_path):
    import shutil
    import uvicorn

    from app.settings import ROOT
    weights = tmp_path / "weights"
    weights.mkdir()
    active = (ROOT / "weights" / "ACTIVE").read_text().strip()
    shutil.copy(ROOT / "weights" / active, weights / active)
    (weights / "ACTIVE").write_text(active)
    monkeypatch.setenv("DIGITS_WEIGHTS_DIR", str(weights))
    monkeypatch.delenv("DIGITS_ADMIN_TOKEN", raising=False)
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k))
    assert main(["serve", "--host", "0.0.0.0"]) == 0
    assert started and started[0]["host"] == "0.0.0.0"
    assert "without DIGITS_ADMIN_TOKEN" in caplog.text
    caplog.clear()
    assert main(["serve"]) == 0
    assert "without DIGITS_ADMIN_TOKEN" not in caplog.text


def test_serve_refuses_to_start_on_a_model_of_another_preprocessing_version(monkeypatch, tmp_path, capsys,
                                                                          write_tiny_model):
    import uvicorn

    from model.preprocess import PREPROCESSING_VERSION
    path = write_tiny_model(tmp_path / "old.npz", preprocessing_version=PREPROCESSING_VERSION - 1)
    (tmp_path / "ACTIVE").write_text("old.npz\n")
    monkeypatch.setenv("DIGITS_WEIGHTS_DIR", str(tmp_path))
    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(k))
    assert main(["serve"]) == 2
    assert not started
    assert capsys.readouterr().err == (
        f"digits: error: {path}: trained on preprocessing version {PREPROCESSING_VERSION - 1}, but this code "
        f"preprocesses with version {PREPROCESSING_VERSION}, so its answers on drawings would be wrong; retrain "
        f"it (`digits train` or POST /train): recalibrating or re-evaluating does not help\n")


def test_calibrate_fits_a_saved_model_in_place(tmp_path, capsys, monkeypatch, write_tiny_model):
    from model.calibrate import T_RANGE, choose_threshold, expected_calibration_error, nll, scaled_probabilities
    rng = np.random.default_rng(0)
    out = write_tiny_model(tmp_path / "m.npz", recipe={"validation_size": 300})
    network = load_model(out).network
    X = rng.random((300, 784), dtype=np.float32)
    guess = network.logits(X).argmax(axis=1)
    # labels the model gets right about two times in three: the best temperature lies inside T_RANGE
    y = np.where(rng.random(300) < 0.6, guess, rng.integers(0, 10, 300))
    asked = []
    monkeypatch.setattr("model.data.load_mnist", lambda data_dir, validation_size=10_000: asked.append(
        validation_size) or Dataset(X[:0], y[:0], X, y, X[:0], y[:0], checksums={}))
    weights_before = network.parameters()
    assert main(["calibrate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert asked == [300], "calibrated on the split the model was trained beside"
    c = read_meta(out)["calibration"]
    # measured here from the model and its validation split, not read back from what the command wrote
    logits = network.logits(X)
    T = c["temperature"]
    assert T_RANGE[0] * 1.1 < T < T_RANGE[1] / 1.1
    assert nll(logits, y, T) <= min(nll(logits, y, t) for t in np.geomspace(*T_RANGE, 400)) + 1e-6
    probs = scaled_probabilities(logits, T)
    assert c["ece_after"] == pytest.approx(expected_calibration_error(probs, y), abs=1e-6)
    assert c["ece_before"] == pytest.approx(expected_calibration_error(scaled_probabilities(logits, 1.0), y), abs=1e-6)
    assert c["ece_after"] < c["ece_before"]
    assert c["threshold"] == pytest.approx(choose_threshold(probs, y), abs=1e-6)
    assert (f"calibrated {out} on its 300 validation images:\n  temperature {T:.3f}; expected calibration error "
            f"{100 * c['ece_before']:.2f}% -> {100 * c['ece_after']:.2f}%") in printed
    for key, value in load_model(out).network.parameters().items():
        np.testing.assert_array_equal(value, weights_before[key])


def test_ensemble_averages_saved_models_into_one_file(small_dataset, tmp_path, capsys):
    from model.network import Ensemble
    paths = []
    for seed in ("1", "2"):
        path = tmp_path / f"m{seed}.npz"
        assert main(["train", "--epochs", "1", "--batch-size", "50", "--seed", seed, "--validation-size", "50",
                     "--out", str(path)]) == 0
        paths.append(path)
    assert main(["ensemble", *map(str, paths), "--weights-dir", str(tmp_path), "--activate"]) == 0
    out = capsys.readouterr().out
    active = active_path(tmp_path)
    model = load_model(active)
    assert isinstance(model.network, Ensemble) and len(model.network.members) == 2
    assert f"saved {active}" in out and "2 members" in out
    assert model.meta["recipe"]["ensemble_of"] == [read_meta(p)["version"] for p in paths]
    assert not list(tmp_path.glob(".ensemble-*")), "no temporary file left behind"
    assert main(["ensemble", str(paths[0])]) == 2
    assert "at least two models" in capsys.readouterr().err


@pytest.mark.parametrize("requested, cores, explicit, planned", [
    ("auto", 2, None, (2, 1)),     # one process per core, one BLAS thread each
    ("auto", 8, 4, (8, 1)),        # an explicit thread count is lowered to fit the cores
    ("1", 4, None, (1, 1)),        # the default: one thread, whatever the cores
    ("1", 4, 4, (1, 4)),           # one process may use every core
    ("2", 4, 3, (2, 2)),
    ("3", 2, None, (3, 1)),        # more processes than cores: still at least one thread each
])
def test_workers_times_blas_threads_never_exceed_the_cores(requested, cores, explicit, planned):
    from app.cli import plan_workers
    assert plan_workers(requested, cores, explicit) == planned


def test_serve_takes_auto_or_a_positive_count_of_workers(capsys):
    from app.cli import build_parser
    assert build_parser().parse_args(["serve", "--workers", "auto"]).workers == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--workers", "0"])
    assert "expected 'auto' or a count of at least 1, got '0'" in capsys.readouterr().err


def trained(tmp_path, name: str, *flags: str) -> dict:
    """Train on the small data set into tmp_path/models/name; its metadata."""
    path = tmp_path / "models" / name
    assert main(["train", "--epochs", "1", "--batch-size", "50", "--out", str(path), *flags]) == 0
    return read_meta(path)


def test_activate_refuses_a_model_worse_on_validation_than_the_active_one_unless_forced(small_dataset, tmp_path,
                                                                                         capsys):
    first = trained(tmp_path, "first.npz", "--seed", "4", "--activate")  # nothing was active: activated
    worse = trained(tmp_path, "worse.npz", "--seed", "1")
    assert worse["metrics"]["val_accuracy"] < first["metrics"]["val_accuracy"]  # the seeds are chosen for this
    capsys.readouterr()
    flags = ["train", "--epochs", "1", "--batch-size", "50", "--seed", "1", "--out", str(tmp_path / "models" / "w.npz")]
    assert main([*flags, "--activate"]) == 2
    new, old = (f"{100 * m['metrics']['val_accuracy']:.1f}%" for m in (worse, first))
    assert capsys.readouterr().err.endswith(  # after the progress bar
        f"\ndigits: not activated: its validation accuracy {new} is below the active {first['version']}'s {old} "
        f"on the same 50 images; --force activates it anyway\n")
    assert active_path(tmp_path / "models").name == "first.npz" and (tmp_path / "models" / "w.npz").exists()
    assert main([*flags, "--activate", "--force"]) == 0
    assert active_path(tmp_path / "models").name == "w.npz"
    assert main([*flags[:-1], str(tmp_path / "models" / "w2.npz"), "--activate"]) == 0  # as good: activated
    assert active_path(tmp_path / "models").name == "w2.npz"


def test_fine_tune_starts_from_the_active_model_or_a_given_file_with_its_architecture(small_dataset, tmp_path):
    source = trained(tmp_path, "source.npz", "--arch", "mlp", "--seed", "4", "--activate")
    assert main(["train", "--fine-tune", "--epochs", "1", "--weights-dir", str(tmp_path / "models"),
                 "--out", str(tmp_path / "tuned.npz")]) == 0
    tuned = read_meta(tmp_path / "tuned.npz")
    assert tuned["fine_tuned_from"] == source["version"] and tuned["architecture"]["name"] == "mlp"
    assert tuned["recipe"]["fine_tune"] is True and tuned["recipe"]["learning_rate"] == 0.005  # mlp's 0.05 / 10
    assert small_dataset[-1][1] == source["recipe"]["validation_size"]  # the source's split
    assert main(["train", "--fine-tune", "--epochs", "1", "--start-from", str(tmp_path / "tuned.npz"),
                 "--out", str(tmp_path / "again.npz")]) == 0
    assert read_meta(tmp_path / "again.npz")["fine_tuned_from"] == tuned["version"]


def test_fine_tune_refuses_an_ensemble_and_another_architecture(small_dataset, tmp_path, capsys):
    for seed in ("1", "2"):
        trained(tmp_path, f"m{seed}.npz", "--seed", seed, "--validation-size", "50")
    assert main(["ensemble", str(tmp_path / "models" / "m1.npz"), str(tmp_path / "models" / "m2.npz"),
                 "--out", str(tmp_path / "ensemble.npz")]) == 0
    capsys.readouterr()
    assert main(["train", "--fine-tune", "--start-from", str(tmp_path / "ensemble.npz")]) == 2
    assert "is an ensemble; fine-tuning starts from one network" in capsys.readouterr().err
    assert main(["train", "--fine-tune", "--arch", "cnn", "--start-from", str(tmp_path / "models" / "m1.npz")]) == 2
    assert "fine-tuning keeps m1" not in (err := capsys.readouterr().err) and "architecture (seed), not cnn" in err
