"""The parts that need the cluster and the runtime started by ``make up``."""

from __future__ import annotations

from typing import Any

from benchmarks import pgbench, runtime, sql
from benchmarks.common import MODEL_URI, proc_memory, say
from pglocalai.client import Client


def check_ready() -> dict[str, Any]:
    """Server, extension and runtime reachable; raises with the reason otherwise."""
    with sql.connect() as conn:
        info = sql.server_info(conn)
        if "azure_local_ai" not in info["extensions"]:
            raise RuntimeError("extension azure_local_ai is not installed in the database")
        conn.execute(sql.SINGLE_SQL, (MODEL_URI, "warm-up")).fetchone()
    with Client(runtime.socket_path()) as c:
        info["runtime_health"] = c.health()
        info["runtime_settings"] = c.get_settings()
    return info


def postmaster_pid() -> int | None:
    """The cluster's postmaster, from postmaster.pid in its data directory."""
    try:
        with sql.connect() as conn:
            row = conn.execute("SHOW data_directory").fetchone()
        with open(f"{row[0]}/postmaster.pid", encoding="ascii") as f:  # type: ignore[index]
            return int(f.readline())
    except Exception:  # noqa: BLE001 - without it the CPU split just lacks PostgreSQL
        return None


def run_all(b: Any, passages: list[str], queries: list[str], levels: list[int]) -> None:
    s = b.sizes
    n, rows, f = len(passages), min(s["rows"], len(passages)), s["fidelity"]
    with sql.connect() as conn:
        say(f"loading {n} passages into {sql.DOCS}")
        sql.setup_tables(conn, passages)

    def rt_bulk() -> None:
        say(f"runtime alone: embed_stream of {n} passages in chunks of 128")
        vecs, info = runtime.bulk(passages)
        b.r["throughput"]["runtime_bulk"] = info
        b.vectors["runtime_bulk"] = vecs[:f]
        say(f"runtime alone: {info['texts_per_s']:.0f} texts/s")

    def bulk_array() -> None:
        say(f"SQL bulk, array overload in UPDATE … FROM: {n} rows")
        with sql.connect() as conn:
            before = runtime.stats()
            info = sql.bulk_array(conn, n)
            info["runtime"] = runtime.delta(before, runtime.stats())
            b.vectors["sql_bulk_array"] = sql.read_vectors(conn, sql.DOCS, f)
        b.r["throughput"]["sql_bulk_array"] = info
        say(f"SQL bulk array: {info['texts_per_s']:.0f} texts/s")

    def bulk_rows() -> None:
        say(f"SQL bulk, row by row UPDATE … SET embedding = create_embeddings(doc): {rows} rows")
        with sql.connect() as conn:
            before = runtime.stats()
            info = sql.bulk_rows(conn, rows)
            info["runtime"] = runtime.delta(before, runtime.stats())
            b.vectors["sql_bulk_rows"] = sql.read_vectors(conn, sql.DOCS, min(f, rows))
        b.r["throughput"]["sql_bulk_rows"] = info
        say(f"SQL row by row: {info['texts_per_s']:.0f} texts/s")

    def single() -> None:
        say(f"single query latency: {len(queries)} prepared SELECT create_embeddings(…)")
        b.r["single"]["sql"] = sql.single_query(queries)
        say(f"SQL single: p50 {b.r['single']['sql']['p50_ms']:.2f} ms")

    def rt_single() -> None:
        b.r["single"]["runtime"] = runtime.single(queries)
        say(f"runtime single: p50 {b.r['single']['runtime']['p50_ms']:.2f} ms")

    def conc() -> None:
        say(f"concurrency with pgbench: {levels} sessions, {s['pgbench_s']} s each")
        b.r["concurrency"] = pgbench.concurrency(levels, s["pgbench_s"], n, b.meter)

    def memory() -> None:
        b.r["memory"]["backend"] = sql.backend_memory(passages)
        pid = runtime.runtime_pid()
        live: dict[str, Any] = {"pid_found": pid is not None}
        if pid is not None:
            live.update(proc_memory(pid))
        st = runtime.stats()
        if "rss_bytes" in st:
            live["stats_rss_mib"] = st["rss_bytes"] / 2**20
        b.r["memory"]["runtime_live"] = live

    b.step("runtime bulk", rt_bulk)
    b.step("SQL bulk array", bulk_array)
    b.step("SQL bulk rows", bulk_rows)
    b.step("single query", single)
    b.step("runtime single", rt_single)
    b.step("concurrency", conc)
    b.step("memory", memory)


def cleanup() -> None:
    """Drop the benchmark's tables: the private cluster is shared with the demo and tests."""
    with sql.connect() as conn:
        for t in (sql.DOCS, sql.APP):
            conn.execute(f"DROP TABLE IF EXISTS {t}")
