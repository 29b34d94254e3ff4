"""Load benchmark of the service: requests/s and p50/p99 latency per input kind, on loopback.

Starts real `digits serve` processes (one worker by default), drives each endpoint from another process
for a bounded time at a fixed concurrency, and prints figures against the GET /healthz baseline
measured in the same run. wrk (Debian's package) is the load generator when installed; otherwise an
async httpx client in a subprocess.

    python -m benchmarks.serve_load [--duration 5] [--concurrency 16] [--workers 1] [--data-dir DIR]
                                    [--batching weights/cnn-....npz ...]

Also: answers by status at 256 concurrent connections (overload must be shed, never time out), the
longest /healthz while one heavy request is served, strokes and pixels with and without
micro-batching per model, and /predict (strokes) while a training job runs, as a p99 ratio to idle.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(workers: int, blas_threads: int, weights_dir: Path, model: str | None = None, **env_extra: str):
    """A real `digits serve` on a free loopback port, over a private copy of the weights folder and a
    private database (a training job must not change the repository's active model); yields its URL."""
    port = free_port()
    state = Path(tempfile.mkdtemp(prefix="digits-bench-"))
    shutil.copytree(weights_dir, state / "weights", ignore=shutil.ignore_patterns("README.md"))
    if model is not None:  # serve this model instead of the folder's active one
        (state / "weights" / "ACTIVE").write_text(model + "\n")
    env = {**os.environ, "DIGITS_WEIGHTS_DIR": str(state / "weights"), "DIGITS_BLAS_THREADS": str(blas_threads),
           "DIGITS_DB_PATH": str(state / "digits.sqlite3"), **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers",
                             str(workers), "--log-level", "warning"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(state, ignore_errors=True)


def payloads() -> dict[str, dict | None]:
    """Realistic bodies: what the page sends for a drawn '3' (strokes), its 280x280 canvas PNG, pixels."""
    from PIL import Image, ImageDraw

    t = np.linspace(0, 1, 60)
    upper = np.stack([140 + 70 * np.sin(np.pi * t * 1.2 - 0.3), 60 + 45 * (1 - np.cos(np.pi * t))], 1)
    lower = np.stack([140 + 80 * np.sin(np.pi * t * 1.2 - 0.3), 150 + 55 * (1 - np.cos(np.pi * t))], 1)
    strokes = [upper.round(1).tolist(), lower.round(1).tolist()]
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for stroke in strokes:
        draw.line([tuple(p) for p in stroke], fill=(20, 20, 20, 255), width=18, joint="curve")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    png = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    from model.preprocess import preprocess_strokes
    pixels = np.round(preprocess_strokes(strokes), 3).tolist()
    return {"healthz": None, "pixels": {"pixels": pixels}, "png": {"image": png}, "strokes": {"strokes": strokes},
            # what the page itself sends while drawing: strokes with the 28x28 input and saliency back
            "explain": {"strokes": strokes, "explain": True}}


WRK_STATUS_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open("%s"):read("*a")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do io.write(string.format("status %%d %%d\\n", k, v)) end
end
"""


def run_wrk(url: str, body: dict | None, duration: float, concurrency: int, timeout_s: float = 5.0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["wrk", "-t", "2", "-c", str(concurrency), "-d", f"{max(1, round(duration))}s", "--latency",
                "--timeout", f"{timeout_s:g}s"]
        if body is not None:
            (Path(tmp) / "body.json").write_text(json.dumps(body))
            script = Path(tmp) / "post.lua"
            script.write_text(WRK_STATUS_LUA % f"{tmp}/body.json")
            args += ["-s", str(script), url + "/predict"]
        else:
            args.append(url + "/healthz")
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout

    def latency_ms(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    timeouts = re.search(r"timeout (\d+)", errors.group(0)) if errors else None
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": latency_ms("50"), "p99": latency_ms("99"),
            "failed": int(failed.group(1)) if failed else 0, "socket_errors": errors.group(0) if errors else "",
            "timeouts": int(timeouts.group(1)) if timeouts else 0,
            "statuses": {int(k): int(v) for k, v in re.findall(r"^status (\d+) (\d+)$", out, re.M)}}


async def _httpx_load(url: str, body: dict | None, duration: float, concurrency: int) -> dict:
    latencies, failed = [], 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        end = time.perf_counter() + duration

        async def worker():
            nonlocal failed
            while time.perf_counter() < end:
                start = time.perf_counter()
                r = await (client.get("/healthz") if body is None else client.post("/predict", json=body))
                latencies.append(time.perf_counter() - start)
                failed += r.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    q = np.percentile(np.array(latencies) * 1e3, [50, 99])
    return {"rps": len(latencies) / elapsed, "p50": float(q[0]), "p99": float(q[1]), "failed": failed,
            "socket_errors": "", "timeouts": 0, "statuses": {}}


def run_httpx(url: str, body: dict | None, duration: float, concurrency: int) -> dict:
    """The fallback client, in its own process so it does not share the server's interpreter."""
    code = ("import asyncio, json, sys; sys.path.insert(0, %r); from benchmarks.serve_load import _httpx_load; "
            "print(json.dumps(asyncio.run(_httpx_load(*json.loads(sys.stdin.read())))))" % str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps([url, body, duration, concurrency]),
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def measure(url: str, body, duration: float, concurrency: int, client: str) -> dict:
    runner = run_wrk if client == "wrk" else run_httpx
    runner(url, body, min(1.0, duration), concurrency)  # warm-up
    return runner(url, body, duration, concurrency)


def heavy_bodies() -> dict[str, dict]:
    """The request that froze the service (64 flat 2000x2000 PNGs, over the work budget now) and one
    within the budget that costs about a second of preprocessing (4 drawn 2000x2000 PNGs)."""
    from PIL import Image, ImageDraw

    def png(ring: bool) -> str:
        img = Image.new("L", (2000, 2000), 255)
        if ring:
            ImageDraw.Draw(img).ellipse((300, 200, 1700, 1800), outline=0, width=125)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        return base64.b64encode(buf.getvalue()).decode()

    return {"64 flat 2000x2000 PNGs": {"images": [png(False)] * 64},
            "4 drawn 2000x2000 PNGs": {"images": [png(True)] * 4}}


def longest_healthz(url: str, body: dict) -> tuple[float, int, float]:
    """Send `body` once while polling /healthz every 10 ms: (longest healthz ms, the body's status, its ms)."""
    import threading

    outcome = {}

    def send():
        start = time.perf_counter()
        outcome["status"] = httpx.post(url + "/predict", json=body, timeout=60).status_code
        outcome["ms"] = (time.perf_counter() - start) * 1e3

    thread = threading.Thread(target=send)
    longest = 0.0
    with httpx.Client(base_url=url, timeout=30) as client:
        thread.start()
        while thread.is_alive():
            start = time.perf_counter()
            client.get("/healthz")
            longest = max(longest, (time.perf_counter() - start) * 1e3)
            time.sleep(0.01)
    thread.join()
    return longest, outcome["status"], outcome["ms"]


def print_row(name: str, r: dict, note: str = "") -> None:
    statuses = " ".join(f"{code}:{n}" for code, n in sorted(r.get("statuses", {}).items()))
    print(f"{name:<10}{r['rps']:>10,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['timeouts']:>10}   {statuses:<22}{note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--overload", type=int, default=256, help="concurrency of the overload runs")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--blas-threads", type=int, default=1, help="DIGITS_BLAS_THREADS of the measured server")
    parser.add_argument("--weights-dir", type=Path, default=ROOT / "weights")
    parser.add_argument("--model", help="weights file (in --weights-dir) to serve instead of the active one")
    parser.add_argument("--batching", nargs="*", metavar="FILE",
                        help="also measure strokes and pixels with and without micro-batching for these "
                             "weights files (default: none)")
    parser.add_argument("--client", choices=["wrk", "httpx"], default="wrk" if shutil.which("wrk") else "httpx")
    parser.add_argument("--data-dir", type=Path, help="MNIST, for the run during training "
                                                      "(default: $DIGITS_DATA_DIR, else ../shared/mnist)")
    args = parser.parse_args()
    if args.data_dir is None:
        candidate = Path(os.environ.get("DIGITS_DATA_DIR") or ROOT.parent / "shared" / "mnist")
        args.data_dir = candidate if candidate.is_dir() else None
    bodies = payloads()
    print(f"digits serve, {args.workers} worker(s), {args.duration:g} s each, client {args.client}, "
          f"{os.cpu_count()} CPUs")
    ok = True
    header = f"{'input':<10}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'timeouts':>10}   {'statuses':<22}"
    with server(args.workers, args.blas_threads, args.weights_dir, args.model) as url:
        print(f"model: {httpx.get(url + '/model').json()['version']}\n\nconcurrency {args.concurrency}\n{header}")
        results = {name: measure(url, body, args.duration, args.concurrency, args.client)
                   for name, body in bodies.items()}
        for name, r in results.items():
            note = ""
            if name == "strokes":
                met = r["p99"] <= 50 and r["failed"] == 0
                ok &= met
                note = f"p99 <= 50 ms: {'met' if met else 'MISSED'}"
            print_row(name, r, note)

        print(f"\nconcurrency {args.overload} (overload: only 200 or 503, no timeouts)\n{header}")
        for name in ("strokes", "png", "pixels"):
            r = measure(url, bodies[name], args.duration, args.overload, args.client)
            met = r["timeouts"] == 0 and set(r["statuses"]) <= {200, 503} and not r["socket_errors"].count("read")
            ok &= met
            print_row(name, r, "met" if met else f"MISSED {r['socket_errors']}")

        print("\nlongest /healthz while one heavy request is served (target <= 100 ms)")
        for name, body in heavy_bodies().items():
            longest, status, ms = longest_healthz(url, body)
            met = longest <= 100
            ok &= met
            print(f"  {name}: answered {status} in {ms:,.0f} ms; longest healthz {longest:.1f} ms: "
                  f"{'met' if met else 'MISSED'}")

    for weights_file in args.batching or []:
        print(f"\nmicro-batching, {weights_file}, concurrency {args.concurrency}\n{header}")
        for label, env in (("batched", {}), ("one by one", {"DIGITS_MAX_BATCH_ROWS": "1"})):
            with server(args.workers, args.blas_threads, args.weights_dir, weights_file, **env) as url:
                for name in ("strokes", "pixels"):
                    print_row(name, measure(url, bodies[name], args.duration, args.concurrency, args.client), label)

    # /predict while a job trains: the job runs in its own process at low priority with one BLAS thread.
    if args.data_dir is not None:
        with server(args.workers, args.blas_threads, args.weights_dir, args.model,
                    DIGITS_DATA_DIR=str(args.data_dir)) as url:
            idle = measure(url, bodies["strokes"], args.duration, args.concurrency, args.client)
            job = httpx.post(url + "/train", json={"epochs": 50}, timeout=10).json()
            deadline = time.monotonic() + 60
            while (state := httpx.get(f"{url}/train/{job['job_id']}").json())["step"] is None:
                if state["status"] not in ("queued", "running") or time.monotonic() > deadline:
                    raise RuntimeError(f"the training job did not start: {state}")
                time.sleep(0.2)
            busy = measure(url, bodies["strokes"], args.duration, args.concurrency, args.client)
            httpx.delete(f"{url}/train/{job['job_id']}")
        ratio = busy["p99"] / idle["p99"]
        print(f"\nstrokes while a job trains: {busy['rps']:,.0f} req/s, p99 {busy['p99']:.2f} ms; idle "
              f"{idle['rps']:,.0f} req/s, p99 {idle['p99']:.2f} ms; p99 ratio {ratio:.2f} (target <= 2): "
              f"{'met' if ratio <= 2 and busy['failed'] == 0 else 'MISSED'}")
        ok &= ratio <= 2 and busy["failed"] == 0
    else:
        print("\nno MNIST folder (--data-dir, $DIGITS_DATA_DIR or ../shared/mnist): training run skipped")
    print(f"\nall targets {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
