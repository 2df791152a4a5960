"""One batch of one vectorizer, in one transaction: claim, read, embed, write, dequeue.

Before it, the inbox (the keys of inserted rows, azure_local_ai 1.2.0) is moved into the
queue in a short transaction of its own.

The transaction holds the claimed queue entries (``FOR UPDATE SKIP LOCKED``) from the
claim to the commit, so other workers pass them by, and a worker that dies (even by
SIGKILL) gives them back with its connection. The write compares the md5 of each row's
current input with the one embedded: a row changed meanwhile is not written (its change
has queued an entry of its own, which a later batch takes). Entries are deleted in the
same transaction as the vectors are written, so a row is never written and still queued,
nor dequeued and not written.

>>> # with conn (psycopg, autocommit) and client (pglocalai.client.Client):
>>> # result = run_batch(conn, client, vectorizer, Limits(batch_tokens=8192))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from pglocalai import errors
from pglocalai.vectorizer.embedding import (
    MAX_TEXT_BYTES,
    Embedder,
    describe,
    embed_texts,
    is_texts_fault,
)
from pglocalai.vectorizer.plan import FOLD_ROWS, GENERATION_QUERY, Vectorizer

FETCH = 32  # claimed entries fetched (and so locked) per round trip


class Stale(Exception):
    """The vectorizer changed (alter_vectorizer, disabled, dropped) since it was loaded."""


class Chunker(Protocol):
    def chunk(self, model: str, text: str, max_tokens: int, overlap_tokens: int,
              prefix: str = "") -> list[str]: ...


@dataclass(frozen=True)
class Limits:
    batch_tokens: int = 8192  # estimated tokens claimed per batch
    max_rows: int = 2048  # entries claimed per batch at most
    max_tokens: int = 512  # the model's limit: a longer text costs no more (it is truncated)
    timeout_ms: int | None = 300_000  # per request to the runtime


@dataclass
class BatchResult:
    claimed: int = 0  # queue entries taken off
    written: int = 0  # rows whose vector (or chunks) were written, NULL included
    stale: int = 0  # rows changed while embedded (queued again by their change)
    absent: int = 0  # rows deleted before they were embedded
    failed: int = 0  # rows recorded in the failures table
    errors: list[str] = field(default_factory=list)


@dataclass
class _Row:
    keys: tuple[str, ...]
    seqs: list[int]
    present: bool = False
    text: str | None = None
    md5: str | None = None
    size: int = 0
    literal: str | None = None  # the vector (target column)
    chunks: list[tuple[str, str]] = field(default_factory=list)  # (chunk, vector) pairs
    error: str | None = None


def estimate_tokens(size: int, prefix_bytes: int, limits: Limits, chunked: bool) -> int:
    """Tokens a text of ``size`` UTF-8 bytes costs: about 4 bytes a token, truncated at the
    model's limit (unless it is chunked: then every token counts)."""
    tokens = 2 + math.ceil((size + prefix_bytes) / 4)
    return tokens if chunked else min(tokens, limits.max_tokens)


def fold_inbox(conn: psycopg.Connection[Any], v: Vectorizer, statements: int = 0) -> int:
    """Move the rows inserted since the last look from the inbox to the queue; how many.

    Each statement moves up to FOLD_ROWS rows in its own short transaction (``conn`` is in
    autocommit), so inbox rows are not held while a batch is in the model, and other workers
    skip them, never wait. ``statements``: at most that many (0: until the inbox is empty);
    a lane moves one before each batch, so that a backfill's first batch starts at once."""
    if not v.has_inbox:
        return 0
    total, done = 0, 0
    while True:
        (moved,) = conn.execute(v.sql.fold).fetchone()
        total, done = total + moved, done + 1
        if moved < FOLD_ROWS or done == statements:
            return total


def work_waiting(conn: psycopg.Connection[Any], v: Vectorizer) -> bool:
    """Rows in the inbox or the queue, those other sessions hold included: work on its way
    (another session is moving the inbox, or has just moved it) or under way, not done."""
    inbox = f" or exists {v.sql.inbox_any}" if v.has_inbox else ""
    return bool(conn.execute(f"select exists (select from {v.queue}){inbox}").fetchone()[0])


def run_batch(conn: psycopg.Connection[Any], client: Embedder, v: Vectorizer,
              limits: Limits) -> BatchResult | None:
    """Process one batch; None when nothing of this vectorizer is waiting (or all is held)."""
    fold_inbox(conn, v, statements=1)
    with conn.transaction():
        rows = _claim(conn, v, limits)
        if not rows:
            return None
        generation = conn.execute(GENERATION_QUERY, (v.id,)).fetchone()
        if generation is None or generation[0] != v.generation or generation[1] is not None:
            raise Stale(f"vectorizer {v.id} changed")
        _read(conn, v, rows)
        if v.chunked:
            _chunk_and_embed(client, v, rows, limits)
        else:
            _embed(client, v, rows, limits)
        # alter_vectorizer committed while the model ran: these vectors are of the old model
        # and would be replaced anyway; give the entries back instead of writing them
        generation = conn.execute(GENERATION_QUERY, (v.id,)).fetchone()
        if generation is None or generation[0] != v.generation:
            raise Stale(f"vectorizer {v.id} changed")
        result = _write(conn, v, rows)
        conn.execute(v.sql.delete_queued, ([s for r in rows for s in r.seqs],))
        result.claimed = sum(len(r.seqs) for r in rows)
        _failures(conn, v, rows)
        return result


