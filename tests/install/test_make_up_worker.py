"""The vectorizer worker `make up` started: it runs as the server's user, not root, and keeps
the vectorizers of make up's database current.

Its ids are read from /proc (the supervisor in the pidfile and the worker it forked), and the
worker serving the table is that one: the pid in azure_local_ai.vectorizer_worker is the
supervisor's child.
"""

from __future__ import annotations

import math
import os
import pwd
from pathlib import Path

import pytest
from install_support import E5, required_setting, wait_for
from support import connect
from test_make_up_runtime import children, ids

pytestmark = pytest.mark.pg


def worker_processes() -> tuple[int, list[int]]:
    """The supervisor of `make up`'s worker and its children."""
    pidfile = Path(required_setting("PGLOCALAI_UP_WORKER_PIDFILE"))
    assert pidfile.is_file(), f"no worker pidfile {pidfile}: make up did not start a worker"
    supervisor = int(pidfile.read_text().strip())
    argv = Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")
    assert b"worker" in argv and b"--supervise" in argv, argv
    kids = children(supervisor)
    assert kids, "the worker's supervisor has no worker child"
    return supervisor, kids


def test_the_worker_of_make_up_is_not_root() -> None:
    supervisor, kids = worker_processes()
    postgres = pwd.getpwnam("postgres")
    for pid in [supervisor, *kids]:
        assert ids(pid, "Uid") == [postgres.pw_uid] * 4, f"pid {pid}"
        assert ids(pid, "Gid") == [postgres.pw_gid] * 4, f"pid {pid}"
        assert 0 not in ids(pid, "Groups"), f"pid {pid} keeps root's group"
    log = Path(required_setting("PGLOCALAI_WORKER_LOG"))
    assert log.stat().st_uid == postgres.pw_uid
    assert log.parent == Path(required_setting("PGLOCALAI_RUNTIME_LOG")).parent


def test_the_worker_of_make_up_embeds_new_rows(pg_params: dict[str, str],
                                               deployed_socket: str) -> None:
    _, kids = worker_processes()
    table = f"inst_make_up_worker_{os.getpid()}"
    with connect(pg_params) as conn:
        if conn.execute("select pg_catalog.to_regclass('azure_local_ai.vectorizer')"
                        ).fetchone()[0] is None:
            pytest.fail(f"database {conn.info.dbname} has no azure_local_ai 1.1.0 (make up)")
        conn.execute(f"drop table if exists {table}")
        conn.execute(f"create table {table} (id integer primary key, body text, "
                     "embedding real[])")
        try:
            vid = conn.execute("select azure_local_ai.create_vectorizer(%s, 'body', "
                               "'embedding', prefix => 'passage: ')", (table,)).fetchone()[0]
            conn.execute(f"insert into {table} values (1, 'Der Zug fährt um acht Uhr ab.')")

            def embedded() -> bool:
                return conn.execute(f"select embedding is not null from {table}"
                                    ).fetchone()[0]

            wait_for(embedded, timeout=120.0, what="the worker of make up to embed the row")
            got, want = conn.execute(
                f"select embedding, azure_local_ai.create_embeddings(%s, 'passage: ' || body) "
                f"from {table}", (E5,)).fetchone()
            assert len(got) == 384
            assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1e-5
            assert math.isclose(sum(x * x for x in got), 1.0, rel_tol=1e-4)
            workers = {r[0] for r in conn.execute(
                "select pid from azure_local_ai.vectorizer_worker")}
            assert workers & set(kids), f"workers {workers}, make up's worker {kids}"

            def drained() -> bool:
                return conn.execute("select pending, failed from azure_local_ai."
                                    "vectorizer_status where id = %s", (vid,)).fetchone() == (0, 0)

            wait_for(drained, timeout=30.0, what="vectorizer_status to show nothing pending")
        finally:
            conn.execute(f"drop table if exists {table}")  # its vectorizer goes with it
