"""Token-length sweep (issue 15): texts of 16, 64, 128, 256 and 512 tokens through the
three SQL paths - one array call, row by row (``UPDATE … SET e = create_embeddings(doc)``)
and 8 pgbench sessions of single texts - on the cluster and runtime `make up` started.

Texts are the benchmark's passages joined and cut at a token boundary, so each holds
the length asked for (specials included, ±1 where the cut re-tokenises). Useful work is
counted with issue 15's formula, 2 · weight MACs · T + 48 · T² · 384 FLOPs per text.

    . .run/env && .venv/bin/python -m benchmarks.lengths [--quick]

writes ``.run/bench/lengths.{json,md}``; `make bench` writes the table as
``docs/benchmarks/lengths.md`` next to its results.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import MODEL_URI, WORK_DIR, in_turn, say, write_json
from benchmarks.sweep_texts import (  # noqa: F401 - LENGTHS, SESSIONS: run.py reads them here
    FN,
    LENGTHS,
    SESSIONS,
    flops,
    make_texts,
    rows_for,
    series,
)

TABLE = "bench_lengths"
# rounds of each version in turns when the previous version runs too (ABBA-like: A B, B A)
ROUNDS = 2


def _load(conn: Any, texts: Sequence[str]) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, doc text NOT NULL, e real[])")
    with conn.cursor() as cur, cur.copy(f"COPY {TABLE} (id, doc) FROM STDIN") as cp:
        for i, text in enumerate(texts, start=1):
            cp.write_row((i, text))


def _timed(conn: Any, sql: str, n: int) -> float:
    t0 = time.perf_counter()
    conn.execute(sql, {"model": MODEL_URI})
    return n / (time.perf_counter() - t0)


def _sessions(n: int, seconds: int, socket: str | None = None) -> float:
    from benchmarks.pgbench import texts_per_s  # noqa: PLC0415

    return texts_per_s(TABLE, SESSIONS, seconds, n, socket)


def sweep(passages: Sequence[str], quick: bool = False,
          lengths: Sequence[int] = LENGTHS, previous: str | None = None) -> dict[str, Any]:
    """texts/s and useful GFLOP/s per length and path, in one run.

    ``previous``: the socket of the previous version's runtime (:mod:`benchmarks.previous`);
    each length then runs the same three paths on the same texts against both versions in
    turns - this version first, then the previous one first - so that drift on a shared
    machine hits both alike, and each figure is the mean of its :data:`ROUNDS` rounds.
    """
    from benchmarks.sql import connect  # noqa: PLC0415 - needs psycopg + the cluster

    versions = (None, previous) if previous else (None,)
    rounds = ROUNDS if previous else 1
    # pgbench seconds per run: shorter runs when they are repeated in turns
    seconds = 4 if quick else 15 if rounds == 1 else 10
    rows: list[dict[str, Any]] = []
    with connect() as conn:
        for sock in versions:
            _use(conn, sock)
            conn.execute(f"SELECT {FN}(%s, 'warm-up')", (MODEL_URI,))
        try:
            for tokens in lengths:
                n = rows_for(tokens, quick)
                say(f"lengths: {n} texts of {tokens} tokens: array, row by row, "
                    f"{SESSIONS} sessions" + (f"; with the previous version, {rounds} rounds "
                                              "in turns" if previous else ""))
                _load(conn, make_texts(passages, tokens, n))
                got: dict[str | None, list[dict[str, float]]] = {None: [], previous: []}
                for r in range(rounds):
                    for sock in in_turn(versions, r):
                        got[sock].append(_paths(conn, n, seconds, sock))
                row = _mean(got[None])
                gf = flops(tokens) / 1e9
                rows.append({"tokens": tokens, "texts": n, **row,
                             **{f"{k[:-4]}_gflops": v * gf for k, v in row.items()}})
                if previous:
                    rows[-1]["rounds"] = got[None]
                    rows[-1]["previous"] = {**_mean(got[previous]), "rounds": got[previous]}
        finally:
            _use(conn, None)
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    out = {"sessions": SESSIONS, "session_seconds": seconds, "loadavg": os.getloadavg(),
           "rows": rows}
    if previous:
        from benchmarks.previous import PREVIOUS  # noqa: PLC0415

        out["previous_commit"] = PREVIOUS
        out["rounds"] = rounds
    return out


def _mean(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}


def _use(conn: Any, socket: str | None) -> None:
    """Route this session's calls to ``socket``'s runtime, or back to the configured one."""
    if socket:
        conn.execute("SELECT set_config('azure_local_ai.runtime_socket', %s, false)", (socket,))
    else:
        conn.execute("RESET azure_local_ai.runtime_socket")


def _paths(conn: Any, n: int, seconds: int, socket: str | None) -> dict[str, float]:
    """texts/s of the array call, row by row and the sessions on the loaded table."""
    _use(conn, socket)
    try:
        array = _timed(conn, f"""UPDATE {TABLE} d SET e = x.embedding FROM (
            SELECT ({FN}(%(model)s, array_agg(doc ORDER BY id),
                         array_agg(id ORDER BY id))).* FROM {TABLE}) x
            WHERE d.id = x.id""", n)
        row = _timed(conn, f"UPDATE {TABLE} SET e = {FN}(%(model)s, doc)", n)
    finally:
        _use(conn, None)
    return {"array_tps": array, "row_tps": row, "sessions_tps": _sessions(n, seconds, socket)}


def before_after(res: dict[str, Any]) -> str:
    """Markdown: this version against the previous landed one, same texts, same run."""
    rows = [r for r in res["rows"] if r.get("previous")]
    if not rows:
        return ""
    head = ("| tokens | " + " | ".join(f"{label}: now / before (ratio)" for label in (
        "array call", "row by row", f"{res['sessions']} sessions")) + " |\n|---|---|---|---|\n")
    body = "".join(f"| {r['tokens']} | " + " | ".join(
        f"{r[k]:,.1f} / {r['previous'][k]:,.1f} ({r[k] / r['previous'][k]:.2f}x"
        + _round_ratios(r, k) + ")" for k in ("array_tps", "row_tps", "sessions_tps"))
        + " |\n" for r in rows)
    rounds = res.get("rounds", 1)
    how = (f"in {rounds} rounds in turns (this version first, then the previous one first), "
           "each figure the mean of its rounds, the ratio of each round in brackets"
           if rounds > 1 else "each length right after this version, one round")
    return (f"\n## Before and after\n\nThe previous landed version (commit "
            f"{res.get('previous_commit', '?')}, its own runtime and model store) on the same "
            f"texts in the same run, {how}: texts/s.\n\n" + head + body)


def _round_ratios(row: dict[str, Any], key: str) -> str:
    now, before = row.get("rounds") or [], row["previous"].get("rounds") or []
    if len(now) < 2 or len(now) != len(before):
        return ""
    return "; " + ", ".join(f"{a[key] / b[key]:.2f}" for a, b in zip(now, before, strict=True))


def table(res: dict[str, Any]) -> str:
    """Markdown: texts/s (useful GFLOP/s) per length and path, then the peers'."""
    head = (f"| tokens | texts | array call | row by row | {res['sessions']} sessions |\n"
            "|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['tokens']} | {r['texts']} | {r['array_tps']:,.1f} ({r['array_gflops']:,.0f}) "
        f"| {r['row_tps']:,.1f} ({r['row_gflops']:,.0f}) "
        f"| {r['sessions_tps']:,.1f} ({r['sessions_gflops']:,.0f}) |\n" for r in res["rows"])
    load = ", ".join(f"{x:.2f}" for x in res["loadavg"])
    sql = ("texts/s (useful GFLOP/s), multilingual-e5-small:v1 through SQL; load average at "
           f"the end {load}.\n\n" + head + body) if res["rows"] else "The SQL paths did not run.\n"
    return ("# Token-length sweep\n\n" + sql + before_after(res)
            + (peer_table(res) if res.get("peers") else ""))


