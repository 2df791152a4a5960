"""The short-text paths in turns: the runtime alone (its own client), the array call, row by
row and 8 pgbench sessions back to back in every round, on the runtime `make up` started,
so their ratios come from the same minute.

`make bench` measures bulk, row by row and concurrency as separate steps minutes apart.
This machine's speed drifts by up to 2x within minutes (weights.md), so a ratio of two
such steps can be off by far more than the gap to a goal: in the run of 2026-12-01 the
steps gave 8 sessions 0.86x the array call, while the same paths in turns gave 0.60x.
Here each round runs the four paths one after the other, in an order turned by one
each round, each ratio is taken within its round, and the figure reported is the median
over the rounds. ``report.targets`` uses these ratios for the goals on 8 sessions and on
row by row.

    . .run/env && .venv/bin/python -m benchmarks.turns [--rounds 4] [--merge]

``--merge`` adds the result to docs/benchmarks/results.json of an earlier `make bench`,
with a note saying when it was measured, and renders README.md again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import psycopg

from benchmarks import data, runtime, sidebyside
from benchmarks.common import OUT_DIR, REPO, load_run_env, say, write_json
from benchmarks.readme import turns_table
from benchmarks.sweep_texts import SESSIONS

FULL = {"rounds": 4, "array": 2000, "rows": 400, "seconds": 10}
QUICK = {"rounds": 2, "array": 300, "rows": 60, "seconds": 3}
# the ratios taken within each round (report.targets reads them as "a/b")
RATIOS = (*sidebyside.RATIOS, ("array", "runtime"), ("sessions", "runtime"))
# the paths of a round; the first round runs them in this order (see orders)
PATHS = ("runtime", "array", "row", "sessions")


class Landed:
    """The runtime `make up` started: sessions reach it through the server's own setting."""

    name = "landed"
    socket = None

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(autocommit=True)

    def batches(self) -> tuple[int, int]:
        return sidebyside.batches(self.connect)


def orders(rounds: int) -> list[list[str]]:
    """The paths of each round, the order turned by one each round: over four rounds every
    path runs once in every position, so no path always runs after the same neighbour or
    in the same minute of a round."""
    return [list(PATHS[i % len(PATHS):] + PATHS[:i % len(PATHS)]) for i in range(rounds)]


def run(passages: Sequence[str], quick: bool, rounds: int | None = None) -> dict[str, Any]:
    """Rounds of the runtime alone, array call, row by row and 8 sessions; medians, and
    ratios within rounds."""
    sizes = dict(QUICK if quick else FULL)
    if rounds:
        sizes["rounds"] = rounds
    texts = list(passages[: max(sizes["array"], sizes["rows"])])
    args = SimpleNamespace(array=sizes["array"], rows=sizes["rows"],
                           seconds=sizes["seconds"], single=0,
                           sessions=sidebyside.SESSIONS)
    steps = {**sidebyside.STEPS,  # and the runtime alone: its own client, no SQL
             "runtime": lambda *_: {"runtime": runtime.bulk(
                 texts[: sizes["array"]])[1]["texts_per_s"]}}
    rt = Landed()
    measured, order = [], orders(sizes["rounds"])
    with sidebyside.docs_table(texts) as ndocs:
        # a warm-up that is not timed: the runtime's first runs after a start are slower
        sidebyside.STEPS["array"](rt, SimpleNamespace(**{**vars(args), "array": min(
            200, sizes["array"])}), ndocs, [])
        for i, paths in enumerate(order):
            got = sidebyside.measure(rt, SimpleNamespace(**vars(args), paths=paths), ndocs, [],
                                     steps)
            measured.append(got)
            say(f"paths in turns, round {i + 1} ({', '.join(paths)}): " + ", ".join(
                f"{k} {v:,.2f}" for k, v in got.items()))
    return {"sizes": sizes, "sessions": SESSIONS, "rounds": measured, "orders": order,
            "median": sidebyside.medians(measured, RATIOS),
            "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def merge(t: dict[str, Any]) -> None:
    """Put ``t`` into the published results.json, say so in its notes, render again."""
    path = OUT_DIR / "results.json"
    r = json.loads(path.read_text(encoding="utf-8"))
    r["turns"] = t
    note = (f"The short-text paths in turns were measured at {t['measured_at']}, after this "
            "run, on the same machine and cluster (`python -m benchmarks.turns --merge`).")
    r["notes"] = [n for n in r.get("notes", []) if "paths in turns" not in n] + [note]
    write_json(path, r)
    # the renderer runs in a process of its own: benchmarks.run imports this module
    subprocess.run([sys.executable, "-m", "benchmarks.run", "--report-only"], cwd=REPO,
                   check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 4; quick 2)")
    p.add_argument("--quick", action="store_true", help="small sizes, for development")
    p.add_argument("--merge", action="store_true",
                   help="add the result to docs/benchmarks/results.json and render it again")
    args = p.parse_args()
    load_run_env()
    t = run(data.build_corpus(FULL["array"], 1).passages, args.quick, args.rounds)
    print(turns_table(t))
    if args.merge:
        merge(t)


if __name__ == "__main__":
    main()
