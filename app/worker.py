"""The training process behind `POST /train`: runs one job from the store and records every step.

Started by the service as `python -m app.worker --db ... --job ID ...`, in its own process (never in
the server's event loop or threads), at low CPU priority so /predict keeps its latency. It calls the
same `model.train_and_save.train_and_save` as `digits train`.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from app.store import Store, job_checkpoint, job_checkpoints
from model.active import set_active
from model.data import load_mnist
from model.malloc_tuning import TRAINING, keep_freed_memory
from model.train import Progress, Recipe, TrainingCancelled
from model.evaluate import percent
from model.train_and_save import active_accuracy, train_and_save
from model.weights import WeightsError, load_servable

log = logging.getLogger("digits.worker")
PROGRESS_EVERY_S = 0.5
CANCEL_POLL_S = 0.2
HEARTBEAT_EVERY_S = 5.0  # from a thread, between steps too (see run_job); well inside HEARTBEAT_GRACE_S
MAX_CURVE_POINTS = 400
# A fine-tuned model that reads people's held-out corrections better is promoted even if it lost up to
# this much validation accuracy (0.1 points: 10 of 10,000 images): what users corrected is what they
# see, and a few MNIST images either way is within one run's noise. Fine-tuning the cnn on its
# defaults moved validation by -0.03 points.
FINE_TUNE_TOLERANCE = 0.001


def promotion_decision(candidate: dict, weights_dir: Path, policy: str, X_val, y_val) -> tuple[bool, str]:
    """Whether the new model becomes active, and why (recorded with the job).

    The active model is scored on the candidate's own validation images, so the two figures compare
    like with like whatever validation_size either was trained with.
    """
    new_acc = candidate["metrics"]["val_accuracy"]
    try:
        version, old_acc = active_accuracy(weights_dir, X_val, y_val)  # another preprocessing's is no rival
    except WeightsError as exc:
        return True, f"promoted: there was no usable active model ({exc})"
    # Percent with one decimal, as everywhere; the error counts tell apart two that print alike.
    new, old = errors_and_percent(new_acc, len(y_val)), errors_and_percent(old_acc, len(y_val))
    if policy == "always":
        return True, f"promoted: the recipe says always (validation {new}, active {version} {old})"
    if new_acc >= old_acc:
        return True, f"promoted: validation {new}, not worse than the active {version}'s {old}"
    if corrections_improved(candidate) and old_acc - new_acc <= FINE_TUNE_TOLERANCE:
        return True, (f"promoted: it reads the held-out corrections better, and its validation {new} is "
                      f"within {percent(FINE_TUNE_TOLERANCE)} of the active {version}'s {old}")
    return False, f"kept {version}: its validation {old} beats the new model's {new}"


def corrections_improved(candidate: dict) -> bool:
    """A fine-tuned model that reads the held-out corrections better than the model it started from."""
    metrics = candidate["metrics"]
    before, after = metrics.get("feedback_accuracy_before"), metrics.get("feedback_accuracy")
    return bool(candidate.get("fine_tuned_from")) and before is not None and after is not None and after > before


def errors_and_percent(fraction: float, n: int) -> str:
    """0.9961 of 10,000 -> "99.6% (39 errors)"."""
    return f"{percent(fraction)} ({round((1 - fraction) * n):,} errors)"


def feedback_outcome(metrics: dict) -> str:
    """The held-out feedback before and after fine-tuning, as the job's decision reports it ("" without)."""
    before, after = metrics.get("feedback_accuracy_before"), metrics.get("feedback_accuracy")
    if before is None or after is None:
        return ""
    return (f"; held-out corrections {percent(before)} before, {percent(after)} after "
            f"({metrics['n_feedback_held_out']} drawings)")


