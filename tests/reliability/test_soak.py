"""Load soak: 16 sessions of mixed calls against the cluster and runtime `make up` started.

Zero errors, the runtime's memory flat after a warm-up (growth under 5%), and no file
descriptor left behind once the sessions are gone. The duration is
``PGLOCALAI_SOAK_SECONDS`` (default 120). The soak only reads from the shared runtime:
embeddings of the default model, token counts, settings and the model list.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from typing import Any

import numpy as np
import psutil
import psycopg
import pytest
from support import E5, ROOT, connect, mib, wait_until

from pglocalai.client import Client

pytestmark = pytest.mark.pg

SOAK_SECONDS = float(os.environ.get("PGLOCALAI_SOAK_SECONDS", "120"))
SESSIONS = 16
WARMUP_SECONDS = max(10.0, 0.15 * SOAK_SECONDS)
RSS_GROWTH = 0.05
FD_SLACK = 4  # other clients of the shared runtime may hold a few connections meanwhile
DATA = ROOT / "tests" / "data" / "multilingual.json"


def texts() -> list[str]:
    pool = [t["text"] for t in json.loads(DATA.read_text(encoding="utf-8"))["texts"]]
    # the longest shapes early, so that the warm-up sees them: a text over 512 tokens
    return pool + ["", "🙂", " ".join(pool)[:6000]]


CALLS = (  # (kind, weight)
    ("text", 35), ("array", 15), ("ids", 10), ("token_count", 15), ("get_setting", 15),
    ("list_models", 10))


def one_call(conn: psycopg.Connection[Any], rng: random.Random, pool: list[str],
             kind: str) -> int:
    """Run one call of ``kind``, check its result; returns the texts it embedded."""
    if kind == "text":
        vec = conn.execute("SELECT azure_local_ai.create_embeddings(%s, %s)",
                           (E5, rng.choice(pool))).fetchone()[0]
        assert len(vec) == 384
        return 1
    if kind in ("array", "ids"):
        batch: list[str | None] = [rng.choice(pool) for _ in range(rng.randrange(1, 33))]
        if rng.random() < 0.2:
            batch[rng.randrange(len(batch))] = None
        if kind == "ids":
            rows = conn.execute(
                "SELECT id, embedding FROM azure_local_ai.create_embeddings(%s, %s::text[],"
                " %s::int[], batch_size => %s)",
                (E5, batch, list(range(len(batch))), rng.choice([1, 8, 128]))).fetchall()
            assert [r[0] for r in rows] == list(range(len(batch)))
        else:
            rows = conn.execute("SELECT embedding FROM azure_local_ai.create_embeddings(%s,"
                                " %s::text[], batch_size => %s)",
                                (E5, batch, rng.choice([4, 128]))).fetchall()
        assert [r[-1] is None for r in rows] == [t is None for t in batch]
        return sum(t is not None for t in batch)
    if kind == "token_count":
        count = conn.execute("SELECT azure_local_ai.token_count(%s, %s)",
                             (E5, rng.choice(pool))).fetchone()[0]
        assert count >= 2
    elif kind == "get_setting":
        settings = conn.execute("SELECT azure_local_ai.get_setting()").fetchone()[0]
        assert set(settings) == {"intra_op_parallelism", "inter_op_parallelism", "spin_control"}
    else:
        models = [r[0] for r in conn.execute("SELECT model_uri FROM azure_local_ai.list_models()")]
        assert E5 in models
    return 0


class Session(threading.Thread):
    def __init__(self, params: dict[str, str], seed: int, deadline: float) -> None:
        super().__init__(daemon=True)
        self.params, self.rng, self.deadline = params, random.Random(seed), deadline
        self.calls: dict[str, int] = {kind: 0 for kind, _ in CALLS}
        self.texts = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        pool = texts()
        kinds, weights = zip(*CALLS, strict=True)
        try:
            with connect(self.params) as conn:
                while time.monotonic() < self.deadline:
                    kind = self.rng.choices(kinds, weights)[0]
                    started = time.perf_counter()
                    try:
                        self.texts += one_call(conn, self.rng, pool, kind)
                        self.calls[kind] += 1
                    except (psycopg.Error, AssertionError) as exc:
                        self.errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                        if len(self.errors) > 20:
                            return
                    self.latencies.append(time.perf_counter() - started)
        except psycopg.Error as exc:
            self.errors.append(f"session: {exc}")


def test_soak_of_16_sessions(pg_db: dict[str, str], deployed_socket: str,
                            figures: dict[str, Any]) -> None:
    socket_path = deployed_socket
    with Client(socket_path) as client:
        runtime = psutil.Process(int(client.health()["pid"]))
    fds_before = runtime.num_fds()
    started = time.monotonic()
    deadline = started + SOAK_SECONDS
    sessions = [Session(pg_db, seed, deadline) for seed in range(SESSIONS)]
    for s in sessions:
        s.start()
    time.sleep(max(0.0, started + WARMUP_SECONDS - time.monotonic()))
    rss_warm = runtime.memory_info().rss
    fds_peak = runtime.num_fds()
    for s in sessions:
        while s.is_alive():
            s.join(1.0)
            fds_peak = max(fds_peak, runtime.num_fds())
    rss_end = runtime.memory_info().rss
    elapsed = time.monotonic() - started
    wait_until(lambda: runtime.num_fds() <= fds_before + FD_SLACK, 30,
               "the runtime's file descriptors back to where they were")
    fds_after = runtime.num_fds()

    errors = [e for s in sessions for e in s.errors]
    calls = {kind: sum(s.calls[kind] for s in sessions) for kind, _ in CALLS}
    latencies = np.asarray([x for s in sessions for x in s.latencies]) * 1000
    growth = rss_end - rss_warm
    figures["soak"] = {
        "sessions": SESSIONS, "seconds": round(elapsed, 1), "warmup_seconds": WARMUP_SECONDS,
        "requests": int(sum(calls.values())), "by_kind": calls, "errors": len(errors),
        "texts_embedded": sum(s.texts for s in sessions),
        "call_ms_p50": round(float(np.percentile(latencies, 50)), 1),
        "call_ms_p99": round(float(np.percentile(latencies, 99)), 1),
        "runtime_rss_mib_after_warmup": round(rss_warm / 2**20, 1),
        "runtime_rss_mib_end": round(rss_end / 2**20, 1),
        "runtime_rss_growth_pct": round(100 * growth / rss_warm, 2),
        "runtime_fds_before": fds_before, "runtime_fds_peak": fds_peak,
        "runtime_fds_after": fds_after, "runtime_pid": runtime.pid}
    assert runtime.is_running()
    assert errors == [], errors[:5]
    assert all(calls.values()), calls  # every kind of call ran
    assert growth < RSS_GROWTH * rss_warm, (
        f"runtime rss grew by {mib(growth)} after the warm-up (from {mib(rss_warm)})")
