"""Faults: the runtime dies mid-statement, is not running, or finds a model corrupted.

A failure of the runtime must never half-write a table or hang a session, and once the
runtime is back the same session carries on without reconnecting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import (
    E5,
    MINILM,
    Runtime,
    cli,
    connect,
    wait_until,
)

pytestmark = [pytest.mark.pg, pytest.mark.runtime]

ROWS = 3000
EMBEDDED = 100  # rows that already hold a value before the bulk update: it must survive
SENTINEL = "{1,2,3}"
KILL_AFTER_TEXTS = 300  # the runtime dies once the statement has this many texts done
FAIL_BOUND_S = 10.0  # the statement fails this soon after the kill (hang detection)

BULK_UPDATES = {
    # one call per row
    "text": "UPDATE {t} SET embedding = azure_local_ai.create_embeddings(%s, doc)",
    # Azure's batch form: one array call streamed in batch_size chunks
    "array": "WITH e AS (SELECT (azure_local_ai.create_embeddings(%s, array_agg(doc ORDER BY id),"
             " array_agg(id ORDER BY id), batch_size => 64)).* FROM {t} WHERE id <= %s)"
             " UPDATE {t} SET embedding = e.embedding FROM e WHERE {t}.id = e.id",
}


@pytest.fixture(scope="module")
def supervised(model_store: Path) -> Iterator[Runtime]:
    """A supervised runtime of our own (the real engine): what `make up` and systemd run."""
    with Runtime(model=True, store=model_store, supervise=True, preload=E5,
                 socket_owner="postgres") as rt:
        yield rt


def table_state(conn: psycopg.Connection[Any], table: str) -> tuple[int, str]:
    """(rows with an embedding, digest of every row's embedding)."""
    row = conn.execute(
        f"SELECT count(embedding), md5(string_agg(id || ':' || coalesce(embedding::text, '-'),"
        f" ',' ORDER BY id)) FROM {table}").fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def done_texts(rt: Runtime) -> int:
    return int(rt.stats()["totals"]["batched_texts"])


@pytest.mark.parametrize("form", sorted(BULK_UPDATES))
def test_killed_runtime_fails_the_bulk_update_and_the_same_session_recovers(
        pg_db: dict[str, str], supervised: Runtime, figures: dict[str, Any],
        form: str) -> None:
    table = f"reliability_kill_{form}_{os.getpid()}"
    update = BULK_UPDATES[form].format(t=table)
    args: tuple[object, ...] = (E5, ROWS) if form == "array" else (E5,)
    with connect(pg_db, supervised.socket) as conn, connect(pg_db) as observer:
        observer.execute(f"DROP TABLE IF EXISTS {table}")
        observer.execute(f"CREATE TABLE {table} AS SELECT g AS id, 'reliability document ' || g"
                         f" || repeat(' with more words', g % 9) AS doc, NULL::real[] AS embedding"
                         f" FROM generate_series(1, {ROWS}) g")
        try:
            observer.execute(f"UPDATE {table} SET embedding = %s WHERE id <= %s",
                             (SENTINEL, EMBEDDED))
            before = table_state(observer, table)
            session = conn.execute("SELECT pg_backend_pid()").fetchone()
            # the session has used the runtime already: its connection is cached
            assert conn.execute("SELECT array_length(azure_local_ai.create_embeddings(%s, 'x'),"
                                " 1)", (E5,)).fetchone() == (384,)
            start = done_texts(supervised)
            outcome: dict[str, Any] = {}

            def run() -> None:
                try:
                    with conn.transaction():
                        conn.execute(update, args)
                    outcome["committed"] = True
                except psycopg.Error as exc:
                    outcome["error"], outcome["at"] = exc, time.monotonic()

            worker = threading.Thread(target=run)
            worker.start()
            wait_until(lambda: not worker.is_alive()
                       or done_texts(supervised) >= start + KILL_AFTER_TEXTS, 300,
                       "the bulk update making progress")
            assert worker.is_alive(), f"the update ended before the kill: {outcome}"
            progress = done_texts(supervised) - start
            killed = supervised.kill_serving_process()
            killed_at = time.monotonic()
            worker.join(FAIL_BOUND_S + 50)
            assert not worker.is_alive(), "the session hangs after the runtime died"

            error = outcome.get("error")
            assert isinstance(error, psycopg.Error), f"the update did not fail: {outcome}"
            failed_after = outcome["at"] - killed_at
            assert failed_after < FAIL_BOUND_S
            diag = error.diag
            assert diag.sqlstate == "08001", (diag.sqlstate, diag.message_primary)
            assert diag.message_primary == (
                f'could not connect to the pglocalai runtime at "{supervised.socket}"')
            assert diag.message_detail in ("the runtime closed the connection",
                                           "connection refused (the runtime is not running)")
            assert "make up" in (diag.message_hint or "")
            # rolled back: nothing written, the rows that had a value still have it
            assert table_state(observer, table) == before
            assert table_state(conn, table) == before

            # the supervisor brings the runtime back; the same session goes on
            restarted = supervised.wait_healthy(60, not_pid=killed)
            restart_s = time.monotonic() - killed_at
            assert conn.execute("SELECT pg_backend_pid()").fetchone() == session
            assert conn.execute("SELECT array_length(azure_local_ai.create_embeddings(%s,"
                                " 'after the restart'), 1)", (E5,)).fetchone() == (384,)
            # and can finish (part of) the job it lost
            finish = (update + " WHERE id <= 200" if form == "text"
                      else update.replace("WHERE id <= %s", "WHERE id <= 200"))
            conn.execute(finish, (E5,))
            done = conn.execute(f"SELECT count(*), min(array_length(embedding, 1)),"
                                f" max(array_length(embedding, 1)) FROM {table}"
                                f" WHERE embedding IS NOT NULL").fetchone()
            assert done == (200, 384, 384)
        finally:
            observer.execute(f"DROP TABLE IF EXISTS {table}")
    figures[f"kill_during_bulk_update_{form}"] = {
        "rows": ROWS, "texts_done_before_kill": progress,
        "statement_failed_after_s": round(failed_after, 3),
        "new_runtime_answered_after_s": round(restart_s, 2),
        "error": f"{diag.sqlstate} {diag.message_primary}; detail: {diag.message_detail}",
        "rows_with_embedding_before_and_after": before[0],
        "killed_pid": killed, "restarted_pid": restarted["pid"]}


# -- the runtime is not running -------------------------------------------------------------------

NOT_RUNNING_CALLS = {
    "text": "SELECT azure_local_ai.create_embeddings(%s, 'x')",
    "array": "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['x'])",
    "ids": "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['x'], ARRAY[1])",
    "get_setting": "SELECT azure_local_ai.get_setting(ARRAY[%s])",
    "get_setting_text": "SELECT azure_local_ai.get_setting(%s::text)",
    "set_setting": "SELECT azure_local_ai.set_setting('spin_control', %s)",
    "list_models": "SELECT * FROM azure_local_ai.list_models() WHERE model_uri = %s",
    "model_metadata": "SELECT azure_local_ai.model_metadata(%s)",
    "token_count": "SELECT azure_local_ai.token_count(%s, 'x')",
    "runtime_stats": "SELECT azure_local_ai.runtime_stats() ->> %s",
}
NOT_RUNNING_DETAIL = {
    "never started": "the socket file does not exist (is the runtime running?)",
    "killed": "connection refused (the runtime is not running)",
}


@pytest.mark.parametrize("state", sorted(NOT_RUNNING_DETAIL))
def test_runtime_not_running_gives_a_clear_error_from_every_function(
        pg_db: dict[str, str], state: str) -> None:
    rt = Runtime(socket_owner="postgres")
    try:
        if state == "killed":  # a crashed runtime leaves its socket file behind
            rt.start()
            rt.kill_serving_process()
            assert rt.proc is not None
            rt.proc.wait(30)
            assert Path(rt.socket).exists()
        else:  # what `make up` prepares: the folder, owned by postgres, without a runtime
            folder = Path(rt.socket).parent
            folder.mkdir(mode=0o700)
            shutil.chown(folder, "postgres", "postgres")
        with connect(pg_db, rt.socket) as conn:
            for name, query in NOT_RUNNING_CALLS.items():
                arg = "true" if name == "set_setting" else E5
                started = time.monotonic()
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(query, (arg,))
                assert time.monotonic() - started < FAIL_BOUND_S
                diag = info.value.diag
                assert diag.sqlstate == "08001", name
                assert diag.message_primary == (
                    f'could not connect to the pglocalai runtime at "{rt.socket}"'), name
                assert diag.message_detail == NOT_RUNNING_DETAIL[state], name
                hint = diag.message_hint or ""
                assert f"pglocalai serve --socket {rt.socket}" in hint and "make up" in hint
                assert "azure_local_ai.runtime_socket" in hint, name
            # version() reports instead of failing, so it can diagnose
            version = conn.execute("SELECT azure_local_ai.version()").fetchone()
            assert version is not None and "runtime not reachable" in version[0]
            # and a NULL input needs no runtime at all
            assert conn.execute("SELECT azure_local_ai.create_embeddings(%s, NULL::text)",
                                (E5,)).fetchone() == (None,)
    finally:
        rt.remove()


# -- a model corrupted on disk --------------------------------------------------------------------


def store_copy(store: Path, damaged_uri: str, damaged_file: str) -> Path:
    """A store of both models; only the damaged file is a real copy, the rest hard links.

    Made next to the store, so that the links stay on one file system (else: copies).
    """
    copy = Path(tempfile.mkdtemp(prefix=".reliability-store-", dir=store.parent))
    for uri in (E5, MINILM):
        name = uri.replace(":", "@")
        (copy / name).mkdir()
        for src in (store / name).iterdir():
            dst = copy / name / src.name
            if uri == damaged_uri and src.name == damaged_file:
                shutil.copyfile(src, dst)
                flip_bytes(dst)
                continue
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
    return copy


def flip_bytes(path: Path, count: int = 64) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(size // 2)
        data = fh.read(count)
        fh.seek(size // 2)
        fh.write(bytes(b ^ 0xFF for b in data))


def model_file(store: Path, uri: str, which: str) -> str:
    import json  # noqa: PLC0415

    md = json.loads((store / uri.replace(":", "@") / "metadata.json").read_text())
    if which == "graph":
        return str(md["variants"][md["default_variant"]]["file"])
    return str(md.get("tokenizer", "tokenizer.json"))


@pytest.mark.parametrize("which", ["graph", "tokenizer"])
def test_a_corrupted_model_is_refused_and_other_models_keep_working(
        pg_db: dict[str, str], model_store: Path, figures: dict[str, Any], which: str) -> None:
    damaged = model_file(model_store, E5, which)
    copy = store_copy(model_store, E5, damaged)
    # preloading every model must not stop the runtime from starting
    rt = Runtime(model=True, store=copy, preload="all", socket_owner="postgres")
    try:
        rt.start()
        pid = rt.pid()
        with connect(pg_db, rt.socket) as conn:
            for _attempt in range(2):  # refused every time, not half-loaded the second time
                with pytest.raises(psycopg.Error) as info:
                    conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'x')", (E5,))
                diag = info.value.diag
                assert diag.sqlstate == "XX001"
                assert diag.message_primary == f'checksum mismatch for {damaged} of model "{E5}"'
                assert (diag.message_detail or "").startswith("expected sha256 ")
                assert diag.message_hint == f"reinstall it: pglocalai model install {E5} --force"
            # the other model serves, in the same session, by every overload
            assert conn.execute("SELECT array_length(azure_local_ai.create_embeddings(%s, 'x'),"
                                " 1)", (MINILM,)).fetchone() == (384,)
            assert conn.execute("SELECT count(*) FROM azure_local_ai.create_embeddings(%s,"
                                " ARRAY['a', 'b'], ARRAY[1, 2])", (MINILM,)).fetchone() == (2,)
            loaded = dict(conn.execute("SELECT model_uri, loaded FROM"
                                       " azure_local_ai.list_models()").fetchall())
            assert loaded == {E5: False, MINILM: True}
        assert rt.pid() == pid  # no crash, no restart
        verify = cli("model", "verify", "--models-dir", str(copy))
        assert verify.returncode == 4
        assert f"FAILED {E5}: checksum mismatch for {damaged}" in verify.stdout
        assert f"ok {MINILM}" in verify.stdout
    finally:
        rt.remove()
        shutil.rmtree(copy, ignore_errors=True)
    figures[f"corrupted_{which}"] = {"file": damaged, "error": f"XX001 {diag.message_primary}",
                                     "other_model": f"{MINILM} served 384-d vectors"}
