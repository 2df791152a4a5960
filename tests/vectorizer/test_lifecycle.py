"""Upgrading from 1.0.0 keeps data; a dump restores without a runtime and the vectorizer
resumes where it was."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from psycopg import sql
from support import connect, create_database, database_name, drop_database, extension_version
from vectorizer_support import E5, TEXTS, conninfo, make_docs, max_difference, queued, status

import pglocalai
from pglocalai.vectorizer.report import Report
from pglocalai.vectorizer.worker import Options, Worker

pytestmark = [pytest.mark.pg, pytest.mark.model]
PG_BIN = Path("/usr/lib/postgresql") / os.environ.get("PGLOCALAI_PG_MAJOR", "15") / "bin"


def settle(params: dict[str, str], socket: str) -> None:
    """What the vec_db fixture does for its database: the runtime and the package folder."""
    with connect(params) as conn:
        for key, value in (("azure_local_ai.runtime_socket", socket),
                           ("azure_local_ai.python_lib_dir",
                            os.environ.get("PGLOCALAI_TEST_PYTHON_LIB_DIR"))):
            if value:
                conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(params["dbname"]), sql.Identifier(*key.split(".")),
                    sql.Literal(value)))


def work(params: dict[str, str], socket: str) -> None:
    opts = Options(dsn=conninfo(params), socket=socket, once=True, signals=False,
                   poll_interval=0.2)
    assert Worker(opts, Report(tty=False)).run() == 0


def test_update_from_1_0_0_keeps_the_data(make_db, deployed_socket) -> None:
    db = make_db(extension=False)
    settle(db, deployed_socket)
    with connect(db) as conn:
        conn.execute("CREATE EXTENSION azure_local_ai VERSION '1.0.0' CASCADE")
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, body text, "
                     "embedding real[] GENERATED ALWAYS AS "
                     "(azure_local_ai.create_embeddings('multilingual-e5-small:v1', body)) STORED)")
        conn.execute("INSERT INTO kept (id, body) SELECT g, %s || g FROM generate_series(1, 5) g",
                     (TEXTS[0],))
        before = conn.execute("SELECT id, embedding FROM kept ORDER BY id").fetchall()
        conn.execute("ALTER EXTENSION azure_local_ai UPDATE TO '1.1.0'")
        assert extension_version(conn) == "1.1.0"
        assert conn.execute("SELECT id, embedding FROM kept ORDER BY id").fetchall() == before
        conn.execute("INSERT INTO kept (id, body) VALUES (6, 'after the update')")
        conn.execute("CREATE TABLE newer (id int PRIMARY KEY, body text, embedding vector(384))")
        conn.execute("INSERT INTO newer VALUES (1, 'vectorized after the update', NULL)")
        vid = conn.execute("SELECT azure_local_ai.create_vectorizer('newer', 'body', "
                           "'embedding')").fetchone()[0]
    work(db, deployed_socket)
    with connect(db) as conn:
        assert status(conn, vid)["pending"] == 0
        assert max_difference(conn, "newer", prefix="") <= 1e-5


def run(*cmd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_a_dump_restores_without_a_runtime_and_the_vectorizer_resumes(
        pg_params, deployed_socket, tmp_path: Path) -> None:
    source = database_name("vec_dump")
    target = database_name("vec_restored")
    try:
        db = create_database(pg_params, source, extra=("vector",))
        with connect(db) as conn:
            if extension_version(conn) != pglocalai.EXTENSION_VERSIONS[-1]:
                conn.execute("ALTER EXTENSION azure_local_ai UPDATE")
        settle(db, deployed_socket)
        with connect(db) as conn:
            make_docs(conn, "saved", 12)
            vid = conn.execute("SELECT azure_local_ai.create_vectorizer('saved', 'body', "
                               "'embedding', prefix => 'passage: ')").fetchone()[0]
        work(db, deployed_socket)
        with connect(db) as conn:
            conn.execute("INSERT INTO saved (id, body) VALUES (13, 'queued at dump time'), "
                         "(14, repeat('x', 65 * 1024 * 1024))")
            conn.execute("UPDATE saved SET body = 'changed before the dump' WHERE id = 1")
            work(db, deployed_socket)  # 14 fails (too large): a failure row is dumped too
            conn.execute("INSERT INTO saved (id, body) VALUES (15, 'still queued')")
            vectors = conn.execute("SELECT id, embedding::text FROM saved ORDER BY id").fetchall()
            before = status(conn, vid)
        assert (before["pending"], before["failed"]) == (1, 1)
        dump = tmp_path / "saved.dump"
        env = {**os.environ, "PGHOST": pg_params["host"], "PGPORT": pg_params["port"],
               "PGUSER": pg_params["user"]}
        run(str(PG_BIN / "pg_dump"), "-Fc", "-f", str(dump), source, env=env)
        drop_database(pg_params, target)
        run(str(PG_BIN / "createdb"), target, env=env)
        only: list[str] = []
        with connect({**db, "dbname": target}) as conn:
            if conn.execute("SELECT default_version FROM pg_available_extensions "
                            "WHERE name = 'azure_local_ai'").fetchone()[0] \
                    != pglocalai.EXTENSION_VERSIONS[-1]:
                # pg_dump writes CREATE EXTENSION without a version: until 1.1.0 is the
                # default, create the version the dump needs first and restore the rest
                conn.execute("CREATE EXTENSION azure_local_ai VERSION '1.0.0' CASCADE")
                conn.execute("ALTER EXTENSION azure_local_ai UPDATE")
                entries = run(str(PG_BIN / "pg_restore"), "-l", str(dump)).stdout.splitlines()
                listing = tmp_path / "restore.list"
                listing.write_text("\n".join(
                    e for e in entries if not any(x in e for x in (
                        "SCHEMA - azure_local_ai ", "EXTENSION - azure_local_ai ",
                        "EXTENSION - plpython3u", "COMMENT - EXTENSION azure_local_ai"))))
                only = ["-L", str(listing)]
        # no runtime anywhere: the restore recomputes nothing, a vector column is plain data
        env_restore = {**env, "PGOPTIONS": "-c azure_local_ai.runtime_socket=/nonexistent/rt.sock"}
        run(str(PG_BIN / "pg_restore"), "--exit-on-error", *only, "-d", target, str(dump),
            env=env_restore)
        restored = {**db, "dbname": target}
        settle(restored, deployed_socket)
        with connect(restored) as conn:
            assert conn.execute("SELECT id, embedding::text FROM saved ORDER BY id"
                                ).fetchall() == vectors
            after = status(conn, vid)
            assert (after["pending"], after["failed"]) == (1, 1)
            assert queued(conn, vid) == 1
            conn.execute("INSERT INTO saved (id, body) VALUES (16, 'after the restore')")
            assert status(conn, vid)["pending"] == 2
        work(restored, deployed_socket)
        with connect(restored) as conn:
            assert status(conn, vid)["pending"] == 0
            assert conn.execute("SELECT count(*) FROM saved WHERE embedding IS NULL"
                                ).fetchone()[0] == 1  # the one too large
            conn.execute("DELETE FROM saved WHERE id = 14")
            assert max_difference(conn, "saved") <= 1e-5
            assert status(conn, vid)["failed"] == 0
            with conn.cursor() as cur:  # a new vectorizer after the restore gets a new id
                cur.execute("CREATE TABLE later (id int PRIMARY KEY, body text, "
                            "embedding vector(384))")
                newer = cur.execute("SELECT azure_local_ai.create_vectorizer('later', 'body', "
                                    "'embedding', %s)", (E5,)).fetchone()[0]
            assert newer > vid
    finally:
        drop_database(pg_params, target)
        drop_database(pg_params, source)

