"""Wide runs: a lone batch gets every intra-op thread, a busy queue gets parallel runs."""

from __future__ import annotations

import asyncio

import numpy as np
from test_batching import SPEC, unbatched, with_queue

from pglocalai.service.batching import WIDE_MIN_TOKENS, ModelQueue
from pglocalai.service.engine import wide_threads
from pglocalai.testing.fake_engine import FakeEngine

LONG = ["a" * 62, "b" * 62]  # 2 texts x 64 tokens (with <s> and </s>) = 128 padded tokens


def wide_engine(delay_ms: float = 0.0) -> FakeEngine:
    engine = FakeEngine(SPEC, delay_ms=delay_ms)
    engine.wide_threads = 2
    return engine


def test_long_enough_lone_batch_runs_wide_with_the_same_vectors() -> None:
    assert len(LONG) * 64 >= WIDE_MIN_TOKENS
    engine = wide_engine()

    async def main(q: ModelQueue) -> np.ndarray:
        return await q.embed(LONG, None)

    out = with_queue(main, engine, workers=2)
    assert engine.wide == 1
    np.testing.assert_array_equal(out, unbatched(engine, LONG))


def test_short_lone_batch_and_engine_without_wide_session_run_narrow() -> None:
    short, plain = wide_engine(), FakeEngine(SPEC)

    async def main(q: ModelQueue) -> None:
        await q.embed(["short"], None)

    with_queue(main, short, workers=2)
    assert short.runs == 1 and short.wide == 0

    async def long(q: ModelQueue) -> None:
        await q.embed(LONG, None)

    with_queue(long, plain, workers=2)
    assert plain.runs == 1 and plain.wide == 0


def test_nothing_runs_beside_a_wide_run_and_a_busy_queue_runs_in_parallel() -> None:
    engine = wide_engine(delay_ms=30)

    async def main(q: ModelQueue) -> None:
        first = asyncio.ensure_future(q.embed(LONG, None))
        while q.running == 0:
            await asyncio.sleep(0.001)
        # arrive while the wide run holds both threads: none of these may start beside it
        rest = [asyncio.ensure_future(q.embed([f"text {i}" * 8], None)) for i in range(12)]
        await asyncio.gather(first, *rest)

    with_queue(main, engine, workers=2, max_batch_size=2)
    assert engine.wide >= 1
    assert engine.overlaps == 0
    assert engine.most_in_flight == 2  # the queued texts then ran two batches at once
    assert engine.runs > engine.wide


def test_wide_threads_follow_the_settings() -> None:
    settings = {"intra_op_parallelism": 2, "inter_op_parallelism": 1, "spin_control": True}
    assert wide_threads(settings, 2) == 2
    assert wide_threads(settings, 1) == 0  # one worker already has every thread
    assert wide_threads({**settings, "intra_op_parallelism": 1}, 2) == 0
    assert wide_threads({**settings, "intra_op_parallelism": 8}, 2) == 8
