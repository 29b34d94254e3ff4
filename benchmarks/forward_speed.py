"""Time the inference forward pass (`predict_proba`) per image at small batches, as the service runs it.

One BLAS thread (as `digits serve` pins it), real MNIST test images where available. Prints the
median and best ms per image over many repeats for the seed, cnn, cnn_bn and cnn_deep architectures
(random weights: the time does not depend on them) and for shipped weights files (calibration
included, as served). With PyTorch importable (`pip install .[bench]`), also the shipped cnn written
in PyTorch (one thread, eval mode, no_grad), after checking that it gives the same probabilities.

    python3 -m benchmarks.forward_speed [--batches 1 4 16 64] [--seconds 0.4] [--data-dir DIR] [--model FILE ...]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from model.data import DataError, load_split
from model.network import Network
from model.weights import load_model

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CNN = REPO_ROOT / "weights" / "cnn-20261125-155927-2001767b.npz"
SHIPPED_ENSEMBLE = REPO_ROOT / "weights" / "ensemble-20261125-162143-d45b5add.npz"
ARCHITECTURES = ("seed", "cnn", "cnn_bn", "cnn_deep")


def default_data_dir() -> Path:
    return Path(os.environ.get("DIGITS_DATA_DIR") or REPO_ROOT.parent / "shared" / "mnist")


def load_test_images(data_dir: Path, n: int) -> np.ndarray:
    """The first `n` MNIST test images; random pixels (with a note) if the data set is unavailable."""
    try:
        X, _ = load_split(data_dir, "t10k")
        print(f"data: MNIST test images from {data_dir}")
        return np.ascontiguousarray(X[:n])
    except DataError as exc:
        print(f"note: no MNIST test set ({exc}); timing on random pixels instead")
        return np.random.default_rng(0).random((n, 784), dtype=np.float32)


def time_per_image(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, batch: int,
                   seconds: float) -> tuple[float, float]:
    """(median, best) ms per image of `predict` on batches of `batch` rows, cycling through X, over
    at least 30 calls and about `seconds` of calls after a warm-up."""
    batches = [X[i:i + batch] for i in range(0, len(X) - batch + 1, batch)]
    for xb in batches[:5]:  # warm-up: page faults, per-thread buffers, caches
        predict(xb)
    start = time.perf_counter()
    predict(batches[0])
    n_calls = max(30, int(seconds / max(time.perf_counter() - start, 1e-6)))
    times = []
    for i in range(n_calls):
        xb = batches[i % len(batches)]
        t0 = time.perf_counter()
        predict(xb)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times) / batch, 1e3 * min(times) / batch


def torch_cnn(network: Network) -> Callable[[np.ndarray], np.ndarray]:
    """The cnn architecture in PyTorch with `network`'s weights: X (N, 784) -> (N, 10) probabilities."""
    import torch  # only here: an optional benchmark dependency, never imported by model/ or app/

    torch.set_num_threads(1)
    conv1, conv2, dense1, dense2 = (layer for layer in network.layers if layer.params)

    def conv(layer):
        k, W = layer.kernel, layer.params["W"]  # rows (kh, kw, C_in) -> torch's (C_out, C_in, kh, kw)
        module = torch.nn.Conv2d(layer.n_in, layer.n_out, k, padding=k // 2)
        module.weight.data = torch.from_numpy(W.reshape(k, k, layer.n_in, layer.n_out).transpose(3, 2, 0, 1).copy())
        module.bias.data = torch.from_numpy(layer.params["b"].copy())
        return module

    def dense(layer, channels_last: tuple[int, int, int] | None = None):
        W = layer.params["W"]
        if channels_last:  # our flatten is (H, W, C); torch's is (C, H, W)
            H, Wd, C = channels_last
            W = W.reshape(H, Wd, C, -1).transpose(2, 0, 1, 3).reshape(W.shape)
        module = torch.nn.Linear(layer.n_in, layer.n_out)
        module.weight.data = torch.from_numpy(np.ascontiguousarray(W.T))
        module.bias.data = torch.from_numpy(layer.params["b"].copy())
        return module

    net = torch.nn.Sequential(
        conv(conv1), torch.nn.MaxPool2d(2), torch.nn.ReLU(),
        conv(conv2), torch.nn.MaxPool2d(2), torch.nn.ReLU(), torch.nn.Flatten(),
        dense(dense1, (7, 7, 64)), torch.nn.ReLU(), torch.nn.Dropout(0.5), dense(dense2), torch.nn.Softmax(dim=1),
    ).eval()

    def predict(X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(X).reshape(-1, 1, 28, 28)).numpy()

    return predict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=0.4, help="time spent on each batch size and model")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--model", type=Path, nargs="*", default=[SHIPPED_CNN, SHIPPED_ENSEMBLE],
                        help="weights files to time through load_model(...).predict_proba (default: the shipped "
                             "cnn and ensemble)")
    args = parser.parse_args(argv)
    X = load_test_images(args.data_dir, max(512, 2 * max(args.batches)))
    candidates: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        name: Network.from_architecture(name, seed=0).predict_proba for name in ARCHITECTURES}
    for path in args.model:
        candidates[path.name] = load_model(path).predict_proba
    if SHIPPED_CNN.exists():
        try:
            candidates["PyTorch cnn (shipped weights)"] = torch_cnn(load_model(SHIPPED_CNN).network)
        except ImportError:
            print("note: PyTorch is not installed (pip install .[bench]); no PyTorch row")
    with threadpool_limits(1):
        pools = ", ".join(f"{pool['internal_api']} {pool.get('version') or ''} ({pool['num_threads']} thread)"
                          for pool in threadpool_info())
        print(f"thread pools: {pools}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}")
        if "PyTorch cnn (shipped weights)" in candidates:
            ours = load_model(SHIPPED_CNN).network.predict_proba(X[:64])
            theirs = candidates["PyTorch cnn (shipped weights)"](X[:64])
            print(f"PyTorch and NumPy cnn probabilities differ by at most {np.abs(ours - theirs).max():.1e}")
        print(f"\nms per image, median (best) of repeated predict_proba calls\n{'':40}"
              + "".join(f"{f'batch {b}':>16}" for b in args.batches))
        for name, predict in candidates.items():
            cells = [time_per_image(predict, X, batch, args.seconds) for batch in args.batches]
            print(f"{name:40}" + "".join(f"{f'{median:.3f} ({best:.3f})':>16}" for median, best in cells))
    print(f"\nload average now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