class JobReporter:
    """Turns the training loop's callbacks into throttled writes to the store, and answers `should_stop`."""

    def __init__(self, store: Store, job_id: str, curve: list | None = None, history: list | None = None) -> None:
        self.store, self.job_id = store, job_id
        self.started = time.time()
        # a resumed job goes on with the curves drawn so far; what came after its checkpoint is redone
        # and replaced as the new progress arrives (on_progress)
        self.curve: list[dict] = list(curve or [])
        self.history: list[dict] = list(history or [])
        self.resumed = curve is not None
        self._origin: tuple[float, float] | None = None  # a resumed job's first (time, fraction), for its ETA
        self._last_write = self._last_poll = 0.0
        self._stop = False

    def stop(self, *_):
        self._stop = True

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_poll >= CANCEL_POLL_S:
            self._last_poll = now
            self._stop = self.store.heartbeat(self.job_id)  # a live heartbeat even in long epochs
        return self._stop

    def eta(self, now: float, fraction: float) -> float | None:
        """Seconds left at the pace since this process started training (or since it resumed)."""
        t0, f0 = self._origin
        return (now - t0) * (1 - fraction) / (fraction - f0) if fraction > f0 else None

    def on_progress(self, p: Progress) -> None:
        now = time.time()
        elapsed = now - self.started
        fraction = round(p.fraction, 5)
        if self.curve and self.curve[-1]["progress"] >= fraction:  # resumed behind where it had got to
            self.curve = [point for point in self.curve if point["progress"] < fraction]
        shown_loss = p.loss if p.smoothed_loss is None else p.smoothed_loss  # no per-epoch jumps in the curve
        self.curve.append({"progress": fraction, "loss": round(shown_loss, 5)})
        if self._origin is None:
            self._origin = (now, p.fraction) if self.resumed else (self.started, 0.0)
        if len(self.curve) > MAX_CURVE_POINTS:
            self.curve = self.curve[::2]
        if p.epoch_done:
            self.history = [record for record in self.history if record["epoch"] < p.epoch]
            self.history.append({"epoch": p.epoch, "loss": p.loss, "val_accuracy": p.val_accuracy})
        if not p.epoch_done and now - self._last_write < PROGRESS_EVERY_S:
            return
        self._last_write = now
        progress = {"epoch": p.epoch, "n_epochs": p.n_epochs, "step": p.step, "n_steps": p.n_steps,
                    "fraction": p.fraction, "loss": shown_loss, "samples_per_s": p.samples_per_s,
                    "elapsed_s": elapsed,
                    "eta_s": self.eta(now, p.fraction)}
        self.store.update_job(self.job_id, progress=progress, curve=self.curve, history=self.history,
                              heartbeat=now)


def run_job(store: Store, job_id: str, weights_dir: Path, data_dir: Path) -> str:
    """Run the job to a final state; returns that state. Never raises for a training failure."""
    job = store.get_job(job_id)
    if job is None or job["status"] != "queued":
        raise SystemExit(f"job {job_id} is not queued")
    # A job that has started before was interrupted and resumed (POST /train/{id}/resume): it keeps its
    # start time, curves and checkpoint, and goes on after its last finished epoch.
    resumed = job["started_at"] is not None
    reporter = JobReporter(store, job_id, job["curve"], job["history"]) if resumed else JobReporter(store, job_id)
    signal.signal(signal.SIGTERM, reporter.stop)  # a plain `kill` also ends the job as cancelled
    if not resumed:
        job["started_at"] = time.time()
    if not store.transition(job_id, ("queued",), status="running", pid=os.getpid(), heartbeat=time.time(),
                            started_at=job["started_at"]):
        raise SystemExit(f"job {job_id} is no longer queued")
    # The steps beat through should_stop, but loading data, calibrating, measuring on drawn digits
    # and writing the report take long stretches without a step (minutes on a loaded machine). A
    # thread keeps the heartbeat going for as long as this process lives, so the job is not taken
    # for dead (HEARTBEAT_GRACE_S) while it works.
    beating = threading.Event()
    threading.Thread(target=keep_beating, args=(store, job_id, beating), daemon=True).start()
    try:
        return _run(store, job, job_id, reporter, weights_dir, data_dir)
    finally:
        beating.set()


