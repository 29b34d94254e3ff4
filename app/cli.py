"""The `digits` command: flags mapped onto `model/` functions, plus `digits serve`.

  digits data fetch        download and verify MNIST
  digits train             train a network and write a versioned weights file
  digits evaluate PATH     test accuracy, per-class accuracy and confusion matrix (--report DIR: figures too)
  digits serve             start the web service
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from model.data import DataError

log = logging.getLogger("digits")


def models_dir(flag: str | None) -> Path:
    """--weights-dir, else the service's models folder (DIGITS_WEIGHTS_DIR, else <DIGITS_HOME>/models,
    made and filled from the shipped models on first use), so that what `digits train --activate`
    makes is what `digits serve` serves, and a checkout's weights/ is never written."""
    if flag:
        return Path(flag)
    from app.settings import Settings
    settings = Settings()
    settings.check_paths()
    return settings.weights_dir


def resolve_data_dir(flag: str | None) -> Path:
    """--data-dir, else DIGITS_DATA_DIR, else the per-user cache folder (as the service resolves it)."""
    from app.settings import Settings
    return Path(flag) if flag else Settings().mnist_dir


def cmd_fetch(args) -> int:
    from tqdm import tqdm

    from model.fetch import fetch_mnist

    data_dir = resolve_data_dir(args.data_dir)
    bars: dict[str, tqdm] = {}

    def on_progress(name: str, done: int, total: int | None) -> None:
        bar = bars.get(name) or bars.setdefault(name, tqdm(total=total, desc=name, unit="B", unit_scale=True))
        bar.update(done - bar.n)

    try:
        outcomes = fetch_mnist(data_dir, on_progress=on_progress)
    finally:
        for bar in bars.values():
            bar.close()
    for outcome in outcomes:
        print(f"{outcome.name}: {outcome.status} ({outcome.path})")
    print(f"MNIST is ready in {data_dir}")
    return 0


class TrainingBar:
    """A tqdm bar of training images, with rate and ETA, that shows the epoch, the loss and what runs now:
    "training", "validating" once an epoch's steps are done, then the measuring after the last epoch."""

    def __init__(self, bar, n_images: int, batch_size: int) -> None:
        self.bar, self.n_images, self.batch_size = bar, n_images, batch_size
        self.val = ""

    def on_progress(self, p) -> None:
        """model.train.Progress -> the bar. The loop reports each epoch's last step just before it
        validates (model.train.train_epoch), and the epoch's end once validation is done."""
        images = (p.epoch - 1) * self.n_images + min(p.step * self.batch_size, self.n_images)
        self.bar.update(images - self.bar.n)
        if p.epoch_done:
            self.val = f"{100 * p.val_accuracy:.2f}%"
            self.bar.write(f"epoch {p.epoch}/{p.n_epochs}: loss {p.loss:.4f}, val {self.val}, "
                           f"{p.samples_per_s:,.0f} samples/s")
            status = "testing, calibrating" if p.epoch == p.n_epochs else "training"
        else:
            status = "validating" if p.step == p.n_steps else "training"
        postfix = {"epoch": f"{p.epoch}/{p.n_epochs}", "loss": f"{p.loss:.4f}"}
        if self.val:
            postfix["val"] = self.val
        self.bar.set_postfix(postfix | {"status": status}, refresh=True)

    def close(self) -> None:
        self.bar.close()


