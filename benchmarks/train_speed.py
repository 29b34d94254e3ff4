"""Time training epochs of each architecture on the 60,000 MNIST training images, with the default recipe.

Prints samples/s, the GFLOP/s the network's own work amounts to, that as a fraction of this machine's
float32 matrix-multiply peak (measured in the same run and environment), and the peak resident memory.
Runs the real `model.train.train`; the figures held to targets come from it alone. With `--reference`,
the seed network's step is also timed as a hand-written loop (`reference_seed_epoch`), its epochs
interleaved with `train`'s: what the layers, optimizer and callbacks cost over the plainest NumPy.
With `--layers`, only each layer's forward and backward time in a training step (where a step goes).

    python3 -m benchmarks.train_speed [--arch seed|all] [--repeats 5] [--data-dir DIR] [--reference] [--layers]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

from model.data import DataError, load_split
from model.malloc_tuning import TRAINING, keep_freed_memory
from model.network import ARCHITECTURES, Network, architecture_spec
from model.train import Progress, Recipe, train

REPO_ROOT = Path(__file__).resolve().parents[1]

# Best epoch's fraction of the matmul peak, per architecture (issues #2 and #5); others are reported only.
TARGET_PEAK_FRACTION = {"seed": 0.75, "cnn": 0.35}
TARGET_MEMORY_MB = 1000


def dense_stack_flops(name: str) -> int:
    """FLOP per training sample of a stack of dense layers (elementwise work not counted).

    Forward 2*n_in*n_out per layer, the same again for the weight gradient, and once more for the
    gradient w.r.t. the layer's input, except for the first layer (nobody needs d/d pixels).
    """
    layers = architecture_spec(name)["layers"]
    assert {layer["type"] for layer in layers} <= {"dense", "relu", "dropout"}, f"{name} is not a dense stack"
    dense = [layer for layer in layers if layer["type"] == "dense"]
    return sum(2 * d["n_in"] * d["n_out"] * (2 if i == 0 else 3) for i, d in enumerate(dense))


def layer_stack_flops(name: str) -> int:
    """FLOP per training sample of a stack of convolution, pooling and dense layers.

    A k x k convolution from C_in to C_out channels with an H x W output map costs 2*H*W*k*k*C_in*C_out
    forward, as much for the weight gradient, and as much for the input gradient except for the first
    layer with parameters. Dense layers count as in `dense_stack_flops`; pooling, batch normalisation,
    ReLU, dropout and reshapes are elementwise and not counted.
    """
    flops, side, first = 0, 28, True
    for layer in architecture_spec(name)["layers"]:
        kind = layer["type"]
        if kind == "conv2d":
            k, stride = layer["kernel"], layer.get("stride", 1)
            pad = k // 2 if layer.get("padding", "same") == "same" else 0
            side = (side + 2 * pad - k) // stride + 1
            per_pass = 2 * side * side * k ** 2 * layer["n_in"] * layer["n_out"]
        elif kind == "dense":
            per_pass = 2 * layer["n_in"] * layer["n_out"]
        else:
            side //= 2 if kind == "maxpool2d" else 1
            continue
        flops += per_pass * (2 if first else 3)
        first = False
    return flops


# Architecture name -> FLOP per training sample.
FLOPS_PER_SAMPLE = {
    "seed": dense_stack_flops,
    "mlp": dense_stack_flops,
    "cnn": layer_stack_flops,
    "cnn_bn": layer_stack_flops,  # batch normalisation is elementwise: the same count as the cnn
    "cnn_deep": layer_stack_flops,
}


def default_data_dir() -> Path:
    return Path(os.environ.get("DIGITS_DATA_DIR") or REPO_ROOT.parent / "shared" / "mnist")


def load_training_images(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 60,000 MNIST training images; random data of the same shape (with a note) if unavailable."""
    try:
        X, y = load_split(data_dir, "train")
        print(f"data: {len(X):,} MNIST training images from {data_dir}")
    except DataError as exc:
        print(f"note: no MNIST training set ({exc})\n"
              f"      timing on random data of the same shape instead: speed does not depend on the pixels")
        rng = np.random.default_rng(0)
        X = rng.random((60_000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60_000)
    return X, y


def matmul_gflops(m: int, k: int, n: int, repeats: int) -> float:
    """Best float32 rate of `A @ B` with A (m, k) and B (k, n), in GFLOP/s."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k), dtype=np.float32)
    B = rng.standard_normal((k, n), dtype=np.float32)
    C = np.empty((m, n), dtype=np.float32)
    np.matmul(A, B, out=C)  # warm-up: thread start-up, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(A, B, out=C)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def matmul_rates_in_child(size: int, batch_size: int, repeats: int) -> tuple[float, float]:
    """(square `size` peak, batch-sized (batch_size, 784) @ (784, 1024) rate) in GFLOP/s, measured by a
    child process in the same environment, so that the large matrices stay out of this process's RSS."""
    code = (f"from benchmarks.train_speed import matmul_gflops as f; "
            f"print(f({size}, {size}, {size}, {repeats}), f({batch_size}, 784, 1024, {20 * repeats}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    peak, batch_rate = map(float, out.stdout.split())
    return peak, batch_rate


def peak_rss_mb() -> float:
    """High-water resident memory of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_epochs(name: str, X: np.ndarray, y: np.ndarray, repeats: int, batch_size: int) -> list[float]:
    """Seconds of each of `repeats` epochs of the default recipe at `batch_size` (validation not included)."""
    recipe = Recipe(architecture=name, epochs=repeats, batch_size=batch_size)
    reports: list[Progress] = []
    no_val = (np.empty((0, X.shape[1]), np.float32), np.empty(0, np.int64))
    result = train(recipe, X, y, *no_val, on_progress=reports.append)  # a callback, as the CLI has
    assert len(reports) >= repeats, "the progress callback was not called"
    return [record["seconds"] for record in result.history]


def layer_times(name: str, X: np.ndarray, y: np.ndarray, batch_size: int, repeats: int
                ) -> list[tuple[dict, float, float]]:
    """(spec, forward ms, backward ms) of each layer of a training step at `batch_size`, averaged over
    `repeats` steps on random batches after two untimed ones. Backward stops, as in training, at the
    first layer with parameters (0 ms for the layers below it)."""
    network = Network.from_architecture(name, seed=0)
    rng = np.random.default_rng(0)
    n_layers = len(network.layers)
    forward_s, backward_s = np.zeros(n_layers), np.zeros(n_layers)
    for step in range(repeats + 2):
        idx = rng.integers(0, len(X), batch_size)
        A, fwd, bwd = X[idx], np.zeros(n_layers), np.zeros(n_layers)
        for i, layer in enumerate(network.layers):
            start = time.perf_counter()
            A = layer.forward(A, training=True)
            fwd[i] = time.perf_counter() - start
        network.loss.forward(A, y[idx])
        dA = network.loss.backward()
        for i in reversed(range(n_layers)):
            start = time.perf_counter()
            dA = network.layers[i].backward(dA)
            bwd[i] = time.perf_counter() - start
            if dA is None:
                break
        if step >= 2:  # the first steps fault in pages and warm caches
            forward_s += fwd
            backward_s += bwd
    return [(layer.spec(), 1e3 * f / repeats, 1e3 * b / repeats)
            for layer, f, b in zip(network.layers, forward_s, backward_s)]


def print_layer_times(name: str, rows: list[tuple[dict, float, float]], batch_size: int) -> None:
    """One row per layer, then the step's total and the samples/s it amounts to (no optimizer step)."""
    print(f"\n{name}: per-layer ms of a training step at batch {batch_size}")
    print(f"  {'layer':58}{'forward':>9}{'backward':>9}")
    for spec, forward_ms, backward_ms in rows:
        args = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "type")
        print(f"  {spec['type'] + (f'({args})' if args else ''):58}{forward_ms:9.2f}{backward_ms:9.2f}")
    total = sum(f + b for _, f, b in rows)
    print(f"  {'total':58}{total:18.1f}   = {1e3 * batch_size / total:,.0f} samples/s")


def reference_seed_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh He-initialised seed-network parameters for `reference_seed_epoch`."""
    return {"W1": (rng.standard_normal((784, 1024)) * np.sqrt(2 / 784)).astype(np.float32),
            "b1": np.zeros(1024, np.float32),
            "W2": (rng.standard_normal((1024, 10)) * np.sqrt(2 / 1024)).astype(np.float32),
            "b2": np.zeros(10, np.float32)}


def reference_seed_epoch(X: np.ndarray, y: np.ndarray, recipe: Recipe, rng: np.random.Generator,
                         params: dict[str, np.ndarray] | None = None) -> float:
    """Seconds of one epoch of the seed network written out as the plainest NumPy loop: the same
    products, ReLU, softmax cross-entropy, L2 and SGD step as `train` at the recipe's rate, fused by
    hand and with no layers, callbacks or schedule. A yardstick for `train`, not a trainer.
    `params` (from `reference_seed_params`; fresh ones if None) are updated in place."""
    lr, l2, batch = np.float32(recipe.learning_rate), np.float32(recipe.l2), recipe.batch_size
    params = reference_seed_params(rng) if params is None else params
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    order = rng.permutation(len(X))
    start = time.perf_counter()
    for first in range(0, len(X), batch):
        idx = order[first:first + batch]
        xb, n = X[idx], len(idx)
        h = xb @ W1
        h += b1
        np.maximum(h, 0, out=h)
        z = h @ W2
        z += b2
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=1, keepdims=True)
        z[np.arange(n), y[idx]] -= 1
        z *= lr / n  # the loss gradient, scaled by the rate as `SGD.gradient_scale` does
        dW2, db2 = h.T @ z, z.sum(axis=0)
        dh = z @ W2.T
        dh *= h > 0
        dW1, db1 = xb.T @ dh, dh.sum(axis=0)
        W1 *= 1 - lr * l2
        W1 -= dW1
        b1 -= db1
        W2 *= 1 - lr * l2
        W2 -= dW2
        b2 -= db2
    return time.perf_counter() - start


def interleaved_reference(X: np.ndarray, y: np.ndarray, repeats: int, batch_size: int) -> tuple[list, list]:
    """(train's epoch seconds, the reference loop's), alternating one epoch of each `repeats` times."""
    rng = np.random.default_rng(0)
    ours, reference = [], []
    for _ in range(repeats):
        ours += time_epochs("seed", X, y, 1, batch_size)
        reference.append(reference_seed_epoch(X, y, Recipe(batch_size=batch_size), rng))
    return ours, reference


def print_rates(seconds: list[float], n_samples: int, flops: int, peak: float, prefix: str = "",
                note: str = "") -> None:
    """The best and the median epoch as rows of samples/s, GFLOP/s and fraction of the peak."""
    for label, epoch_s in (("best", min(seconds)), ("median", statistics.median(seconds))):
        rate = n_samples / epoch_s
        gflops = rate * flops / 1e9
        print(f"  {prefix + label:10}{rate:11,.0f}{gflops:10.1f}{gflops / peak:10.1%}{note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="seed", choices=[*FLOPS_PER_SAMPLE, "all"],
                        help="architecture to time, or 'all' (default: seed)")
    parser.add_argument("--repeats", type=int, default=5, help="epochs to time; best and median are shown")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="folder with the MNIST files (default: $DIGITS_DATA_DIR, else ../shared/mnist)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="minibatch size (default: the recipe's, %d)" % Recipe.batch_size)
    parser.add_argument("--peak-size", type=int, default=4096, help="side of the square matrices for the peak")
    parser.add_argument("--peak-repeats", type=int, default=5, help="matrix multiplies; the best counts")
    parser.add_argument("--layers", action="store_true",
                        help="only time each layer's forward and backward pass, over --repeats steps (x10)")
    parser.add_argument("--reference", action="store_true",
                        help="also time a hand-written seed loop, epochs interleaved with train's (seed only)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.reference and args.arch != "seed":
        parser.error("--reference times the seed network: use it with --arch seed")
    names = list(FLOPS_PER_SAMPLE) if args.arch == "all" else [args.arch]
    if args.layers:
        keep_freed_memory(**TRAINING)
        X, y = load_training_images(args.data_dir)
        print(f"load average {os.getloadavg()[0]:.2f}; BLAS threads: "
              f"{', '.join(str(pool['num_threads']) for pool in threadpool_info()) or 'unknown'}")
        batch_size = args.batch_size or Recipe.batch_size
        for name in names:
            print_layer_times(name, layer_times(name, X, y, batch_size, 10 * args.repeats), batch_size)
        return 0
    unmeasured = sorted(set(ARCHITECTURES) - set(FLOPS_PER_SAMPLE))
    if unmeasured:
        print(f"note: no FLOP count for {', '.join(unmeasured)}; add one to FLOPS_PER_SAMPLE to time them")

    # As `digits train` and the service's training jobs run: large blocks kept for reuse (model.malloc_tuning).
    tuned = keep_freed_memory(**TRAINING)
    X, y = load_training_images(args.data_dir)
    blas = ", ".join(f"{pool['internal_api']} {pool['version']} ({pool['num_threads']} threads, "
                     f"{pool.get('architecture', '?')} kernels)" for pool in threadpool_info()) or "unknown"
    print(f"BLAS: {blas}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.2f}; malloc keeps freed blocks: {'yes' if tuned else 'no (not glibc)'}")
    size, recipe = args.peak_size, Recipe(batch_size=args.batch_size or Recipe.batch_size)
    # Before and after the epochs, the best counts: load from other work comes and goes.
    before = matmul_rates_in_child(size, recipe.batch_size, args.peak_repeats)
    reference: list[float] = []
    if args.reference:
        ours, reference = interleaved_reference(X, y, args.repeats, recipe.batch_size)
        timings = {"seed": ours}
    else:
        timings = {name: time_epochs(name, X, y, args.repeats, recipe.batch_size) for name in names}
    after = matmul_rates_in_child(size, recipe.batch_size, args.peak_repeats)
    peak, batch_rate = max(before[0], after[0]), max(before[1], after[1])
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s ({size}x{size} @, best of {args.peak_repeats} before "
          f"and {args.peak_repeats} after the epochs); load average now {os.getloadavg()[0]:.2f}")
    # For scale, not a target: what BLAS makes of one batch-sized product, the bulk of the seed's work.
    print(f"  for scale: ({recipe.batch_size}x784) @ (784x1024) alone runs at {batch_rate:.1f} GFLOP/s "
          f"({batch_rate / peak:.0%} of peak)")

    all_met = True
    for name, seconds in timings.items():
        flops = FLOPS_PER_SAMPLE[name](name)
        print(f"\n{name}: {flops / 1e6:.3f} MFLOP per sample, batch {recipe.batch_size}, "
              f"{len(X):,} samples, {len(seconds)} epochs")
        print(f"  {'':10}{'samples/s':>11}{'GFLOP/s':>10}{'of peak':>10}")
        print_rates(seconds, len(X), flops, peak)
        if name == "seed" and reference:
            print_rates(reference, len(X), flops, peak, prefix="ref ",
                        note="   (hand-written loop, interleaved; not held to the target)")
            ratio = min(reference) / min(seconds)
            print(f"  train's best epoch runs at {ratio:.0%} of the hand-written loop's best")
        target = TARGET_PEAK_FRACTION.get(name)
        if target is None:
            print("  no target for this architecture")
            continue
        met = len(X) / min(seconds) * flops / 1e9 / peak >= target
        all_met &= met
        print(f"  target: best >= {target:.0%} of peak: {'met' if met else 'MISSED'}")
    rss_mb = peak_rss_mb()
    met = rss_mb < TARGET_MEMORY_MB
    all_met &= met
    print(f"\npeak memory (RSS high-water, data included): {rss_mb:,.0f} MB; "
          f"target < {TARGET_MEMORY_MB:,} MB: {'met' if met else 'MISSED'}")
    print(f"\nall targets {'met' if all_met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
