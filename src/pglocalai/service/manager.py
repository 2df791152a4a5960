"""The runtime's models: lazy loading (once, however many first requests race),
per-model queues, thread settings applied to every loaded session.

Loading and reconfiguring share one lock, so a model that loads while an
administrator changes a setting ends up with the new setting either way, and
two concurrent ``set_setting`` calls apply one after the other.

A model that fails to load fails alone: its error goes to the requests for it and
is kept for ``LOAD_RETRY_S`` seconds (requests meanwhile get it at once, without a
new attempt), while every other model loads and serves as usual.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pglocalai.errors import (
    InferenceFailed,
    ModelFormatError,
    PglocalaiError,
    RequestTimeout,
    ShuttingDown,
)
from pglocalai.service.batching import ModelQueue
from pglocalai.service.catalog import Catalog, choose_variant
from pglocalai.service.config import ServiceConfig
from pglocalai.service.engine import Engine
from pglocalai.service.logs import get_logger
from pglocalai.service.settings import Settings
from pglocalai.service.slices import SliceRunner
from pglocalai.service.stats import Stats, rss_bytes

log = get_logger()

LOAD_RETRY_S = 30.0  # a failed load is answered from memory this long, then tried again


class ModelManager:
    def __init__(self, catalog: Catalog, config: ServiceConfig, settings: Settings,
                 stats: Stats) -> None:
        self.catalog = catalog
        self.config = config
        self.settings = settings
        self.stats = stats
        self.queues: dict[str, ModelQueue] = {}
        self._loading: dict[str, asyncio.Task[ModelQueue]] = {}
        self._failed: dict[str, tuple[float, PglocalaiError]] = {}
        self._lock = asyncio.Lock()
        self._closing = False
        self.slices = SliceRunner()
        self.run_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="pglocalai-run")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="pglocalai-load")

    async def get(self, uri: str, timeout: float | None = None, *,
                  request: bool = True) -> ModelQueue:
        """The model's queue, loading the model on first use (once).

        ``timeout``: seconds to wait for a model still loading (RequestTimeout after).
        A failure is counted in the model's statistics when it fails a ``request``.
        """
        queue = self.queues.get(uri)
        if queue is not None:
            return queue
        if self._closing:
            raise ShuttingDown("the runtime is shutting down")
        failed = self._failed.get(uri)
        try:
            if failed is not None and time.monotonic() - failed[0] < LOAD_RETRY_S:
                raise failed[1]
            task = self._loading.get(uri)
            if task is None:
                self.catalog.spec(uri)  # unknown model: fail fast with the installed list
                task = asyncio.get_running_loop().create_task(self._load(uri))
                self._loading[uri] = task
                task.add_done_callback(lambda t: self._loaded(uri, t))
            try:
                # shield: a requester that goes away must not cancel the load for the others
                return await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                raise RequestTimeout(f"request timed out after {round(timeout * 1000)} ms",
                                     detail=f"model \"{uri}\" was still loading") from None
        except PglocalaiError as exc:
            # an installed model (its load was tried): not any URI a client makes up
            if request and (uri in self._failed or uri in self._loading):
                self.stats.model(uri).failed(exc)
            raise

    def _loaded(self, uri: str, task: asyncio.Task[ModelQueue]) -> None:
        self._loading.pop(uri, None)
        if not task.cancelled():
            task.exception()  # seen here even if every requester left

    async def _load(self, uri: str) -> ModelQueue:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if uri in self.queues:
                return self.queues[uri]
            values = self.settings.get()
            started = time.perf_counter()
            try:
                engine = await loop.run_in_executor(
                    self.load_pool, self.catalog.load, uri, self.config.variant, values,
                    self.config.workers)
            except Exception as exc:
                error = _load_error(uri, exc)
                self._failed[uri] = (time.monotonic(), error)
                log.error("model_load_failed", model=uri, code=error.code, error=str(error),
                          detail=error.detail, retry_after_s=LOAD_RETRY_S,
                          exc_info=not isinstance(exc, PglocalaiError))
                raise error from None
            self._failed.pop(uri, None)
            cfg = self.config
            queue = ModelQueue(engine, self.stats.model(uri), slices=self.slices,
                               run_pool=self.run_pool, workers=cfg.workers,
                               max_batch_tokens=cfg.max_batch_tokens,
                               max_batch_size=cfg.max_batch_size,
                               batch_wait_ms=cfg.batch_wait_ms, max_queue=cfg.max_queue)
            self.queues[uri] = queue
            log.info("model_loaded", model=uri, variant=engine.variant,
                     tokenizer=getattr(engine, "tokenizer", None),
                     seconds=round(time.perf_counter() - started, 3), rss_bytes=rss_bytes())
            if getattr(engine, "int8_exact", None) is False:
                log.warning("int8_not_exact", model=uri, variant=engine.variant,
                            hint="ONNX Runtime sums int8 products inexactly on this CPU: its "
                                 "vectors differ from other CPUs'; run --variant fp32, or an "
                                 "ONNX Runtime that honours session.x64quantprecision")
            return queue

    async def preload(self, which: str) -> None:
        """``all``, ``none`` or a comma-separated list of URIs; a failure stops only its model."""
        if which.strip().lower() in ("", "none"):
            return
        if which.strip().lower() == "all":
            try:
                uris = [s.uri for s in self.catalog.specs()]
            except Exception as exc:  # noqa: BLE001 - an unreadable store serves nothing yet
                log.error("preload_failed", error=str(exc), exc_info=True)
                return
        else:
            uris = [u.strip() for u in which.split(",") if u.strip()]
        for uri in uris:
            try:
                await self.get(uri, request=False)
            except PglocalaiError as exc:  # the other models still load and serve
                log.error("preload_failed", model=uri, code=exc.code, error=str(exc),
                          hint=exc.hint)

    async def set_setting(self, key: str, value: Any,
                          timeout: float | None = None) -> dict[str, Any]:
        """Validate, rebuild every loaded session, persist; all or nothing.

        ``timeout`` bounds the wait for a load or another change in progress; once the
        change starts it runs to its end, so that no session is left half-changed.
        """
        loop = asyncio.get_running_loop()
        self.settings.validate(key, value)  # a bad value fails before any wait
        acquire = asyncio.ensure_future(self._lock.acquire())
        done, _ = await asyncio.wait((acquire,), timeout=timeout)
        if not done:
            acquire.cancel()  # Lock.acquire passes the lock on if it was just woken
            raise RequestTimeout(f"request timed out after {round((timeout or 0) * 1000)} ms",
                                 detail="a model load or another setting change was "
                                        "in progress")
        # the change runs to its end even if the caller goes away; the lock is held
        # until then, so no other change or load starts on half-changed sessions
        change = asyncio.ensure_future(self._change(loop, key, value))
        change.add_done_callback(self._change_done)
        return await asyncio.shield(change)

    def _change_done(self, change: asyncio.Future[dict[str, Any]]) -> None:
        self._lock.release()
        if not change.cancelled():
            change.exception()  # seen even when its caller went away

    async def _change(self, loop: asyncio.AbstractEventLoop, key: str,
                      value: Any) -> dict[str, Any]:
        old = self.settings.get()
        new = self.settings.validate(key, value)
        if new == old:
            return new
        done: list[Engine] = []
        try:
            for queue in list(self.queues.values()):
                await loop.run_in_executor(self.load_pool, queue.engine.configure, new,
                                           self.config.workers)
                done.append(queue.engine)
            self.settings.commit(new)
        except BaseException:
            for engine in done:
                await loop.run_in_executor(self.load_pool, engine.configure, old,
                                           self.config.workers)
            raise
        log.info("setting_changed", key=key, value=new[key], models=len(done))
        return new

    def list_models(self) -> list[dict[str, Any]]:
        out = []
        for spec in self.catalog.specs():
            queue = self.queues.get(spec.uri)
            out.append({
                "uri": spec.uri, "dimensions": spec.dimensions, "max_tokens": spec.max_tokens,
                "variants": list(spec.variants), "default_variant": spec.default_variant,
                "loaded": queue is not None,
                "variant": queue.engine.variant if queue else choose_variant(
                    spec, self.config.variant)[0],
            })
        return out

    def metadata(self, uri: str) -> dict[str, Any]:
        spec = self.catalog.spec(uri)
        queue = self.queues.get(uri)
        meta = dict(spec.metadata)
        meta["loaded"] = queue is not None
        meta["variant"] = queue.engine.variant if queue else choose_variant(
            spec, self.config.variant)[0]
        return meta

    def queue_depths(self) -> dict[str, int]:
        return {uri: q.depth for uri, q in self.queues.items()}

    async def drain(self, timeout: float) -> bool:
        results = [await q.drain(timeout) for q in self.queues.values()]
        return all(results)

    async def close(self) -> None:
        self._closing = True
        for task in list(self._loading.values()):
            task.cancel()
        for queue in self.queues.values():
            await queue.close()
        self.slices.close()
        for pool in (self.run_pool, self.load_pool):
            pool.shutdown(wait=True, cancel_futures=True)


def _load_error(uri: str, exc: BaseException) -> PglocalaiError:
    """What a failed load tells the requests for that model."""
    if isinstance(exc, PglocalaiError):
        return exc
    if isinstance(exc, OSError):
        return ModelFormatError(f"could not read the files of model \"{uri}\"",
                                detail=f"{type(exc).__name__}: {exc}",
                                hint=f"check the model store: pglocalai model verify {uri}")
    return InferenceFailed(f"could not load model \"{uri}\"",
                           detail=f"{type(exc).__name__}: {exc}")
