"""Service settings, read from `DIGITS_*` environment variables; bad values fail at start-up."""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.active import seed_models
from model.data import default_data_dir

ROOT = Path(__file__).resolve().parents[1]


def shipped(folder: str, packaged: str) -> Path:
    """A folder that comes with digits: the checkout's own (`folder` beside app/), or, in an installed
    distribution, app/`packaged` (pyproject.toml ships the page and the default model as package data)."""
    if (ROOT / "pyproject.toml").is_file() and (ROOT / folder).is_dir():
        return ROOT / folder
    return Path(__file__).resolve().parent / packaged


def default_home() -> Path:
    """The per-user data folder: ~/.local/share/digits on Linux, and each system's own elsewhere."""
    return platformdirs.user_data_path("digits", appauthor=False)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGITS_", extra="ignore")

    home: Path = Field(default_factory=default_home,
                       description="the state folder: trained models, reports, jobs, feedback (default: the "
                                   "per-user data folder)")
    weights_dir: Path | None = Field(None, description="folder of versioned .npz files and ACTIVE (default: "
                                                       "<home>/models, filled from the shipped models)")
    shipped_dir: Path = Field(default_factory=lambda: shipped("weights", "shipped"),
                              description="the models that come with digits, only read")
    data_dir: Path | None = Field(None, description="MNIST folder; default: the per-user cache folder")
    static_dir: Path = Field(default_factory=lambda: shipped("static", "static"),
                             description="the drawing page's files")
    admin_token: SecretStr | None = Field(None, description="bearer token for /train and model activation")
    max_body_bytes: int = Field(1_000_000, ge=1024, le=50_000_000, description="larger request bodies get 413")
    max_image_pixels: int = Field(4_000_000, ge=784, le=100_000_000, description="width x height limit")
    max_pixel_batch: int = Field(256, ge=1, le=10_000, description="images in one pixels batch; more: 413")
    max_image_batch: int = Field(64, ge=1, le=1_000, description="images in one images batch; more: 413")
    max_stroke_points: int = Field(20_000, ge=10, le=1_000_000, description="points in one drawing's strokes; "
                                                                             "more: 413")
    blas_threads: int = Field(1, ge=1, le=64, description="BLAS threads per server process")
    db_path: Path | None = Field(None, description="SQLite file of jobs and feedback (default: <home>/digits.sqlite3)")
    reload_interval_s: float = Field(0.5, gt=0, le=60, description="how often workers look for a new active model")
    max_queue: int = Field(64, ge=1, le=100_000, description="/predict requests a worker takes at once; "
                                                             "more get 503 with Retry-After")
    max_request_pixels: int = Field(16_000_000, ge=784, le=1_000_000_000,
                                    description="decoded image pixels one request may hold in all; more: 413")
    prep_threads: int = Field(2, ge=1, le=64, description="threads per worker that decode and preprocess")
    max_batch_rows: int = Field(256, ge=1, le=10_000, description="images per micro-batched forward pass")
    batch_wait_ms: float = Field(0.0, ge=0, le=20, description="under load, how long a batch waits for more")
    feedback_per_minute: int = Field(30, ge=1, le=100_000, description="POST /feedback per client per minute")
    feedback_max_rows: int = Field(100_000, ge=1, le=100_000_000, description="feedback rows kept in all")

    @property
    def mnist_dir(self) -> Path:
        """The MNIST folder: DIGITS_DATA_DIR, else the per-user cache folder."""
        return self.data_dir or default_data_dir()

    @model_validator(mode="after")
    def _models_in_home(self) -> "Settings":
        if self.weights_dir is None:
            self.weights_dir = self.home / "models"
        return self

    @property
    def database(self) -> Path:
        return self.db_path or self.home / "digits.sqlite3"

    def check_paths(self) -> None:
        """Folders that must exist; raises ValueError naming the setting. The default models folder
        (<home>/models) is made and filled from the shipped models first (`model.active.seed_models`);
        a folder named by DIGITS_WEIGHTS_DIR is used as it is."""
        if self.weights_dir == self.home / "models":
            try:
                seed_models(self.weights_dir, self.shipped_dir)
            except OSError as exc:
                raise ValueError(f"DIGITS_HOME={self.home}: cannot keep models there ({exc})") from exc
        if not self.weights_dir.is_dir():
            raise ValueError(f"DIGITS_WEIGHTS_DIR={self.weights_dir} is not a folder")
        if not self.static_dir.is_dir():
            raise ValueError(f"DIGITS_STATIC_DIR={self.static_dir} is not a folder")
        if not os.access(self.weights_dir, os.W_OK):
            raise ValueError(f"DIGITS_WEIGHTS_DIR={self.weights_dir} is not writable (trained models go there)")
