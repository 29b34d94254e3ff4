"""Training jobs and user feedback in one SQLite file, shared by every server process and the workers.

WAL mode and a busy timeout let several processes read and write at once; every write is its own
transaction, so a killed process loses nothing that was committed.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from model.preprocess import PREPROCESSING_VERSION

log = logging.getLogger("digits.jobs")
ACTIVE_STATES = ("queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")
QUEUE_GRACE_S = 30.0   # a queued job whose process never reported is given up after this
HEARTBEAT_GRACE_S = 60.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    recipe TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    heartbeat REAL,
    pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress TEXT NOT NULL DEFAULT '{}',
    curve TEXT NOT NULL DEFAULT '[]',
    history TEXT NOT NULL DEFAULT '[]',
    metrics TEXT,
    model_version TEXT,
    promoted INTEGER,
    decision TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    label INTEGER NOT NULL CHECK (label BETWEEN 0 AND 9),
    predicted INTEGER,
    confidence REAL,
    model_version TEXT,
    pixels BLOB NOT NULL,
    preprocessing_version INTEGER
);
"""
# Feedback rows written before they recorded their preprocessing version. Feedback arrived (77feee7)
# after PREPROCESSING_VERSION became 2 (f879ed2), and it stayed 2 until the column existed.
UNVERSIONED_FEEDBACK_PREPROCESSING = 2