def peer_table(res: dict[str, Any]) -> str:
    """Every path and peer by length: texts/s (useful GFLOP/s); the skipped peers and why."""
    lengths = sorted({t for _, _, pts in series(res) for t in pts})
    sql_n = {r["tokens"]: r["texts"] for r in res["rows"]}
    peer_n = {int(k): v for k, v in (res.get("peer_texts") or {}).items()}
    head = ("| path or peer | " + " | ".join(f"{t} tokens" for t in lengths) + " | cosine vs "
            "fp32 (min) |\n|---|" + "---|" * (len(lengths) + 1) + "\n")
    rows = []
    fid = {p["label"]: p.get("fidelity") or {} for p in (res.get("peers") or {}).values()}
    for label, _, pts in series(res):
        cells = [f"{pts[t]:,.1f} ({pts[t] * flops(t) / 1e9:,.0f})" if t in pts else "–"
                 for t in lengths]
        f = fid.get(label, {})
        rows.append(f"| {label} | " + " | ".join(cells) + " | "
                    + (f"{f['cos_mean']:.5f} ({f['cos_min']:.5f})" if f else "–") + " |")
    counts = ("| texts per length: SQL / peers | " + " | ".join(
        f"{sql_n.get(t, '–')} / {peer_n.get(t, '–')}" for t in lengths) + " | |")
    skipped = [f"- {p['label']}: {p['skipped']}" for p in res["peers"].values()
               if p.get("skipped")]
    versions = [f"- {p['label']}: " + ", ".join(f"{k} {v}" for k, v in p["versions"].items())
                + f"; batch: {p.get('batch', 'default')}; threads: its default"
                + (f" ({p['torch_threads']} torch threads)" if "torch_threads" in p else "")
                + (f"; {p['note']}" if p.get("note") else "")
                for p in res["peers"].values() if p.get("versions")]
    repeat = max((p.get("repeat", 1) for p in res["peers"].values()), default=1)
    rounds = res.get("rounds", 1)
    sql_timings = f"the mean of {rounds} rounds" if rounds > 1 else "one timing"
    return ("\n## Side by side with the peers\n\ntexts/s (useful GFLOP/s). Peers run in-process "
            "on the first texts of each length the SQL paths embed, batched as each batches by "
            f"default, after a warm-up, best of {repeat} timings (the SQL paths: "
            f"{sql_timings}); on a shared machine, so the figures are noisy. Cosine: each "
            f"peer's first vectors of each length against {res.get('peer_reference', 'fp32')}."
            "\n\n" + head + "\n".join(rows + [counts]) + "\n"
            + ("\nVersions:\n\n" + "\n".join(versions) + "\n" if versions else "")
            + ("\nNot run:\n\n" + "\n".join(skipped) + "\n" if skipped else ""))


