"""The SQL paths: bulk UPDATEs, single-query latency, backend memory, binary COPY.

Everything goes through psycopg with the libpq environment written by
``make up`` (``. .run/env``). The embedding column is ``vector(384)`` as in the
Azure examples (``real[]`` when pgvector is missing).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from benchmarks.common import MODEL_URI, percentiles, proc_memory, say

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


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


def copy_vectors(conn: psycopg.Connection, table: str, ids: Sequence[int],
                 docs: Sequence[str], vecs: np.ndarray) -> None:
    """Binary COPY of (id, doc, embedding) rows; pgvector's binary format is built in numpy.

    This is what an efficient application does after embedding in-process
    (pgvector-python's binary COPY sends the same bytes).
    """
    conn.execute(f"TRUNCATE {table}")
    vec_type = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = 'embedding'", (table,)).fetchone()
    is_vector = bool(vec_type and vec_type[0].startswith("vector"))
    dim = vecs.shape[1]
    be = vecs.astype(">f4")
    with conn.cursor() as cur, cur.copy(f"COPY {table} (id, doc, embedding) FROM STDIN "
                                        "WITH (FORMAT binary)") as cp:
        buf = bytearray(_COPY_HEADER)
        for i, (rid, doc) in enumerate(zip(ids, docs, strict=True)):
            d = doc.encode("utf-8")
            buf += struct.pack(">hii", 3, 4, rid)
            buf += struct.pack(">i", len(d)) + d
            if is_vector:
                buf += struct.pack(">ihh", 4 + 4 * dim, dim, 0)
            else:  # real[]: ndim, hasnull, elemtype float4 (700), dim, lower bound
                buf += struct.pack(">iiiiii", 20 + 8 * dim, 1, 0, 700, dim, 1)
                elems = np.empty(dim, dtype=[("len", ">i4"), ("val", ">f4")])
                elems["len"] = 4
                elems["val"] = vecs[i]
                buf += elems.tobytes()
                if len(buf) > 1 << 20:
                    cp.write(bytes(buf))
                    buf.clear()
                continue
            buf += be[i].tobytes()
            if len(buf) > 1 << 20:
                cp.write(bytes(buf))
                buf.clear()
        buf += struct.pack(">h", -1)
        cp.write(bytes(buf))
