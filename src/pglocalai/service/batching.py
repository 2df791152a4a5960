"""Per-model request queue and batcher: dynamic batching across all connections.

The split follows text-embeddings-inference and infinity: a queue apart from
the backend. For one model::

    request ──admission (max_queue)──▶ tokenizer thread ──▶ pending texts
                                                                │ worker coroutine(s):
                                                                ▼ form batch by token budget
                              reply ◀── scatter rows ◀── engine.run in a worker thread

* Admission is bounded: more than ``max_queue`` texts waiting or being
  tokenised fails fast with ``Overloaded``.
* Tokenisation runs in its own thread, so it overlaps inference (ONNX Runtime
  releases the GIL); the event loop only moves references around.
* A worker that is idle takes what is pending at once: a lone request runs
  immediately. It waits (at most ``batch_wait_ms``) only while other requests
  are being tokenised, so simultaneous arrivals share a batch. While a worker
  is busy, new requests accumulate into the next batch (continuous batching).
* A batch always holds the oldest pending text (no starvation). Around it, in
  length order, it grows by whichever neighbour adds the least padding, as long
  as ``max_batch_tokens`` padded tokens (size x longest) and ``max_batch_size``
  allow: similar lengths waste little on padding.
* Rows are scattered back into each request's own output array at the text's
  input index, so results are in input order whatever the batch order was.
* A request that times out or whose client went away is dropped: its texts are
  skipped when a batch is formed and its queue share is released at once.
* A failed batch with several requests is re-run request by request, so a
  failure reaches only the request that caused it; the worker logs and lives on.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import numpy as np

from pglocalai.errors import (
    BadRequest,
    InferenceFailed,
    Overloaded,
    PglocalaiError,
    RequestTimeout,
    ShuttingDown,
)
from pglocalai.service.engine import Engine
from pglocalai.service.logs import get_logger
from pglocalai.service.stats import ModelStats

log = get_logger()

_T = TypeVar("_T")

WINDOW_FACTOR = 4
# requests with at most this many characters are tokenised on the event loop:
# the thread hop (two context switches, GIL hand-offs) costs more than the work
INLINE_TOKENIZE_CHARS = 512  # texts considered per batch decision: this many x max_batch_size


class _Request:
    """One EMBED request: output rows filled as its texts come back from batches."""

    __slots__ = ("future", "out", "remaining", "queued", "timer", "started", "timeout_ms")

    def __init__(self, future: asyncio.Future[np.ndarray], n: int, dim: int,
                 timeout_ms: int | None) -> None:
        self.future = future
        self.out = np.empty((n, dim), dtype="<f4")
        self.remaining = n
        self.queued = 0  # texts still in the pending queue (not yet in a batch)
        self.timer: asyncio.TimerHandle | None = None
        self.started = time.perf_counter()
        self.timeout_ms = timeout_ms


class _Item:
    __slots__ = ("length", "seq", "req", "index", "ids")

    def __init__(self, length: int, seq: int, req: _Request, index: int,
                 ids: np.ndarray) -> None:
        self.length = length
        self.seq = seq
        self.req = req
        self.index = index
        self.ids = ids


class ModelQueue:
    """Queue, batcher and workers of one loaded model."""

    def __init__(self, engine: Engine, stats: ModelStats, *, tokenize_pool: Executor,
                 run_pool: Executor, workers: int, max_batch_tokens: int,
                 max_batch_size: int, batch_wait_ms: float, max_queue: int) -> None:
        self.engine = engine
        self.uri = engine.spec.uri
        self.dim = engine.spec.dimensions
        self.stats = stats
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self._tokenize_pool = tokenize_pool
        self._run_pool = run_pool
        self._loop = asyncio.get_running_loop()
        self._pending: deque[_Item] = deque()
        self._seq = itertools.count()
        self.queued = 0  # live texts waiting for a batch
        self.arriving = 0  # texts admitted and being tokenised
        self.running = 0  # batches in flight
        self._wake = asyncio.Event()
        self._arrival_waiters: list[asyncio.Future[None]] = []
        self._closed: PglocalaiError | None = None
        self._workers = [self._loop.create_task(self._worker(i), name=f"worker-{self.uri}-{i}")
                         for i in range(workers)]

    @property
    def depth(self) -> int:
        """Texts waiting: queued for a batch plus being tokenised."""
        return self.queued + self.arriving

    # -- requests (event loop) ------------------------------------------------

    async def embed(self, texts: Sequence[str], timeout_ms: int | None) -> np.ndarray:
        """float32 [len(texts), dim] in input order; raises the request's own error."""
        n = len(texts)
        stats = self.stats
        stats.requests += 1
        stats.texts += n
        if self._closed is not None:
            raise self._closed
        if n == 0:
            return np.empty((0, self.dim), dtype="<f4")
        if self.depth + n > self.max_queue:
            stats.overloaded += 1
            raise Overloaded(
                f"the queue of model \"{self.uri}\" is full",
                detail=f"{self.depth} texts are waiting, the limit is {self.max_queue}",
                hint="retry later, send smaller batches or raise --max-queue")
        req = _Request(self._loop.create_future(), n, self.dim, timeout_ms)
        if timeout_ms:
            req.timer = self._loop.call_later(timeout_ms / 1000.0, self._expire, req)
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            # a short request tokenises in ~20 us: cheaper here than a thread hop
            try:
                token_ids = self._guarded(self.engine.tokenize, texts)
            except BaseException:
                self._release(req)
                raise
            return await self._wait(req, token_ids)
        self.arriving += n
        try:
            token_ids = await self._loop.run_in_executor(
                self._tokenize_pool, self._guarded, self.engine.tokenize, texts)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                stats.cancelled += 1
            self._release(req)
            if not req.future.cancelled():
                req.future.exception()  # a timeout that fired meanwhile: mark it seen
            raise
        finally:
            self.arriving -= n
            self._notify_arrival()
        return await self._wait(req, token_ids)

    async def _wait(self, req: _Request, token_ids: list[np.ndarray]) -> np.ndarray:
        try:
            if not req.future.done():  # not expired while it was tokenised
                self._enqueue(req, token_ids)
            return await req.future
        except asyncio.CancelledError:
            self.stats.cancelled += 1  # the client went away
            raise
        finally:
            self._release(req)

    async def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Full token counts (before truncation), computed in the tokenizer thread."""
        return await self._loop.run_in_executor(
            self._tokenize_pool, self._guarded, self.engine.count_tokens, texts)

    @staticmethod
    def _guarded(fn: Callable[[Sequence[str]], _T], texts: Sequence[str]) -> _T:
        try:
            return fn(texts)
        except UnicodeError as exc:
            raise BadRequest("input text is not valid unicode", detail=str(exc)) from None
        except PglocalaiError:
            raise
        except Exception as exc:  # noqa: BLE001 - the tokenizer's own exception types
            raise BadRequest("input text could not be tokenized", detail=str(exc)) from None

    def _enqueue(self, req: _Request, token_ids: list[np.ndarray]) -> None:
        seq = self._seq
        self._pending.extend(_Item(len(ids), next(seq), req, i, ids)
                             for i, ids in enumerate(token_ids))
        req.queued = len(token_ids)
        self.queued += req.queued
        self._wake.set()

    def _expire(self, req: _Request) -> None:
        req.timer = None
        if not req.future.done():
            self.stats.timeouts += 1
            req.future.set_exception(RequestTimeout(
                f"request timed out after {req.timeout_ms} ms",
                hint="raise timeout_ms, or send fewer texts per call"))
            self._release(req)

    def _release(self, req: _Request) -> None:
        """Give back the request's queue share and timer; its texts are skipped later."""
        if req.timer is not None:
            req.timer.cancel()
            req.timer = None
        self.queued -= req.queued
        req.queued = 0
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
            while self.queued == 0:
                self._wake.clear()
                await self._wake.wait()
            if self.arriving and self.batch_wait > 0:
                await self._wait_for_arrivals()
            batch = self._take()
            if not batch:
                continue
            try:
                await self._run(batch, index)
            except Exception as exc:  # noqa: BLE001 - a worker never dies silently
                log.error("worker_error", model=self.uri, worker=index, error=str(exc),
                          exc_info=True)
                self._fail(batch, exc)

    async def _wait_for_arrivals(self) -> None:
        """Let requests that are being tokenised right now join this batch."""
        deadline = self._loop.time() + self.batch_wait
        while self.arriving and self.queued < self.max_batch_size:
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

    def _take(self) -> list[_Item]:
        """Pop the next batch: the oldest live text plus its nearest lengths."""
        pending = self._pending
        window: list[_Item] = []
        limit = self.max_batch_size * WINDOW_FACTOR
        while pending and len(window) < limit:
            item = pending.popleft()
            if not item.req.future.done():
                window.append(item)
            elif item.req.queued:
                # its request failed or was cancelled and has not released yet:
                # account for the text here, or a worker would see work that is not there
                item.req.queued -= 1
                self.queued -= 1
        if not window:
            if not pending and self.queued:
                log.error("queue_accounting_repaired", model=self.uri, queued=self.queued)
                self.queued = 0
            return []
        oldest = window[0]
        ordered = sorted(window, key=_length)  # stable: ties stay oldest first
        lo = hi = ordered.index(oldest)
        longest = oldest.length
        budget, size, last = self.max_batch_tokens, self.max_batch_size, len(ordered) - 1
        # grow around the oldest text, always by the neighbour that adds the least
        # padding, while size x longest stays within the token budget
        while hi - lo + 1 < size:
            count = hi - lo + 1
            left = right = None
            if lo > 0 and (count + 1) * longest <= budget:
                left = longest - ordered[lo - 1].length
                if left > ordered[lo - 1].length:
                    left = None  # it would add more padding than tokens
            if hi < last and (count + 1) * ordered[hi + 1].length <= budget:
                right = count * (ordered[hi + 1].length - longest)
                if right > ordered[hi + 1].length:
                    right = None
            if left is None and right is None:
                break
            if right is None or (left is not None and left < right):
                lo -= 1
            else:
                hi += 1
                longest = ordered[hi].length
        batch = ordered[lo : hi + 1]
        if len(batch) < len(window):
            chosen = {id(item) for item in batch}
            rest = [item for item in window if id(item) not in chosen]
            pending.extendleft(reversed(rest))
        for item in batch:
            item.req.queued -= 1
        self.queued -= len(batch)
        return batch

    async def _run(self, batch: list[_Item], worker: int) -> None:
        self.running += 1
        try:
            try:
                started = time.perf_counter()
                vectors = await self._loop.run_in_executor(
                    self._run_pool, self.engine.run, [it.ids for it in batch], worker)
                self._scatter(batch, vectors, time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - isolated below, never kills the worker
                await self._isolate_failure(batch, exc, worker)
        finally:
            self.running -= 1

    def _scatter(self, batch: list[_Item], vectors: np.ndarray, seconds: float) -> None:
        if vectors.shape != (len(batch), self.dim):
            raise InferenceFailed(f"model returned shape {vectors.shape}, expected "
                                  f"{(len(batch), self.dim)}")
        lengths = [it.length for it in batch]
        self.stats.record_batch(len(batch), sum(lengths), max(lengths), seconds)
        for item, row in zip(batch, vectors, strict=True):
            req = item.req
            if req.future.done():
                continue
            req.out[item.index] = row
            req.remaining -= 1
            if req.remaining == 0:
                if req.timer is not None:
                    req.timer.cancel()
                    req.timer = None
                self.stats.latencies.append((time.perf_counter() - req.started) * 1000.0)
                req.future.set_result(req.out)

    async def _isolate_failure(self, batch: list[_Item], exc: Exception, worker: int) -> None:
        by_request: dict[int, list[_Item]] = {}
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

    def _fail(self, items: list[_Item], exc: Exception) -> None:
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
        while self.queued or self.arriving or self.running:
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
        while self._pending:
            item = self._pending.popleft()
            if not item.req.future.done():
                item.req.future.set_exception(self._closed)
        self.queued = 0

    def snapshot(self) -> dict[str, Any]:
        return {"queued": self.queued, "arriving": self.arriving, "running": self.running}


def _length(item: _Item) -> int:
    return item.length


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
