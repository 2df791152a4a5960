"""What each part of the vectorizer's enqueue trigger costs a single-row INSERT: the whole
trigger is built up part by part on identical tables, and the INSERTs into all of them are
interleaved in one session, so that the differences between neighbours are the parts' costs.

    . .run/env && .venv/bin/python -m benchmarks.trigger_parts [--rows 20000] [--commit off]

Writes ``.run/bench/trigger_parts.json``; ``run(rows, commit)`` returns the same dict for
``benchmarks.vectorizer``. The variants from ``trigger`` to ``queue_trigger`` hand-build what
azure_local_ai 1.1.x generated for an INSERT (same statements, same queue table), ``inbox``
what 1.2.0 generates; ``vectorizer`` is the real thing from ``create_vectorizer``. Autovacuum
is off for every table here: it would re-plan the queue probe mid-run (see ``probe_plans``),
and it competes for the 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.common import WORK_DIR, in_turn, load_run_env, say, write_json

DB = "bench_trigger_parts"
COUNT = "azure_local_ai_internal.vectorizer_queue_count"
_QUEUE = ("insert into {q} (k1) select n.id from new_rows n where (n.doc is not null or "
          "n.embedding is not null) and not exists (select from {q} q where q.k1 "
          "operator(pg_catalog.=) n.id for key share skip locked)")
_COUNTED = (f"with queued as ({_QUEUE} returning 1) insert into {COUNT} (vectorizer_id, delta) "
            "select {vid}, pg_catalog.count(*) from queued having pg_catalog.count(*) "
            "operator(pg_catalog.>) 0;")
_NOTIFY = " if found then perform pg_catalog.pg_notify('bench_trigger_parts', '{vid}'); end if;"
_INBOX = ("insert into {q} (k1) select n.id from new_rows n "
          "where (n.doc is not null or n.embedding is not null)")
_CATCH = " exception when others then raise warning '%', sqlerrm; return null;"
_ROW = ("if (new.doc is not null or new.embedding is not null) and not exists (select from {q} q "
        "where q.k1 operator(pg_catalog.=) new.id for key share skip locked) then "
        f"insert into {{q}} (k1) values (new.id); insert into {COUNT} (vectorizer_id, delta) "
        "values ({vid}, 1); perform pg_catalog.pg_notify('bench_trigger_parts', '{vid}'); end if;")

# name -> (trigger level, plpgsql body); each statement-level one adds a part to the one before
VARIANTS: dict[str, tuple[str, str]] = {
    "plain": ("", ""),
    "trigger": ("statement", "begin return null; end"),
    "queue": ("statement", f"begin {_QUEUE}; return null; end"),
    "count": ("statement", f"begin {_COUNTED} return null; end"),
    "notify": ("statement", f"begin {_COUNTED}{_NOTIFY} return null; end"),
    "exception": ("statement", f"begin {_COUNTED}{_NOTIFY} return null;{_CATCH} end"),
    "queue_trigger": ("statement", f"begin {_COUNTED}{_NOTIFY} return null;{_CATCH} end"),
    "inbox": ("statement", f"begin {_INBOX}; return null; end"),
    "vectorizer": ("real", ""),
    "row_trigger": ("row", "begin return null; end"),
    "row_all": ("row", f"begin {_ROW} return null;{_CATCH} end"),
}
WHAT = {
    "trigger": "an empty AFTER INSERT statement trigger with a transition table",
    "queue": "+ the queue INSERT with its NOT EXISTS ... FOR KEY SHARE SKIP LOCKED probe",
    "count": "+ the count delta row (same statement)",
    "notify": "+ pg_notify",
    "exception": "+ the exception block (a subtransaction)",
    "queue_trigger": "+ the queue's own count trigger (its WHEN is false here): 1.1.x",
    "inbox": "instead, one append to an inbox without index (1.2.0)",
    "vectorizer": "create_vectorizer's generated trigger, as installed",
    "row_trigger": "an empty AFTER INSERT row trigger",
    "row_all": "a row trigger doing queue + count + notify + exception block",
}


def _setup(names: Sequence[str]) -> None:
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DB)))
    with psycopg.connect(dbname=DB, autocommit=True) as conn:
        conn.execute("SET client_min_messages = warning")
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION azure_local_ai CASCADE")
        conn.execute(f"ALTER TABLE {COUNT} SET (autovacuum_enabled = off)")
        for vid, name in enumerate(names, start=1000):
            level, body = VARIANTS[name]
            conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, doc text NOT NULL, "
                         "embedding vector(384)) WITH (autovacuum_enabled = off)")
            q = f"{name}_queue"
            if level == "real":
                n = conn.execute("SELECT azure_local_ai.create_vectorizer(%s, 'doc', 'embedding')",
                                 (name,)).fetchone()[0]
                for kind in ("queue", "inbox"):
                    conn.execute(f"ALTER TABLE IF EXISTS azure_local_ai.vectorizer_{n}_{kind} "
                                 "SET (autovacuum_enabled = off)")
                continue
            if not level:
                continue
            if name == "inbox":  # as 1.2.0 makes it: keys and a time, no index
                conn.execute(f"CREATE TABLE {q} (k1 int NOT NULL, queued_at timestamptz NOT "
                             "NULL DEFAULT pg_catalog.now()) WITH (autovacuum_enabled = off)")
            else:
                conn.execute(f"CREATE TABLE {q} (seq bigint GENERATED ALWAYS AS IDENTITY "
                             "PRIMARY KEY, k1 int NOT NULL, queued_at timestamptz NOT NULL "
                             "DEFAULT pg_catalog.now()) WITH (autovacuum_enabled = off)")
                conn.execute(f"CREATE INDEX ON {q} (k1)")
            if name == "queue_trigger":
                conn.execute(f"CREATE TRIGGER counted_insert AFTER INSERT ON {q} REFERENCING "
                             "NEW TABLE AS new_rows FOR EACH STATEMENT WHEN "
                             "(pg_catalog.pg_trigger_depth() < 1) EXECUTE FUNCTION "
                             f"azure_local_ai_internal.vectorizer_queue_counted('{vid}')")
            conn.execute(f"CREATE FUNCTION {name}_enqueue() RETURNS trigger LANGUAGE plpgsql "
                         f"VOLATILE SECURITY DEFINER AS $b${body.format(q=q, vid=vid)}$b$")
            conn.execute(f"CREATE TRIGGER enqueue AFTER INSERT ON {name} "
                         + ("REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
                            if level == "statement" else "FOR EACH ROW ")
                         + f"EXECUTE FUNCTION {name}_enqueue()")


def _probe_plans(conn: psycopg.Connection[Any], stmts: dict[str, str]) -> dict[str, str]:
    """How this session's cached plans reach the queue (Index Scan or Seq Scan), by
    auto_explain of one more INSERT each: a sequential probe costs O(queue length)."""
    lines: list[str] = []
    conn.add_notice_handler(lambda d: lines.extend((d.message_primary or "").splitlines()))
    conn.execute("LOAD 'auto_explain'")
    for setting in ("log_min_duration = 0", "log_nested_statements = on", "log_level = notice"):
        conn.execute(f"SET auto_explain.{setting}")
    out = {}
    for name, stmt in stmts.items():
        del lines[:]
        conn.execute(stmt, (-10**9, "explained"))
        scans = [s.strip().split("  (")[0] for s in lines
                 if "Scan" in s and "queue" in s and "CTE Scan" not in s]
        out[name] = "; ".join(scans) or "-"
    conn.execute("SET auto_explain.log_min_duration = -1")
    return out


def run(rows: int = 20_000, commit: str = "off", block: int = 100) -> dict[str, Any]:
    """INSERTs into every variant's table, interleaved in blocks (the order rotates every
    round), after 200 warm-up rows each; medians and means per variant."""
    load_run_env()
    names = list(VARIANTS)
    _setup(names)
    times: dict[str, list[float]] = {n: [] for n in names}
    try:
        with psycopg.connect(dbname=DB, autocommit=True) as conn:
            conn.execute(f"SET synchronous_commit = {'on' if commit == 'on' else 'off'}")
            stmts = {n: f"INSERT INTO {n} (id, doc) VALUES (%s, %s)" for n in names}
            for n in names:
                for i in range(-200, 0):
                    conn.execute(stmts[n], (i, "warm up"))
            for r, start in enumerate(range(0, rows, block)):
                for n in in_turn(names, r):
                    for i in range(start, start + block):
                        t0 = time.perf_counter()
                        conn.execute(stmts[n], (i, f"passage number {i}"))
                        times[n].append(time.perf_counter() - t0)
            plans = _probe_plans(conn, stmts)
    finally:
        with psycopg.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(DB)))
    med0, mean0 = statistics.median(times["plain"]), statistics.mean(times["plain"])
    parts = {}
    for n in names:
        med, mean = statistics.median(times[n]), statistics.mean(times[n])
        parts[n] = {"what": WHAT.get(n, "no trigger"), "median_us": med * 1e6,
                    "mean_us": mean * 1e6, "added_median_us": (med - med0) * 1e6,
                    "added_mean_us": (mean - mean0) * 1e6, "rate_ratio_median": med0 / med,
                    "rate_ratio_mean": mean0 / mean}
    return {"rows": rows, "block": block, "synchronous_commit": commit, "parts": parts,
            "probe_plans": plans}


def table(result: dict[str, Any]) -> str:
    """The parts as a plain-text table."""
    head = (f"synchronous_commit={result['synchronous_commit']}, {result['rows']:,} INSERTs per "
            f"variant\n{'variant':15} {'median':>8} {'mean':>8} {'+median':>8} {'+mean':>8} "
            f"{'ratio':>6}  (us; ratio = plain/variant by medians)")
    rows = [f"{n:15} {p['median_us']:8.1f} {p['mean_us']:8.1f} {p['added_median_us']:8.1f} "
            f"{p['added_mean_us']:8.1f} {p['rate_ratio_median']:6.2f}  {p['what']}"
            for n, p in result["parts"].items()]
    return "\n".join([head, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="INSERTs per variant")
    parser.add_argument("--commit", choices=("on", "off"), default="off",
                        help="synchronous_commit (on: the WAL flush dominates and varies)")
    args = parser.parse_args(argv)
    say(f"trigger parts: {len(VARIANTS)} variants x {args.rows:,} INSERTs")
    result = run(args.rows, args.commit)
    write_json(WORK_DIR / "trigger_parts.json", result)
    print(table(result))
    for n, plan in result["probe_plans"].items():
        if plan != "-":
            print(f"  probe of {n}: {plan}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
