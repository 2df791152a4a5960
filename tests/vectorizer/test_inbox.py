"""INSERTs go to the vectorizer's inbox (azure_local_ai 1.2.0), and workers queue them.

An INSERT into a vectorizer's table appends the row's key to ``vectorizer_N_inbox`` and does
nothing else: no queue row, no probe, no count row, no NOTIFY, no subtransaction. Workers look
at the inboxes every ``inbox_interval`` and move them into the queue in short transactions of
their own.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support import connect, wait_until
from vectorizer_support import conninfo, load, make_docs, max_difference, queued, status, vectorize

from pglocalai.vectorizer.batch import fold_inbox
from pglocalai.vectorizer.report import Report
from pglocalai.vectorizer.worker import CHANNEL, Options, Worker

pytestmark = [pytest.mark.pg, pytest.mark.model]

WRITES = ("SELECT relname, n_tup_ins FROM pg_stat_xact_user_tables "
          "WHERE relid = ANY(%s::regclass[]) ORDER BY relname")


def relations(vid: int) -> list[str]:
    return [f"azure_local_ai.vectorizer_{vid}_{kind}" for kind in ("inbox", "queue")] + [
        "azure_local_ai_internal.vectorizer_queue_count"]


def inserts_by(conn: psycopg.Connection[Any], vid: int, *statements: str) -> dict[str, int]:
    """Rows inserted into the inbox, the queue and the count table by ``statements`` (one
    transaction; this session's counts of earlier transactions may not be flushed yet)."""
    with conn.transaction():
        before = dict(conn.execute(WRITES, (relations(vid),)).fetchall())
        for statement in statements:
            conn.execute(statement)
        after = dict(conn.execute(WRITES, (relations(vid),)).fetchall())
    return {name: n - before.get(name, 0) for name, n in after.items()
            if n - before.get(name, 0)}


def test_an_insert_only_appends_its_key_to_the_inbox(vconn) -> None:
    make_docs(vconn, "appended", 0)
    vid = vectorize(vconn, "appended")
    assert inserts_by(vconn, vid, "INSERT INTO appended (id, body) VALUES (1, 'one')",
                      "INSERT INTO appended (id, body) SELECT g, 'many' "
                      "FROM generate_series(2, 9) g") == {f"vectorizer_{vid}_inbox": 9}
    s = status(vconn, vid)  # inboxed rows are pending, and have an age
    assert s["pending"] == 9 and s["oldest_pending_age"] is not None
    # an UPDATE of the input still queues (and counts) itself
    assert inserts_by(vconn, vid, "UPDATE appended SET body = 'changed' WHERE id = 1") == {
        f"vectorizer_{vid}_queue": 1, "vectorizer_queue_count": 1}
    assert status(vconn, vid)["pending"] == queued(vconn, vid) == 10


def test_an_insert_sends_no_notification_an_update_does(vconn, vec_db) -> None:
    make_docs(vconn, "quiet", 0)
    vectorize(vconn, "quiet")
    with connect(vec_db) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        vconn.execute("INSERT INTO quiet (id, body) VALUES (1, 'one')")
        assert list(listener.notifies(timeout=0.5)) == []
        vconn.execute("UPDATE quiet SET body = 'two' WHERE id = 1")
        assert len(list(listener.notifies(timeout=5, stop_after=1))) == 1


def test_a_worker_finds_inserted_rows_without_a_notification(vconn, vec_db,
                                                             deployed_socket) -> None:
    tables = ("looked", "looked_too")  # one statement looks at both inboxes
    for table in tables:
        make_docs(vconn, table, 0)
        vectorize(vconn, table)
    # a minute between looks at the queues: only the inbox look can find the rows in time
    worker = Worker(Options(dsn=conninfo(vec_db), socket=deployed_socket, signals=False,
                            poll_interval=60.0, inbox_interval=0.1), Report(tty=False))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(worker._catalog) >= 2, what="the worker loaded the vectorizers")
        for table in tables:
            vconn.execute(sql.SQL("INSERT INTO {} (id, body) VALUES (1, 'found by the inbox "
                                  "look')").format(sql.Identifier(table)))
            wait_until(lambda t=table: vconn.execute(sql.SQL(
                "SELECT embedding IS NOT NULL FROM {}").format(sql.Identifier(t))).fetchone()[0],
                timeout=30, what=f"the row inserted into {table} is embedded")
    finally:
        worker.stop.set()
        thread.join(timeout=60)
    for table in tables:
        assert max_difference(vconn, table) <= 1e-5


