"""The per-model queue and batcher, driven directly on an event loop with FakeEngine."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import pytest

from pglocalai.errors import InferenceFailed, Overloaded, RequestTimeout
from pglocalai.service.backlog import Request
from pglocalai.service.batching import ModelQueue
from pglocalai.service.engine import ModelSpec
from pglocalai.service.slices import SliceRunner
from pglocalai.service.stats import ModelStats
from pglocalai.testing.fake_engine import FAIL_TEXT, FakeEngine

T = TypeVar("T")
SPEC = ModelSpec("fake:v1", 16, 64, ("fake",), "fake")


class FixedLoad:
    """A CPU load probe that reports ``free`` cores (None: unknown, so never solo-wide)."""

    def __init__(self, free: float | None) -> None:
        self.free = free

    def free_cores(self) -> float | None:
        return self.free


def make_queue(engine: FakeEngine, workers: int = 1, **kw: object) -> ModelQueue:
    opts: dict[str, object] = {"max_batch_tokens": 4096, "max_batch_size": 64,
                               "batch_wait_ms": 1.0, "max_queue": 10_000,
                               "cpu_load": FixedLoad(None)}
    opts.update(kw)
    return ModelQueue(engine, ModelStats(), slices=SliceRunner(),
                      run_pool=ThreadPoolExecutor(workers), workers=workers,
                      **opts)  # type: ignore[arg-type]


def unbatched(engine: FakeEngine, texts: Sequence[str]) -> np.ndarray:
    return np.stack([engine.run(engine.tokenize([t]))[0] for t in texts])


def with_queue(main: Callable[[ModelQueue], Awaitable[T]], engine: FakeEngine,
               **kw: object) -> T:
    """``main(queue)`` on a fresh event loop, with a queue over ``engine`` closed after."""

    async def go() -> T:
        q = make_queue(engine, **kw)  # type: ignore[arg-type]
        try:
            return await main(q)
        finally:
            await q.close()

    return asyncio.run(asyncio.wait_for(go(), 30))


async def running(q: ModelQueue, texts: list[str]) -> asyncio.Future[np.ndarray]:
    """``texts`` submitted, once a worker runs them (what later requests queue behind)."""
    busy = asyncio.ensure_future(q.embed(texts, None))
    while q.running == 0:
        await asyncio.sleep(0.001)
    return busy


def test_results_in_input_order_whatever_the_batch_order() -> None:
    engine = FakeEngine(SPEC)
    texts = ["x" * n for n in (40, 3, 25, 0, 60, 7, 3)]

    async def main(q: ModelQueue) -> np.ndarray:
        out = await q.embed(texts, None)
        assert q.stats.batches > 1  # several batches, formed by length
        return out

    out = with_queue(main, engine, max_batch_tokens=120, max_batch_size=3)
    np.testing.assert_allclose(out, unbatched(engine, texts), atol=1e-6)


def test_many_concurrent_requests_get_their_own_vectors() -> None:
    engine = FakeEngine(SPEC, delay_ms=2)
    requests = [[f"request {i} text {j}" * (1 + (i + j) % 3) for j in range(1 + i % 5)]
                for i in range(40)]

    async def main(q: ModelQueue) -> list[np.ndarray]:
        outs = await asyncio.gather(*(q.embed(r, None) for r in requests))
        assert q.stats.batches < q.stats.requests  # requests shared batches
        return list(outs)

    for texts, out in zip(requests, with_queue(main, engine, workers=2), strict=True):
        np.testing.assert_allclose(out, unbatched(engine, texts), atol=1e-5)


def _items(q: ModelQueue, lengths: Sequence[int]) -> Request:
    req = Request(asyncio.get_running_loop().create_future(), len(lengths), 16, None)
    q._enqueue(req, [np.zeros(n, dtype=np.int64) for n in lengths])
    return req


def test_batch_holds_the_oldest_and_its_nearest_lengths_within_budget() -> None:
    async def main(q: ModelQueue) -> None:
        _items(q, [50, 5, 48, 6, 49, 7, 30])
        batch = q._take()  # before any await: the workers have not run yet
        assert sorted(it.length for it in batch) == [48, 49, 50]
        assert len(batch) * max(it.length for it in batch) <= 150
        assert q.queued == 4
        rest = q._take()  # the oldest remaining (5) goes next, with its neighbours
        assert 5 in [it.length for it in rest]
        assert len(rest) * max(it.length for it in rest) <= 150

    with_queue(main, FakeEngine(SPEC), max_batch_tokens=150, max_batch_size=8)


def test_batch_size_limit_and_a_text_longer_than_the_budget_still_runs() -> None:
    async def main(q: ModelQueue) -> None:
        _items(q, [64, 2, 2, 2, 2, 2, 2])
        assert [it.length for it in q._take()] == [64]
        assert len(q._take()) == 4
        assert len(q._take()) == 2
        assert q.queued == 0

    with_queue(main, FakeEngine(SPEC), max_batch_tokens=20, max_batch_size=4)


def test_expired_request_fails_with_timeout_and_its_texts_never_run() -> None:
    engine = FakeEngine(SPEC, delay_ms=300)

    async def main(q: ModelQueue) -> None:
        slow = await running(q, ["first", "second"])
        with pytest.raises(RequestTimeout):
            await q.embed(["late one"], 20)
        assert q.depth == 0  # dropped from the queue at once
        await slow
        assert q.stats.timeouts == 1
        assert q.stats.batched_texts == 2  # the late text was never run

    with_queue(main, engine, max_batch_size=2)


def test_cancelled_request_is_dropped_from_the_queue() -> None:
    engine = FakeEngine(SPEC, delay_ms=200)

    async def main(q: ModelQueue) -> None:
        first = await running(q, ["busy"])
        gone = asyncio.ensure_future(q.embed(["a", "b", "c"], None))
        while q.queued < 3:
            await asyncio.sleep(0.001)
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert q.queued == 0
        await first
        await q.embed(["after"], None)
        assert q.stats.batched_texts == 2  # "busy" and "after" only

    with_queue(main, engine, max_batch_size=1)


def test_overloaded_when_the_queue_is_full() -> None:
    engine = FakeEngine(SPEC, delay_ms=200)

    async def main(q: ModelQueue) -> None:
        first = asyncio.ensure_future(q.embed(["t"] * 8, None))
        while q.depth < 7:
            await asyncio.sleep(0.001)
        with pytest.raises(Overloaded) as info:
            await q.embed(["u"] * 5, None)
        assert "full" in info.value.message and info.value.hint
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        assert q.stats.overloaded == 1

    with_queue(main, engine, max_queue=10, max_batch_size=1)


def test_a_failure_reaches_only_the_request_that_caused_it() -> None:
    engine = FakeEngine(SPEC, delay_ms=50)

    async def main(q: ModelQueue) -> None:
        blocker = await running(q, ["blocker"])
        good = asyncio.ensure_future(q.embed(["fine", "also fine"], None))
        bad = asyncio.ensure_future(q.embed(["ok", FAIL_TEXT], None))
        results = await asyncio.gather(blocker, good, bad, return_exceptions=True)
        assert isinstance(results[2], InferenceFailed)
        np.testing.assert_allclose(results[1], unbatched(engine, ["fine", "also fine"]),
                                   atol=1e-6)
        # the worker lives on
        out = await q.embed(["later"], None)
        np.testing.assert_allclose(out, unbatched(engine, ["later"]), atol=1e-6)

    with_queue(main, engine)


def test_requests_arriving_during_a_run_form_the_next_batch() -> None:
    engine = FakeEngine(SPEC, delay_ms=100)

    async def main(q: ModelQueue) -> None:
        first = await running(q, ["lone"])
        rest = [asyncio.ensure_future(q.embed([f"r{i}"], None)) for i in range(10)]
        await asyncio.gather(first, *rest)
        assert q.stats.batches == 2  # the lone request, then all ten together

    with_queue(main, engine)


class _Concurrency(FakeEngine):
    """Records how many runs overlap."""

    def __init__(self) -> None:
        super().__init__(SPEC, delay_ms=30)
        self.active = 0
        self.peak = 0
        self._count = threading.Lock()

    def run(self, batch: Sequence[np.ndarray], worker: int = 0) -> np.ndarray:
        with self._count:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return super().run(batch, worker)
        finally:
            with self._count:
                self.active -= 1


def test_two_workers_run_batches_in_parallel() -> None:
    engine = _Concurrency()

    async def main(q: ModelQueue) -> None:
        await asyncio.gather(*(q.embed([f"t{i}"], None) for i in range(6)))

    with_queue(main, engine, workers=2, max_batch_size=1)
    assert engine.peak == 2


def test_worker_survives_an_engine_that_returns_a_wrong_shape() -> None:
    class Broken(FakeEngine):
        def run(self, batch: Sequence[np.ndarray], worker: int = 0) -> np.ndarray:
            return np.zeros((len(batch) + 1, 16), dtype=np.float32)

    async def main(q: ModelQueue) -> None:
        with pytest.raises(InferenceFailed, match="shape"):
            await q.embed(["x"], None)
        with pytest.raises(InferenceFailed):
            await q.embed(["y"], None)

    with_queue(main, Broken(SPEC))


def test_empty_request_and_empty_text() -> None:
    engine = FakeEngine(SPEC)

    async def main(q: ModelQueue) -> None:
        assert (await q.embed([], None)).shape == (0, 16)
        out = await q.embed([""], None)
        np.testing.assert_allclose(out, unbatched(engine, [""]), atol=1e-6)

    with_queue(main, engine)


def test_texts_of_a_request_cancelled_before_it_released_are_accounted_for() -> None:
    """Regression: a cancelled future with its texts still counted made a worker spin."""

    async def main(q: ModelQueue) -> None:
        req = _items(q, [5, 6, 7])
        req.future.cancel()  # what Task.cancel does before the task itself resumes
        assert q._take() == []
        assert q.queued == 0 and req.queued == 0
        q._release(req)  # the late release changes nothing more
        assert q.queued == 0

    with_queue(main, FakeEngine(SPEC))


def test_batch_grows_by_the_neighbour_that_adds_least_padding() -> None:
    async def main(q: ModelQueue) -> None:
        _items(q, [30, 20, 30, 31, 30])
        assert [it.length for it in q._take()] == [30, 30, 30]  # equal lengths first
        assert sorted(it.length for it in q._take()) == [20, 31]
        _items(q, [10, 10, 40])
        assert [it.length for it in q._take()] == [10, 10]  # 40 would be mostly padding
        assert [it.length for it in q._take()] == [40]

    with_queue(main, FakeEngine(SPEC), max_batch_tokens=1000, max_batch_size=3)
