"""Helpers of the vectorizer tests (fixtures: conftest.py)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from support import ROOT

from pglocalai.vectorizer.plan import CATALOG_QUERY, Vectorizer

E5 = "multilingual-e5-small:v1"
TEXTS = [t["text"] for t in json.loads(
    (ROOT / "tests" / "data" / "multilingual.json").read_text(encoding="utf-8"))["texts"]
    if t.get("text")]


def conninfo(params: dict[str, str]) -> str:
    return psycopg.conninfo.make_conninfo(**params)


def make_docs(conn: psycopg.Connection[Any], table: str, n: int, *,
              target: str = "vector(384)") -> None:
    """Table ``table`` (id integer key, title, body, embedding) holding ``n`` texts."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(table)))
    conn.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, title text, body text, "
                         "embedding {})").format(sql.Identifier(table), sql.SQL(target)))
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("INSERT INTO {} (id, title, body) VALUES (%s, %s, %s)").format(
            sql.Identifier(table)), [(i, f"title {i}", TEXTS[i % len(TEXTS)] + f" ({i})")
                                     for i in range(1, n + 1)])


def max_difference(conn: psycopg.Connection[Any], table: str, prefix: str = "passage: ",
                   model: str = E5) -> float:
    """Largest difference between a stored vector and create_embeddings(model, prefix||body)."""
    row = conn.execute(sql.SQL(
        "SELECT max(abs(a - b)) FROM {} t, "
        "unnest(t.embedding::real[], azure_local_ai.create_embeddings(%s, %s || t.body)) "
        "AS u(a, b) WHERE t.body IS NOT NULL").format(sql.Identifier(table)),
        (model, prefix)).fetchone()
    return float(row[0])


def status(conn: psycopg.Connection[Any], vid: int) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM azure_local_ai.vectorizer_status WHERE id = %s",
                          (vid,)).fetchone()
    assert row is not None, f"vectorizer {vid} is not in vectorizer_status"
    return row


def queued(conn: psycopg.Connection[Any], vid: int) -> int:
    """Entries waiting: in the queue, and in the inbox (INSERTs a worker has not queued yet)."""
    return int(conn.execute(sql.SQL(
        "SELECT (SELECT count(*) FROM azure_local_ai.{}) + (SELECT count(*) FROM azure_local_ai.{})"
    ).format(sql.Identifier(f"vectorizer_{vid}_queue"),
             sql.Identifier(f"vectorizer_{vid}_inbox"))).fetchone()[0])


def load(conn: psycopg.Connection[Any], vid: int) -> Vectorizer:
    """Vectorizer ``vid`` as a worker loads it (names qualified whatever the search_path)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SET LOCAL search_path TO pg_catalog, pg_temp")
        return next(Vectorizer.from_row(r) for r in cur.execute(CATALOG_QUERY) if r["id"] == vid)


def vectorize(conn: psycopg.Connection[Any], table: str, target: str = "embedding",
              prefix: str = "passage: ") -> int:
    """A vectorizer of ``table``'s body into ``target``; its id."""
    return int(conn.execute(
        "SELECT azure_local_ai.create_vectorizer(%s, 'body', %s, prefix => %s)",
        (table, target, prefix)).fetchone()[0])
