"""Two or more runtime versions side by side through SQL: the paths of short texts one
call at a time (issue 15) next to the array overload, measured in turn, order alternating.

Each runtime is a private ``pglocalai serve`` from a source tree: a git revision
(exported with ``git archive``) or ``.``, the working tree; extra flags after a colon,
comma-separated. SQL goes through the cluster `make up` started, each session pointed
at its runtime by ``azure_local_ai.runtime_socket``; pgbench gets it via PGOPTIONS.
The machine is shared: each figure is the median of the rounds, and the ratios to the
array overload are taken within a runtime's own rounds.

    . .run/env && .venv/bin/python -m benchmarks.sidebyside --rounds 6 \\
        landed=HEAD new=. narrow=.:--wide-runs,off

Paths: ``array`` (array overload, UPDATE … FROM, ``--array`` rows), ``row`` (row by row,
``--rows`` rows), ``sessions`` (8 pgbench sessions of one text, ``--seconds`` each),
``single`` (p50 of ``--single`` prepared single-text queries). Writes
``.run/bench/sidebyside.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psycopg

from benchmarks import data
from benchmarks.common import (
    MODEL_URI,
    REPO,
    WORK_DIR,
    load_run_env,
    model_dir,
    say,
    write_json,
)
from benchmarks.pgbench import texts_per_s
from benchmarks.previous import source_tree
from benchmarks.sweep_texts import FN, SESSIONS

TABLE = "bench_sidebyside"


@dataclass
class Runtime:
    """A private runtime from one source tree, and the rounds measured on it."""

    name: str
    rev: str
    flags: list[str]
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sbs-",
                                                                       dir="/tmp")))
    proc: subprocess.Popen[bytes] | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.base / "rt" / "s.sock")

    @property
    def options(self) -> str:
        return f"-c azure_local_ai.runtime_socket={self.socket}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(autocommit=True, options=self.options)

    def start(self, models_dir: str | None, socket_owner: str | None) -> None:
        self.base.chmod(0o755)  # the server's user reaches the socket through it
        src = REPO / "src" if self.rev == "." else Path(source_tree(self.rev))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGLOCALAI_")}
        env["PYTHONPATH"] = str(src)
        cmd = [sys.executable, "-m", "pglocalai.cli.main", "serve", "--socket", self.socket,
               "--state-dir", str(self.base / "state"), "--preload", MODEL_URI,
               "--log-file", str(self.base / "runtime.log"), *self.flags]
        if models_dir:
            cmd += ["--models-dir", models_dir]
        if socket_owner:
            cmd += ["--socket-owner", socket_owner]
        with open(self.base / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                         cwd="/")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(psycopg.Error), self.connect() as conn:
                conn.execute(f"SELECT {FN}(%s, 'warm-up')", (MODEL_URI,)).fetchone()
                return
            time.sleep(0.3)
        log = (self.base / "runtime.log").read_text(errors="replace")[-800:] \
            if (self.base / "runtime.log").exists() else ""
        raise RuntimeError(f"runtime {self.name} ({self.rev}) did not serve: {log}")

    def batches(self) -> tuple[int, int]:
        return batches(self.connect)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def batches(connect: Callable[[], psycopg.Connection]) -> tuple[int, int]:
    """(batches, texts batched) so far, from runtime_stats() of the runtime reached."""
    with connect() as conn:
        row = conn.execute("SELECT azure_local_ai.runtime_stats()").fetchone()
    model = (row[0] if row else {}).get("models", {}).get(MODEL_URI, {})
    return int(model.get("batches", 0)), int(model.get("batched_texts", 0))


class Reached(Protocol):
    """A runtime that SQL sessions reach: a private one here, or `make up`'s (benchmarks.turns)."""

    @property
    def socket(self) -> str | None: ...

    def connect(self) -> psycopg.Connection: ...

    def batches(self) -> tuple[int, int]: ...


def _warm(conn: psycopg.Connection) -> None:
    """The session's first embedding loads the package (~60 ms): not inside a timed step."""
    conn.execute(f"SELECT {FN}(%s, 'warm-up')", (MODEL_URI,)).fetchone()


def _array(rt: Reached, args: argparse.Namespace, ndocs: int,
           queries: Sequence[str]) -> dict[str, float]:
    with rt.connect() as conn:
        _warm(conn)
        t0 = time.perf_counter()
        conn.execute(f"""UPDATE {TABLE} d SET e = x.embedding FROM (
            SELECT ({FN}(%(m)s, array_agg(doc ORDER BY id), array_agg(id ORDER BY id))).*
            FROM {TABLE} WHERE id <= %(n)s) x WHERE d.id = x.id""",
                     {"m": MODEL_URI, "n": args.array})
        return {"array": args.array / (time.perf_counter() - t0)}


def _row(rt: Reached, args: argparse.Namespace, ndocs: int,
         queries: Sequence[str]) -> dict[str, float]:
    with rt.connect() as conn:
        _warm(conn)
        t0 = time.perf_counter()
        conn.execute(f"UPDATE {TABLE} SET e = {FN}(%(m)s, doc) WHERE id <= %(n)s",
                     {"m": MODEL_URI, "n": args.rows})
        return {"row": args.rows / (time.perf_counter() - t0)}


def _sessions(rt: Reached, args: argparse.Namespace, ndocs: int,
              queries: Sequence[str]) -> dict[str, float]:
    before = rt.batches()
    out = {"sessions": texts_per_s(TABLE, args.sessions, args.seconds, ndocs, rt.socket)}
    after = rt.batches()
    if after[0] > before[0]:
        out["avg_batch"] = (after[1] - before[1]) / (after[0] - before[0])
    return out


