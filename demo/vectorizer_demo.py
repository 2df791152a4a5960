"""The demo's second part: a vectorizer keeps a table's embeddings current while rows arrive.

The documents are inserted in waves, as an application would write them; each INSERT only
appends the new keys to the vectorizer's inbox, and the vectorizer worker that `make up`
started embeds them in the background. The backlog is read from
azure_local_ai.vectorizer_status as it drains. A second vectorizer keeps a chunks table of the
same rows, searched and joined back to its documents.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

WAVES = 4
WAVE_GAP_S = 0.3  # the next wave comes while the worker is still at work or just done
TIMEOUT_S = 60.0
CHUNK_TOKENS = 24  # small, so that the demo's one-sentence documents make several chunks

SETUP = """
DROP TABLE IF EXISTS demo_feed_chunks, demo_feed;
CREATE TABLE demo_feed (
    id integer PRIMARY KEY,
    lang text NOT NULL,
    text text NOT NULL,
    embedding vector(384)
)"""

# pending rows of the column's vectorizer and of the chunks' one, failed rows, workers alive,
# rows with a vector: one statement, one snapshot
STATUS = """
SELECT array_agg(pending ORDER BY id), coalesce(sum(failed), 0)::bigint,
       coalesce(max(workers), 0)::integer, (SELECT count(embedding) FROM demo_feed)
FROM azure_local_ai.vectorizer_status WHERE source = 'demo_feed'::regclass"""

SEARCH = sql.SQL("""
WITH q AS (SELECT azure_local_ai.create_embeddings({model}, %s)::vector AS v)
SELECT d.lang, d.text, 1 - (d.embedding <=> q.v) AS similarity
FROM demo_feed d, q
ORDER BY d.embedding <=> q.v
LIMIT 3""")

# The best documents by their best chunk: the chunk that matched, joined back to its row.
SEARCH_CHUNKS = sql.SQL("""
WITH q AS (SELECT azure_local_ai.create_embeddings({model}, %s)::vector AS v),
best AS (
    SELECT DISTINCT ON (c.id) c.id, c.chunk, 1 - (c.embedding <=> q.v) AS similarity
    FROM demo_feed_chunks c, q
    ORDER BY c.id, c.embedding <=> q.v)
SELECT d.lang, d.text, best.similarity, best.chunk
FROM best JOIN demo_feed d USING (id)
ORDER BY best.similarity DESC
LIMIT 3""")

QUERY = ("en", "query: which index should I use to search vectors?")
CHUNK_QUERY = ("fr", "query: comment rendre une requête SQL plus rapide ?")


class DemoError(Exception):
    """The vectorizer part could not run; the message says why and what to do."""


def run(conn: psycopg.Connection[Any], docs: list[tuple[int, str, str]], model: str,
        say: Callable[[str], None], show: Callable[[str, list[tuple[Any, ...]]], None]) -> None:
    """Create the vectorizers, feed the waves, watch the backlog drain, search."""
    if conn.execute("SELECT pg_catalog.to_regclass('azure_local_ai.vectorizer')"
                    ).fetchone()[0] is None:
        raise DemoError("azure_local_ai is older than 1.1.0 in this database: no vectorizers "
                        "(ALTER EXTENSION azure_local_ai UPDATE)")
    conn.execute("SET client_min_messages = warning")  # the NOTICEs of a re-run's DROP TABLE
    conn.execute(SETUP)
    ids = [conn.execute(
        "SELECT azure_local_ai.create_vectorizer('demo_feed', 'text', 'embedding', "
        "model_uri => %s, prefix => 'passage: ')", (model,)).fetchone()[0]]
    ids.append(conn.execute(
        "SELECT azure_local_ai.create_vectorizer('demo_feed', 'text', model_uri => %s, "
        "prefix => 'passage: ', chunks_table => 'demo_feed_chunks', chunk_tokens => %s)",
        (model, CHUNK_TOKENS)).fetchone()[0])
    say(f"created vectorizers {ids[0]} (column demo_feed.embedding) and {ids[1]} (table "
        f"demo_feed_chunks, {CHUNK_TOKENS}-token chunks) on an empty table demo_feed")
    feed(conn, docs, say)
    n_chunks = conn.execute("SELECT count(*) FROM demo_feed_chunks").fetchone()[0]
    say(f"every row has its vector, and {n_chunks} chunks of {len(docs)} documents have theirs")
    literal = sql.Literal(model)
    for title, query, statement in (
            ("search over demo_feed.embedding", QUERY, SEARCH),
            ("search over the chunks, joined back to demo_feed", CHUNK_QUERY, SEARCH_CHUNKS)):
        rows = conn.execute(statement.format(model=literal), (query[1],)).fetchall()
        show(f"[{query[0]}] {query[1].removeprefix('query: ')}  ({title})",
             [(lang, similarity, text) for lang, text, similarity, *_ in rows])


def feed(conn: psycopg.Connection[Any], docs: list[tuple[int, str, str]],
         say: Callable[[str], None]) -> None:
    """Insert the documents in waves and print the backlog until the worker caught up."""
    size = -(-len(docs) // WAVES)
    waves = [docs[i:i + size] for i in range(0, len(docs), size)]
    start = time.perf_counter()
    next_wave, last_line, workers_seen = 0.0, "", False
    while True:
        now = time.perf_counter() - start
        if waves and now >= next_wave:
            wave = waves.pop(0)
            t = time.perf_counter()
            with conn.transaction():
                conn.cursor().executemany(
                    "INSERT INTO demo_feed (id, lang, text) VALUES (%s, %s, %s)", wave)
            took = (time.perf_counter() - t) * 1000
            say(f"{now:5.2f} s  wave {WAVES - len(waves)}/{WAVES}: inserted {len(wave)} rows "
                f"in {took:.1f} ms (the INSERT only appends their keys to an inbox)")
            next_wave = now + WAVE_GAP_S
        (column, chunks), failed, workers, embedded = conn.execute(STATUS).fetchone()
        workers_seen |= workers > 0
        line = (f"backlog: {column} rows pending for the column, {chunks} for the chunks; "
                f"{embedded} rows embedded" + (f", {failed} failed" if failed else ""))
        if line != last_line:
            say(f"{now:5.2f} s  {line}")
            last_line = line
        if not waves and column == chunks == 0:
            say(f"caught up {now:.2f} s after the first wave")
            return
        if now > 5 and not workers_seen:
            raise DemoError("no vectorizer worker is running for this database "
                            "(make up starts one; or run: pglocalai worker)")
        if now > TIMEOUT_S:
            raise DemoError(f"the worker did not catch up within {TIMEOUT_S:.0f} s "
                            "(see azure_local_ai.vectorizer_status and the worker's log)")
        time.sleep(0.05)
