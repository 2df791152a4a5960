"""Runtime statistics, per model and in total.

Counters are plain integers updated on the event loop thread (no locks), each
through one method of its owner: ``ModelStats.request``/``failed`` for a request's
fate (called by the model's queue, and by the manager for a request that failed
before the model was loaded), ``record_batch``/``record_latency`` by the queue's
workers; ``Stats`` counts connections and bad frames for the server. Latencies
keep the last ``WINDOW`` requests per model: percentiles describe the recent
behaviour and memory stays bounded however long the runtime runs.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import Any

import numpy as np

from pglocalai.errors import Overloaded, RequestTimeout
from pglocalai.service import heap

WINDOW = 4096
COUNTERS = ("requests", "texts", "tokens", "padded_tokens", "batches", "batched_texts",
            "run_seconds", "errors", "timeouts", "overloaded", "cancelled")


class ModelStats:
    __slots__ = (*COUNTERS, "latencies")

    def __init__(self) -> None:
        for name in COUNTERS:
            setattr(self, name, 0)
        self.latencies: deque[float] = deque(maxlen=WINDOW)

    def request(self, texts: int) -> None:
        self.requests += 1
        self.texts += texts

    def failed(self, exc: BaseException) -> None:
        """A request ended without its vectors: by error, timeout, overload or cancel."""
        if isinstance(exc, asyncio.CancelledError):
            self.cancelled += 1
            return
        self.errors += 1
        if isinstance(exc, RequestTimeout):
            self.timeouts += 1
        elif isinstance(exc, Overloaded):
            self.overloaded += 1

    def record_batch(self, size: int, tokens: int, longest: int, seconds: float) -> None:
        self.batches += 1
        self.batched_texts += size
        self.tokens += tokens
        self.padded_tokens += size * longest
        self.run_seconds += seconds

    def record_latency(self, ms: float) -> None:
        self.latencies.append(ms)

    def snapshot(self, queue_depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name) for name in COUNTERS}
        out["avg_batch_size"] = round(self.batched_texts / self.batches, 2) if self.batches else 0
        out["run_seconds"] = round(self.run_seconds, 3)
        out["queue_depth"] = queue_depth
        out["latency_ms"] = percentiles(list(self.latencies))
        return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    p = np.percentile(np.asarray(values, dtype=np.float64), [50, 95, 99])
    return {"p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3),
            "p99": round(float(p[2]), 3)}


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.models: dict[str, ModelStats] = {}
        self.connections_open = 0  # connections open now
        self.connections_opened = 0  # connections accepted since the start
        self.bad_frames = 0

    def model(self, uri: str) -> ModelStats:
        stats = self.models.get(uri)
        if stats is None:
            stats = self.models[uri] = ModelStats()
        return stats

    def connection_opened(self) -> None:
        self.connections_open += 1
        self.connections_opened += 1

    def connection_closed(self) -> None:
        self.connections_open -= 1

    def uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def snapshot(self, queue_depths: dict[str, int]) -> dict[str, Any]:
        """The STATS reply: per model, totals, uptime, resident memory and the C heap."""
        models = {uri: s.snapshot(queue_depths.get(uri, 0)) for uri, s in self.models.items()}
        totals: dict[str, Any] = {name: sum(m[name] for m in models.values())
                                  for name in COUNTERS}
        totals["run_seconds"] = round(totals["run_seconds"], 3)
        batches = totals["batches"]
        totals["avg_batch_size"] = round(totals["batched_texts"] / batches, 2) if batches else 0
        totals["queue_depth"] = sum(queue_depths.values())
        merged: list[float] = []
        for s in self.models.values():
            merged.extend(s.latencies)
        totals["latency_ms"] = percentiles(merged)
        return {"uptime_s": self.uptime(), "rss_bytes": rss_bytes(), **heap_bytes(),
                "connections_open": self.connections_open,
                "connections_opened": self.connections_opened, "bad_frames": self.bad_frames,
                "models": models, "totals": totals}


def rss_bytes() -> int:
    try:
        import psutil  # noqa: PLC0415 - optional at import time

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - stats must never fail a request
        return 0


def heap_bytes() -> dict[str, int]:
    """What is allocated now, as leak witnesses sharper than RSS: ``heap_in_use_bytes``
    (glibc's malloc: allocated and not freed, mapped chunks included), ``heap_free_bytes``
    (freed but kept by it) and ``python_blocks`` (Python's small-object allocator, which
    takes its arenas outside malloc).

    RSS keeps memory that was freed but not given back, so a small leak can hide in it for
    a long time; these show it at once. The malloc figures are left out without glibc.
    """
    return {"python_blocks": sys.getallocatedblocks(), **heap.malloc_bytes()}
