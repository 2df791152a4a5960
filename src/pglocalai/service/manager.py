"""The runtime's models: lazy loading (once, however many first requests race),
per-model queues, thread settings applied to every loaded session.

Loading and reconfiguring share one lock, so a model that loads while an
administrator changes a setting ends up with the new setting either way, and
two concurrent ``set_setting`` calls apply one after the other.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from pglocalai.errors import PglocalaiError, ShuttingDown
from pglocalai.service.batching import ModelQueue
from pglocalai.service.config import ServiceConfig
from pglocalai.service.engine import Engine, ModelSpec
from pglocalai.service.logs import get_logger
from pglocalai.service.settings import Settings
from pglocalai.service.stats import Stats, rss_bytes

log = get_logger()


class Catalog(Protocol):
    def specs(self) -> list[ModelSpec]: ...

    def spec(self, uri: str) -> ModelSpec: ...

    def load(self, uri: str, variant: str | None, settings: dict[str, Any],
             workers: int) -> Engine: ...


class ModelManager:
    def __init__(self, catalog: Catalog, config: ServiceConfig, settings: Settings,
                 stats: Stats) -> None:
        self.catalog = catalog
        self.config = config
        self.settings = settings
        self.stats = stats
        self.queues: dict[str, ModelQueue] = {}
        self._loading: dict[str, asyncio.Task[ModelQueue]] = {}
        self._lock = asyncio.Lock()
        self._closing = False
        self.tokenize_pool = ThreadPoolExecutor(1, thread_name_prefix="pglocalai-tokenize")
        self.run_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="pglocalai-run")
        self.load_pool = ThreadPoolExecutor(1, thread_name_prefix="pglocalai-load")

    async def get(self, uri: str) -> ModelQueue:
        """The model's queue, loading the model on first use (once)."""
        queue = self.queues.get(uri)
        if queue is not None:
            return queue
        if self._closing:
            raise ShuttingDown("the runtime is shutting down")
        task = self._loading.get(uri)
        if task is None:
            self.catalog.spec(uri)  # unknown model: fail fast with the installed list
            task = asyncio.get_running_loop().create_task(self._load(uri))
            self._loading[uri] = task
            task.add_done_callback(lambda t: self._loaded(uri, t))
        # shield: a requester that goes away must not cancel the load for the others
        return await asyncio.shield(task)

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
            except PglocalaiError as exc:
                log.error("model_load_failed", model=uri, code=exc.code, error=str(exc),
                          detail=exc.detail)
                raise
            except Exception as exc:
                log.error("model_load_failed", model=uri, error=str(exc), exc_info=True)
                raise
            cfg = self.config
            queue = ModelQueue(engine, self.stats.model(uri), tokenize_pool=self.tokenize_pool,
                               run_pool=self.run_pool, workers=cfg.workers,
                               max_batch_tokens=cfg.max_batch_tokens,
                               max_batch_size=cfg.max_batch_size,
                               batch_wait_ms=cfg.batch_wait_ms, max_queue=cfg.max_queue)
            self.queues[uri] = queue
            log.info("model_loaded", model=uri, variant=engine.variant,
                     tokenizer=getattr(engine, "tokenizer", None),
                     seconds=round(time.perf_counter() - started, 3), rss_bytes=rss_bytes())
            return queue

    async def preload(self, which: str) -> None:
        """``all``, ``none`` or a comma-separated list of URIs; failures are logged."""
        if which.strip().lower() in ("", "none"):
            return
        if which.strip().lower() == "all":
            uris = [s.uri for s in self.catalog.specs()]
        else:
            uris = [u.strip() for u in which.split(",") if u.strip()]
        for uri in uris:
            try:
                await self.get(uri)
            except PglocalaiError as exc:  # the other models still load and serve
                log.error("preload_failed", model=uri, code=exc.code, error=str(exc),
                          hint=exc.hint)

    async def set_setting(self, key: str, value: Any) -> dict[str, Any]:
        """Validate, rebuild every loaded session, persist; all or nothing."""
        loop = asyncio.get_running_loop()
        async with self._lock:
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
                "variant": queue.engine.variant if queue else spec.pick_variant(
                    self.config.variant),
            })
        return out

    def metadata(self, uri: str) -> dict[str, Any]:
        spec = self.catalog.spec(uri)
        queue = self.queues.get(uri)
        meta = dict(spec.metadata)
        meta["loaded"] = queue is not None
        meta["variant"] = queue.engine.variant if queue else spec.pick_variant(
            self.config.variant)
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
        for pool in (self.tokenize_pool, self.run_pool, self.load_pool):
            pool.shutdown(wait=True, cancel_futures=True)
