"""Download the four MNIST files from public mirrors, verified by SHA-256, written atomically.

Used by `digits data fetch`; reading and parsing the files is `model.data`'s job.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import ssl
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

from model.atomic import atomic_open
from model.data import FILES, SHA256, DataError

log = logging.getLogger(__name__)

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
CHUNK_SIZE = 64 * 1024
# Failures with no HTTP response at all: unreachable host, refused, reset, timed out.
_NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, ssl.SSLError, http.client.HTTPException)

Progress = Callable[[str, int, int | None], None]


class FetchError(DataError):
    """No mirror delivered a verified copy of an MNIST file."""


@dataclass(frozen=True)
class FetchOutcome:
    """What happened to one file: kept as it was, or downloaded from `mirror`."""
    name: str
    path: Path
    status: Literal["verified-existing", "downloaded"]
    mirror: str | None = None


class _MirrorFailed(Exception):
    """One mirror failed for one file; `network` means no HTTP response was received at all."""

    def __init__(self, reason: str, network: bool = False):
        super().__init__(reason)
        self.network = network


def _content_sha256(path: Path, gzipped: bool | None = None) -> str:
    """SHA-256 of the uncompressed content; `gzipped=None` sniffs the gzip magic bytes."""
    if gzipped is None:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
    digest = hashlib.sha256()
    with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def _is_verified(path: Path, expected: str) -> bool:
    """Whether `path` exists and its uncompressed content hashes to `expected`."""
    if not path.is_file():
        return False
    try:
        actual = _content_sha256(path)
    except (OSError, EOFError, zlib.error) as exc:
        log.warning("ignoring %s: unreadable or corrupt (%s)", path, exc)
        return False
    if actual != expected:
        log.warning("ignoring %s: checksum mismatch", path)
    return actual == expected


def _download(url: str, dest, name: str, on_progress: Progress | None, timeout: float) -> None:
    """Stream `url` into the open binary file `dest`, reporting progress; raise _MirrorFailed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
            done = 0
            while chunk := resp.read(CHUNK_SIZE):
                dest.write(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(name, done, total)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise _MirrorFailed(f"HTTP {exc.code} {exc.reason}") from exc
    except _NETWORK_ERRORS as exc:
        reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise _MirrorFailed(f"network error: {reason}", network=True) from exc
    if total is not None and done < total:
        raise _MirrorFailed(f"truncated download: {done} of {total} bytes")


def _fetch_one(stem: str, data_dir: Path, url: str, expected: str,
               on_progress: Progress | None, timeout: float) -> Path:
    """Download one mirror's copy of `stem.gz`, verify it and move it into place."""
    target = data_dir / f"{stem}.gz"
    with atomic_open(target) as dest:  # a failure below leaves the old file, if any, as it was
        _download(url, dest, target.name, on_progress, timeout)
        dest.flush()
        try:
            actual = _content_sha256(Path(dest.name), gzipped=True)
        except (OSError, EOFError, zlib.error) as exc:
            raise _MirrorFailed(f"corrupt or truncated gzip ({exc})") from exc
        if actual != expected:
            raise _MirrorFailed(f"checksum mismatch (got sha256 {actual[:12]}..., expected {expected[:12]}...)")
    return target


def _failure_message(stem: str, data_dir: Path, failures: list[tuple[str, _MirrorFailed]]) -> str:
    """A FetchError message: each mirror's reason, and what to do by hand."""
    lines = [f"could not fetch {stem}.gz from any mirror:"]
    lines += [f"  - {url}: {failure}" for url, failure in failures] or ["  (no mirrors given)"]
    by_hand = (f"put the four MNIST files (as <name>.gz or uncompressed) in {data_dir}: "
               + ", ".join(FILES.values()))
    if failures and all(failure.network for _, failure in failures):
        lines.append(f"No mirror could be reached: this machine seems to be offline. "
                     f"Download the files elsewhere and {by_hand}")
    else:
        lines.append(f"You can also {by_hand}")
    return "\n".join(lines)


def _from_mirrors(stem: str, data_dir: Path, mirrors: Sequence[str], expected: str,
                  on_progress: Progress | None, timeout: float) -> FetchOutcome:
    """Try each mirror in turn; the first verified copy wins, else FetchError."""
    failures: list[tuple[str, _MirrorFailed]] = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{stem}.gz"
        log.info("downloading %s", url)
        try:
            return FetchOutcome(stem, _fetch_one(stem, data_dir, url, expected, on_progress, timeout),
                                "downloaded", mirror)
        except _MirrorFailed as failure:
            log.warning("%s: %s", url, failure)
            failures.append((url, failure))
        except OSError as exc:  # local trouble (disk full, permissions): no mirror will help
            raise FetchError(f"cannot write {stem}.gz in {data_dir}: {exc}") from exc
    raise FetchError(_failure_message(stem, data_dir, failures))


def fetch_mnist(data_dir: Path, mirrors: Sequence[str] = MIRRORS, on_progress: Progress | None = None,
                timeout: float = 30.0, checksums: Mapping[str, str] = SHA256) -> list[FetchOutcome]:
    """Make sure `data_dir` holds verified copies of the four MNIST files, downloading what is missing.

    `on_progress(filename, bytes_done, bytes_total_or_None)` is called as bytes arrive. `checksums`
    (uncompressed SHA-256 per file stem) is for tests or alternative data. Raises FetchError.
    """
    data_dir = Path(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create the data folder {data_dir}: {exc}") from exc
    outcomes = []
    for stem in FILES.values():
        raw, packed = data_dir / stem, data_dir / f"{stem}.gz"
        if _is_verified(raw, checksums[stem]):
            outcomes.append(FetchOutcome(stem, raw, "verified-existing"))
            continue
        if _is_verified(packed, checksums[stem]):
            outcomes.append(FetchOutcome(stem, packed, "verified-existing"))
        else:
            outcomes.append(_from_mirrors(stem, data_dir, mirrors, checksums[stem], on_progress, timeout))
        if raw.exists():  # an invalid uncompressed copy would shadow the good .gz when loading
            log.warning("removing invalid %s in favour of %s", raw, packed)
            raw.unlink()
    return outcomes