class JobConflict(Exception):
    """Another job is queued or running."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class Store:
    """The SQLite file. Cheap to construct; each call opens its own short-lived connection."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            _add_feedback_preprocessing_version(db)

    @contextmanager
    def _connect(self):
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # timeout: SQLite's busy wait
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")
        try:
            yield db
        finally:
            db.close()

    # --- jobs ---------------------------------------------------------------------------------
    def create_job(self, recipe: dict) -> str:
        """Insert a queued job, or raise JobConflict if one is queued or running (atomically)."""
        job_id = uuid.uuid4().hex[:12]
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._expire_dead(db)
                row = db.execute("SELECT id FROM jobs WHERE status IN (?, ?)", ACTIVE_STATES).fetchone()
                if row:
                    raise JobConflict(row["id"])
                db.execute("INSERT INTO jobs (id, status, recipe, created_at) VALUES (?, 'queued', ?, ?)",
                           (job_id, json.dumps(recipe), time.time()))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return job_id

    def resume_job(self, job_id: str) -> None:
        """Queue an interrupted job again, under its id and recipe (atomically). Raises JobConflict if
        another job is queued or running, ValueError if this one was not interrupted."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._expire_dead(db)
                row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is None or row["status"] != "interrupted":
                    raise ValueError(f"job {job_id} is {row['status'] if row else 'unknown'}; only an "
                                     f"interrupted job can be resumed")
                row = db.execute("SELECT id FROM jobs WHERE status IN (?, ?)", ACTIVE_STATES).fetchone()
                if row:
                    raise JobConflict(row["id"])
                # heartbeat: when it was queued again (a queued job with no process expires after
                # QUEUE_GRACE_S from this); started_at stays, so it is still the same run
                db.execute("UPDATE jobs SET status = 'queued', pid = NULL, heartbeat = ?, finished_at = NULL, "
                           "error = NULL, cancel_requested = 0 WHERE id = ?", (time.time(), job_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def update_job(self, job_id: str, **fields) -> None:
        """Set columns; dicts and lists are stored as JSON."""
        if not fields:
            return
        values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))

    def transition(self, job_id: str, from_states: tuple[str, ...], **fields) -> bool:
        """Set columns only while the job is in one of `from_states`; False if it was not (someone else
        moved it on, e.g. marked it interrupted), so a state is never overwritten blindly."""
        values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        marks = ", ".join("?" * len(from_states))
        with self._connect() as db:
            cursor = db.execute(f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
                                (*values, job_id, *from_states))
        return cursor.rowcount == 1

    def finish_job(self, job_id: str, status: str, **fields) -> bool:
        """Move a running (or queued) job to a final state; False if it had already ended."""
        assert status in FINAL_STATES, f"not a final state: {status}"
        return self.transition(job_id, ACTIVE_STATES, status=status, finished_at=time.time(), **fields)

    def heartbeat(self, job_id: str) -> bool:
        """Record that the job's process is alive; returns whether a cancel was asked for."""
        with self._connect() as db:
            db.execute("UPDATE jobs SET heartbeat = ? WHERE id = ?", (time.time(), job_id))
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def get_job(self, job_id: str) -> dict | None:
        with self._connect() as db:
            self._expire_dead(db)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_dict(row) if row else None

    def list_jobs(self, limit: int = 50) -> list[dict]:
        with self._connect() as db:
            self._expire_dead(db)
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,)).fetchall()
        return [_job_dict(row) for row in rows]

    def active_job(self) -> dict | None:
        with self._connect() as db:
            self._expire_dead(db)
            row = db.execute("SELECT * FROM jobs WHERE status IN (?, ?)", ACTIVE_STATES).fetchone()
        return _job_dict(row) if row else None

    def request_cancel(self, job_id: str) -> None:
        with self._connect() as db:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def _expire_dead(self, db) -> None:
        """Mark queued/running jobs whose process is gone as interrupted, so none stays 'running' forever."""
        now = time.time()
        for row in db.execute("SELECT id, status, pid, created_at, heartbeat FROM jobs WHERE status IN (?, ?)",
                              ACTIVE_STATES).fetchall():
            if row["pid"] is None:
                dead = now - (row["heartbeat"] or row["created_at"]) > QUEUE_GRACE_S
            else:
                dead = not process_alive(row["pid"]) or now - (row["heartbeat"] or now) > HEARTBEAT_GRACE_S
            if dead:
                db.execute("UPDATE jobs SET status = 'interrupted', finished_at = ?, error = ? "
                           "WHERE id = ? AND status IN (?, ?)",
                           (now, "the training process stopped without finishing (killed or restarted)",
                            row["id"], *ACTIVE_STATES))

    # --- feedback -------------------------------------------------------------------------------
    def add_feedback(self, pixels: np.ndarray, label: int, predicted: int | None, confidence: float | None,
                     model_version: str | None, max_rows: int | None = None,
                     preprocessing_version: int = PREPROCESSING_VERSION) -> int | None:
        """Store one 28x28 sample, preprocessed at `preprocessing_version`, with its true label; returns
        its id, or None (nothing stored) when the table already holds `max_rows` rows. The count and the
        insert are one statement, so processes sharing the file cannot overshoot the cap together."""
        blob = np.asarray(pixels, dtype=np.float32).reshape(784).tobytes()
        with self._connect() as db:
            cursor = db.execute("INSERT INTO feedback (created_at, label, predicted, confidence, model_version, "
                                "pixels, preprocessing_version) SELECT ?, ?, ?, ?, ?, ?, ? "
                                "WHERE (SELECT COUNT(*) FROM feedback) < ?",
                                (time.time(), int(label), predicted, confidence, model_version, blob,
                                 int(preprocessing_version), 2 ** 62 if max_rows is None else max_rows))
            return int(cursor.lastrowid) if cursor.rowcount == 1 else None

    def feedback_summary(self) -> dict:
        """Counts per true label and how often the model was right."""
        with self._connect() as db:
            rows = db.execute("SELECT label, COUNT(*) AS n, SUM(predicted = label) AS right FROM feedback "
                              "GROUP BY label").fetchall()
        per_label = {str(d): {"count": 0, "model_right": 0} for d in range(10)}
        for row in rows:
            per_label[str(row["label"])] = {"count": row["n"], "model_right": int(row["right"] or 0)}
        total = sum(v["count"] for v in per_label.values())
        right = sum(v["model_right"] for v in per_label.values())
        return {"total": total, "model_right": right,
                "model_accuracy": right / total if total else None, "per_label": per_label}

    def feedback_samples(self, before: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Feedback preprocessed as this code does it, as X (N, 784) float32 and y (N,) int64, oldest
        first: all of it, or what was sent before the time `before` (a job's start, so that a resumed
        job trains on the same samples). Rows of other preprocessing versions are left out and counted
        in the log: their pixels would teach a model inputs it will never see."""
        before = float("inf") if before is None else before
        with self._connect() as db:
            rows = db.execute("SELECT label, pixels FROM feedback WHERE created_at < ? AND "
                              "preprocessing_version IS ? ORDER BY id", (before, PREPROCESSING_VERSION)).fetchall()
            n_other = db.execute("SELECT COUNT(*) FROM feedback WHERE created_at < ? AND "
                                 "preprocessing_version IS NOT ?", (before, PREPROCESSING_VERSION)).fetchone()[0]
        if n_other:
            log.warning("feedback: %d drawing(s) of another preprocessing version than %d left out, %d used",
                        n_other, PREPROCESSING_VERSION, len(rows))
        X = np.array([np.frombuffer(r["pixels"], dtype=np.float32) for r in rows], dtype=np.float32)
        return X.reshape(-1, 784), np.array([r["label"] for r in rows], dtype=np.int64)


def _add_feedback_preprocessing_version(db: sqlite3.Connection) -> None:
    """Migrate a database from before feedback recorded its preprocessing version, in place: add the
    column and give the rows already there the version they were written at. One transaction, checked
    again inside it, so processes starting together migrate once and no reader sees a half-done step."""
    def has_column() -> bool:
        return any(row["name"] == "preprocessing_version" for row in db.execute("PRAGMA table_info(feedback)"))

    if has_column():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if not has_column():
            db.execute("ALTER TABLE feedback ADD COLUMN preprocessing_version INTEGER")
            db.execute("UPDATE feedback SET preprocessing_version = ?", (UNVERSIONED_FEEDBACK_PREPROCESSING,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def job_checkpoints(weights_dir: Path, job_id: str) -> list[Path]:
    """The training checkpoints a job's process keeps beside the models (one per ensemble member)."""
    return sorted(Path(weights_dir).glob(f".job-{job_id}.ckpt*.npz"))


def job_checkpoint(weights_dir: Path, job_id: str) -> Path:
    """Where a job's process checkpoints its training after every epoch (`model.train.train`)."""
    return Path(weights_dir) / f".job-{job_id}.ckpt.npz"


def process_alive(pid: int) -> bool:
    """Whether `pid` runs and is not a zombie (a finished child nobody has reaped yet), on any system
    psutil knows (parsing /proc worked on Linux alone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists, under another user
        return True


def _job_dict(row: sqlite3.Row) -> dict:
    job = dict(row)
    for key in ("recipe", "progress", "curve", "history", "metrics"):
        job[key] = json.loads(job[key]) if job[key] else None
    job["promoted"] = None if job["promoted"] is None else bool(job["promoted"])
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job
