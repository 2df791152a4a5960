"""Small helpers shared by the benchmark modules: progress, timing, percentiles, memory."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run"
WORK_DIR = RUN_DIR / "bench"
OUT_DIR = REPO / "docs" / "benchmarks"
MODEL_URI = "multilingual-e5-small:v1"
_T0 = time.perf_counter()


def say(msg: str) -> None:
    """Progress line on stderr with the elapsed time of the whole run."""
    print(f"[bench {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/mean/max of latencies given in seconds, returned in milliseconds."""
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    if a.size == 0:
        return {}
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "max_ms": float(a.max()), "n": int(a.size)}


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, RssAnon and VmHWM (peak) of a process in MiB, from /proc/<pid>/status."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key + "_mib"] = int(rest.split()[0]) / 1024.0
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-30)


def fidelity(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Mean/min cosine of ``vectors`` against the first rows of ``reference``."""
    n = min(len(vectors), len(reference))
    if n == 0:
        return {}
    c = cosine_rows(vectors[:n], reference[:n])
    return {"mean_cosine": float(c.mean()), "min_cosine": float(c.min()), "n": int(n)}


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_texts(path: Path, texts: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(texts), ensure_ascii=False), encoding="utf-8")
    return path