def test_moving_the_inbox_never_waits_for_another_worker(vconn, vec_db) -> None:
    make_docs(vconn, "moved", 0)
    vid = vectorize(vconn, "moved")
    vconn.execute("INSERT INTO moved (id, body) SELECT g, 'text' FROM generate_series(1, 5) g")
    with connect(vec_db) as other, connect(vec_db) as mover:
        mover.autocommit = True
        mover.execute("SET statement_timeout = '5s'")  # a wait would fail here
        v = load(mover, vid)
        with other.transaction():
            other.execute(f"SELECT FROM azure_local_ai.vectorizer_{vid}_inbox WHERE k1 <= 3 "
                          "FOR UPDATE")
            assert fold_inbox(mover, v) == 2  # 4 and 5; 1 to 3 are another worker's
        assert fold_inbox(mover, v) == 3
        assert fold_inbox(mover, v) == 0
    queue = f"azure_local_ai.vectorizer_{vid}_queue"
    assert vconn.execute(f"SELECT count(*), count(DISTINCT k1) FROM {queue}").fetchone() == (5, 5)
    assert status(vconn, vid)["pending"] == 5
    # a key already waiting unclaimed in the queue is not queued twice
    vconn.execute("DELETE FROM moved WHERE id = 1")
    vconn.execute("INSERT INTO moved (id, body) VALUES (1, 'again')")
    assert fold_inbox(vconn, load(vconn, vid)) == 1
    assert vconn.execute(f"SELECT count(*) FROM {queue} WHERE k1 = 1").fetchone()[0] == 1


def test_a_dropped_inbox_disables_the_vectorizer_and_writes_go_on(vconn) -> None:
    make_docs(vconn, "unboxed", 1)
    vid = vectorize(vconn, "unboxed")
    vconn.execute(f"DROP TABLE azure_local_ai.vectorizer_{vid}_inbox")
    reason = status(vconn, vid)["disabled_reason"]
    assert reason == f"table azure_local_ai.vectorizer_{vid}_inbox was dropped"
    vconn.execute("INSERT INTO unboxed (id, body) VALUES (2, 'written after')")
    assert vconn.execute("SELECT count(*) FROM unboxed").fetchone()[0] == 2


def test_the_update_to_1_2_0_gives_existing_vectorizers_an_inbox(make_db,
                                                                 deployed_socket) -> None:
    db = make_db(extension=False)
    with connect(db) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION azure_local_ai VERSION '1.1.1' CASCADE")
        make_docs(conn, "before", 2)
        vid = vectorize(conn, "before")
        conn.execute("INSERT INTO before (id, body) VALUES (3, 'queued by 1.1.1')")
        conn.execute("ALTER EXTENSION azure_local_ai UPDATE TO '1.2.0'")
        # made by the update script, yet not the extension's: dumped, kept by DROP EXTENSION
        members = conn.execute(
            "SELECT count(*) FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid "
            "WHERE e.extname = 'azure_local_ai' AND d.deptype = 'e' "
            "AND pg_describe_object(d.classid, d.objid, 0) ~ %s", (f"vectorizer_{vid}_",)
        ).fetchone()[0]
        assert members == 0
        assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'before'::regclass "
                            "AND NOT tgisinternal").fetchone()[0] == 4
        conn.execute("INSERT INTO before (id, body) VALUES (4, 'inboxed by 1.2.0')")
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier("azure_local_ai", f"vectorizer_{vid}_inbox"))).fetchone()[0] == 1
        assert status(conn, vid)["pending"] == 4
        code = Worker(Options(dsn=conninfo(db), socket=deployed_socket, once=True,
                              signals=False, poll_interval=0.2), Report(tty=False)).run()
        assert code == 0
        assert status(conn, vid)["pending"] == 0
        conn.execute("SELECT set_config('azure_local_ai.runtime_socket', %s, false)",
                     (deployed_socket,))
        assert max_difference(conn, "before") <= 1e-5


