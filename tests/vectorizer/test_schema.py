"""A vectorizer and the DDL and privileges around it: renames, drops, owners, workers' roles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import errors as pgerrors
from psycopg import sql
from support import connect
from vectorizer_support import conninfo, make_docs, max_difference, queued, status

pytestmark = [pytest.mark.pg, pytest.mark.model]


def vectorize(conn: psycopg.Connection[Any], table: str, **kw: Any) -> int:
    args = {"target_column": "embedding", "prefix": "passage: ", **kw}
    named = sql.SQL(", ").join(sql.SQL("{} => {}").format(sql.Identifier(k), sql.Literal(v))
                               for k, v in args.items())
    return int(conn.execute(sql.SQL(
        "SELECT azure_local_ai.create_vectorizer({}, 'body', {})").format(
            sql.Literal(table), named)).fetchone()[0])


def test_renames_of_the_table_and_its_columns_are_followed(vconn, run_worker) -> None:
    make_docs(vconn, "renamed", 4)
    vid = vectorize(vconn, "renamed")
    vconn.execute("ALTER TABLE renamed RENAME TO renamed2")
    vconn.execute("ALTER TABLE renamed2 RENAME COLUMN body TO content")
    vconn.execute("ALTER TABLE renamed2 RENAME COLUMN embedding TO vec")
    vconn.execute("ALTER TABLE renamed2 RENAME COLUMN id TO doc_id")
    vconn.execute("INSERT INTO renamed2 (doc_id, content) VALUES (5, 'after the renames')")
    vconn.execute("UPDATE renamed2 SET content = 'changed' WHERE doc_id = 1")
    s = status(vconn, vid)
    # 6: row 1 is in the inbox (the backfill) and queued by its change; a worker queues it once
    assert (str(s["source"]), s["input"], s["destination"], s["pending"]) == (
        "renamed2", "content", "renamed2.vec", 6)
    run_worker()
    diff = vconn.execute("SELECT max(abs(a - b)) FROM renamed2 t, unnest(t.vec::real[], "
                         "azure_local_ai.create_embeddings('multilingual-e5-small:v1', "
                         "'passage: ' || t.content)) u(a, b)").fetchone()[0]
    assert diff <= 1e-5
    assert vconn.execute("SELECT count(vec) FROM renamed2").fetchone()[0] == 5


def test_a_dropped_table_takes_its_vectorizer_along(vconn) -> None:
    make_docs(vconn, "gone", 2)
    vid = vectorize(vconn, "gone")
    notices: list[str] = []
    vconn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    vconn.execute("DROP TABLE gone")
    assert any(f"vectorizer {vid} was removed with its table public.gone" in n for n in notices)
    assert vconn.execute("SELECT count(*) FROM azure_local_ai.vectorizer WHERE id = %s",
                         (vid,)).fetchone()[0] == 0
    assert vconn.execute("SELECT to_regclass(%s)",
                         (f"azure_local_ai.vectorizer_{vid}_queue",)).fetchone()[0] is None


def test_a_dropped_input_column_disables_the_vectorizer_and_writes_go_on(vconn,
                                                                         run_worker) -> None:
    make_docs(vconn, "lost", 2)
    vid = vectorize(vconn, "lost")
    vconn.execute("ALTER TABLE lost DROP COLUMN body")
    s = status(vconn, vid)
    assert s["disabled_reason"] == "column public.lost.body was dropped"
    vconn.execute("INSERT INTO lost (id, title) VALUES (3, 'still writable')")
    vconn.execute("UPDATE lost SET title = 'and updatable'")
    run_worker()  # a disabled vectorizer is left alone
    with pytest.raises(pgerrors.ObjectNotInPrerequisiteState, match="is disabled"):
        vconn.execute("SELECT azure_local_ai.alter_vectorizer(%s, prefix => 'x')", (vid,))
    vconn.execute("SELECT azure_local_ai.drop_vectorizer(%s)", (vid,))


def test_a_dropped_primary_key_disables_the_vectorizer(vconn) -> None:
    make_docs(vconn, "keyless", 2)
    vid = vectorize(vconn, "keyless")
    vconn.execute("ALTER TABLE keyless DROP CONSTRAINT keyless_pkey")
    assert "no primary key" in status(vconn, vid)["disabled_reason"]
    vconn.execute("INSERT INTO keyless (id, body) VALUES (3, 'no key, no queue')")


@pytest.mark.parametrize(("setup", "kwargs", "error", "message"), [
    ("CREATE TABLE bad (id int, body text, embedding vector(384))", {},
     pgerrors.ObjectNotInPrerequisiteState, "table public.bad has no primary key"),
    ("CREATE TABLE bad (id int PRIMARY KEY, body text, embedding vector(768))", {},
     pgerrors.DatatypeMismatch, r"is of type public.vector\(768\), not vector\(384\) or real\[\]"),
    ("CREATE TABLE bad (id int PRIMARY KEY, body integer, embedding vector(384))", {},
     pgerrors.DatatypeMismatch, "not a string type"),
    ("CREATE TABLE bad (id int PRIMARY KEY, body text, embedding vector(384))",
     {"model_uri": "no-such-model:v1"}, pgerrors.InvalidParameterValue, "not installed"),
    ("CREATE TABLE bad (id int PRIMARY KEY, body text, embedding vector(384))",
     {"chunks_table": "bad_chunks"}, pgerrors.InvalidParameterValue, "exactly one destination"),
    ("CREATE TABLE bad (id int PRIMARY KEY, body text)", {},
     pgerrors.UndefinedColumn, 'column "embedding" of table public.bad does not exist'),
])
def test_mistakes_get_a_clear_error(vconn, setup: str, kwargs: dict[str, Any],
                                    error: type[Exception], message: str) -> None:
    vconn.execute("DROP TABLE IF EXISTS bad")
    vconn.execute(setup)
    with pytest.raises(error, match=message) as info:
        vectorize(vconn, "bad", **kwargs)
    assert info.value.diag.message_hint or info.value.diag.message_detail \
        or error is pgerrors.InvalidParameterValue


def test_two_vectorizers_may_not_write_the_same_column(vconn) -> None:
    make_docs(vconn, "twice", 1)
    vid = vectorize(vconn, "twice")
    with pytest.raises(pgerrors.DuplicateObject, match=f"vectorizer {vid} already writes"):
        vectorize(vconn, "twice")


@pytest.fixture()
def roles(vconn: psycopg.Connection[Any]) -> Iterator[dict[str, str]]:
    """An owner, a stranger and a worker role of this test (cluster-wide: dropped after)."""
    names = {k: f"vec_{k}_{os.getpid()}" for k in ("owner", "stranger", "worker")}
    for name in names.values():
        vconn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        vconn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    vconn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(
        sql.Identifier(names["owner"])))
    yield names
    for name in names.values():
        vconn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        vconn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def as_role(params: dict[str, str], role: str) -> psycopg.Connection[Any]:
    return connect({**params, "user": role})


def test_only_the_owner_creates_and_changes_a_vectorizer(vconn, vec_db, roles) -> None:
    owner, stranger = roles["owner"], roles["stranger"]
    with as_role(vec_db, owner) as conn:
        make_docs(conn, "owned", 3)
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON owned TO {}").format(
            sql.Identifier(stranger)))
        vid = vectorize(conn, "owned")
        assert status(conn, vid)["pending"] == 3  # the owner sees its vectorizer
    not_owner = "must be owner of table public.owned"
    with as_role(vec_db, stranger) as conn:
        with pytest.raises(pgerrors.InsufficientPrivilege, match=not_owner):
            vectorize(conn, "owned", target_column="title")
        with pytest.raises(pgerrors.InsufficientPrivilege, match=not_owner):
            conn.execute("SELECT azure_local_ai.drop_vectorizer(%s)", (vid,))
        # not through the catalog either: row-level security hides the row from the UPDATE
        assert conn.execute("UPDATE azure_local_ai.vectorizer SET prefix = 'x' WHERE id = %s",
                            (vid,)).rowcount == 0
        # writing the table is all a writer needs: the queue is filled on its behalf
        conn.execute("INSERT INTO owned (id, body) VALUES (4, 'from a writer')")
        with pytest.raises(pgerrors.InsufficientPrivilege):
            conn.execute(f"SELECT count(*) FROM azure_local_ai.vectorizer_{vid}_queue")
    assert queued(vconn, vid) == 4
    assert vconn.execute("SELECT prefix FROM azure_local_ai.vectorizer WHERE id = %s",
                         (vid,)).fetchone()[0] == "passage: "


def test_a_worker_role_without_privileges_is_told_which(vconn, vec_db, roles,
                                                        deployed_socket) -> None:
    from pglocalai.vectorizer.report import Report  # noqa: PLC0415
    from pglocalai.vectorizer.worker import Options, Worker  # noqa: PLC0415

    make_docs(vconn, "guarded", 3)
    vid = vectorize(vconn, "guarded")
    worker = roles["worker"]
    vconn.execute(sql.SQL("GRANT SELECT ON guarded TO {}").format(sql.Identifier(worker)))
    dsn = conninfo({**vec_db, "user": worker})

    def run(expect: int) -> str:
        import io  # noqa: PLC0415

        out = io.StringIO()
        code = Worker(Options(dsn=dsn, socket=deployed_socket, once=True, signals=False,
                              poll_interval=0.2), Report(tty=True, stream=out)).run()
        assert code == expect, out.getvalue()
        return out.getvalue()

    out = run(expect=1)
    # the first table the worker touches is the inbox; the hint names all three
    assert f'permission denied for table vectorizer_{vid}_inbox' in out
    assert (f"SELECT, INSERT, UPDATE, DELETE on azure_local_ai.\"vectorizer_{vid}_queue\", "
            f"azure_local_ai.\"vectorizer_{vid}_inbox\" and "
            f"azure_local_ai.\"vectorizer_{vid}_failures\"") in out
    vconn.execute(sql.SQL("GRANT UPDATE (embedding) ON guarded TO {0}; "
                          "GRANT SELECT, INSERT, UPDATE, DELETE ON {1}, {2}, {3} TO {0}").format(
        sql.Identifier(worker), sql.Identifier("azure_local_ai", f"vectorizer_{vid}_queue"),
        sql.Identifier("azure_local_ai", f"vectorizer_{vid}_inbox"),
        sql.Identifier("azure_local_ai", f"vectorizer_{vid}_failures")))
    run(expect=0)
    assert status(vconn, vid)["pending"] == 0
    assert max_difference(vconn, "guarded") <= 1e-5


def test_a_new_owner_takes_the_vectorizer_over(vconn, vec_db, roles) -> None:
    make_docs(vconn, "handed", 1)
    vid = vectorize(vconn, "handed")
    vconn.execute(sql.SQL("ALTER TABLE handed OWNER TO {}").format(
        sql.Identifier(roles["owner"])))
    with as_role(vec_db, roles["owner"]) as conn:  # the new owner may read what is queued
        assert conn.execute(f"SELECT (SELECT count(*) FROM azure_local_ai.vectorizer_{vid}_queue)"
                            f" + (SELECT count(*) FROM azure_local_ai.vectorizer_{vid}_inbox)"
                            ).fetchone()[0] == 1
        conn.execute("SELECT azure_local_ai.alter_vectorizer(%s, prefix => 'query: ')", (vid,))
        conn.execute("SELECT azure_local_ai.drop_vectorizer(%s)", (vid,))