def cmd_train(args) -> int:
    from tqdm import tqdm

    from model.data import load_mnist
    from model.active import set_active
    from model.checkpoint import load_checkpoint
    from model.recipe import ENSEMBLE, fine_tune_recipe, recipe_fields, recipe_for
    from model.train import checkpoint_files
    from model.train_and_save import train_and_save

    given = {f.name: getattr(args, f.name) for f in recipe_fields()}
    source = fine_tuning_source(args, given) if given["fine_tune"] else None
    recipe = fine_tune_recipe(source.meta, **given) if source else recipe_for(**given)
    recipe.validate()
    data = load_mnist(resolve_data_dir(args.data_dir), validation_size=recipe.validation_size)
    out = Path(args.out) if args.out else None
    tmp_out = out or models_dir(args.weights_dir) / f".training-{os.getpid()}.npz"
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    n_epochs = recipe.epochs * (recipe.members if recipe.architecture == ENSEMBLE else 1)
    done = 0  # epochs the checkpoint holds (an ensemble's: its members' together)
    if checkpoint is not None:
        done = sum(load_checkpoint(path).epoch  # CheckpointError (unreadable) ends the command here
                   for path in checkpoint_files(checkpoint, recipe) if path.exists())
        if done:
            tqdm.write(f"resuming from {checkpoint}: {done} of {n_epochs} epochs done")
    n_images = len(data.y_train)
    bar = TrainingBar(tqdm(total=n_epochs * n_images, initial=done * n_images, unit="img", unit_scale=True,
                           desc=f"train {recipe.architecture}"), n_images, recipe.batch_size)
    try:
        meta = train_and_save(recipe, data, tmp_out, bar.on_progress, checkpoint=checkpoint, start_from=source)
    finally:
        bar.close()
    if checkpoint is not None:  # the weights file is written: the run's state is no longer needed
        for path in checkpoint_files(checkpoint, recipe):
            path.unlink(missing_ok=True)
    if out is None:
        out = tmp_out.with_name(f"{meta['version']}.npz")
        os.replace(tmp_out, out)
    m = meta["metrics"]
    chosen = f"best epoch {m['best_epoch']}" if m["best_epoch"] is not None else f"{recipe.members} members"
    print(f"saved {out}\n  version {meta['version']}\n  {chosen}, validation "
          f"{100 * m['val_accuracy']:.2f}%, test {100 * m['test_accuracy']:.2f}%, {m['train_seconds']:.1f} s")
    if args.activate:
        refusal = None if args.force else worse_than_active(out.parent, m["val_accuracy"], data)
        if refusal:
            print(f"digits: not activated: {refusal}; --force activates it anyway", file=sys.stderr)
            return 2
        set_active(out.parent, out.name)
        print(f"  now the active model of {out.parent}")
    return 0


def fine_tuning_source(args, given: dict):
    """The model `digits train --fine-tune` starts from: --start-from, else the active one. The --arch
    default gives way to its architecture (another --arch is refused by fine_tune_recipe)."""
    from model.active import active_path
    from model.recipe import Recipe
    from model.weights import load_servable

    if given["architecture"] == Recipe.architecture:
        given["architecture"] = None
    return load_servable(Path(args.start_from) if args.start_from else active_path(models_dir(args.weights_dir)))


def worse_than_active(weights_dir: Path, val_accuracy: float, data) -> str | None:
    """Why a new model must not replace the active one: a lower validation accuracy on the same images."""
    from model.evaluate import percent
    from model.train_and_save import active_accuracy
    from model.weights import WeightsError

    try:
        version, active = active_accuracy(weights_dir, data.X_val, data.y_val)
    except WeightsError:  # nothing servable is active: any model is better
        return None
    if val_accuracy >= active:
        return None
    return (f"its validation accuracy {percent(val_accuracy)} is below the active {version}'s {percent(active)} "
            f"on the same {len(data.y_val):,} images")


def cmd_evaluate(args) -> int:
    from model.data import load_split
    from model.evaluate import evaluate, format_evaluation
    from model.weights import load_model

    model = load_model(Path(args.path))
    X, y = load_split(resolve_data_dir(args.data_dir), "t10k")
    print(format_evaluation(evaluate(model.network.predict(X), y), f"{model.version} on the MNIST test set"))
    from model.drawn_digits import beyond_mnist, evaluate_drawn, format_drawn, report_drawn_set
    drawn, X_drawn = report_drawn_set()
    print("\n" + format_drawn(evaluate_drawn(model.network.predict, drawn, X_drawn),
                              f"{model.version} on synthetic drawn digits (model.drawn_digits)"))
    b = beyond_mnist(model.predict_proba, model.threshold)
    print(f"'not sure' (below {100 * model.threshold:.1f}%): {100 * b['drawn_not_sure']:.1f}% of drawn digits "
          f"(the rest {100 * b['drawn_sure_accuracy']:.2f}% right), {100 * b['scribbles_not_sure']:.0f}% of "
          f"{b['scribbles_n']} non-digit scribbles")
    if args.report:
        from model.report import write_report
        index = write_report(model, X, y, Path(args.report))
        print(f"\nreport written to {index}")
    return 0


