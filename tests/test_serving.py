"""The serving path's parts on their own: micro-batching, admission and the feedback rate limit."""
import asyncio
import threading

import numpy as np
import pytest

from app.serving import Admission, MicroBatcher, Overloaded, RateLimiter
from model.network import Network
from server_support import run_async

TINY_CNN = {"name": "tiny_cnn", "layers": [
    {"type": "reshape", "shape": [28, 28, 1]},
    {"type": "conv2d", "n_in": 1, "n_out": 4, "kernel": 3}, {"type": "maxpool2d"}, {"type": "relu"},
    {"type": "flatten"}, {"type": "dense", "n_in": 14 * 14 * 4, "n_out": 10}]}


class GatedModel:
    """predict_proba = 2 * X, recording each call's rows; the first call waits until `gate` opens, so
    the requests that arrive meanwhile queue up as they would behind a busy model thread."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def predict_proba(self, X):
        self.calls.append(X.copy())
        self.entered.set()
        self.gate.wait(5)
        if np.isnan(X).any():
            raise ValueError("a NaN row")
        return 2 * X


def run(coro):
    return run_async(coro)


async def started(batcher: MicroBatcher) -> MicroBatcher:
    batcher.start()
    return batcher


async def hold_then_queue(model: GatedModel, batcher: MicroBatcher, inputs: list[np.ndarray]):
    """Send a first request that holds the model thread, queue `inputs` behind it, open the gate;
    returns the tasks of the queued requests (the first one's answer is not needed)."""
    first = asyncio.ensure_future(batcher.predict_proba(model, np.zeros((1, 3), np.float32)))
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
    tasks = [asyncio.ensure_future(batcher.predict_proba(model, X)) for X in inputs]
    await asyncio.sleep(0.01)  # let every request reach the queue
    return first, tasks


def test_requests_queued_behind_a_busy_model_go_in_one_batch_each_getting_its_own_rows_in_order():
    async def scenario():
        model, batcher = GatedModel(), await started(MicroBatcher(max_batch_rows=256))
        inputs = [np.full((n, 3), i, np.float32) for i, n in enumerate([1, 3, 1, 2, 1], start=1)]
        first, tasks = await hold_then_queue(model, batcher, inputs)
        model.gate.set()
        await first
        answers = await asyncio.gather(*tasks)
        await batcher.stop()
        return model, inputs, answers

    model, inputs, answers = run(scenario())
    assert [len(call) for call in model.calls] == [1, 8]  # the five queued requests: one forward pass
    for X, answer in zip(inputs, answers):
        np.testing.assert_array_equal(answer, 2 * X)


def test_an_idle_batcher_runs_a_request_at_once_and_alone():
    async def scenario():
        model, batcher = GatedModel(), await started(MicroBatcher(max_wait_ms=0))
        model.gate.set()
        answers = [await batcher.predict_proba(model, np.full((1, 3), i, np.float32)) for i in range(3)]
        await batcher.stop()
        return model, answers

    model, answers = run(scenario())
    assert [len(call) for call in model.calls] == [1, 1, 1]
    assert [a[0, 0] for a in answers] == [0, 2, 4]


def test_a_batch_is_capped_in_rows_and_never_mixes_two_models():
    async def scenario():
        model, other = GatedModel(), GatedModel()
        other.gate.set()
        batcher = await started(MicroBatcher(max_batch_rows=4))
        first, tasks = await hold_then_queue(model, batcher, [np.ones((2, 3), np.float32)] * 3)
        swapped = asyncio.ensure_future(batcher.predict_proba(other, np.ones((1, 3), np.float32)))
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, *tasks, swapped)
        await batcher.stop()
        return model, other

    model, other = run(scenario())
    assert [len(call) for call in model.calls] == [1, 4, 2]
    assert [len(call) for call in other.calls] == [1]


def test_a_request_cancelled_while_queued_is_left_out_of_its_batch():
    async def scenario():
        model, batcher = GatedModel(), await started(MicroBatcher())
        first, tasks = await hold_then_queue(model, batcher, [np.full((1, 3), v, np.float32) for v in (1, 2, 3)])
        tasks[1].cancel()  # its client went away
        await asyncio.sleep(0)
        model.gate.set()
        await first
        return model, await asyncio.gather(tasks[0], tasks[2]), await batcher.stop()

    model, (a, c), _ = run(scenario())
    assert [call[:, 0].tolist() for call in model.calls] == [[0.0], [1.0, 3.0]]
    assert a[0, 0] == 2 and c[0, 0] == 6