def write(res: dict[str, Any], out_dir: Path) -> None:
    from benchmarks import plots  # noqa: PLC0415 - matplotlib only here

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "lengths.json", res)
    (out_dir / "lengths.md").write_text(table(res), encoding="utf-8")
    plots.lengths({"lengths": res}, out_dir / "lengths.png")


def main() -> None:
    from benchmarks import data  # noqa: PLC0415
    from benchmarks.common import load_run_env  # noqa: PLC0415

    p = argparse.ArgumentParser(description="token-length sweep through SQL")
    p.add_argument("--quick", action="store_true", help="fewer texts, 4 s of pgbench")
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")],
                   default=list(LENGTHS))
    p.add_argument("--out", type=Path, default=WORK_DIR)
    p.add_argument("--skip-peers", action="store_true", help="only the SQL paths")
    p.add_argument("--skip-sql", action="store_true", help="only the peers")
    p.add_argument("--previous", action="store_true",
                   help="also the previous landed version (benchmarks.previous), side by side")
    p.add_argument("--peers", type=lambda s: s.split(","), default=None,
                   help="comma-separated peer keys of benchmarks.length_peers.PEERS")
    args = p.parse_args()
    load_run_env()
    raw = data.build_corpus(2_000, 10).raw
    if args.skip_sql:
        res: dict[str, Any] = {"sessions": SESSIONS, "loadavg": os.getloadavg(), "rows": []}
    elif args.previous:
        from benchmarks.previous import previous_runtime  # noqa: PLC0415

        with previous_runtime() as (sock, _pid):
            res = sweep(raw, args.quick, args.lengths, sock)
    else:
        res = sweep(raw, args.quick, args.lengths)
    if not args.skip_peers:
        from benchmarks import length_peers  # noqa: PLC0415

        res.update(length_peers.run(raw, args.quick, args.lengths, args.peers))
    write(res, args.out)
    print(table(res))


if __name__ == "__main__":
    main()
