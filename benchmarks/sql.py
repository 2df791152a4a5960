"""The SQL paths: bulk UPDATEs (array overload, row by row), single-query latency and
backend memory, on the cluster and runtime that `make up` started.

Everything goes through psycopg with the libpq environment of ``.run/env``. The
embedding column is ``vector(384)`` as in the Azure examples (``real[]`` when pgvector
is missing). Concurrency is measured by ``pgbench``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from benchmarks import runtime
from benchmarks.common import MODEL_URI, percentiles, proc_memory, say
from pglocalai.client import Client

DOCS = "bench_docs"
APP = "bench_app_docs"
FN = "azure_local_ai.create_embeddings"

BULK_ARRAY_SQL = f"""
UPDATE {DOCS} d SET embedding = e.embedding::vector
FROM (SELECT ({FN}(%(model)s, array_agg(doc ORDER BY id), array_agg(id ORDER BY id))).*
      FROM {DOCS} WHERE id <= %(n)s) e
WHERE d.id = e.id
"""
ROW_SQL = f"UPDATE {DOCS} SET embedding = {FN}(%(model)s, doc)::vector WHERE id <= %(n)s"
SINGLE_SQL = f"SELECT {FN}(%s, %s)"


def connect() -> psycopg.Connection:
    return psycopg.connect(autocommit=True)


def server_info(conn: psycopg.Connection) -> dict[str, Any]:
    row = conn.execute("SELECT version(), current_setting('server_version')").fetchone()
    exts = dict(conn.execute("SELECT extname, extversion FROM pg_extension").fetchall())
    assert row is not None
    return {"version": row[0], "server_version": row[1], "extensions": exts}


def has_extension(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_extension WHERE extname = %s", (name,)).fetchone() \
        is not None


def setup_tables(conn: psycopg.Connection, passages: Sequence[str]) -> None:
    """(Re)create the docs table with the passages (ids from 1) and an empty app table."""
    vec = "vector(384)" if has_extension(conn, "vector") else "real[]"
    for t in (DOCS, APP):
        conn.execute(f"DROP TABLE IF EXISTS {t}")
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, doc text NOT NULL, "
                     f"embedding {vec})")
    with conn.cursor() as cur, cur.copy(f"COPY {DOCS} (id, doc) FROM STDIN") as cp:
        for i, text in enumerate(passages, start=1):
            cp.write_row((i, text))
    conn.execute(f"VACUUM ANALYZE {DOCS}")


def runtime_texts(conn: psycopg.Connection) -> int | None:
    """Texts embedded so far by the runtime (all models), from runtime_stats(), if available."""
    try:
        stats = conn.execute("SELECT azure_local_ai.runtime_stats()").fetchone()
    except psycopg.Error:
        return None
    if not stats or not isinstance(stats[0], dict):
        return None
    return _find_texts(stats[0])


def _find_texts(stats: dict[str, Any]) -> int | None:
    for key in ("texts", "texts_total"):
        if isinstance(stats.get(key), int):
            return int(stats[key])
    models = stats.get("models")
    if isinstance(models, dict):
        total = [_find_texts(m) for m in models.values() if isinstance(m, dict)]
        if total and all(t is not None for t in total):
            return int(sum(t for t in total if t is not None))
    return None


def _timed_update(conn: psycopg.Connection, sql: str, n: int) -> dict[str, Any]:
    conn.execute(f"UPDATE {DOCS} SET embedding = NULL WHERE embedding IS NOT NULL")
    conn.execute(f"VACUUM {DOCS}")
    before = runtime_texts(conn)
    t0 = time.perf_counter()
    cur = conn.execute(sql, {"model": MODEL_URI, "n": n})
    seconds = time.perf_counter() - t0
    after = runtime_texts(conn)
    out: dict[str, Any] = {"texts": n, "rows_updated": cur.rowcount, "seconds": seconds,
                           "texts_per_s": n / seconds}
    if before is not None and after is not None:
        # > 1 would mean the function ran more than once per text, e.g. (f()).* expanded
        out["runtime_texts_per_input"] = (after - before) / n
    return out


def bulk_array(conn: psycopg.Connection, n: int) -> dict[str, Any]:
    """Array overload with ids, joined back in one UPDATE … FROM."""
    res = _timed_update(conn, BULK_ARRAY_SQL, n)
    res["sql"] = " ".join(BULK_ARRAY_SQL.split())
    return res


def bulk_rows(conn: psycopg.Connection, n: int) -> dict[str, Any]:
    """Text overload called once per row."""
    res = _timed_update(conn, ROW_SQL, n)
    res["sql"] = ROW_SQL
    return res


def read_vectors(conn: psycopg.Connection, table: str, n: int) -> np.ndarray:
    """Embeddings of ids 1..n in id order, [n, 384] float32."""
    rows = conn.execute(f"SELECT embedding::real[] FROM {table} WHERE id <= %s ORDER BY id",
                        (n,), binary=True).fetchall()
    return np.asarray([r[0] for r in rows], dtype=np.float32)


def single_query(queries: Sequence[str], warmup: int = 20) -> dict[str, Any]:
    """Latency of ``SELECT create_embeddings(model, text)``: prepared, binary, new text each."""
    with connect() as conn:
        for q in queries[:warmup]:
            conn.execute(SINGLE_SQL, (MODEL_URI, "warm-up " + q), prepare=True,
                         binary=True).fetchone()
        lat = []
        for q in queries:
            t = time.perf_counter()
            row = conn.execute(SINGLE_SQL, (MODEL_URI, q), prepare=True, binary=True).fetchone()
            lat.append(time.perf_counter() - t)
            assert row is not None and len(row[0]) == 384
    return {"calls": len(queries), "warmup": min(warmup, len(queries)), **percentiles(lat),
            "prepared": True,
            "sql": SINGLE_SQL.replace("%s", "$1", 1).replace("%s", "$2", 1)}


def backend_memory(sample_texts: Sequence[str]) -> dict[str, Any]:
    """RSS of a fresh backend before and after its first call, and after a 1,000-text array call."""
    with connect() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        pid = int(row[0])
        conn.execute("SELECT 1").fetchone()
        fresh = proc_memory(pid)
        conn.execute(SINGLE_SQL, (MODEL_URI, sample_texts[0])).fetchone()
        after_one = proc_memory(pid)
        texts = list(sample_texts[:1000])
        conn.execute(f"SELECT count(*) FROM {FN}(%s, %s::text[])", (MODEL_URI, texts)).fetchone()
        after_array = proc_memory(pid)
    say(f"backend {pid}: RSS {fresh['VmRSS_mib']:.1f} -> {after_one['VmRSS_mib']:.1f} -> "
        f"{after_array['VmRSS_mib']:.1f} MiB")
    return {"fresh": fresh, "after_first_call": after_one, "after_array_call": after_array,
            "array_texts": len(texts),
            "added_rss_mib": after_one["VmRSS_mib"] - fresh["VmRSS_mib"],
            "added_rss_anon_mib": after_one.get("RssAnon_mib", 0) - fresh.get("RssAnon_mib", 0),
            "added_rss_after_array_mib": after_array["VmRSS_mib"] - fresh["VmRSS_mib"]}


def check_ready() -> dict[str, Any]:
    """Server, extension and runtime reachable; raises with the reason otherwise."""
    with connect() as conn:
        info = server_info(conn)
        if "azure_local_ai" not in info["extensions"]:
            raise RuntimeError("extension azure_local_ai is not installed in the database")
        conn.execute(SINGLE_SQL, (MODEL_URI, "warm-up")).fetchone()
    with Client(runtime.socket_path()) as c:
        info["runtime_health"] = c.health()
        info["runtime_settings"] = c.get_settings()
    return info


def postmaster_pid() -> int | None:
    """The cluster's postmaster, from postmaster.pid in its data directory."""
    try:
        with connect() as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        with open(f"{row[0]}/postmaster.pid", encoding="ascii") as f:  # type: ignore[index]
            return int(f.readline())
    except Exception:  # noqa: BLE001 - without it the CPU split just lacks PostgreSQL
        return None


