"""The enqueue trigger finds a queued key by the queue's index, whatever the queue's statistics.

PL/pgSQL plans the trigger's probe once per session. Planned on an empty, analyzed queue it
was a sequential scan, kept while the queue grew with nobody draining it (runtime down):
single-row INSERTs got slower with every queued row until the next ANALYZE. Since 1.1.1
every generated enqueue function runs with enable_seqscan off.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from support import connect
from vectorizer_support import make_docs

pytestmark = [pytest.mark.pg, pytest.mark.model]


def enqueue_settings(conn: psycopg.Connection[Any], vid: int) -> list[str]:
    return conn.execute(
        "SELECT coalesce(proconfig, '{}') FROM pg_proc WHERE oid = to_regprocedure("
        "azure_local_ai_internal.vectorizer_relation(%s, 'enqueue') || '()')",
        (vid,)).fetchone()[0]


def test_single_row_inserts_probe_the_queue_by_its_index(vconn: psycopg.Connection[Any]) -> None:
    make_docs(vconn, "probed", 0)
    vid = vconn.execute("SELECT azure_local_ai.create_vectorizer('probed', 'body', 'embedding')"
                        ).fetchone()[0]
    queue = vconn.execute("SELECT azure_local_ai_internal.vectorizer_relation(%s, 'queue')",
                          (vid,)).fetchone()[0]
    vconn.execute(f"VACUUM ANALYZE {queue}")  # known empty: a scan of it looks cheapest
    scans = ("SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables "
             "WHERE relid = %s::regclass")
    with vconn.transaction():
        # the session's first write plans the trigger's statements (and scans the queue
        # twice, once); from then on each write probes it
        vconn.execute("INSERT INTO probed (id, body) VALUES (0, 'first')")
        seq0, idx0 = vconn.execute(scans, (queue,)).fetchone()
        for i in range(1, 201):
            vconn.execute("INSERT INTO probed (id, body) VALUES (%s, %s)", (i, f"text {i}"))
            vconn.execute("UPDATE probed SET body = body || '.' WHERE id = %s", (i,))
        seq, idx = vconn.execute(scans, (queue,)).fetchone()
    assert seq == seq0, f"{seq - seq0} sequential scans of the queue for 400 single-row writes"
    assert idx - idx0 >= 400
    assert "enable_seqscan=off" in enqueue_settings(vconn, vid)


def test_a_regenerated_enqueue_function_keeps_the_setting(vconn: psycopg.Connection[Any]
                                                          ) -> None:
    make_docs(vconn, "renamed", 3)
    vid = vconn.execute("SELECT azure_local_ai.create_vectorizer('renamed', 'body', "
                        "'embedding')").fetchone()[0]
    vconn.execute("ALTER TABLE renamed RENAME COLUMN body TO content")  # regenerates it
    assert vconn.execute("SELECT input_column FROM azure_local_ai.vectorizer WHERE id = %s",
                         (vid,)).fetchone()[0] == "content"
    assert "enable_seqscan=off" in enqueue_settings(vconn, vid)


def test_the_update_to_1_1_1_sets_it_on_existing_vectorizers(make_db) -> None:
    db = make_db(extension=False)
    with connect(db) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION azure_local_ai VERSION '1.0.0' CASCADE")
        conn.execute("ALTER EXTENSION azure_local_ai UPDATE TO '1.1.0'")
        make_docs(conn, "older", 0)
        vid = conn.execute("SELECT azure_local_ai.create_vectorizer('older', 'body', "
                           "'embedding')").fetchone()[0]
        assert "enable_seqscan=off" not in enqueue_settings(conn, vid)
        conn.execute("ALTER EXTENSION azure_local_ai UPDATE TO '1.1.1'")
        assert "enable_seqscan=off" in enqueue_settings(conn, vid)
        conn.execute("INSERT INTO older (id, body) VALUES (1, 'queued after the update')")
        assert conn.execute("SELECT pending FROM azure_local_ai.vectorizer_status "
                            "WHERE id = %s", (vid,)).fetchone()[0] == 1