def test_status_says_when_only_older_workers_serve_an_inbox(vconn, vec_db) -> None:
    make_docs(vconn, "waiting", 0)
    vid = vectorize(vconn, "waiting")
    register = ("INSERT INTO azure_local_ai.vectorizer_worker (host, pid, version) "
                "VALUES ('elsewhere', 1, %s)")
    with connect(vec_db) as old, connect(vec_db) as new:  # alive while their sessions are
        old.execute(register, ("1.1.1",))
        vconn.execute("INSERT INTO waiting (id, body) VALUES (1, 'nobody reads the inbox')")
        s = status(vconn, vid)
        assert s["workers"] == 1
        assert s["last_error"] == ("1 inserted rows wait in the inbox, which the running "
                                   "workers (older than pglocalai 1.2.0) do not read: update them")
        new.execute(register, ("1.2.0",))
        assert status(vconn, vid)["last_error"] is None


def test_a_vectorizer_without_an_inbox_gets_one_when_regenerated(vconn) -> None:
    """As one restored from a 1.1.x dump: no inbox. Until an ALTER TABLE regenerates its
    functions, alter_vectorizer queues directly (1.1.x's way); then it has an inbox."""
    make_docs(vconn, "restored", 2)
    vid = vectorize(vconn, "restored")
    inbox = f"vectorizer_{vid}_inbox"
    vconn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
        sql.Identifier("azure_local_ai", inbox), sql.Identifier(f"{inbox}_away")))
    vconn.execute("SELECT azure_local_ai.alter_vectorizer(%s, prefix => 'query: ')", (vid,))
    assert vconn.execute(f"SELECT count(*) FROM azure_local_ai.vectorizer_{vid}_queue"
                         ).fetchone()[0] == 2
    vconn.execute("ALTER TABLE restored RENAME COLUMN title TO heading")  # regenerates
    vconn.execute("INSERT INTO restored (id, body) VALUES (3, 'after the regeneration')")
    assert vconn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier("azure_local_ai", inbox))).fetchone()[0] == 1
    assert status(vconn, vid)["disabled_reason"] is None


def test_a_once_worker_waits_for_rows_another_session_is_moving(vconn, vec_db,
                                                                deployed_socket) -> None:
    """The heartbeat (or another worker) may be moving the inbox while the lanes look: they
    find its rows locked and the queue empty. A --once run must not take that for done."""
    make_docs(vconn, "in_transit", 0)
    vid = vectorize(vconn, "in_transit")
    vconn.execute("INSERT INTO in_transit (id, body) SELECT g, 'text ' || g "
                  "FROM generate_series(1, 20) g")
    worker = Worker(Options(dsn=conninfo(vec_db), socket=deployed_socket, once=True,
                            signals=False, poll_interval=0.2), Report(tty=False))
    with connect(vec_db) as mover:
        with mover.transaction():
            assert fold_inbox(mover, load(mover, vid)) == 20  # moved, not committed
            codes: list[int] = []
            thread = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
            thread.start()
            thread.join(timeout=2.0)
            assert thread.is_alive(), "the --once worker ended while rows were in transit"
        thread.join(timeout=60)
    assert codes == [0]
    assert vconn.execute("SELECT count(*) FROM in_transit WHERE embedding IS NULL"
                         ).fetchone()[0] == 0
    assert max_difference(vconn, "in_transit") <= 1e-5
