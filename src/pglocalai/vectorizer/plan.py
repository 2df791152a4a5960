"""One vectorizer as the catalog describes it, and the SQL the worker runs for it.

Pure: builds text, runs nothing. The worker reads the catalog with ``search_path``
set to ``pg_catalog, pg_temp``, so ``source::text`` and ``format_type`` come back
schema-qualified and quoted and can be pasted into statements run in any session.

Keys travel as text both ways (``k::text`` out, ``v.k::<type>`` back in): text
output and input of a type round-trip in one session, whatever the type (integer,
uuid, a composite key of timestamptz and text, ...).

>>> v = Vectorizer.from_row(CATALOG_EXAMPLE)
>>> print(v.sql.delete_queued)
delete from azure_local_ai."vectorizer_1_queue" where seq = any(%s::bigint[])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

# What the worker reads of the catalog (azure_local_ai.vectorizer, filtered by row-level security
# to the vectorizers whose table the role can read).
CATALOG_QUERY = """
select v.id, v.generation, v.source::text as source, v.input_column, v.target_column,
       pg_catalog.format_type(a.atttypid, a.atttypmod) as target_type,
       a.atttypid = 'pg_catalog.float4[]'::pg_catalog.regtype as target_is_array,
       v.chunks_table::text as chunks_table, v.chunk_key_columns, v.model_uri, v.prefix,
       v.chunk_tokens, v.overlap_tokens, v.key_columns, v.disabled_reason,
       pg_catalog.to_regclass(pg_catalog.format('azure_local_ai.%I',
                                                'vectorizer_' || v.id || '_inbox')) is not null
           as has_inbox
from azure_local_ai.vectorizer v
left join pg_catalog.pg_attribute a
    on a.attrelid = coalesce(v.chunks_table, v.source)
   and a.attname = coalesce(v.target_column, 'embedding') and not a.attisdropped
order by v.id
"""

GENERATION_QUERY = (
    "select generation, disabled_reason from azure_local_ai.vectorizer where id = %s")

MAX_ATTEMPTS = 8  # then a row waits for retry_vectorizer_failures()
FOLD_ROWS = 20_000  # inbox rows moved to the queue per statement (a short transaction)

CATALOG_EXAMPLE: dict[str, Any] = {
    "id": 1, "generation": 1, "source": "public.docs", "input_column": "body",
    "target_column": "embedding", "target_type": "public.vector(384)", "target_is_array": False,
    "chunks_table": None, "chunk_key_columns": None, "model_uri": "multilingual-e5-small:v1",
    "prefix": "passage: ", "chunk_tokens": None, "overlap_tokens": 0,
    "key_columns": [{"name": "id", "type": "integer", "eq": "operator(pg_catalog.=)"}],
    "disabled_reason": None, "has_inbox": True,
}


@dataclass(frozen=True)
class Key:
    name: str  # the source's column
    type: str  # format_type, qualified
    eq: str  # operator(schema.=) of the primary key's operator class


@dataclass(frozen=True)
class Vectorizer:
    """A catalog row. ``sql`` holds the statements, built once per generation."""

    id: int
    generation: int
    source: str
    input_column: str
    target_column: str | None
    target_type: str | None  # of the target column, or of the chunks table's embedding
    target_is_array: bool
    chunks_table: str | None
    chunk_key_columns: tuple[str, ...]
    model_uri: str
    prefix: str
    chunk_tokens: int | None
    overlap_tokens: int
    keys: tuple[Key, ...]
    disabled_reason: str | None
    has_inbox: bool = False  # azure_local_ai 1.2.0: INSERTs arrive in an inbox
    sql: Statements = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sql", Statements(self))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Vectorizer:
        keys = row["key_columns"]
        if isinstance(keys, str):
            keys = json.loads(keys)
        return cls(
            id=int(row["id"]), generation=int(row["generation"]), source=row["source"],
            input_column=row["input_column"], target_column=row["target_column"],
            target_type=row["target_type"], target_is_array=bool(row["target_is_array"]),
            chunks_table=row["chunks_table"],
            chunk_key_columns=tuple(row["chunk_key_columns"] or ()),
            model_uri=row["model_uri"], prefix=row["prefix"] or "",
            chunk_tokens=row["chunk_tokens"], overlap_tokens=int(row["overlap_tokens"] or 0),
            keys=tuple(Key(k["name"], k["type"], k["eq"]) for k in keys or ()),
            disabled_reason=row["disabled_reason"], has_inbox=bool(row.get("has_inbox")))

    @property
    def queue(self) -> str:
        return f'azure_local_ai."vectorizer_{self.id}_queue"'

    @property
    def inbox(self) -> str:
        return f'azure_local_ai."vectorizer_{self.id}_inbox"'

    @property
    def failures(self) -> str:
        return f'azure_local_ai."vectorizer_{self.id}_failures"'

    @property
    def chunked(self) -> bool:
        return self.chunks_table is not None

    @property
    def destination(self) -> str:
        if self.chunks_table:
            return self.chunks_table
        return f"{self.source}.{_ident(self.target_column or '')}"

    def privileges_hint(self) -> str:
        """What a worker's role needs for this vectorizer (the hint of a permission error)."""
        write = (f"SELECT, INSERT, DELETE on {self.destination} and UPDATE on a column of "
                 f"{self.source} (for its row locks)" if self.chunked
                 else f"UPDATE on {self.destination}")
        tables = f"{self.queue}, {self.inbox} and {self.failures}" if self.has_inbox \
            else f"{self.queue} and {self.failures}"
        return (f"the worker's role needs SELECT on {self.source}, {write}, and SELECT, INSERT, "
                f"UPDATE, DELETE on {tables}; the table's owner can grant them")

    def label(self) -> str:
        """How logs and the console name it: ``1 public.docs.body``."""
        return f"{self.id} {self.source}.{_ident(self.input_column)}"