def run_all(b: Any, passages: list[str], queries: list[str]) -> None:
    """The SQL parts of ``make bench``: the tables loaded, then each path in turn."""
    n, rows, f = len(passages), min(b.sizes["rows"], len(passages)), b.sizes["fidelity"]
    with connect() as conn:
        say(f"loading {n} passages into {DOCS}")
        setup_tables(conn, passages)

    def update(name: str, key: str, fn: Any, count: int) -> None:
        with connect() as conn:
            before = runtime.stats()
            info = fn(conn, count)
            info["runtime"] = runtime.delta(before, runtime.stats())
            b.vectors[key] = read_vectors(conn, DOCS, min(f, count))
        b.r["throughput"][key] = info
        say(f"{name}: {info['texts_per_s']:.0f} texts/s")

    def single() -> None:
        say(f"single query latency: {len(queries)} prepared SELECT create_embeddings(…)")
        b.r["single"]["sql"] = single_query(queries)
        say(f"SQL single: p50 {b.r['single']['sql']['p50_ms']:.2f} ms")

    say(f"SQL bulk: array overload in UPDATE … FROM ({n} rows), then row by row ({rows} rows)")
    b.step("SQL bulk array", lambda: update("SQL bulk array", "sql_bulk_array", bulk_array, n))
    b.step("SQL bulk rows", lambda: update("SQL row by row", "sql_bulk_rows", bulk_rows, rows))
    b.step("single query", single)


def cleanup() -> None:
    """Drop the benchmark's tables: the private cluster is shared with the demo and tests."""
    with connect() as conn:
        for t in (DOCS, APP):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
