"""Faults: a row changed while embedded, texts the runtime cannot take, the runtime down,
a worker killed mid-batch or stopped, its database sessions cut."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import connect, pglocalai_command, subprocess_env, wait_until
from vectorizer_support import (
    E5,
    conninfo,
    load,
    make_docs,
    max_difference,
    queued,
    status,
    vectorize,
)

from pglocalai import errors
from pglocalai.client import Client
from pglocalai.vectorizer.batch import Limits, run_batch

pytestmark = [pytest.mark.pg, pytest.mark.model]


def worker_session(params: dict[str, str]) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo(params), autocommit=True)
    conn.execute("SET search_path TO pg_catalog, pg_temp")
    return conn


class Wrapped:
    """The runtime client with a hook run before each reply is handed back."""

    def __init__(self, inner: Client, hook: Any) -> None:
        self.inner, self.hook = inner, hook

    def embed_raw(self, model: str, texts: Sequence[str],
                  timeout_ms: int | None = None) -> tuple[int, bytes]:
        self.hook(texts)
        return self.inner.embed_raw(model, texts, timeout_ms)


def test_a_row_changed_while_embedded_is_not_written(vconn, vec_db, deployed_socket,
                                                     run_worker) -> None:
    make_docs(vconn, "stale", 3)
    vid = vectorize(vconn, "stale")

    def change_row_2(texts: Sequence[str]) -> None:
        with connect(vec_db) as other:  # another session commits while the model runs
            other.execute("UPDATE stale SET body = 'changed meanwhile' WHERE id = 2")
            other.execute("DELETE FROM stale WHERE id = 3")

    with worker_session(vec_db) as conn, Client(deployed_socket) as client:
        result = run_batch(conn, Wrapped(client, change_row_2), load(conn, vid), Limits())
    assert result is not None
    assert (result.claimed, result.written, result.stale) == (3, 1, 2)
    rows = dict(vconn.execute("SELECT id, embedding IS NOT NULL FROM stale").fetchall())
    assert rows == {1: True, 2: False}  # never the vector of the old text
    assert queued(vconn, vid) == 1  # the change's own entry
    run_worker()
    assert max_difference(vconn, "stale") <= 1e-5


def test_a_text_over_the_limit_fails_alone_and_comes_back_when_fixed(vconn, run_worker) -> None:
    make_docs(vconn, "big", 5)
    vconn.execute("INSERT INTO big (id, body) VALUES (6, repeat('x', 65 * 1024 * 1024))")
    vid = vectorize(vconn, "big")
    run_worker()
    assert vconn.execute("SELECT count(embedding) FROM big").fetchone()[0] == 5
    s = status(vconn, vid)
    assert (s["pending"], s["failed"]) == (0, 1)
    assert "exceeds the runtime's limit" in s["last_error"]
    failure = vconn.execute("SELECT row_key, attempts, retry_at IS NOT NULL FROM "
                            "azure_local_ai.vectorizer_failures WHERE vectorizer_id = %s",
                            (vid,)).fetchone()
    assert failure == ({"id": 6}, 1, True)
    vconn.execute("UPDATE big SET body = 'short enough now' WHERE id = 6")
    run_worker()
    assert vconn.execute("SELECT count(embedding) FROM big").fetchone()[0] == 6
    assert status(vconn, vid)["failed"] == 0


def test_a_refused_text_does_not_fail_its_batch(vconn, vec_db, deployed_socket,
                                                run_worker) -> None:
    make_docs(vconn, "poison", 20)
    vconn.execute("UPDATE poison SET body = 'POISON ' || body WHERE id = 13")
    vid = vectorize(vconn, "poison")
    calls: list[int] = []

    def refuse(texts: Sequence[str]) -> None:
        calls.append(len(texts))
        if any("POISON" in t for t in texts):
            raise errors.InvalidArgument("the runtime refused this text")

    with worker_session(vec_db) as conn, Client(deployed_socket) as client:
        result = run_batch(conn, Wrapped(client, refuse), load(conn, vid), Limits())
    assert result is not None and (result.written, result.failed) == (19, 1)
    assert calls[0] == 20 and len(calls) > 2  # one request, then halves down to the bad text
    assert dict(vconn.execute("SELECT id, embedding IS NULL FROM poison WHERE embedding IS NULL"
                              ).fetchall()) == {13: True}
    assert vconn.execute("SELECT azure_local_ai.retry_vectorizer_failures(%s)",
                         (vid,)).fetchone()[0] == 1
    assert status(vconn, vid)["pending"] == 1
    run_worker()  # the real runtime takes it
    assert (status(vconn, vid)["failed"], status(vconn, vid)["pending"]) == (0, 0)
    assert max_difference(vconn, "poison") <= 1e-5


@pytest.fixture()
def start_worker(vec_db: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """Start ``pglocalai worker``; its output goes to a file (``output(proc)`` reads it): a
    pipe nobody reads would stop a talkative worker once full."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        env = subprocess_env(PGHOST=vec_db["host"], PGPORT=vec_db["port"],
                             PGUSER=vec_db["user"], PGDATABASE=vec_db["dbname"])
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(pglocalai_command("worker", "--poll-interval", "0.2",
                                                      "--log-format", "text", *args),
                                    env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _LOGS[proc.pid] = log
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


_LOGS: dict[int, Path] = {}


def output(proc: subprocess.Popen[str]) -> str:
    """What a worker from ``start_worker`` printed so far."""
    return _LOGS[proc.pid].read_text(encoding="utf-8", errors="replace")


def wait_for_worker(proc: subprocess.Popen[str], predicate: Any, what: str,
                    timeout: float = 30.0) -> None:
    """wait_until, with the worker's output in the message when it fails."""
    try:
        wait_until(predicate, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the worker printed:\n{output(proc)}") from None


def test_runtime_down_writes_go_on_and_the_worker_catches_up(vconn, start_worker,
                                                             deployed_socket,
                                                             tmp_path: Path) -> None:
    make_docs(vconn, "down", 5)
    vid = vectorize(vconn, "down")
    link = tmp_path / "runtime.sock"  # nothing answers here yet: the runtime is "down"
    proc = start_worker("--socket", str(link))
    for i in range(6, 26):  # writes go on meanwhile, each in its own transaction
        vconn.execute("INSERT INTO down (id, body) VALUES (%s, 'written while down')", (i,))
    wait_for_worker(proc, lambda: "could not connect" in (status(vconn, vid)["last_error"] or ""),
                    what="the worker reports the runtime down in vectorizer_status")
    assert status(vconn, vid)["pending"] == 25
    link.symlink_to(deployed_socket)  # the runtime is back
    wait_for_worker(proc, lambda: status(vconn, vid)["pending"] == 0, timeout=60,
                    what="the worker catches up")
    assert vconn.execute("SELECT count(embedding) FROM down").fetchone()[0] == 25
    wait_for_worker(proc, lambda: status(vconn, vid)["last_error"] is None,
                    what="the error is cleared")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


class StallingRuntime:
    """A socket that accepts connections and never answers (a runtime stuck mid-batch)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def locked_entries(conn: psycopg.Connection[Any], vid: int) -> int:
    with conn.transaction():
        queue = f"azure_local_ai.vectorizer_{vid}_queue"
        total = conn.execute(f"SELECT count(*) FROM {queue}").fetchone()[0]
        free = conn.execute(f"SELECT count(*) FROM (SELECT FROM {queue} "
                            "FOR UPDATE SKIP LOCKED) x").fetchone()[0]
    return total - int(free)


def test_a_killed_worker_gives_its_batch_back(vconn, start_worker, run_worker,
                                              tmp_path: Path) -> None:
    make_docs(vconn, "killed", 40)
    vconn.execute("CREATE TABLE killed_writes (id integer)")
    vconn.execute("CREATE FUNCTION killed_audit() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN INSERT INTO killed_writes VALUES (new.id); RETURN NULL; END$$")
    vconn.execute("CREATE TRIGGER audit AFTER UPDATE OF embedding ON killed FOR EACH ROW "
                  "WHEN (new.embedding IS NOT NULL) EXECUTE FUNCTION killed_audit()")
    vid = vectorize(vconn, "killed")
    stall = StallingRuntime(tmp_path / "stall.sock")
    try:
        proc = start_worker("--socket", str(tmp_path / "stall.sock"), "--concurrency", "1")
        wait_for_worker(proc, lambda: locked_entries(vconn, vid) > 0, timeout=120,
                        what="the worker holds a batch")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        wait_until(lambda: locked_entries(vconn, vid) == 0, what="its claims are released")
    finally:
        stall.close()
    run_worker()  # another worker takes them
    per_row = dict(vconn.execute("SELECT k.id, count(w.id) FROM killed k "
                                 "LEFT JOIN killed_writes w USING (id) GROUP BY k.id").fetchall())
    assert per_row == {i: 1 for i in range(1, 41)}  # none lost, none written twice
    assert max_difference(vconn, "killed") <= 1e-5


def test_sigterm_stops_the_worker_cleanly(vconn, start_worker) -> None:
    make_docs(vconn, "stopped", 3)
    vid = vectorize(vconn, "stopped")
    proc = start_worker()
    wait_for_worker(proc, lambda: status(vconn, vid)["workers"] == 1
                    and status(vconn, vid)["pending"] == 0,
                    what="the worker registered and caught up")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "worker_stopped" in output(proc)
    assert status(vconn, vid)["workers"] == 0


def test_the_worker_reconnects_when_its_sessions_are_cut(vconn, start_worker) -> None:
    make_docs(vconn, "cut", 3)
    vid = vectorize(vconn, "cut")
    proc = start_worker()
    wait_for_worker(proc, lambda: status(vconn, vid)["pending"] == 0, what="the backfill")
    cut = vconn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'pglocalai worker' "
                        "AND datname = current_database()").fetchone()[0]
    assert cut >= 3  # lanes, listener, control
    vconn.execute("INSERT INTO cut (id, body) VALUES (4, %s)", (E5,))
    wait_for_worker(proc, lambda: status(vconn, vid)["pending"] == 0, timeout=60,
                    what="the worker is back and took the new row")
    assert vconn.execute("SELECT embedding IS NOT NULL FROM cut WHERE id = 4").fetchone()[0]
    assert proc.poll() is None
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.runtime
def test_three_workers_two_runtimes_one_killed(vconn, start_worker, runtime,
                                               deployed_socket) -> None:
    """Scale-out as on several hosts: workers on two runtimes share one vectorizer; one is
    killed mid-run. Every row is written exactly once, none is lost."""
    make_docs(vconn, "shared", 1500)
    vconn.execute("CREATE TABLE shared_writes (id integer)")
    vconn.execute("CREATE FUNCTION shared_audit() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$BEGIN INSERT INTO shared_writes VALUES (new.id); RETURN NULL; END$$")
    vconn.execute("CREATE TRIGGER audit AFTER UPDATE OF embedding ON shared FOR EACH ROW "
                  "WHEN (new.embedding IS NOT NULL) EXECUTE FUNCTION shared_audit()")
    vid = vectorize(vconn, "shared")
    small = ("--batch-tokens", "600", "--concurrency", "1")
    workers = [start_worker("--socket", deployed_socket, *small),
               start_worker("--socket", runtime.socket, *small),
               start_worker("--socket", runtime.socket, *small)]
    wait_until(lambda: status(vconn, vid)["workers"] == 3, timeout=60, what="three workers")
    # small batches: a worker nearly always holds one (test_a_killed_worker_gives_its_batch_back
    # makes sure of it with a runtime that never answers)
    wait_until(lambda: vconn.execute("SELECT count(*) FROM shared_writes").fetchone()[0] >= 300,
               timeout=120, what="the workers are under way")
    workers[1].send_signal(signal.SIGKILL)
    workers[1].wait(timeout=10)
    wait_until(lambda: status(vconn, vid)["pending"] == 0, timeout=300, what="all rows done")
    per_row = dict(vconn.execute("SELECT k.id, count(w.id) FROM shared k "
                                 "LEFT JOIN shared_writes w USING (id) GROUP BY k.id").fetchall())
    assert per_row == {i: 1 for i in range(1, 1501)}
    assert max_difference(vconn, "shared") <= 1e-5
    assert status(vconn, vid)["workers"] == 2
    for proc in (workers[0], workers[2]):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