def data_beside(path: Path, data_dir: str | None):
    """MNIST split as the saved model at `path` was trained: the same validation size, so its
    validation images stay unseen."""
    from model.data import load_mnist
    from model.weights import read_meta

    size = (read_meta(path).get("recipe") or {}).get("validation_size", 10_000)
    return load_mnist(resolve_data_dir(data_dir), validation_size=size)


def cmd_calibrate(args) -> int:
    from model.train_and_save import calibrate_saved

    path = Path(args.path)
    c = calibrate_saved(path, data_beside(path, args.data_dir))["calibration"]
    print(f"calibrated {path} on its {c['n']:,} validation images:\n"
          f"  temperature {c['temperature']:.3f}; expected calibration error {100 * c['ece_before']:.2f}% -> "
          f"{100 * c['ece_after']:.2f}%\n"
          f"  'not sure' below {100 * c['threshold']:.1f}% confidence: {100 * c['coverage']:.1f}% of answers "
          f"kept, {100 * c['precision_kept']:.2f}% of them right; {100 * c['scribbles_rejected']:.0f}% of "
          f"{c['n_scribbles']} non-digit scribbles below it")
    return 0


def cmd_ensemble(args) -> int:
    from model.active import set_active
    from model.train_and_save import ensemble_and_save

    paths = [Path(p) for p in args.members]
    data = data_beside(paths[0], args.data_dir)
    out = Path(args.out) if args.out else models_dir(args.weights_dir) / f".ensemble-{os.getpid()}.npz"
    meta = ensemble_and_save(paths, data, out)
    if not args.out:
        final = out.with_name(f"{meta['version']}.npz")
        os.replace(out, final)
        out = final
    m = meta["metrics"]
    print(f"saved {out}\n  version {meta['version']}\n  {len(paths)} members; validation "
          f"{100 * m['val_accuracy']:.2f}%, test {100 * m['test_accuracy']:.2f}%")
    if args.activate:
        set_active(out.parent, out.name)
        print(f"  now the active model of {out.parent}")
    return 0


def workers_flag(text: str) -> str:
    """argparse type of --workers: 'auto' or a positive count."""
    if text != "auto" and not (text.isdigit() and int(text) >= 1):
        raise argparse.ArgumentTypeError(f"expected 'auto' or a count of at least 1, got {text!r}")
    return text


