"""fetch_mnist against a real HTTP server on 127.0.0.1 serving small, valid-format fake IDX files."""
from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import struct
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

from model import fetch
from model.data import FILES, DataError, parse_idx, read_raw
from model.fetch import FetchError, fetch_mnist

STEMS = list(FILES.values())


def fake_idx(stem: str, rng: np.random.Generator) -> bytes:
    """A small but well-formed IDX file of the kind `stem` names."""
    n = 5 if stem.startswith("train") else 3
    if "images" in stem:
        return struct.pack(">IIII", 2051, n, 28, 28) + rng.integers(0, 256, (n, 28, 28), np.uint8).tobytes()
    return struct.pack(">II", 2049, n) + rng.integers(0, 10, n, np.uint8).tobytes()


@dataclass
class Mirror:
    """The test server: `url(kind)` is a mirror prefix; `requests` lists every path asked for."""
    base: str
    raw: dict[str, bytes]
    gz: dict[str, bytes]
    checksums: dict[str, str]
    requests: list[str] = field(default_factory=list)

    def url(self, kind: str) -> str:
        return f"{self.base}/{kind}/"


@pytest.fixture
def mirror():
    rng = np.random.default_rng(0)
    raw = {stem: fake_idx(stem, rng) for stem in STEMS}
    gz = {stem + ".gz": gzip.compress(data, mtime=0) for stem, data in raw.items()}
    checksums = {stem: hashlib.sha256(data).hexdigest() for stem, data in raw.items()}
    release = threading.Event()
    state = Mirror("", raw, gz, checksums)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests.append(self.path)
            _, kind, name = self.path.split("/", 2)
            good = gz.get(name)
            if kind == "slow":
                release.wait(5)
                return
            if good is None or kind == "missing":
                self.send_error(404)
                return
            body, length = {
                "good": (good, len(good)),
                "corrupt": (rng.bytes(len(good)), len(good)),
                "truncated": (good[: len(good) // 2], len(good) // 2),
                "short": (good[: len(good) // 2], len(good)),  # connection drops mid-transfer
                "wrong": (gzip.compress(b"not the expected content"), None),
            }[kind]
            body_len = len(body) if length is None else length
            self.send_response(200)
            self.send_header("Content-Length", str(body_len))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    release.set()
    server.shutdown()
    server.server_close()
    thread.join()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_fetch_creates_the_folder_downloads_all_four_files_and_verifies_them(mirror, tmp_path):
    data_dir = tmp_path / "new" / "mnist"
    outcomes = fetch_mnist(data_dir, [mirror.url("good")], checksums=mirror.checksums)

    assert [o.name for o in outcomes] == STEMS
    assert all(o.status == "downloaded" and o.mirror == mirror.url("good") for o in outcomes)
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(mirror.gz)
    for o in outcomes:
        assert o.path == data_dir / f"{o.name}.gz"
        assert read_raw(o.path) == mirror.raw[o.name]
        parse_idx(read_raw(o.path), o.path, "images" if "images" in o.name else "labels")


@pytest.mark.parametrize("bad", ["missing", "corrupt", "truncated", "short", "wrong"])
def test_a_failing_mirror_falls_back_to_the_next_one(mirror, tmp_path, bad):
    outcomes = fetch_mnist(tmp_path, [mirror.url(bad), mirror.url("good")], checksums=mirror.checksums)

    assert all(o.status == "downloaded" and o.mirror == mirror.url("good") for o in outcomes)
    assert all(read_raw(o.path) == mirror.raw[o.name] for o in outcomes)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mirror.gz)


def test_when_every_mirror_fails_the_error_names_the_file_and_each_reason_and_leaves_nothing(mirror, tmp_path):
    kinds = ["missing", "corrupt", "truncated", "short", "wrong"]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"garbage")

    with pytest.raises(FetchError) as info:
        fetch_mnist(tmp_path, [mirror.url(k) for k in kinds] + [closed_port_url()],
                    checksums=mirror.checksums)

    message = str(info.value)
    assert isinstance(info.value, DataError)
    assert "train-images-idx3-ubyte" in message
    for reason in ["HTTP 404", "corrupt or truncated gzip", "truncated download", "checksum mismatch",
                   "network error"]:
        assert reason in message
    assert "offline" not in message  # some mirrors did answer
    assert str(tmp_path) in message
    assert [p.name for p in tmp_path.iterdir()] == ["train-images-idx3-ubyte.gz"]
    assert (tmp_path / "train-images-idx3-ubyte.gz").read_bytes() == b"garbage"


def test_files_already_verified_are_kept_without_asking_the_server(mirror, tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(mirror.raw["train-images-idx3-ubyte"])
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(mirror.gz["train-labels-idx1-ubyte.gz"])

    outcomes = fetch_mnist(tmp_path, [mirror.url("good")], checksums=mirror.checksums)

    assert [(o.path.name, o.status, o.mirror) for o in outcomes] == [
        ("train-images-idx3-ubyte", "verified-existing", None),
        ("train-labels-idx1-ubyte.gz", "verified-existing", None),
        ("t10k-images-idx3-ubyte.gz", "downloaded", mirror.url("good")),
        ("t10k-labels-idx1-ubyte.gz", "downloaded", mirror.url("good")),
    ]
    assert mirror.requests == ["/good/t10k-images-idx3-ubyte.gz", "/good/t10k-labels-idx1-ubyte.gz"]


def test_existing_corrupt_files_are_replaced_by_verified_downloads(mirror, tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"wrong content")  # would shadow the .gz

    outcomes = fetch_mnist(tmp_path, [mirror.url("good")], checksums=mirror.checksums)

    assert all(o.status == "downloaded" for o in outcomes)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mirror.gz)
    assert all(read_raw(o.path) == mirror.raw[o.name] for o in outcomes)


def test_unreachable_mirrors_say_the_machine_seems_offline_and_name_the_folder(tmp_path):
    data_dir = tmp_path / "mnist"
    with pytest.raises(FetchError) as info:
        fetch_mnist(data_dir, [closed_port_url(), closed_port_url()], timeout=1)

    message = str(info.value)
    assert "offline" in message and str(data_dir) in message
    assert message.count("network error") == 2
    assert all(stem in message for stem in STEMS)
    assert list(data_dir.iterdir()) == []


def test_a_mirror_that_times_out_counts_as_a_network_failure(mirror, tmp_path):
    with pytest.raises(FetchError) as info:
        fetch_mnist(tmp_path, [mirror.url("slow")], timeout=0.2, checksums=mirror.checksums)

    assert "timed out" in str(info.value) and "offline" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_progress_is_reported_with_increasing_byte_counts_ending_at_the_total(mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "CHUNK_SIZE", 16)
    calls: dict[str, list[tuple[int, int | None]]] = {}

    fetch_mnist(tmp_path, [mirror.url("good")], checksums=mirror.checksums,
                on_progress=lambda name, done, total: calls.setdefault(name, []).append((done, total)))

    assert sorted(calls) == sorted(mirror.gz)
    for name, seen in calls.items():
        done = [d for d, _ in seen]
        assert len(done) > 1 and done == sorted(set(done))
        assert {t for _, t in seen} == {len(mirror.gz[name])}
        assert done[-1] == len(mirror.gz[name])


def test_the_default_data_folder_is_the_per_user_cache_folder(tmp_path, monkeypatch):
    from model.data import default_data_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "digits" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "digits" / "mnist"