def keep_beating(store: Store, job_id: str, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_EVERY_S):
        try:
            store.heartbeat(job_id)
        except Exception:  # noqa: BLE001 (a busy database now and then: the next beat will do)
            log.warning("job %s: heartbeat failed", job_id, exc_info=True)


def _run(store: Store, job: dict, job_id: str, reporter: "JobReporter", weights_dir: Path, data_dir: Path) -> str:
    recipe_fields = dict(job["recipe"])
    policy = recipe_fields.pop("promote", "if_better")
    include_feedback = recipe_fields.pop("include_feedback", False)
    start_from = recipe_fields.pop("start_from", None)  # fine-tuning: the file the route chose (the active one)
    try:
        recipe = Recipe(**recipe_fields)
        source = load_servable(weights_dir / start_from) if recipe.fine_tune else None
        data = load_mnist(data_dir, validation_size=recipe.validation_size)
        # what was sent before the job started: a resumed job must see the same data as its checkpoint
        feedback = store.feedback_samples(before=job["started_at"]) if include_feedback else None
        if reporter.should_stop():
            raise TrainingCancelled("cancelled before training started")
        tmp_path = weights_dir / f".job-{job_id}.npz"
        # The checkpoint outlives only a process that dies (killed, machine down): every ending seen
        # here removes it (finally, below).
        meta = train_and_save(recipe, data, tmp_path, reporter.on_progress, reporter.should_stop,
                              extra_meta={"job_id": job_id}, feedback=feedback,
                              checkpoint=job_checkpoint(weights_dir, job_id), start_from=source)
        final_path = weights_dir / f"{meta['version']}.npz"
        os.replace(tmp_path, final_path)
        write_evaluation_report(final_path, data, weights_dir)
        promoted, reason = promotion_decision(meta, weights_dir, policy, data.X_val, data.y_val)
        reason += feedback_outcome(meta["metrics"])
        if not store.finish_job(job_id, "succeeded", metrics=meta["metrics"], model_version=meta["version"],
                                promoted=int(promoted), decision=reason, history=reporter.history,
                                curve=reporter.curve):
            log.error("job %s was ended by someone else; its model %s is kept but not activated",
                      job_id, meta["version"])
            return "failed"
        if promoted:
            set_active(weights_dir, final_path.name)
        log.info("job %s: %s", job_id, reason)
        return "succeeded"
    except TrainingCancelled as exc:
        store.finish_job(job_id, "cancelled", error=str(exc))
        return "cancelled"
    except Exception as exc:  # any failure is recorded with the job, and the process ends cleanly
        log.exception("job %s failed", job_id)
        store.finish_job(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return "failed"
    finally:
        for leftover in [*weights_dir.glob(f".job-{job_id}.npz*"), *job_checkpoints(weights_dir, job_id)]:
            leftover.unlink(missing_ok=True)


def write_evaluation_report(path: Path, data, weights_dir: Path) -> None:
    """The new model's evaluation report, where the service serves it (`app.reports`), before the job is
    reported done. A report that cannot be made is logged; the model is still good."""
    try:
        from model.report import write_report
        from model.weights import load_model

        model = load_model(path)
        write_report(model, data.X_test, data.y_test, weights_dir / "reports" / model.version)
    except Exception:  # noqa: BLE001 (matplotlib or the disk: not a reason to lose a trained model)
        log.exception("could not write the evaluation report of %s", path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one training job from the store")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--weights-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.nice(10)  # serving requests comes first
    try:  # this process leads its own session, so Linux's autogroup scheduling weighs its whole group
        Path("/proc/self/autogroup").write_text("10")  # against the server's: lower that weight too
    except OSError:  # no autogroup here (other kernels, containers): the nice value alone applies
        pass
    keep_freed_memory(**TRAINING)  # no page faults for each step's large temporaries (model.malloc_tuning)
    with threadpool_limits(limits=1):  # leave the other core to the server
        state = run_job(Store(args.db), args.job, args.weights_dir, args.data_dir)
    return 0 if state in ("succeeded", "cancelled") else 1


if __name__ == "__main__":
    sys.exit(main())
