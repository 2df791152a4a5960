"""The runtime on its own: bulk through the client, one-text round trips, memory per variant.

This supersedes ``benchmarks/runtime_bench.py`` inside ``make bench`` (that
module stays the runtime's own quick check); the numbers here are measured in
the same run as the SQL paths and the peers, on the same texts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MODEL_URI, WORK_DIR, percentiles, proc_memory, say
from pglocalai.client import Client


def socket_path() -> str:
    return os.environ.get("PGLOCALAI_SOCKET", "/run/pglocalai/pglocalai.sock")


def stats(sock: str | None = None) -> dict[str, Any]:
    try:
        with Client(sock or socket_path()) as c:
            return c.stats()
    except Exception as exc:  # noqa: BLE001 - statistics are optional in the report
        return {"error": str(exc)}


def totals(snapshot: dict[str, Any]) -> dict[str, float]:
    t = snapshot.get("totals") or {}
    return {k: t.get(k, 0) for k in ("requests", "texts", "batches", "batched_texts", "tokens")}


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    b, a = totals(before), totals(after)
    d = {k: a[k] - b[k] for k in a}
    d["avg_batch_size"] = d["batched_texts"] / d["batches"] if d["batches"] else 0.0
    return d


def bulk(passages: Sequence[str], chunk: int = 128, depth: int = 2) -> tuple[np.ndarray, dict]:
    """``embed_stream`` in chunks of ``chunk`` texts, ``depth`` requests in flight."""
    sock = socket_path()
    chunks = [list(passages[i : i + chunk]) for i in range(0, len(passages), chunk)]
    with Client(sock) as c:
        list(c.embed_stream(MODEL_URI, chunks[:1]))  # warm-up (loads the model if lazy)
        before = c.stats()
        t0 = time.perf_counter()
        parts = [np.frombuffer(raw, dtype="<f4").reshape(-1, dim)
                 for dim, raw in c.embed_stream(MODEL_URI, chunks, depth=depth)]
        seconds = time.perf_counter() - t0
        after = c.stats()
    vecs = np.concatenate(parts)
    return vecs, {"texts": len(passages), "chunk": chunk, "depth": depth, "seconds": seconds,
                  "texts_per_s": len(passages) / seconds, "runtime": delta(before, after)}


def single(queries: Sequence[str], warmup: int = 20) -> dict[str, Any]:
    """One client, one short text per round trip."""
    with Client(socket_path()) as c:
        for q in queries[:warmup]:
            c.embed_raw(MODEL_URI, ["warm-up " + q])
        lat = []
        for q in queries:
            t = time.perf_counter()
            c.embed_raw(MODEL_URI, [q])
            lat.append(time.perf_counter() - t)
    return {"calls": len(queries), "warmup": min(warmup, len(queries)), **percentiles(lat)}


def runtime_pid(sock: str | None = None) -> int | None:
    """The process serving the socket: the pid its health check reports, else the largest
    process holding the socket (not a supervisor)."""
    import psutil  # noqa: PLC0415

    path = sock or socket_path()
    try:
        with Client(path) as c:
            pid = c.health().get("pid")
        if isinstance(pid, int) and psutil.pid_exists(pid):
            return pid
    except Exception:  # noqa: BLE001, S110 - fall back to the socket's holders
        pass
    holders = {c.pid for c in psutil.net_connections(kind="unix")
               if c.laddr == path and c.pid}
    best = None
    for pid in holders:
        try:
            rss = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
        if best is None or rss > best[1]:
            best = (pid, rss)
    return best[0] if best else None


def variant_memory(variant: str, sample: Sequence[str], timeout: float = 120.0) -> dict[str, Any]:
    """Start a private runtime with ``--variant``, embed one batch, read its memory, stop it."""
    state = WORK_DIR / f"runtime-{variant}"
    state.mkdir(parents=True, exist_ok=True)
    sock = str(state / "rt.sock")
    Path(sock).unlink(missing_ok=True)
    log = state / "runtime.log"
    cmd = [sys.executable, "-m", "pglocalai.cli.main", "serve", "--socket", sock,
           "--variant", variant, "--preload", MODEL_URI, "--state-dir", str(state),
           "--log-file", str(log)]
    say(f"runtime memory, variant {variant}: starting a private runtime")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.perf_counter()
        while not Path(sock).exists():
            if proc.poll() is not None:
                err = proc.stderr.read()[-800:] if proc.stderr else ""
                raise RuntimeError(f"runtime exited: {err}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("runtime did not create its socket in time")
            time.sleep(0.1)
        with Client(sock, connect_timeout=timeout) as c:
            while not _loaded(c.list_models()):
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"{MODEL_URI} was not loaded within {timeout:.0f} s")
                time.sleep(0.2)
            loaded_s = time.perf_counter() - t0
            models = [m for m in c.list_models() if m.get("loaded")]
            idle = proc_memory(proc.pid)
            c.embed_raw(MODEL_URI, list(sample[:128]))
            used = proc_memory(proc.pid)
        return {"variant": variant, "start_to_ready_s": loaded_s, "after_load": idle,
                "after_batch_of_128": used, "models": models}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _loaded(models: list[dict[str, Any]]) -> bool:
    return any(m.get("uri") == MODEL_URI and m.get("loaded") for m in models)
