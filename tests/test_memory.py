"""model.memory: with glibc keeping freed blocks, repeated large temporaries stop faulting in fresh pages.

Each check runs in a child process: malloc settings are process-wide, and the child's are its own.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CANVAS = """
import io, resource
from PIL import Image, ImageDraw
from app.images import decode_image
from model.memory import SERVING, keep_freed_memory
from model.preprocess import preprocess_image

canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
ImageDraw.Draw(canvas).line([(60, 40), (200, 240)], fill=(0, 0, 0, 255), width=18)
buf = io.BytesIO()
canvas.save(buf, "PNG")
data = buf.getvalue()

def faults_per_call():
    for _ in range(5):
        preprocess_image(decode_image(data, 10**7))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        preprocess_image(decode_image(data, 10**7))
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50

untuned = faults_per_call()
assert keep_freed_memory(**SERVING)
print(untuned, faults_per_call())
"""

CNN_STEP = """
import resource
import numpy as np
from model.memory import TRAINING, keep_freed_memory
from model.network import Network

rng = np.random.default_rng(0)
X, y = rng.random((128, 784), dtype=np.float32), rng.integers(0, 10, 128)
net = Network.from_architecture("cnn", seed=0)

def faults_per_call():
    for _ in range(3):
        net.loss_and_gradients(X, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        net.loss_and_gradients(X, y)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2

untuned = faults_per_call()
assert keep_freed_memory(**TRAINING)
print(untuned, faults_per_call())
"""


def faults_before_and_after(script: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    untuned, tuned = map(float, out.stdout.split())
    return untuned, tuned


@pytest.mark.parametrize("script", [CANVAS, CNN_STEP], ids=["decoding-a-canvas", "a-cnn-training-step"])
def test_repeated_large_temporaries_fault_in_no_fresh_pages(script):
    untuned, tuned = faults_before_and_after(script)
    # Usually 0 once blocks are kept (from ~120 per canvas, ~1,500-3,000 per cnn step); the kernel's own
    # page housekeeping on a busy machine can add a few hundred to a step now and then, so the check is
    # against the untuned count rather than zero. Where glibc's own adaptive threshold already keeps
    # the blocks untuned (seen with some Pillow builds: 0.02 faults per canvas), under one fault per
    # call is the same claim.
    assert tuned < max(untuned / 4, 1.0), f"{tuned} page faults per call with freed blocks kept (before: {untuned})"


@pytest.mark.parametrize("largest, keep", [(0, 2**20), (-5, 2**20), (2**21, 2**20), (2**20, 2**31)])
def test_values_out_of_range_are_refused_before_reaching_malloc(largest, keep):
    from model.memory import keep_freed_memory
    with pytest.raises(ValueError, match="need 0 < largest <= keep"):
        keep_freed_memory(largest, keep)
