"""azure_local_ai inside the real PostgreSQL server started by `make up` (psycopg).

What pg_regress (extension/test) cannot show: statement_timeout and pg_cancel_backend
stopping a call that waits for the runtime, parallel queries, a runtime restart under a
live session, and the bootstrap's refusals. The sessions run in the throwaway database
of the ``pg_db`` fixture (tests/conftest.py).

Some tests start runtimes of their own (fake engine, optionally slow) and point a
session at them with SET azure_local_ai.runtime_socket.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg import errors as pgerrors
from support import (
    E5,
    Runtime,
    connect,
    extension_version,
    install_package,
    private_dir,
    wait_until,
)

pytestmark = pytest.mark.pg

SLOW_MS = 10_000  # how long the slow runtime takes per batch: far beyond every bound below
# A cancel is acted on within one 50 ms poll; the bound leaves room for a loaded machine.
CANCEL_BOUND_S = 1.0


def use_runtime(conn: psycopg.Connection[Any], socket: str) -> None:
    conn.execute("SELECT set_config('azure_local_ai.runtime_socket', %s, false)", (socket,))


def use_python_lib_dir(conn: psycopg.Connection[Any], lib: Path) -> None:
    conn.execute("SELECT set_config('azure_local_ai.python_lib_dir', %s, false)", (str(lib),))


@pytest.fixture(scope="module")
def slow_runtime() -> Iterator[Runtime]:
    """A fake runtime of our own that takes SLOW_MS per text (tests using it: mark runtime)."""
    with Runtime(delay_ms=SLOW_MS, max_batch_size=1, socket_owner="postgres") as rt:
        yield rt


SLOW_CALLS = {
    "text": "SELECT azure_local_ai.create_embeddings(%s, 'a slow text')",
    "array": "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, ARRAY['a', 'b'])",
    "ids": "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], ARRAY[7])",
}


# -- cancel and statement_timeout -----------------------------------------------------------------


@pytest.mark.runtime
@pytest.mark.parametrize("call", sorted(SLOW_CALLS))
def test_statement_timeout_stops_a_waiting_call(pg_db: dict[str, str], slow_runtime: Runtime,
                                                call: str) -> None:
    with connect(pg_db) as conn:
        use_runtime(conn, slow_runtime.socket)
        conn.execute("SET statement_timeout = '300ms'")
        start = time.monotonic()
        with pytest.raises(pgerrors.QueryCanceled, match="statement timeout"):
            conn.execute(SLOW_CALLS[call], (E5,))
        assert time.monotonic() - start < 0.3 + CANCEL_BOUND_S
        conn.execute("RESET statement_timeout")
        conn.execute("RESET azure_local_ai.runtime_socket")
        # the session goes on: the next call reaches the default runtime
        row = conn.execute("SELECT array_length(azure_local_ai.create_embeddings(%s, 'next'), 1)",
                           (E5,)).fetchone()
        assert row == (384,)


@pytest.mark.runtime
@pytest.mark.parametrize("call", sorted(SLOW_CALLS))
def test_pg_cancel_backend_stops_a_waiting_call(pg_db: dict[str, str], slow_runtime: Runtime,
                                                call: str) -> None:
    outcome: dict[str, Any] = {}
    with connect(pg_db) as conn, connect(pg_db) as other:
        use_runtime(conn, slow_runtime.socket)
        pid = conn.info.backend_pid

        def run() -> None:
            try:
                conn.execute(SLOW_CALLS[call], (E5,))
            except psycopg.Error as exc:
                outcome["error"], outcome["at"] = exc, time.monotonic()

        worker = threading.Thread(target=run)
        worker.start()
        wait_until(lambda: other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND state = 'active'"
            " AND query LIKE %s", (pid, "%create_embeddings%")).fetchone() == (1,))
        time.sleep(0.2)  # let it settle into waiting for the runtime
        cancelled_at = time.monotonic()
        assert other.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone() == (True,)
        worker.join(SLOW_MS / 1000)
        assert isinstance(outcome.get("error"), pgerrors.QueryCanceled)
        assert "user request" in str(outcome["error"])
        assert outcome["at"] - cancelled_at < CANCEL_BOUND_S
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.runtime
def test_statement_timeout_stops_a_parallel_query(pg_db: dict[str, str],
                                                  slow_runtime: Runtime) -> None:
    with connect(pg_db) as conn, parallel_table(conn, 200) as table:
        force_parallel(conn)
        use_runtime(conn, slow_runtime.socket)
        query = f"SELECT count(azure_local_ai.create_embeddings(%s, body)) FROM {table}"
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + query, (E5,)))
        assert "Gather" in plan and "Workers Planned" in plan
        conn.execute("SET statement_timeout = '300ms'")
        start = time.monotonic()
        with pytest.raises(pgerrors.QueryCanceled):
            conn.execute(query, (E5,))
        assert time.monotonic() - start < 0.3 + CANCEL_BOUND_S


# -- parallel queries -----------------------------------------------------------------------------


def test_parallel_query_gives_the_serial_result(pg_db: dict[str, str]) -> None:
    with connect(pg_db) as conn, parallel_table(conn, 60) as table:
        query = (f"SELECT id, azure_local_ai.create_embeddings(%s, body) FROM {table}"
                 " WHERE id %% 2 = 0")
        serial = dict(conn.execute(query, (E5,)).fetchall())
        force_parallel(conn)
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN VERBOSE " + query, (E5,)))
        # the embedding is computed in the workers, below the Gather
        workers_part = plan.split("Gather", 1)[1]
        assert "Workers Planned" in plan and "create_embeddings" in workers_part
        parallel = dict(conn.execute(query, (E5,)).fetchall())
    assert parallel.keys() == serial.keys() and len(serial) == 30
    for key, vec in serial.items():
        assert cosine(vec, parallel[key]) >= 0.99999


class parallel_table:  # noqa: N801 - used as a context manager, like a function
    """A plain table (temporary tables are never scanned in parallel), dropped afterwards."""

    def __init__(self, conn: psycopg.Connection[Any], rows: int) -> None:
        self.conn, self.rows = conn, rows
        self.name = f"pytest_parallel_{os.getpid()}_{rows}"

    def __enter__(self) -> str:
        self.conn.execute(f"DROP TABLE IF EXISTS {self.name}")
        self.conn.execute(f"CREATE TABLE {self.name} AS SELECT g AS id,"
                          f" 'parallel text number ' || g AS body"
                          f" FROM generate_series(1, {self.rows}) g")
        self.conn.execute(f"ANALYZE {self.name}")
        return self.name

    def __exit__(self, *exc: object) -> None:
        self.conn.execute("RESET ALL")
        self.conn.execute(f"DROP TABLE IF EXISTS {self.name}")


def force_parallel(conn: psycopg.Connection[Any]) -> None:
    for setting in ("parallel_setup_cost = 0", "parallel_tuple_cost = 0",
                    "min_parallel_table_scan_size = 0", "max_parallel_workers_per_gather = 2"):
        conn.execute(f"SET {setting}")


# -- the same vectors by every path ---------------------------------------------------------------

TEXTS = ["How do I create embeddings in PostgreSQL?", "Der Zug nach Berlin fährt um acht Uhr.",
         "東京は日本の首都です。", "", "🙂 emoji", "Привет, как дела?", "a " * 600]


def test_text_and_array_overloads_give_the_same_vectors(pg_db: dict[str, str]) -> None:
    with connect(pg_db) as conn:
        singles = [conn.execute("SELECT azure_local_ai.create_embeddings(%s, %s)",
                                (E5, t)).fetchone()[0] for t in TEXTS]
        for batch_size in (1, 3, 128):
            rows = conn.execute(
                "SELECT e.id, e.embedding FROM azure_local_ai.create_embeddings(%s, %s, %s,"
                " batch_size => %s) AS e", (E5, TEXTS, list(range(len(TEXTS))), batch_size)
            ).fetchall()
            assert [r[0] for r in rows] == list(range(len(TEXTS)))
            for single, (_, vec) in zip(singles, rows, strict=True):
                assert len(vec) == 384 and cosine(single, vec) >= 0.99999


def test_azure_batch_update_and_similarity_query(pg_db: dict[str, str]) -> None:
    with connect(pg_db) as conn, conn.transaction(force_rollback=True):
        conn.execute("CREATE TEMP TABLE docs (doc_id int PRIMARY KEY, doc text, embedding real[])")
        conn.execute("INSERT INTO docs (doc_id, doc) VALUES"
                     " (1, 'The azure_local_ai extension creates embeddings inside PostgreSQL.'),"
                     " (2, 'Bake the bread for forty minutes.'),"
                     " (3, 'Heavy rain is expected tomorrow.')")
        conn.execute("""
            WITH docs_with_ids AS (
              SELECT (azure_local_ai.create_embeddings('multilingual-e5-small:v1', array_agg(doc), array_agg(doc_id))).* FROM docs)
            UPDATE docs SET embedding = docs_with_ids.embedding FROM docs_with_ids WHERE docs.doc_id = docs_with_ids.id""")  # noqa: E501 - verbatim
        best = conn.execute("""
            SELECT doc_id, 1 - (embedding::vector <=> azure_local_ai.create_embeddings('multilingual-e5-small:v1', 'How do I make embeddings in Postgres?')::vector) AS similarity
              FROM docs ORDER BY similarity DESC LIMIT 2""").fetchall()  # noqa: E501 - verbatim
        assert best[0][0] == 1 and best[0][1] > best[1][1]


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "args", "sqlstate", "message", "hint"), [
    ("SELECT azure_local_ai.create_embeddings(%s, 'x')", ("no-such:v1",), "22023",
     'model "no-such:v1" is not installed', E5),
    ("SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], batch_size => 0)", (E5,),
     "22023", "batch_size must be at least 1", None),
    ("SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], ARRAY[1, 2])", (E5,),
     "22023", "inputs and ids must have the same length", "one id per input"),
    ("SELECT azure_local_ai.create_embeddings(%s, 'x', -5)", (E5,), "22023",
     "timeout_ms must not be negative", "0 for no limit"),
])
def test_errors_keep_sqlstate_message_and_hint(pg_db: dict[str, str], query: str,
                                               args: tuple[str], sqlstate: str, message: str,
                                               hint: str | None) -> None:
    with connect(pg_db) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(query, args)
    diag = info.value.diag
    assert diag.sqlstate == sqlstate and diag.message_primary == message
    if hint:
        assert hint in (diag.message_hint or "")


@pytest.mark.runtime
def test_runtime_timeout_and_unreachable_runtime(pg_db: dict[str, str],
                                                 slow_runtime: Runtime) -> None:
    with connect(pg_db) as conn:
        use_runtime(conn, slow_runtime.socket)
        with pytest.raises(pgerrors.QueryCanceled) as info:
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'x', 200)", (E5,))
        assert "timed out" in (info.value.diag.message_primary or "")
        use_runtime(conn, "/nonexistent/pglocalai.sock")
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'x')", (E5,))
        assert info.value.diag.sqlstate == "08001"
        assert "pglocalai serve" in (info.value.diag.message_hint or "")


@pytest.mark.runtime
def test_a_restarted_runtime_serves_the_same_session(pg_db: dict[str, str]) -> None:
    with Runtime(max_batch_size=1, socket_owner="postgres") as rt, connect(pg_db) as conn:
        use_runtime(conn, rt.socket)
        text_call = "SELECT array_length(azure_local_ai.create_embeddings(%s, 'x'), 1)"
        array_call = "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, ARRAY['a'])"
        assert conn.execute(text_call, (E5,)).fetchone() == (384,)
        rt.stop()
        with pytest.raises(psycopg.Error) as info:
            conn.execute(text_call, (E5,))
        assert info.value.diag.sqlstate == "08001"
        rt.start()
        assert conn.execute(text_call, (E5,)).fetchone() == (384,)
        rt.stop()
        rt.start()
        assert conn.execute(array_call, (E5,)).fetchone() == (1,)


def test_sockets_other_users_could_swap_are_refused(pg_db: dict[str, str]) -> None:
    shared = Path(tempfile.mkdtemp(prefix="pglocalai-shared-", dir="/tmp"))
    try:
        shared.chmod(0o777)
        with connect(pg_db) as conn:
            use_runtime(conn, str(shared / "s.sock"))
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'x')", (E5,))
        assert info.value.diag.sqlstate == "42501"
        assert "writable by every user" in (info.value.diag.message_detail or "")
    finally:
        shutil.rmtree(shared)


# -- loading the Python package -------------------------------------------------------------------


def package_copy(version: str, package_version: str) -> Path:
    """A copy of the server-side package, as `make install-ext` lays it out."""
    lib = private_dir("pglocalai-lib-")
    install_package(lib, version, package_version)
    return lib


def test_a_package_of_another_version_is_refused(pg_db: dict[str, str]) -> None:
    with connect(pg_db) as conn:
        version = extension_version(conn)
        lib = package_copy(version, "0.0.1")
        try:
            use_python_lib_dir(conn, lib)
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'x')", (E5,))
            diag = info.value.diag
            assert diag.sqlstate == "58000"
            assert diag.message_primary == (f"the pglocalai package 0.0.1 does not serve "
                                             f"version {version} of the extension")
        finally:
            shutil.rmtree(lib)


def test_a_plain_role_cannot_make_the_server_import_its_code(pg_db: dict[str, str]) -> None:
    role = f"regress_pglocalai_plain_{os.getpid()}"
    with connect(pg_db) as admin, connect(pg_db) as conn:
        version = extension_version(admin)
        lib = package_copy(version, version)
        (lib / version / "pglocalai" / "pg" / "functions.py").chmod(0o666)
        admin.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(f"SET ROLE {role}")
            use_python_lib_dir(conn, lib)
            with pytest.raises(psycopg.Error) as info:
                conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'x')", (E5,))
            assert info.value.diag.sqlstate == "42501"
            assert "writable by every user" in (info.value.diag.message_detail or "")
        finally:
            conn.execute("RESET ROLE")
            admin.execute(f"DROP ROLE {role}")
            shutil.rmtree(lib)


# -- helpers --------------------------------------------------------------------------------------


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))



def test_runtime_stats_name_the_engine_variant_and_cpu(pg_db: dict[str, str]) -> None:
    """A figure is read against the hardware and variant it came from: both are reported."""
    with connect(pg_db) as conn:
        conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'stats probe')", (E5,))
        stats = conn.execute("SELECT azure_local_ai.runtime_stats()").fetchone()[0]
        meta = conn.execute("SELECT azure_local_ai.model_metadata(%s)", (E5,)).fetchone()[0]
    model = stats["models"][E5]
    assert model["variant"] == meta["variant"]
    assert isinstance(model["wide_runs"], int)
    assert 0 <= model["solo_wide_runs"] <= model["wide_runs"]
    assert model.get("int8_exact") is (True if "int8" in meta["variant"] else None)
    assert model["engine"].split()[0] in ("onnxruntime", "openvino") and model["engine"].split()[1]
    assert model["variant_chosen_by"] in ("--variant", "the model's default_variant")
    engine = stats["engine"]
    assert engine["variant_asked"] in ("default", meta["variant"])
    flags = set(Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split())
    assert set(engine["cpu"]["flags"]) <= flags
    assert engine["cpu"]["bf16"] == bool({"avx512_bf16", "amx_bf16"} & flags)
    vnni = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    x86 = platform.machine() == "x86_64"
    assert engine["cpu"]["int8_kernel"] == (("u8s8-vnni" if vnni else "u8u8") if x86 else "native")
