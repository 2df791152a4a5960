"""Wide runs: a lone batch gets every intra-op thread, a busy queue gets parallel runs,
a short text gets them only when it is solo on cores other processes leave free."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from test_batching import SPEC, FixedLoad, unbatched, with_queue

from pglocalai.errors import RequestTimeout
from pglocalai.service.batching import SOLO_WINDOW, WIDE_MIN_TOKENS, ModelQueue
from pglocalai.service.cpu_load import INTERVAL, CpuLoad
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


def test_a_short_text_runs_wide_when_solo_on_free_cores() -> None:
    engine = wide_engine()

    async def main(q: ModelQueue) -> np.ndarray:
        first = await q.embed(["query: one"], None)  # one session, one text at a time
        second = await q.embed(["query: two"], None)
        return np.concatenate([first, second])

    out = with_queue(main, engine, workers=2, cpu_load=FixedLoad(2.0))
    assert engine.wide == 2
    np.testing.assert_array_equal(out, unbatched(engine, ["query: one", "query: two"]))


def test_only_a_solo_run_runs_on_the_event_loop_thread() -> None:
    engine = wide_engine()
    loop_thread = threading.get_ident()  # with_queue runs the loop in this thread

    async def main(q: ModelQueue) -> None:
        await q.embed(["query: solo"], None)  # solo: on the loop's thread
        await q.embed(LONG, None)  # alone but long: wide, on a worker thread
        await asyncio.gather(q.embed(["query: a"], None), q.embed(["query: b"], None))

    with_queue(main, engine, workers=2, cpu_load=FixedLoad(2.0))
    assert engine.run_threads[0] == loop_thread
    assert engine.runs >= 3 and loop_thread not in engine.run_threads[1:]


def test_a_deadline_that_passes_during_a_solo_run_is_honoured() -> None:
    engine = wide_engine(delay_ms=60)

    async def main(q: ModelQueue) -> None:
        with pytest.raises(RequestTimeout, match="after 20 ms"):
            await q.embed(["query: late"], 20)  # its timer cannot fire while the loop runs it
        assert q.open == 0 and q.depth == 0

    with_queue(main, engine, workers=2, cpu_load=FixedLoad(2.0))
    assert engine.wide == 1  # it did run solo, and wide


def test_a_short_text_runs_narrow_on_cores_another_process_holds() -> None:
    for free in (1.0, None):  # another process uses a core; no /proc to tell
        engine = wide_engine()

        async def main(q: ModelQueue) -> None:
            await q.embed(["query: one"], None)

        with_queue(main, engine, workers=2, cpu_load=FixedLoad(free))
        assert engine.runs == 1 and engine.wide == 0


def test_short_texts_run_narrow_for_a_while_after_two_requests_overlap() -> None:
    engine = wide_engine(delay_ms=20)

    async def main(q: ModelQueue) -> None:
        await asyncio.gather(q.embed(["query: a"], None), q.embed(["query: b"], None))
        await q.embed(["query: c"], None)  # alone, but within SOLO_WINDOW of the overlap
        assert q.open == 0
        await asyncio.sleep(SOLO_WINDOW)
        await q.embed(["query: d"], None)  # solo again

    with_queue(main, engine, workers=2, cpu_load=FixedLoad(2.0))
    assert engine.runs >= 3 and engine.wide == 1


def test_cpu_load_counts_other_processes_only() -> None:
    clock = [0.0]
    files = {"/proc/self/stat": "1 (py thon) R " + " ".join(["0"] * 10) + " 0 0 0"}

    def stat(busy_ticks: tuple[int, int], idle_ticks: tuple[int, int]) -> str:
        lines = ["cpu  0 0 0 0 0 0 0 0"]
        lines += [f"cpu{i} {b} 0 0 {d} 0 0 0 0" for i, (b, d) in
                  enumerate(zip(busy_ticks, idle_ticks, strict=True))]
        return "\n".join(lines) + "\n"

    load = CpuLoad(read=lambda path: files[path], clock=lambda: clock[0])
    load.cpus = {0, 1}
    files["/proc/stat"] = stat((0, 0), (0, 0))
    assert load.free_cores() is None  # one sample: nothing to compare yet
    clock[0] = INTERVAL
    files["/proc/stat"] = stat((100, 0), (0, 100))  # cpu0 busy all along, cpu1 idle
    assert load.free_cores() == pytest.approx(1.0)
    own = "1 (py thon) R " + " ".join(["0"] * 10) + " 150 50 0"  # ... and all of it ours
    files["/proc/self/stat"] = own
    clock[0] = 2 * INTERVAL
    files["/proc/stat"] = stat((200, 100), (0, 100))  # both busy, 200 ticks of them ours
    assert load.free_cores() == pytest.approx(2.0)
    clock[0] = 2 * INTERVAL + INTERVAL / 2  # within the interval: the last figure
    files["/proc/stat"] = "unreadable"
    assert load.free_cores() == pytest.approx(2.0)


def test_cpu_load_reads_this_machine() -> None:
    load = CpuLoad()
    assert load.free_cores() is None
    time.sleep(INTERVAL * 1.2)  # the kernel counts in ticks (10 ms): let some pass
    free = load.free_cores()
    assert free is not None and 0.0 <= free <= len(load.cpus)
