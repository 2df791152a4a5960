"""A vectorizer follows its table: backfill, inserts, updates of the input, deletes, NULLs.

Every vector the worker writes must be the one create_embeddings(model, prefix || input)
gives (within the runtime's batch-invariance bound, 1e-5).
"""

from __future__ import annotations

import pytest
from vectorizer_support import E5, TEXTS, load, make_docs, max_difference, queued, status, vectorize

from pglocalai.vectorizer.batch import fold_inbox

pytestmark = [pytest.mark.pg, pytest.mark.model]


def test_backfill_writes_the_vectors_of_create_embeddings(vconn, run_worker) -> None:
    make_docs(vconn, "backfill", 60)
    vid = vectorize(vconn, "backfill")
    assert status(vconn, vid)["pending"] == 60
    run_worker()
    assert vconn.execute("SELECT count(*) FROM backfill WHERE embedding IS NULL").fetchone()[0] == 0
    assert max_difference(vconn, "backfill") <= 1e-5
    s = status(vconn, vid)
    assert (s["pending"], s["failed"], s["last_error"]) == (0, 0, None)
    assert queued(vconn, vid) == 0


def test_insert_update_delete_are_followed(vconn, run_worker) -> None:
    make_docs(vconn, "follow", 10)
    vid = vectorize(vconn, "follow")
    run_worker()
    before = dict(vconn.execute("SELECT id, embedding::text FROM follow").fetchall())
    vconn.execute("INSERT INTO follow (id, body) VALUES (11, %s), (12, %s)", (TEXTS[3], TEXTS[4]))
    vconn.execute("UPDATE follow SET body = %s WHERE id = 2", (TEXTS[20],))
    vconn.execute("DELETE FROM follow WHERE id = 3")
    assert status(vconn, vid)["pending"] == 3  # 11, 12 and 2; a deleted row needs no vector
    run_worker()
    after = dict(vconn.execute("SELECT id, embedding::text FROM follow").fetchall())
    assert set(after) == set(range(1, 13)) - {3}
    assert after[2] != before[2]
    assert all(after[i] == before[i] for i in (1, 4, 5, 6, 7, 8, 9, 10))
    assert max_difference(vconn, "follow") <= 1e-5
    assert status(vconn, vid)["pending"] == 0


def test_only_a_change_of_the_input_enqueues(vconn, run_worker) -> None:
    make_docs(vconn, "other", 5)
    vid = vectorize(vconn, "other")
    run_worker()
    vconn.execute("UPDATE other SET title = 'new title'")  # another column
    vconn.execute("UPDATE other SET body = body, title = 'again'")  # the input, same value
    vconn.execute("UPDATE other SET embedding = NULL WHERE id = 1")  # the worker's own column
    assert queued(vconn, vid) == 0
    assert status(vconn, vid)["pending"] == 0
    vconn.execute("UPDATE other SET body = body || '!' WHERE id = 4")
    assert queued(vconn, vid) == 1


def test_null_input_gives_a_null_vector(vconn, run_worker) -> None:
    make_docs(vconn, "nulls", 3)
    vectorize(vconn, "nulls")
    vconn.execute("INSERT INTO nulls (id, body) VALUES (4, NULL)")
    run_worker()
    vconn.execute("UPDATE nulls SET body = NULL WHERE id = 1")
    run_worker()
    rows = dict(vconn.execute("SELECT id, embedding IS NULL FROM nulls").fetchall())
    assert rows == {1: True, 2: False, 3: False, 4: True}


def test_composite_keys_of_any_type_and_a_real_array_target(vconn, run_worker) -> None:
    vconn.execute("DROP TABLE IF EXISTS notes")
    vconn.execute("CREATE TABLE notes (owner uuid, at timestamptz, lang text COLLATE \"C\", "
                  "note varchar(2000), vec real[], PRIMARY KEY (owner, at, lang))")
    vconn.execute("INSERT INTO notes SELECT gen_random_uuid(), now() - g * interval '1.5 s', "
                  "'l' || g, %s || g FROM generate_series(1, 12) g", (TEXTS[5],))
    vid = int(vconn.execute("SELECT azure_local_ai.create_vectorizer('notes', 'note', 'vec', "
                            "prefix => 'query: ')").fetchone()[0])
    run_worker()
    assert vconn.execute("SELECT count(*) FROM notes WHERE vec IS NULL").fetchone()[0] == 0
    vconn.execute("UPDATE notes SET note = 'changed' WHERE lang = 'l3'")
    assert queued(vconn, vid) == 1
    run_worker()
    diff = vconn.execute(
        "SELECT max(abs(a - b)) FROM notes n, unnest(n.vec, azure_local_ai.create_embeddings("
        "%s, 'query: ' || n.note)) u(a, b)", (E5,)).fetchone()[0]
    assert diff <= 1e-5
    keys = vconn.execute("SELECT key_columns FROM azure_local_ai.vectorizer WHERE id = %s",
                         (vid,)).fetchone()[0]
    assert [k["type"] for k in keys] == ["uuid", "timestamp with time zone", "text"]