def test_one_bad_request_in_a_batch_fails_alone():
    async def scenario():
        model, batcher = GatedModel(), await started(MicroBatcher())
        bad = np.full((1, 3), np.nan, np.float32)
        first, tasks = await hold_then_queue(model, batcher, [np.ones((1, 3), np.float32), bad,
                                                              np.full((1, 3), 5, np.float32)])
        model.gate.set()
        await first
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        await batcher.stop()
        return results

    good, failed, other = run(scenario())
    assert isinstance(failed, ValueError) and str(failed) == "a NaN row"
    assert good[0, 0] == 2 and other[0, 0] == 10


def test_a_real_network_answers_the_same_in_a_batch_as_alone():
    network = Network(TINY_CNN, np.random.default_rng(3))
    X = np.random.default_rng(4).random((6, 784), dtype=np.float32)

    async def scenario():
        batcher = await started(MicroBatcher())
        answers = await asyncio.gather(*(batcher.predict_proba(network, X[i:i + 1]) for i in range(6)))
        await batcher.stop()
        return np.concatenate(answers), batcher.batches

    together, n_batches = run(scenario())
    alone = np.concatenate([network.predict_proba(X[i:i + 1]) for i in range(6)])
    assert n_batches < 6  # some of them did share a forward pass
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-7)
    assert (together.argmax(1) == alone.argmax(1)).all()


def test_admission_refuses_past_its_limit_and_frees_a_place_on_exit():
    admission = Admission(limit=2)
    with admission, admission:
        with pytest.raises(Overloaded, match="busy"):
            with admission:
                pass
    with admission:
        assert admission.inside == 1
    assert admission.inside == 0


def test_the_rate_limit_counts_per_client_within_a_sliding_window():
    now = [0.0]
    limiter = RateLimiter(limit=2, window_s=60, clock=lambda: now[0])
    assert limiter.wait_s("a") == 0 and limiter.wait_s("a") == 0
    now[0] = 10.0
    assert limiter.wait_s("a") == pytest.approx(50.0)
    assert limiter.wait_s("b") == 0  # another client is not held back
    now[0] = 60.5  # both counted events have left the window (the refused one was never counted)
    assert limiter.wait_s("a") == 0 and limiter.wait_s("a") == 0
    assert limiter.wait_s("a") == pytest.approx(60.0)


def test_a_client_that_disconnects_cancels_its_queued_work():
    from app.serving import ClientGone, unless_disconnected

    async def scenario():
        model, batcher = GatedModel(), await started(MicroBatcher())
        left = asyncio.Event()

        async def receive():  # what uvicorn sends once the body was read: the disconnect, when it comes
            await left.wait()
            return {"type": "http.disconnect"}

        first = asyncio.ensure_future(batcher.predict_proba(model, np.zeros((1, 3), np.float32)))
        await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 5)
        waiting = asyncio.ensure_future(unless_disconnected(batcher.predict_proba(model, np.ones((1, 3))), receive))
        stays = asyncio.ensure_future(batcher.predict_proba(model, np.full((1, 3), 7, np.float32)))
        await asyncio.sleep(0.01)
        left.set()
        with pytest.raises(ClientGone):
            await waiting
        model.gate.set()
        await first
        kept = await stays
        await batcher.stop()
        return model, kept

    model, kept = run(scenario())
    assert [call[:, 0].tolist() for call in model.calls] == [[0.0], [7.0]]  # the leaver's row never ran
    assert kept[0, 0] == 14


def test_saliency_is_batched_apart_from_forward_passes_and_equals_its_one_by_one_maps():
    from types import SimpleNamespace

    from app.routes import saliency_maps

    network = Network(TINY_CNN, np.random.default_rng(5))
    model = SimpleNamespace(network=network, predict_proba=network.predict_proba)
    X = np.random.default_rng(6).random((4, 784), dtype=np.float32)
    digits = network.predict(X)

    async def scenario():
        batcher = await started(MicroBatcher())
        calls = [batcher.run(saliency_maps, model, X[i:i + 1], digits[i:i + 1]) for i in range(4)]
        calls += [batcher.predict_proba(model, X[i:i + 1]) for i in range(4)]
        out = await asyncio.gather(*calls)
        await batcher.stop()
        return out, batcher.batches

    out, n_batches = run(scenario())
    assert n_batches < 8  # shared passes, of one kind each (mixing them would break the shapes below)
    for i in range(4):
        np.testing.assert_allclose(out[i], saliency_maps(model, X[i:i + 1], digits[i:i + 1]), atol=2e-3)
        assert out[i].shape == (1, 28, 28) and out[4 + i].shape == (1, 10)