def _ident(name: str) -> str:
    return sql.Identifier(name).as_string()


class Statements:
    """The SQL of one vectorizer. ``%s`` placeholders take lists (psycopg arrays)."""

    def __init__(self, v: Vectorizer) -> None:
        n = len(v.keys)
        # (source column, key, queue column k<i>) for each primary-key column, in key order
        cols = [(_ident(k.name), k, f"k{i}") for i, k in enumerate(v.keys, start=1)]
        ks = [q for _, _, q in cols]
        inp = f"s.{_ident(v.input_column)}::text"
        # text arrays of keys: unnest(%s::text[], ...) as v(k1, ..., kn, <more>)
        key_arrays = ", ".join(["%s::text[]"] * n)
        join_v = " and ".join(f"s.{c} {k.eq} v.{q}::{k.type}" for c, k, q in cols)
        join_q = " and ".join(f"s.{c} {k.eq} q.{q}" for c, k, q in cols)
        join_f = " and ".join(f"f.{q} {k.eq} v.{q}::{k.type}" for _, k, q in cols)
        probe_r = " and ".join(f"q.{q} {k.eq} r.{q}" for _, k, q in cols)
        typed_v = ", ".join(f"v.{q}::{k.type}" for _, k, q in cols)
        kcols = ", ".join(ks)
        src0 = cols[0][0] if cols else "ctid"
        self.key_count = n

        # Statement 1 locks queue entries in order (a cursor: the worker fetches until its
        # token budget is spent) and sizes their texts. The texts themselves are read by
        # statement 2, after the locks: a writer that changed a row while holding the KEY SHARE
        # probe lock on an entry has committed before that entry could be locked.
        self.claim = (
            f"select q.seq, {', '.join(f'q.{k}::text' for k in ks)}, "
            f"coalesce(pg_catalog.octet_length({inp}), 0) "
            f"from {v.queue} q left join {v.source} s on {join_q} "
            f"order by q.seq for update of q skip locked")
        self.read = (
            f"select v.i, s.{src0} is not null, "
            f"case when pg_catalog.octet_length({inp}) <= %s then {inp} end, "
            f"pg_catalog.md5({inp}), pg_catalog.octet_length({inp}) "
            f"from unnest({key_arrays}) with ordinality as v({kcols}, i) "
            f"left join {v.source} s on {join_v} order by v.i")
        self.failures_exist = f"select exists (select from {v.failures})"
        # The inbox (INSERTs, 1.2.0) into the queue, in the worker's own short transaction:
        # rows another worker is moving are skipped, not waited for; a key is queued unless an
        # unclaimed entry for it exists (as the UPDATE trigger does), and the queue's count
        # trigger counts what is queued.
        probe_m = " and ".join(f"q.{q} {k.eq} m.{q}" for _, k, q in cols)
        self.inbox_any = f"(select from {v.inbox} limit 1)"  # a row, if there is one
        self.fold = (
            f"with moved as (delete from {v.inbox} i using (select ctid from {v.inbox} "
            f"limit {FOLD_ROWS} for update skip locked) x where i.ctid = x.ctid "
            f"returning {', '.join(f'i.{k}' for k in ks)}, i.queued_at) "
            f", queued as (insert into {v.queue} ({kcols}, queued_at) "
            f"select {', '.join(f'm.{k}' for k in ks)}, m.queued_at from moved m "
            f"where not exists (select from {v.queue} q where {probe_m} "
            f"for key share skip locked)) "
            f"select pg_catalog.count(*) from moved")
        self.delete_queued = f"delete from {v.queue} where seq = any(%s::bigint[])"
        self.forget_failures = (
            f"delete from {v.failures} f using unnest({key_arrays}) as v({kcols}) "
            f"where {join_f}")
        backoff = ("pg_catalog.now() + least(interval '1 hour', "
                   "interval '30 seconds' * pg_catalog.power(2, f.attempts))")
        self.record_failures = (
            f"insert into {v.failures} as f ({kcols}, error, attempts, first_failed_at, "
            f"last_attempt_at, retry_at) "
            f"select {typed_v}, v.error, 1, "
            f"pg_catalog.now(), pg_catalog.now(), pg_catalog.now() + interval '30 seconds' "
            f"from unnest({key_arrays}, %s::text[]) as v({kcols}, error) "
            f"on conflict ({kcols}) do update set error = excluded.error, "
            f"attempts = f.attempts + 1, last_attempt_at = pg_catalog.now(), "
            f"retry_at = case when f.attempts + 1 >= {MAX_ATTEMPTS} then null else {backoff} end")
        self.requeue_due = (
            f"with r as (update {v.failures} set retry_at = null "
            f"where retry_at <= pg_catalog.now() returning {kcols}) "
            f"insert into {v.queue} ({kcols}) select {', '.join(f'r.{q}' for q in ks)} from r "
            f"where not exists (select from {v.queue} q where {probe_r} "
            f"for key share skip locked)")
        if v.chunks_table is None:
            self.write = (
                f"update {v.source} s set {_ident(v.target_column or '')} = "
                f"v.e::{v.target_type} "
                f"from unnest({key_arrays}, %s::text[], %s::text[], %s::int[]) "
                f"as v({kcols}, h, e, i) "
                f"where {join_v} and pg_catalog.md5({inp}) is not distinct from v.h "
                f"returning v.i")
        else:
            ck = [_ident(c) for c in v.chunk_key_columns]
            join_c = " and ".join(f"c.{c} {k.eq} v.{q}::{k.type}"
                                  for c, (_, k, q) in zip(ck, cols, strict=True))
            # rows whose text is still the one embedded are locked (FOR SHARE) while their
            # chunks are replaced: a writer changing one waits, then queues it again
            self.lock_fresh = (
                f"select v.i from unnest({key_arrays}, %s::text[], %s::int[]) "
                f"as v({kcols}, h, i) join {v.source} s on {join_v} "
                f"where pg_catalog.md5({inp}) is not distinct from v.h "
                f"order by v.i for share of s")
            self.delete_chunks = (
                f"delete from {v.chunks_table} c using unnest({key_arrays}) as v({kcols}) "
                f"where {join_c}")
            self.delete_chunks_of_absent = (
                f"delete from {v.chunks_table} c using unnest({key_arrays}) as v({kcols}) "
                f"where {join_c} and not exists (select from {v.source} s where {join_v})")
            self.insert_chunks = (
                f"insert into {v.chunks_table} ({', '.join(ck)}, chunk_seq, chunk, embedding) "
                f"select {typed_v}, "
                f"v.seq, v.chunk, v.e::{v.target_type} "
                f"from unnest({key_arrays}, %s::int[], %s::text[], %s::text[]) "
                f"as v({kcols}, seq, chunk, e) "
                f"on conflict ({', '.join(ck)}, chunk_seq) do update "
                f"set chunk = excluded.chunk, embedding = excluded.embedding")