def _claim(conn: psycopg.Connection[Any], v: Vectorizer, limits: Limits) -> list[_Row]:
    by_key: dict[tuple[str, ...], _Row] = {}
    prefix_bytes = len(v.prefix.encode("utf-8"))
    budget = limits.batch_tokens
    with conn.cursor(name=f"pglocalai_claim_{v.id}") as cur:
        cur.execute(v.sql.claim + " limit %s", (limits.max_rows,))
        while budget > 0 and len(by_key) < limits.max_rows:
            fetched = cur.fetchmany(FETCH)
            for seq, *keys, size in fetched:
                key = tuple(keys)
                row = by_key.get(key)
                if row is None:
                    by_key[key] = _Row(key, [seq])
                    budget -= estimate_tokens(size, prefix_bytes, limits, v.chunked)
                else:  # the row changed while an earlier entry was being processed
                    row.seqs.append(seq)
            if len(fetched) < FETCH:
                break
    return list(by_key.values())


def _key_arrays(rows: Sequence[_Row], n: int) -> list[list[str]]:
    return [[r.keys[i] for r in rows] for i in range(n)]


def _read(conn: psycopg.Connection[Any], v: Vectorizer, rows: list[_Row]) -> None:
    cur = conn.execute(v.sql.read, (MAX_TEXT_BYTES, *_key_arrays(rows, len(v.keys))))
    for i, present, text, md5, size in cur:
        row = rows[i - 1]
        row.present, row.text, row.md5, row.size = present, text, md5, size or 0
        if present and md5 is not None and text is None:
            row.error = (f"input of {size} bytes exceeds the runtime's limit of "
                         f"{MAX_TEXT_BYTES} bytes per text")


def _embed(client: Embedder, v: Vectorizer, rows: list[_Row], limits: Limits) -> None:
    todo = [r for r in rows if r.present and r.text is not None and r.error is None]
    if not todo:
        return
    out = embed_texts(client, v.model_uri, [v.prefix + r.text for r in todo if r.text is not None],
                      array_literal=v.target_is_array, timeout_ms=limits.timeout_ms)
    for i, row in enumerate(todo):
        row.literal = out.literals[i]
        row.error = out.errors.get(i)


def _chunk_and_embed(client: Embedder, v: Vectorizer, rows: list[_Row], limits: Limits) -> None:
    chunker: Chunker = client  # type: ignore[assignment] - the Client has both methods
    texts: list[str] = []
    owners: list[tuple[_Row, str]] = []
    for row in rows:
        if not row.present or row.text is None or row.error is not None:
            continue
        try:
            pieces = chunker.chunk(v.model_uri, row.text, v.chunk_tokens or limits.max_tokens,
                                   v.overlap_tokens, v.prefix)
        except errors.PglocalaiError as exc:
            if not is_texts_fault(exc):
                raise
            row.error = describe(exc)
            continue
        for piece in pieces:
            texts.append(v.prefix + piece)
            owners.append((row, piece))
    if not texts:
        return
    out = embed_texts(client, v.model_uri, texts, timeout_ms=limits.timeout_ms)
    for i, (row, piece) in enumerate(owners):
        if i in out.errors:
            row.error = row.error or out.errors[i]
        else:
            row.chunks.append((piece, out.literals[i] or ""))


def _write(conn: psycopg.Connection[Any], v: Vectorizer, rows: list[_Row]) -> BatchResult:
    result = BatchResult()
    n = len(v.keys)
    ready = [r for r in rows if r.present and r.error is None]
    result.absent = sum(1 for r in rows if not r.present)
    result.failed = sum(1 for r in rows if r.present and r.error is not None)
    result.errors = [r.error for r in rows if r.present and r.error is not None]
    if v.chunked:
        written = _write_chunks(conn, v, rows, ready)
    elif ready:
        cur = conn.execute(v.sql.write, (*_key_arrays(ready, n), [r.md5 for r in ready],
                                         [r.literal for r in ready],
                                         list(range(1, len(ready) + 1))))
        written = len(cur.fetchall())
    else:
        written = 0
    result.written = written
    result.stale = len(ready) - written
    return result


def _write_chunks(conn: psycopg.Connection[Any], v: Vectorizer, rows: list[_Row],
                  ready: list[_Row]) -> int:
    n = len(v.keys)
    absent = [r for r in rows if not r.present]
    if absent:
        conn.execute(v.sql.delete_chunks_of_absent,
                     (*_key_arrays(absent, n), *_key_arrays(absent, n)))
    if not ready:
        return 0
    cur = conn.execute(v.sql.lock_fresh, (*_key_arrays(ready, n), [r.md5 for r in ready],
                                          list(range(1, len(ready) + 1))))
    fresh = [ready[i - 1] for (i,) in cur.fetchall()]
    if not fresh:
        return 0
    conn.execute(v.sql.delete_chunks, tuple(_key_arrays(fresh, n)))
    pieces = [(r, seq, chunk, literal) for r in fresh
              for seq, (chunk, literal) in enumerate(r.chunks, start=1)]
    if pieces:
        conn.execute(v.sql.insert_chunks, (
            *[[p[0].keys[i] for p in pieces] for i in range(n)],
            [p[1] for p in pieces], [p[2] for p in pieces], [p[3] for p in pieces]))
    return len(fresh)


def _failures(conn: psycopg.Connection[Any], v: Vectorizer, rows: list[_Row]) -> None:
    n = len(v.keys)
    failed = [r for r in rows if r.present and r.error is not None]
    done = [r for r in rows if r.error is None]
    if done and conn.execute(v.sql.failures_exist).fetchone()[0]:
        conn.execute(v.sql.forget_failures, tuple(_key_arrays(done, n)))
    if failed:
        conn.execute(v.sql.record_failures, (*_key_arrays(failed, n),
                                             [r.error for r in failed]))
