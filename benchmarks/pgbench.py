"""Concurrency with pgbench: N sessions, each embedding one stored passage per transaction.

The custom script picks a random row and selects its text's embedding, so every
transaction is one ``create_embeddings`` call on a ~30-token passage. pgbench's
per-transaction log gives the latency percentiles; its own summary gives the rate.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import runtime
from benchmarks.common import MODEL_URI, WORK_DIR, CpuMeter, say
from benchmarks.sql import DOCS


def script(table: str) -> str:
    """Each transaction embeds the doc of one random row of ``table`` (ids 1..ndocs)."""
    # the model URI is a pgbench variable (a bound parameter under -M prepared): written in
    # the script, its ":v1" would be taken for a pgbench variable
    return f"""\\set id random(1, :ndocs)
SELECT azure_local_ai.create_embeddings(CAST(:model AS text), doc) FROM {table} WHERE id = :id;
"""


SCRIPT = script(DOCS)


def pgbench_binary() -> str:
    """The server's own pgbench (/usr/lib/postgresql/<ver>/bin), else the one on PATH."""
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for ver in sorted(base.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0,
                          reverse=True):
            cand = ver / "bin" / "pgbench"
            if cand.exists():
                return str(cand)
    found = shutil.which("pgbench")
    if not found:
        raise FileNotFoundError("pgbench not found (it ships with the PostgreSQL server)")
    return found


def run_level(clients: int, seconds: int, ndocs: int,
              meter: CpuMeter | None = None) -> dict[str, Any]:
    """One pgbench run; returns texts/s and latency percentiles from the transaction log."""
    d = WORK_DIR / f"pgbench-c{clients}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    script = d / "embed.sql"
    script.write_text(SCRIPT, encoding="utf-8")
    threads = min(clients, 2)
    cmd = [pgbench_binary(), "-n", "-M", "prepared", "-c", str(clients), "-j", str(threads),
           "-T", str(seconds), "-D", f"ndocs={ndocs}", "-D", f"model={MODEL_URI}",
           "-f", str(script), "--log", f"--log-prefix={d / 'log'}"]
    before = runtime.stats()
    if meter:
        meter.mark()
    snap = meter.snapshot() if meter else None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120,
                          env=dict(os.environ))
    wall = time.perf_counter() - t0
    cpu = None
    if meter and snap:
        meter.settle()  # pgbench's backends exit as it does: count their CPU too
        cpu = meter.delta(snap, meter.snapshot())
        cpu["wall_s"] = wall
    after = runtime.stats()
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench -c {clients} failed: {proc.stderr.strip()[-800:]}")
    out = proc.stdout
    tps = _grab(r"tps = ([\d.]+) \(without initial connection time\)", out)
    failed = _grab(r"number of failed transactions: (\d+)", out)
    lat_us = []
    for f in d.glob("log*"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                lat_us.append(int(parts[2]))
    lat = np.asarray(lat_us, dtype=np.float64) / 1000.0
    res: dict[str, Any] = {
        "sessions": clients, "pgbench_threads": threads, "seconds": seconds,
        "transactions": int(lat.size), "texts_per_s": tps, "failed": int(failed or 0),
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
        "p95_ms": float(np.percentile(lat, 95)) if lat.size else None,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
        "mean_ms": float(lat.mean()) if lat.size else None}
    if "totals" in before and "totals" in after:
        res["runtime"] = runtime.delta(before, after)
    if cpu:
        res["cpu"] = cpu
    shutil.rmtree(d, ignore_errors=True)
    return res


def texts_per_s(table: str, clients: int, seconds: int, ndocs: int,
                socket: str | None = None) -> float:
    """texts/s of ``clients`` prepared pgbench sessions on ``table`` (no latency log).

    ``socket``: every session's calls go to that runtime (azure_local_ai.runtime_socket).
    """
    d = WORK_DIR / f"pgbench-{table}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    (d / "embed.sql").write_text(script(table), encoding="utf-8")
    cmd = [pgbench_binary(), "-n", "-M", "prepared", "-c", str(clients), "-j",
           str(min(clients, 2)), "-T", str(seconds), "-D", f"ndocs={ndocs}",
           "-D", f"model={MODEL_URI}", "-f", str(d / "embed.sql")]
    env = dict(os.environ)
    if socket:
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c azure_local_ai.runtime_socket={socket}"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=env)
    shutil.rmtree(d, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-400:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise RuntimeError("pgbench printed no tps")


def concurrency(levels: list[int], seconds: int, ndocs: int,
                meter: CpuMeter | None = None) -> list[dict[str, Any]]:
    """Each level in turn; a failed level is recorded and the others still run."""
    run_level(max(levels), 2, ndocs)  # warm-up: the model loaded, caches and pages hot
    results = []
    for c in levels:
        try:
            r = run_level(c, seconds, ndocs, meter)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            say(f"pgbench {c} sessions failed: {str(exc).splitlines()[0]}")
            results.append({"sessions": c, "error": str(exc).splitlines()[0][:300]})
            continue
        say(f"pgbench {c:2d} sessions: {r['texts_per_s']:.0f} texts/s, p50 "
            f"{r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
            + (f", runtime avg batch {r['runtime']['avg_batch_size']:.1f}"
               if "runtime" in r else ""))
        results.append(r)
    return results


def _grab(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None
