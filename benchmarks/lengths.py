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
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import MODEL_URI, WORK_DIR, model_dir, say, write_json

LENGTHS = (16, 64, 128, 256, 512)
TABLE = "bench_lengths"
FN = "azure_local_ai.create_embeddings"
SESSIONS = 8
WEIGHT_MACS = 21.23e6  # per token, multilingual-e5-small (issue 15)
SCRIPT = f"""\\set id random(1, :ndocs)
SELECT {FN}(CAST(:model AS text), doc) FROM {TABLE} WHERE id = :id;
"""


def flops(tokens: int) -> float:
    return 2 * WEIGHT_MACS * tokens + 48 * tokens * tokens * 384


def make_texts(passages: Sequence[str], tokens: int, count: int) -> list[str]:
    """``count`` texts of ``tokens`` tokens (with <s> and </s>), cut from joined passages."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_truncation()
    body = tokens - 2
    out: list[str] = []
    start = 0
    while len(out) < count:
        parts: list[str] = []
        while True:
            parts.append(passages[start % len(passages)])
            start += 1
            text = "passage: " + " ".join(parts)
            enc = tok.encode(text, add_special_tokens=False)
            if len(enc.ids) >= body:
                break
        out.append(text[: enc.offsets[body - 1][1]])
    return out


def rows_for(tokens: int, quick: bool) -> int:
    """About the same work per length: ~64k tokens (quick ~16k), at least 32 rows."""
    return max(32, (16_384 if quick else 65_536) // tokens)


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


def _sessions(n: int, seconds: int) -> float:
    from benchmarks.pgbench import pgbench_binary  # noqa: PLC0415

    d = WORK_DIR / "lengths-pgbench"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "embed.sql").write_text(SCRIPT, encoding="utf-8")
    cmd = [pgbench_binary(), "-n", "-M", "prepared", "-c", str(SESSIONS), "-j", "2",
           "-T", str(seconds), "-D", f"ndocs={n}", "-D", f"model={MODEL_URI}",
           "-f", str(d / "embed.sql")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                          env=dict(os.environ))
    shutil.rmtree(d, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-400:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError("pgbench printed no tps")


def sweep(passages: Sequence[str], quick: bool = False,
          lengths: Sequence[int] = LENGTHS) -> dict[str, Any]:
    """texts/s and useful GFLOP/s per length and path, in one run."""
    from benchmarks.sql import connect  # noqa: PLC0415 - needs psycopg + the cluster

    seconds = 4 if quick else 15
    rows: list[dict[str, Any]] = []
    with connect() as conn:
        conn.execute(f"SELECT {FN}(%s, 'warm-up')", (MODEL_URI,))
        try:
            for tokens in lengths:
                n = rows_for(tokens, quick)
                say(f"lengths: {n} texts of {tokens} tokens: array, row by row, "
                    f"{SESSIONS} sessions")
                _load(conn, make_texts(passages, tokens, n))
                array = _timed(conn, f"""UPDATE {TABLE} d SET e = x.embedding FROM (
                    SELECT ({FN}(%(model)s, array_agg(doc ORDER BY id),
                                 array_agg(id ORDER BY id))).* FROM {TABLE}) x
                    WHERE d.id = x.id""", n)
                row = _timed(conn, f"UPDATE {TABLE} SET e = {FN}(%(model)s, doc)", n)
                sessions = _sessions(n, seconds)
                gf = flops(tokens) / 1e9
                rows.append({"tokens": tokens, "texts": n, "array_tps": array,
                             "row_tps": row, "sessions_tps": sessions,
                             "array_gflops": array * gf, "row_gflops": row * gf,
                             "sessions_gflops": sessions * gf})
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
    return {"sessions": SESSIONS, "loadavg": os.getloadavg(), "rows": rows}


def table(res: dict[str, Any]) -> str:
    """Markdown: texts/s (useful GFLOP/s) per length and path."""
    head = (f"| tokens | texts | array call | row by row | {res['sessions']} sessions |\n"
            "|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['tokens']} | {r['texts']} | {r['array_tps']:,.1f} ({r['array_gflops']:,.0f}) "
        f"| {r['row_tps']:,.1f} ({r['row_gflops']:,.0f}) "
        f"| {r['sessions_tps']:,.1f} ({r['sessions_gflops']:,.0f}) |\n" for r in res["rows"])
    load = ", ".join(f"{x:.2f}" for x in res["loadavg"])
    return ("# Token-length sweep\n\ntexts/s (useful GFLOP/s), multilingual-e5-small:v1 "
            f"through SQL; load average at the end {load}.\n\n" + head + body)


def write(res: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "lengths.json", res)
    (out_dir / "lengths.md").write_text(table(res), encoding="utf-8")


def main() -> None:
    from benchmarks import data  # noqa: PLC0415
    from benchmarks.common import load_run_env  # noqa: PLC0415

    p = argparse.ArgumentParser(description="token-length sweep through SQL")
    p.add_argument("--quick", action="store_true", help="fewer texts, 4 s of pgbench")
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")],
                   default=list(LENGTHS))
    p.add_argument("--out", type=Path, default=WORK_DIR)
    args = p.parse_args()
    load_run_env()
    res = sweep(data.build_corpus(2_000, 10).raw, args.quick, args.lengths)
    write(res, args.out)
    print(table(res))


if __name__ == "__main__":
    main()
