"""Per-model request queue and batcher: dynamic batching across all connections.

The split follows text-embeddings-inference and infinity: a queue apart from
the backend. For one model::

    request ──admission (max_queue)──▶ tokenize ──▶ backlog of texts
                                                        │ worker coroutine(s):
                                                        ▼ form batch by token budget
                      reply ◀── scatter rows ◀── engine.run in a worker thread

* Admission is bounded: more than ``max_queue`` texts waiting or being
  tokenised fails fast with ``Overloaded``.
* Tokenisation reads each text in bounded windows (:mod:`~pglocalai.service.reading`).
  A request of at most ``INLINE_TOKENIZE_BYTES`` bytes of text is tokenised on the
  event loop (tens of microseconds, less than a thread hand-off); a larger one in the
  tokenizer thread (:mod:`~pglocalai.service.slices`), a slice at a time, so it
  overlaps inference and never holds up another request for more than a slice.
* A worker that is idle takes what is waiting at once: a lone request runs
  immediately. It waits (at most ``batch_wait_ms``) only while other requests
  are being tokenised, so simultaneous arrivals share a batch. While a worker
  is busy, new requests accumulate into the next batch (continuous batching).
* A batch always holds the oldest waiting text (no starvation). Around it, in
  length order, it grows by whichever neighbour adds the least padding, as long
  as ``max_batch_tokens`` padded tokens (size x longest) and ``max_batch_size``
  allow: similar lengths waste little on padding.
* A batch taken while no other batch runs and nothing else waits or is being
  tokenised runs *wide*: on the engine's session with all intra-op threads, when it
  has one (``--wide-runs``). Until it ends no other worker starts a run, so the
  cores are never oversubscribed; texts that arrive meanwhile form the next batch.
  A short batch (under ``WIDE_MIN_TOKENS`` padded tokens) runs wide only *solo*: no
  two requests were open at once in the last ``SOLO_WINDOW`` seconds (one session
  calling one text at a time: a query, a row-by-row UPDATE) and other processes
  left the cores free (:mod:`~pglocalai.service.cpu_load`). Such a solo run runs on the
  event loop's own thread: handing it to a worker thread and the result back cost about
  1 ms a call on this VM (waking an idle thread is slow there; docs/runtime.md), and the
  loop has nothing to do meanwhile (the run holds every thread, no other request is
  open). It blocks the loop for one short run at most; a deadline that passed during it
  is honoured as if its timer had fired.
  A text's vector is the same on either session (``tests/model/test_thread_invariance.py``).
* Rows are scattered back into each request's own output array at the text's
  input index, so results are in input order whatever the batch order was.
* A request that times out or whose client went away is released at once: its
  share of the backlog is given back and its texts are skipped when a batch is formed.
* A failed batch with several requests is re-run request by request, so a
  failure reaches only the request that caused it; the worker logs and lives on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pglocalai.errors import (
    InferenceFailed,
    Overloaded,
    PglocalaiError,
    RequestTimeout,
    ShuttingDown,
)
from pglocalai.service import reading
from pglocalai.service.backlog import WINDOW_FACTOR, Backlog, Item, Request, form_batch
from pglocalai.service.cpu_load import CpuLoad
from pglocalai.service.engine import Engine
from pglocalai.service.logs import get_logger
from pglocalai.service.reading import Text
from pglocalai.service.slices import SliceRunner
from pglocalai.service.stats import ModelStats

log = get_logger()

# requests with at most this many bytes of text are tokenised on the event loop: the
# thread hand-off (two context switches, GIL hand-offs) costs more than the work
INLINE_TOKENIZE_BYTES = 1024
# a lone batch of fewer padded tokens runs narrow unless solo: below this, splitting each
# operator over two threads gains ~1.4x while the other core is free, and a busy second
# core (another session's run, another process) makes it slower (docs/runtime.md)
WIDE_MIN_TOKENS = 128
# a short batch runs wide only if no two requests were open at once for this long: a
# session calling one text at a time leaves the queue empty between calls (~0.5 ms), and
# several sessions overlap within a few milliseconds
SOLO_WINDOW = 0.25
# ... and only while other processes leave this much of the wide run's cores free
SOLO_SPARE_CORES = 0.5

# where a batch runs: a worker's one-thread session, the wide session from a worker
# thread, or the wide session on the event loop's thread (a short solo batch)
NARROW, WIDE, SOLO = "narrow", "wide", "solo"


class ModelQueue:
    """Queue, batcher and workers of one loaded model."""

    def __init__(self, engine: Engine, stats: ModelStats, *, slices: SliceRunner,
                 run_pool: Any, workers: int, max_batch_tokens: int, max_batch_size: int,
                 batch_wait_ms: float, max_queue: int,
                 cpu_load: CpuLoad | None = None) -> None:
        self.engine = engine
        self.uri = engine.spec.uri
        self.dim = engine.spec.dimensions
        self.stats = stats
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self._slices = slices
        self._run_pool = run_pool
        self._loop = asyncio.get_running_loop()
        self._backlog = Backlog()
        self.arriving = 0  # texts admitted and being tokenised
        self.running = 0  # batches in flight
        self.wide = 0  # wide runs so far (statistics)
        self.solo_wide = 0  # ... of them short batches run wide while solo
        self.open = 0  # requests admitted and not yet answered
        self._crowded_until = 0.0  # loop time before which a short batch is not solo
        self._cpu_load = cpu_load or CpuLoad()
        self._narrow_ok = asyncio.Event()  # cleared while a wide run has all the threads
        self._narrow_ok.set()
        self._wake = asyncio.Event()
        self._arrival_waiters: list[asyncio.Future[None]] = []
        self._closed: PglocalaiError | None = None
        self._workers = [self._loop.create_task(self._worker(i), name=f"worker-{self.uri}-{i}")
                         for i in range(workers)]

    @property
    def queued(self) -> int:
        """Texts waiting for a batch."""
        return self._backlog.queued

    @property
    def depth(self) -> int:
        """Texts waiting: queued for a batch plus being tokenised."""
        return self._backlog.queued + self.arriving

    # -- requests (event loop) ------------------------------------------------

    async def embed(self, texts: Sequence[Text], timeout_ms: int | None) -> np.ndarray:
        """float32 [len(texts), dim] in input order; raises the request's own error.

        ``texts`` are str or their UTF-8 bytes (as they came off the socket).
        """
        self.stats.request(len(texts))
        self.open += 1
        if self.open > 1:
            self._crowded_until = self._loop.time() + SOLO_WINDOW
        try:
            return await self._embed(texts, timeout_ms)
        except (PglocalaiError, asyncio.CancelledError) as exc:
            self.stats.failed(exc)
            raise
        finally:
            self.open -= 1

    async def count_tokens(self, texts: Sequence[Text], inline: bool = True) -> list[int]:
        """Full token counts (before truncation), read in bounded windows.

        ``inline=False`` always uses the tokenizer thread: for a caller that counts
        thousands of pieces one after another (chunking), whose inline counts would
        otherwise keep the event loop busy between them.
        """
        job = reading.count_job(self.engine.text_tokenizer, texts)
        if inline and _size(texts) <= INLINE_TOKENIZE_BYTES:
            return reading.run_now(job)  # type: ignore[return-value]
        future = self._slices.submit(job)
        try:
            return await future  # type: ignore[no-any-return]
        finally:
            future.cancel()  # the caller went away or timed out: drop the work

    async def _embed(self, texts: Sequence[Text], timeout_ms: int | None) -> np.ndarray:
        n = len(texts)
        if self._closed is not None:
            raise self._closed
        if n == 0:
            return np.empty((0, self.dim), dtype="<f4")
        if self.depth + n > self.max_queue:
            raise Overloaded(
                f"the queue of model \"{self.uri}\" is full",
                detail=f"{self.depth} texts are waiting, the limit is {self.max_queue}",
                hint="retry later, send smaller batches or raise --max-queue")
        req = Request(self._loop.create_future(), n, self.dim, timeout_ms)
        if timeout_ms:
            req.timer = self._loop.call_later(timeout_ms / 1000.0, self._expire, req)
        try:
            token_ids = await self._tokenize(req, texts)
            self._enqueue(req, token_ids)
            return await req.future
        finally:
            self._release(req)

    async def _tokenize(self, req: Request, texts: Sequence[Text]) -> list[np.ndarray]:
        job = reading.embed_job(self.engine.text_tokenizer, texts, self.engine.spec.max_tokens)
        if _size(texts) <= INLINE_TOKENIZE_BYTES:
            return reading.run_now(job)  # type: ignore[return-value]
        self.arriving += len(texts)
        try:
            req.job = self._slices.submit(job)
            await asyncio.wait((req.job, req.future), return_when=asyncio.FIRST_COMPLETED)
            if req.future.done():  # expired (or closed) while it was tokenised
                return req.future.result()  # type: ignore[no-any-return] - raises
            return req.job.result()  # type: ignore[no-any-return]
        finally:
            self.arriving -= len(texts)
            self._notify_arrival()

    def _enqueue(self, req: Request, token_ids: Sequence[np.ndarray]) -> None:
        if self._closed is not None:
            raise self._closed  # the workers are gone: nothing would take these texts
        self._backlog.push(req, token_ids)
        self._wake.set()

    def _expire(self, req: Request) -> None:
        req.timer = None
        if not req.future.done():
            req.future.set_exception(RequestTimeout(
                f"request timed out after {req.timeout_ms} ms",
                hint="raise timeout_ms, or send fewer texts per call"))
        self._release(req)

    def _release(self, req: Request) -> None:
        """Give back the request's share of the backlog, its timer and its tokenisation."""
        if not req.open:
            return
        req.open = False
        self._backlog.release(req)
        if req.timer is not None:
            req.timer.cancel()
            req.timer = None
        if req.job is not None:
            if req.job.done() and not req.job.cancelled():
                req.job.exception()  # seen, even when the request ended another way
            req.job.cancel()
        if not req.future.done():
            req.future.cancel()  # the caller went away: batches skip its texts

    def _notify_arrival(self) -> None:
        waiters, self._arrival_waiters = self._arrival_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # -- batcher and workers ------------------------------------------------

    async def _worker(self, index: int) -> None:
        while True:
            while self._backlog.queued == 0:
                self._wake.clear()
                await self._wake.wait()
            if self.arriving and self.batch_wait > 0:
                await self._wait_for_arrivals()
            if not self._narrow_ok.is_set():
                await self._narrow_ok.wait()  # a wide run holds every thread
                continue
            batch = self._take()
            if not batch:
                continue
            place = self._place(batch)
            wide = place != NARROW
            if wide:
                self._narrow_ok.clear()
                self.wide += 1
            try:
                await self._run(batch, index, place)
            except Exception as exc:  # noqa: BLE001 - a worker never dies silently
                log.error("worker_error", model=self.uri, worker=index, error=str(exc),
                          exc_info=True)
                self._fail(batch, exc)
            finally:
                if wide:
                    self._narrow_ok.set()

    def _place(self, batch: list[Item]) -> str:
        """WIDE when alone (no run in flight, nothing left waiting) and long enough to
        gain from all the threads; SOLO when alone, short and solo on cores other
        processes leave free; else NARROW."""
        if self.running or self._backlog.queued or self.arriving:
            return NARROW
        threads = getattr(self.engine, "wide_threads", 0)
        if not threads:
            return NARROW
        if len(batch) * max(it.length for it in batch) >= WIDE_MIN_TOKENS:
            return WIDE
        if self._loop.time() < self._crowded_until:
            return NARROW
        free = self._cpu_load.free_cores()
        if free is None or free < threads - SOLO_SPARE_CORES:
            return NARROW
        self.solo_wide += 1
        return SOLO

    async def _wait_for_arrivals(self) -> None:
        """Let requests that are being tokenised right now join this batch."""
        deadline = self._loop.time() + self.batch_wait
        while self.arriving and self._backlog.queued < self.max_batch_size:
            delay = deadline - self._loop.time()
            if delay <= 0:
                return
            fut: asyncio.Future[None] = self._loop.create_future()
            self._arrival_waiters.append(fut)
            timer = self._loop.call_later(delay, _resolve, fut)
            try:
                await fut
            finally:
                timer.cancel()

    def _take(self) -> list[Item]:
        """Pop the next batch: the oldest live text plus its nearest lengths."""
        window = self._backlog.pop_live(self.max_batch_size * WINDOW_FACTOR)
        batch, rest = form_batch(window, self.max_batch_tokens, self.max_batch_size)
        if rest:
            self._backlog.put_back(rest)
        return batch

    async def _run(self, batch: list[Item], worker: int, place: str = NARROW) -> None:
        self.running += 1
        try:
            try:
                started = time.perf_counter()
                ids = [it.ids for it in batch]
                # engines without a wide session take no third argument
                args = (ids, worker) if place == NARROW else (ids, worker, True)
                if place == SOLO:
                    vectors = self.engine.run(*args)  # on this thread: see the module docstring
                else:
                    vectors = await self._loop.run_in_executor(self._run_pool, self.engine.run,
                                                               *args)
                self._scatter(batch, vectors, time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - isolated below, never kills the worker
                await self._isolate_failure(batch, exc, worker)
        finally:
            self.running -= 1

    def _scatter(self, batch: list[Item], vectors: np.ndarray, seconds: float) -> None:
        if vectors.shape != (len(batch), self.dim):
            raise InferenceFailed(f"model returned shape {vectors.shape}, expected "
                                  f"{(len(batch), self.dim)}")
        lengths = [it.length for it in batch]
        self.stats.record_batch(len(batch), sum(lengths), max(lengths), seconds)
        now = self._loop.time()
        for item, row in zip(batch, vectors, strict=True):
            req = item.req
            if req.timer is not None and req.timer.when() <= now:
                self._expire(req)  # its timer could not fire while a solo run held the loop
            if req.future.done():
                continue
            req.out[item.index] = row
            req.remaining -= 1
            if req.remaining == 0:
                self.stats.record_latency((time.perf_counter() - req.started) * 1000.0)
                req.future.set_result(req.out)

    async def _isolate_failure(self, batch: list[Item], exc: Exception, worker: int) -> None:
        by_request: dict[int, list[Item]] = {}
        for item in batch:
            by_request.setdefault(id(item.req), []).append(item)
        if len(by_request) == 1:
            self._fail(batch, exc)
            return
        log.warning("batch_failed_retrying_alone", model=self.uri, error=str(exc),
                    requests=len(by_request))
        for items in by_request.values():
            if items[0].req.future.done():
                continue
            try:
                started = time.perf_counter()
                vectors = await self._loop.run_in_executor(
                    self._run_pool, self.engine.run, [it.ids for it in items], worker)
                self._scatter(items, vectors, time.perf_counter() - started)
            except Exception as alone:  # noqa: BLE001
                self._fail(items, alone)

    def _fail(self, items: list[Item], exc: Exception) -> None:
        if isinstance(exc, PglocalaiError):
            error: PglocalaiError = exc
        else:
            error = InferenceFailed(f"inference failed for model \"{self.uri}\"",
                                    detail=f"{type(exc).__name__}: {exc}")
        log.error("inference_failed", model=self.uri, error=str(exc), texts=len(items),
                  exc_info=not isinstance(exc, PglocalaiError))
        for item in items:
            if not item.req.future.done():
                item.req.future.set_exception(error)

    # -- lifecycle ----------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Wait until nothing is queued, tokenised or running; False on timeout."""
        deadline = self._loop.time() + timeout
        while self._backlog.queued or self.arriving or self.running:
            if self._loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self) -> None:
        """Fail what is still waiting with ShuttingDown and stop the workers."""
        self._closed = ShuttingDown("the runtime is shutting down",
                                    hint="retry once the runtime is back")
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for item in self._backlog.clear():
            if not item.req.future.done():
                item.req.future.set_exception(self._closed)
            self._release(item.req)

    def snapshot(self) -> dict[str, Any]:
        return {"queued": self._backlog.queued, "arriving": self.arriving,
                "running": self.running, "wide_runs": self.wide,
                "solo_wide_runs": self.solo_wide}


def _size(texts: Sequence[Text]) -> int:
    return sum(len(t) for t in texts)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