def test_bulk_statements_enqueue_once_per_statement(vconn, run_worker) -> None:
    make_docs(vconn, "bulk", 0)
    vid = vectorize(vconn, "bulk")
    vconn.execute("INSERT INTO bulk (id, body) "
                  "SELECT g, 'text ' || g FROM generate_series(1, 500) g")
    deltas = ("SELECT count(*), sum(delta) FROM azure_local_ai_internal.vectorizer_queue_count "
              "WHERE vectorizer_id = %s AND delta > 0")
    # the writer only appended the keys to the inbox: no queue row, no count row
    assert vconn.execute(deltas, (vid,)).fetchone() == (0, None)
    assert vconn.execute(f"SELECT count(*) FROM azure_local_ai.vectorizer_{vid}_inbox"
                         ).fetchone()[0] == 500
    assert status(vconn, vid)["pending"] == 500
    run_worker()
    # the worker queued them by the statement (two when its heartbeat and a lane raced)
    count, total = vconn.execute(deltas, (vid,)).fetchone()
    assert total == 500 and 1 <= count <= 2
    assert status(vconn, vid)["pending"] == 0


def test_alter_vectorizer_reembeds_and_keeps_old_vectors_meanwhile(vconn, run_worker) -> None:
    make_docs(vconn, "altered", 8)
    vid = vectorize(vconn, "altered", prefix="passage: ")
    run_worker()
    vconn.execute("SELECT azure_local_ai.alter_vectorizer(%s, prefix => 'query: ')", (vid,))
    s = status(vconn, vid)
    assert (s["generation"], s["pending"]) == (2, 8)
    # until the worker runs, search keeps working on the old vectors
    assert vconn.execute("SELECT count(*) FROM altered WHERE embedding IS NULL").fetchone()[0] == 0
    run_worker()
    assert max_difference(vconn, "altered", prefix="query: ") <= 1e-5
    vconn.execute("SELECT azure_local_ai.alter_vectorizer(%s, prefix => 'query: ')", (vid,))
    assert status(vconn, vid)["generation"] == 2  # nothing changed: nothing re-embedded


def test_drop_vectorizer_keeps_the_vectors_unless_asked(vconn, run_worker) -> None:
    make_docs(vconn, "dropped", 3)
    vid = vectorize(vconn, "dropped")
    run_worker()
    vconn.execute("SELECT azure_local_ai.drop_vectorizer(%s)", (vid,))
    assert vconn.execute("SELECT to_regclass(%s)",
                         (f"azure_local_ai.vectorizer_{vid}_queue",)).fetchone()[0] is None
    assert vconn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'dropped'::regclass "
                         "AND NOT tgisinternal").fetchone()[0] == 0
    assert vconn.execute("SELECT count(embedding) FROM dropped").fetchone()[0] == 3
    vid = vectorize(vconn, "dropped")
    vconn.execute("SELECT azure_local_ai.drop_vectorizer(%s, drop_destination => true)", (vid,))
    assert vconn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'dropped'::regclass "
                         "AND attname = 'embedding' AND NOT attisdropped").fetchone()[0] == 0


def test_pending_stays_exact_when_old_deltas_are_folded(vconn, run_worker) -> None:
    make_docs(vconn, "folded", 30)
    vid = vectorize(vconn, "folded")
    assert fold_inbox(vconn, load(vconn, vid)) == 30  # the backfill, as a worker queues it
    vconn.execute(f"DELETE FROM azure_local_ai.vectorizer_{vid}_queue WHERE seq <= 10")
    for i in range(31, 36):
        vconn.execute("INSERT INTO folded (id, body) VALUES (%s, 'one more')", (i,))
    vconn.execute("UPDATE azure_local_ai_internal.vectorizer_queue_count "
                  "SET at = at - interval '1 hour' WHERE vectorizer_id = %s", (vid,))
    rows = "SELECT count(*) FROM azure_local_ai_internal.vectorizer_queue_count " \
           "WHERE vectorizer_id = %s"
    assert vconn.execute(rows, (vid,)).fetchone()[0] == 2  # +30, -10 (the five are inboxed)
    vconn.execute("SELECT azure_local_ai_internal.vectorizer_compact_count(%s)", (vid,))
    assert vconn.execute(rows, (vid,)).fetchone()[0] == 1
    assert status(vconn, vid)["pending"] == queued(vconn, vid) == 25
    run_worker()
    assert status(vconn, vid)["pending"] == 0