def plan_workers(requested: str, cores: int, blas_threads: int | None) -> tuple[int, int]:
    """(worker processes, BLAS threads each) for `--workers` ("auto" or a count) on `cores` cores.

    "auto" is one process per core. BLAS threads are DIGITS_BLAS_THREADS (`blas_threads`, None if
    unset) or 1, lowered where needed so that processes x threads never exceed the cores: more would
    make the workers' products fight over them."""
    workers = cores if requested == "auto" else int(requested)
    if workers < 1:
        raise ValueError(f"--workers must be 'auto' or at least 1, got {requested}")
    threads = max(1, min(blas_threads or 1, cores // workers))
    return workers, threads


def cmd_serve(args) -> int:
    import uvicorn

    from app.settings import Settings
    from model.active import active_path
    from model.weights import load_servable

    settings = Settings()
    settings.check_paths()
    load_servable(active_path(settings.weights_dir))  # refuse to start, with the reason, before forking workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    explicit = settings.blas_threads if "DIGITS_BLAS_THREADS" in os.environ else None
    workers, threads = plan_workers(args.workers, cores, explicit)
    if explicit is not None and threads != explicit:
        log.warning("DIGITS_BLAS_THREADS=%d lowered to %d: %d workers on %d cores", explicit, threads, workers, cores)
    os.environ["DIGITS_BLAS_THREADS"] = str(threads)  # the workers read their settings from the environment
    if settings.admin_token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without DIGITS_ADMIN_TOKEN: training and activation answer loopback "
                    "clients only, and behind a reverse proxy on this machine every client looks like "
                    "loopback; set DIGITS_ADMIN_TOKEN", args.host)
    log.info("%d worker process(es) x %d BLAS thread(s) on %d core(s)", workers, threads, cores)
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, workers=workers,
                log_level=args.log_level)
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; each option's default after its help, unless the help
    already says it (the recipe flags: per architecture) or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.nargs == 0 or action.default in (None, argparse.SUPPRESS)
                or "default:" in text):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows defaults (HelpFormatter); its subcommands' parsers are too."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), for `digits --version`."""
    try:
        return version("digits")
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .`)"


def data_dir_help() -> str:
    """--data-dir's help, with the folder it stands for now."""
    from model.data import default_data_dir
    env = os.environ.get("DIGITS_DATA_DIR")
    where = (f"{env}, from DIGITS_DATA_DIR" if env
             else f"{default_data_dir()}, the per-user cache folder; DIGITS_DATA_DIR sets another")
    return f"the MNIST folder (default: {where})".replace("%", "%%")


BOUNDS = ("ge", "gt", "le", "lt")


def bounds_words(metadata: list) -> str:
    """A settings field's bounds (annotated_types Ge/Gt/Le/Lt) in words: "1024 to 50000000"."""
    limits = {kind: getattr(m, kind) for m in metadata if (kind := type(m).__name__.lower()) in BOUNDS}
    low = f"at least {limits['ge']}" if "ge" in limits else f"more than {limits['gt']}" if "gt" in limits else ""
    high = f"at most {limits['le']}" if "le" in limits else f"less than {limits['lt']}" if "lt" in limits else ""
    if "ge" in limits and "le" in limits:
        return f"{limits['ge']} to {limits['le']}"
    return ", ".join(part for part in (low, high) if part)


def settings_help() -> str:
    """`digits serve --help`'s list of settings, from app.settings.Settings: variable, default, bounds,
    description."""
    from app.settings import Settings
    prefix = Settings.model_config.get("env_prefix", "")
    lines = ["settings (environment variables; a bad value stops the start and names the variable):"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        facts = ["unset" if default is None else f"default: {default}", bounds_words(field.metadata)]
        lines.append(f"  {prefix}{name.upper()}  ({'; '.join(fact for fact in facts if fact)})")
        if field.description:
            lines.append(f"      {field.description}")
    return "\n".join(lines)


# Recipe fields whose flag is shorter than the field's name
RECIPE_FLAGS = {"architecture": "--arch", "member_architecture": "--member-arch"}


def recipe_default_text(name: str) -> str:
    """The field's default as --help shows it: one value, or each architecture's where they differ."""
    from model.recipe import PER_ARCHITECTURE, TRAINABLE, recipe_for
    if name not in PER_ARCHITECTURE:
        return f"default: {getattr(recipe_for('seed'), name)}"
    by_value: dict[str, list[str]] = {}
    for arch in TRAINABLE:
        value = getattr(recipe_for(arch), name)
        by_value.setdefault("on" if value is True else "off" if value is False else str(value), []).append(arch)
    return "default: " + ", ".join(f"{value} ({', '.join(archs)})" for value, archs in by_value.items())


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of model.recipe.Recipe, with its help, choices and type; bounds are checked by
    Recipe.validate. Flags left out are None: the architecture's recipe fills them in."""
    from model.recipe import bounds_text, recipe_fields
    for f in recipe_fields():
        flag = RECIPE_FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
        bounds = f"; {bounds_text(f.bounds)}" if f.bounds else ""
        help_text = f"{f.help}{bounds}; {recipe_default_text(f.name)}".replace("%", "%%")
        if f.type is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=f.type, choices=f.choices, help=help_text,
                                default=f.default if f.name == "architecture" else None)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="digits", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.set_defaults(func=lambda args: parser.print_help() or 0)  # `digits` alone: the help
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    data_parser = sub.add_parser("data", help="manage the MNIST files")
    data_parser.set_defaults(func=lambda args: data_parser.print_help() or 0)
    data = data_parser.add_subparsers(title="commands", dest="data_command", metavar="COMMAND")
    fetch = data.add_parser("fetch", help="download and verify the four MNIST files")
    fetch.add_argument("--data-dir", help=data_dir_help())
    fetch.set_defaults(func=cmd_fetch)

    train = sub.add_parser("train", help="train a network", description=(
        "Options left out take the architecture's default recipe (model.recipe.ARCHITECTURE_RECIPES)."))
    add_recipe_flags(train)
    train.add_argument("--data-dir", help=data_dir_help())
    train.add_argument("--weights-dir", help="where the versioned file goes (default: the service's models "
                                            "folder, <DIGITS_HOME>/models)")
    train.add_argument("--out", help="exact output path instead of WEIGHTS_DIR/<version>.npz")
    train.add_argument("--activate", action="store_true", help="make it the model the service loads, unless it is "
                       "worse on validation than the active one")
    train.add_argument("--force", action="store_true", help="with --activate: even if it is worse")
    train.add_argument("--start-from", metavar="PATH", help="with --fine-tune: the weights file to start from "
                       "(default: the active model of the weights folder)")
    train.add_argument("--checkpoint", metavar="PATH",
                       help="save the training state to PATH after every epoch and, if PATH exists, resume "
                            "from it (same options and data; bit for bit the run it continues); removed once "
                            "the weights file is written")
    train.set_defaults(func=cmd_train)

    calibrate = sub.add_parser("calibrate", help="fit a saved model's temperature and 'not sure' threshold")
    calibrate.add_argument("path", help="a weights .npz (rewritten in place; the weights stay as they are)")
    calibrate.add_argument("--data-dir", help=data_dir_help())
    calibrate.set_defaults(func=cmd_calibrate)

    ensemble = sub.add_parser("ensemble", help="average saved models into one ensemble weights file")
    ensemble.add_argument("members", nargs="+", help="two or more weights .npz files")
    ensemble.add_argument("--data-dir", help=data_dir_help())
    ensemble.add_argument("--weights-dir", help="where the versioned file goes (default: the service's models "
                                               "folder, <DIGITS_HOME>/models)")
    ensemble.add_argument("--out", help="exact output path instead of WEIGHTS_DIR/<version>.npz")
    ensemble.add_argument("--activate", action="store_true", help="make it the model the service loads")
    ensemble.set_defaults(func=cmd_ensemble)

    evaluate = sub.add_parser("evaluate", help="test accuracy, per class, and the confusion matrix")
    evaluate.add_argument("path", help="a weights .npz")
    evaluate.add_argument("--data-dir", help=data_dir_help())
    evaluate.add_argument("--report", metavar="DIR", help="also write figures and an index.html there (the "
                          "service shows WEIGHTS_DIR/reports/<version>/)")
    evaluate.set_defaults(func=cmd_evaluate)

    serve = sub.add_parser("serve", help="start the web service (settings: DIGITS_* variables)",
                           description="Start the web service: the drawing page, /predict and /train.",
                           epilog=settings_help())
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--workers", default="1", type=workers_flag,
                       help="server processes: a count, or 'auto' for one per core")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug",
                                                              "trace"], help="uvicorn's log level")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.func in (cmd_train, cmd_ensemble, cmd_evaluate, cmd_calibrate):
        from model.malloc_tuning import TRAINING, keep_freed_memory
        keep_freed_memory(**TRAINING)  # no page faults for each step's large temporaries (model.malloc_tuning)
    try:
        return args.func(args)
    except (DataError, ValueError) as exc:
        print(f"digits: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("digits: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