def _single(rt: Reached, args: argparse.Namespace, ndocs: int,
            queries: Sequence[str]) -> dict[str, float]:
    with rt.connect() as conn:
        sql = f"SELECT {FN}(%s, %s)"
        for q in queries[:20]:
            conn.execute(sql, (MODEL_URI, "warm-up " + q), prepare=True).fetchone()
        lat = []
        for q in queries[:args.single]:
            t0 = time.perf_counter()
            conn.execute(sql, (MODEL_URI, q), prepare=True, binary=True).fetchone()
            lat.append(time.perf_counter() - t0)
    return {"single_p50_ms": statistics.median(lat) * 1000.0}


Step = Callable[[Reached, argparse.Namespace, int, Sequence[str]], dict[str, float]]
# each path's step; a round runs them in the order asked for
STEPS: dict[str, Step] = {"array": _array, "row": _row, "sessions": _sessions,
                          "single": _single}


def measure(rt: Reached, args: argparse.Namespace, ndocs: int, queries: Sequence[str],
            steps: dict[str, Step] | None = None) -> dict[str, float]:
    """One round of the paths in ``args.paths``, in that order, on one runtime; ``steps``
    replaces :data:`STEPS` (benchmarks.turns adds the runtime alone)."""
    out: dict[str, float] = {}
    for path in args.paths:
        out.update((steps or STEPS)[path](rt, args, ndocs, queries))
    out["load"] = os.getloadavg()[0]
    return out


# the ratios taken within each round, "a/b" for (a, b)
RATIOS = (("row", "array"), ("sessions", "array"))


def medians(rounds: list[dict[str, float]],
            ratios: Sequence[tuple[str, str]] = RATIOS) -> dict[str, float]:
    """Median of each figure over the rounds, ``ratios`` taken within each round first
    (and added to it)."""
    for r in rounds:
        for a, b in ratios:
            if a in r and r.get(b):
                r[f"{a}/{b}"] = r[a] / r[b]
    keys = {k for r in rounds for k in r}
    return {k: statistics.median(r[k] for r in rounds if k in r) for k in sorted(keys)}


def table(runtimes: Sequence[Runtime]) -> str:
    cols = ["array", "row", "sessions", "avg_batch", "single_p50_ms", "row/array",
            "sessions/array", "load"]
    meds = {rt.name: medians(rt.rounds) for rt in runtimes}
    cols = [c for c in cols if any(c in m for m in meds.values())]
    lines = ["| runtime | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for rt in runtimes:
        cells = [f"{meds[rt.name][c]:,.2f}" if c in meds[rt.name] else "–" for c in cols]
        lines.append(f"| {rt.name} ({rt.rev}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def docs_table(passages: Sequence[str]) -> Iterator[int]:
    with psycopg.connect(autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, doc text NOT NULL, e real[])")
        with conn.cursor() as cur, cur.copy(f"COPY {TABLE} (id, doc) FROM STDIN") as cp:
            for i, text in enumerate(passages, start=1):
                cp.write_row((i, text))
        conn.execute(f"VACUUM ANALYZE {TABLE}")
    try:
        yield len(passages)
    finally:
        with psycopg.connect(autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


def parse_runtime(spec: str) -> Runtime:
    """``name=REV[:flag,flag]`` (``REV`` ``.`` is the working tree)."""
    name, _, rest = spec.partition("=")
    rev, _, flags = rest.partition(":")
    if not name or not rev:
        raise argparse.ArgumentTypeError(f"expected name=REV[:flags], got {spec!r}")
    return Runtime(name, rev, [f for f in flags.split(",") if f])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runtimes", nargs="+", type=parse_runtime, help="name=REV[:flag,flag]")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--paths", type=lambda s: s.split(","), default=list(STEPS),
                   help="paths, in the order each round runs them (default: all)")
    p.add_argument("--array", type=int, default=1000, help="rows of the array call")
    p.add_argument("--rows", type=int, default=400, help="rows updated row by row")
    p.add_argument("--seconds", type=int, default=8, help="pgbench seconds per round")
    p.add_argument("--sessions", type=int, default=SESSIONS,
                   help="pgbench sessions of the sessions path")
    p.add_argument("--single", type=int, default=200, help="single-text queries per round")
    p.add_argument("--models-dir", help="model store of the runtimes (default: the one "
                   "the benchmarks use)")
    p.add_argument("--socket-owner", default="postgres" if os.geteuid() == 0 else None,
                   help="owner of the runtimes' sockets (default postgres when root)")
    args = p.parse_args()
    if unknown := [x for x in args.paths if x not in STEPS]:
        p.error(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(STEPS)}")
    load_run_env()
    args.models_dir = args.models_dir or str(model_dir().parent)
    corpus = data.build_corpus(2_000, max(args.single, 20))
    runtimes: list[Runtime] = args.runtimes
    try:
        for rt in runtimes:
            say(f"starting {rt.name} from {rt.rev} {' '.join(rt.flags)}")
            rt.start(args.models_dir, args.socket_owner)
        with docs_table(corpus.passages) as ndocs:
            for i in range(args.rounds):
                for rt in runtimes if i % 2 == 0 else runtimes[::-1]:
                    rt.rounds.append(measure(rt, args, ndocs, corpus.queries))
                    say(f"round {i} {rt.name}: " + ", ".join(
                        f"{k} {v:,.2f}" for k, v in rt.rounds[-1].items()))
    finally:
        for rt in runtimes:
            rt.stop()
    write_json(WORK_DIR / "sidebyside.json",
               {rt.name: {"rev": rt.rev, "flags": rt.flags, "rounds": rt.rounds}
                for rt in runtimes})
    print(table(runtimes))


if __name__ == "__main__":
    main()
