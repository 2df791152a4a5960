"""chunk_text and vectorizers that keep a chunks table: limits by the model's own tokenizer,
lossless chunks, chunks replaced or removed with their row.

These need a runtime that serves CHUNK requests: the ``runtime`` fixture starts one from
this checkout (the real engine and model), and the sessions and workers here use it.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from support import connect
from vectorizer_support import E5, TEXTS, status

from pglocalai.client import Client
from pglocalai.protocol import Kind

pytestmark = [pytest.mark.pg, pytest.mark.model, pytest.mark.runtime]

SENTENCES = [t for t in TEXTS if t.endswith(".") and t.isascii()]
ENGLISH = "\n\n".join(
    " ".join(SENTENCES[(p * 3 + s) % len(SENTENCES)] for s in range(6)) for p in range(5))
CHINESE = "人工智能正在改变我们的生活方式。" * 60 + "机器学习需要大量的数据来训练模型。" * 40
JAPANESE_NO_SPACES = "東京都の天気は晴れのち曇りでしょう" * 80


@pytest.fixture()
def conn(vec_db: dict[str, str], runtime: Any) -> Any:
    with connect(vec_db, runtime.socket) as c:
        yield c


def chunks_and_overlaps(socket: str, text: str, max_tokens: int, overlap: int,
                        prefix: str = "") -> tuple[list[str], list[int]]:
    with Client(socket) as client:
        reply = client.request(Kind.CHUNK, {"model": E5, "inputs": [text], "prefix": prefix,
                                            "max_tokens": max_tokens, "overlap_tokens": overlap})
    return reply.header["chunks"], reply.header["overlaps"]


@pytest.mark.parametrize("text", [ENGLISH, CHINESE, JAPANESE_NO_SPACES],
                         ids=["paragraphs", "chinese", "no-spaces"])
@pytest.mark.parametrize(("max_tokens", "overlap"), [(64, 0), (128, 16), (512, 64)])
def test_chunks_fit_the_model_and_give_the_text_back(runtime, text: str, max_tokens: int,
                                                     overlap: int) -> None:
    chunks, overlaps = chunks_and_overlaps(runtime.socket, text, max_tokens, overlap,
                                           prefix="passage: ")
    assert chunks[0] + "".join(c[o:] for c, o in zip(chunks[1:], overlaps[1:], strict=True)) \
        == text
    with Client(runtime.socket) as client:
        counts = client.token_count(E5, ["passage: " + c for c in chunks])
        whole = client.token_count(E5, ["passage: " + text])[0]
    assert max(counts) <= max_tokens
    assert len(chunks) >= whole / max_tokens  # not more than needed... and no fewer
    if len(chunks) > 2:
        assert min(counts[:-1]) >= max_tokens // 3  # chunks are filled, not crumbs
    if overlap:
        assert all(o > 0 for o in overlaps[1:])
        assert all(chunks[i].endswith(chunks[i + 1][:overlaps[i + 1]])
                   for i in range(len(chunks) - 1))


def test_paragraphs_and_sentences_are_the_cutting_points(runtime) -> None:
    chunks, _ = chunks_and_overlaps(runtime.socket, ENGLISH, 200, 0)
    assert len(chunks) > 2
    assert all(c.endswith((".\n\n", ". ")) for c in chunks[:-1])
    paragraphs, _ = chunks_and_overlaps(runtime.socket, ENGLISH, 512, 0)
    assert any(c.endswith(".\n\n") for c in paragraphs[:-1])


def test_chunk_text_in_sql(conn) -> None:
    rows = conn.execute("SELECT seq, chunk FROM azure_local_ai.chunk_text(%s, %s, 64, 8)",
                        (E5, ENGLISH)).fetchall()
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) > 3
    assert max(conn.execute("SELECT azure_local_ai.token_count(%s, c.chunk) FROM "
                            "azure_local_ai.chunk_text(%s, %s, 64, 8) c",
                            (E5, E5, ENGLISH)).fetchall())[0] <= 64
    assert conn.execute("SELECT count(*) FROM azure_local_ai.chunk_text(%s, '')",
                        (E5,)).fetchone()[0] == 0


def make_long_docs(conn: psycopg.Connection[Any], table: str) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, body text)")
    conn.execute(f"INSERT INTO {table} VALUES ('en', %s), ('zh', %s), ('short', 'just a line'), "
                 "('nothing', NULL)", (ENGLISH, CHINESE))


def test_a_chunks_table_is_kept_in_step(conn, runtime, run_worker) -> None:
    make_long_docs(conn, "articles")
    vid = conn.execute("SELECT azure_local_ai.create_vectorizer('articles', 'body', "
                       "chunks_table => 'articles_chunks', chunk_tokens => 128, "
                       "overlap_tokens => 16)").fetchone()[0]
    cols = conn.execute("SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), "
                        "', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = "
                        "'articles_chunks'::regclass AND attnum > 0").fetchone()[0]
    assert cols == "id text, chunk_seq integer, chunk text, embedding vector(384)"
    run_worker(socket=runtime.socket)
    expect = conn.execute("SELECT a.id, c.seq, c.chunk FROM articles a, "
                          "azure_local_ai.chunk_text(%s, a.body, 128, 16) c ORDER BY 1, 2",
                          (E5,)).fetchall()
    got = conn.execute("SELECT id, chunk_seq, chunk FROM articles_chunks ORDER BY 1, 2").fetchall()
    assert got == expect and {r[0] for r in got} == {"en", "zh", "short"}
    diff = conn.execute("SELECT max(abs(a - b)) FROM articles_chunks c, unnest(c.embedding::real[],"
                        " azure_local_ai.create_embeddings(%s, c.chunk)) u(a, b)", (E5,)).fetchone()
    assert diff[0] <= 1e-5
    # search over the chunks, joined back to their rows
    hits = conn.execute(
        "SELECT a.id, min(c.embedding <=> azure_local_ai.create_embeddings(%s, %s)::vector) d "
        "FROM articles_chunks c JOIN articles a USING (id) GROUP BY a.id ORDER BY d LIMIT 1",
        (E5, CHINESE[:40])).fetchone()
    assert hits[0] == "zh"
    # changed text: its chunks replaced; NULL or deleted: its chunks gone
    conn.execute("UPDATE articles SET body = 'a single new line' WHERE id = 'en'")
    conn.execute("UPDATE articles SET body = NULL WHERE id = 'short'")
    conn.execute("DELETE FROM articles WHERE id = 'zh'")
    assert conn.execute("SELECT count(*) FROM articles_chunks WHERE id = 'zh'").fetchone()[0] == 0
    run_worker(socket=runtime.socket)
    assert conn.execute("SELECT id, chunk_seq, chunk FROM articles_chunks ORDER BY 1, 2"
                        ).fetchall() == [("en", 1, "a single new line")]
    assert status(conn, vid)["pending"] == 0


def test_the_prefix_counts_against_the_limit(conn, runtime, run_worker) -> None:
    make_long_docs(conn, "prefixed")
    conn.execute("SELECT azure_local_ai.create_vectorizer('prefixed', 'body', "
                 "prefix => 'passage: ', chunks_table => 'prefixed_chunks', chunk_tokens => 64)")
    run_worker(socket=runtime.socket)
    counts = [r[0] for r in conn.execute(
        "SELECT azure_local_ai.token_count(%s, 'passage: ' || chunk) FROM prefixed_chunks",
        (E5,)).fetchall()]
    assert counts and max(counts) <= 64
    diff = conn.execute("SELECT max(abs(a - b)) FROM prefixed_chunks c, unnest(c.embedding::real[],"
                        " azure_local_ai.create_embeddings(%s, 'passage: ' || c.chunk)) u(a, b)",
                        (E5,)).fetchone()[0]
    assert diff <= 1e-5
