"""Helpers every benchmark module shares: where things are (.run/env, the model), progress,
percentiles, memory, JSON files, and the CPU meter."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RUN_DIR = REPO / ".run"
WORK_DIR = RUN_DIR / "bench"
OUT_DIR = REPO / "docs" / "benchmarks"
MODEL_URI = "multilingual-e5-small:v1"
T = TypeVar("T")
_T0 = time.perf_counter()


def load_run_env() -> None:
    """Take PGHOST, PGLOCALAI_SOCKET & co from .run/env (`make up` writes it) where the
    caller's environment does not set them: the one place that reads the file."""
    env = RUN_DIR / "env"
    if not env.exists():
        return
    for line in env.read_text().splitlines():
        if line.startswith("export ") and "=" in line:
            k, _, v = line[7:].partition("=")
            os.environ.setdefault(k.strip(), v.strip().strip("'\""))


def model_dir() -> Path:
    """The installed model's folder in the runtime's model store."""
    from pglocalai.models.store import default_models_dir  # noqa: PLC0415

    return default_models_dir() / MODEL_URI.replace(":", "@")


def model_meta(mdir: Path) -> dict[str, Any]:
    return json.loads((mdir / "metadata.json").read_text(encoding="utf-8"))


def variants(mdir: Path) -> list[str]:
    return sorted(model_meta(mdir).get("variants", {}))


def onnx_variants(mdir: Path) -> list[str]:
    """The variants ONNX Runtime runs (the bf16 one is OpenVINO's)."""
    return [v for v, spec in sorted(model_meta(mdir).get("variants", {}).items())
            if spec.get("engine", "onnxruntime") == "onnxruntime"]


def default_variant(mdir: Path) -> str:
    return str(model_meta(mdir).get("default_variant", "int8"))


def model_summary(mdir: Path) -> dict[str, Any]:
    meta = model_meta(mdir)
    sizes = {name: (mdir / spec["file"]).stat().st_size / 2**20
             for name, spec in meta.get("variants", {}).items() if (mdir / spec["file"]).exists()}
    return {"source": meta.get("source"), "default_variant": meta.get("default_variant"),
            "variants": {k: v.get("description", "") for k, v in meta.get("variants", {}).items()},
            "file_mib": sizes}


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


def in_turn(items: Sequence[T], round_no: int) -> list[T]:
    """``items`` for round ``round_no``: each round starts one item further along, so a
    machine that drifts between rounds favours none of them (two items alternate)."""
    k = round_no % len(items) if items else 0
    return [*items[k:], *items[:k]]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable) + "\n",
                   encoding="utf-8")
    os.replace(tmp, path)


def write_page(out: Path, name: str, doc: dict[str, Any], markdown: str,
               draw: Callable[[Path], None]) -> None:
    """A part with a page of its own: ``name``.json (``doc``), ``name``.md and the plot
    ``draw`` makes, ``name``.png, under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", doc)
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")
    draw(out / f"{name}.png")


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


class CpuMeter:
    """CPU seconds by process group over a stretch of the run: where the time goes.

    Groups: the runtime process, the PostgreSQL cluster (the postmaster, its live
    children, and the children it has reaped, so backends that came and went are
    counted), this benchmark with every child it waited for (pgbench, the peer
    workers), and ``other``: the machine's busy time minus all of those, i.e.
    processes that are not part of the benchmark at all.
    """

    def __init__(self, runtime_pid: int | None = None, postmaster_pid: int | None = None) -> None:
        self.runtime_pid = runtime_pid
        self.postmaster_pid = postmaster_pid
        self._baseline = 0

    @staticmethod
    def _machine_busy() -> float:
        with open("/proc/stat", encoding="ascii") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
        return (sum(vals) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _proc(pid: int | None, with_children: bool) -> float:
        import psutil  # noqa: PLC0415

        if pid is None:
            return 0.0
        try:
            p = psutil.Process(pid)
            t = p.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            if with_children:
                for c in p.children(recursive=True):
                    try:
                        ct = c.cpu_times()
                        total += ct.user + ct.system
                    except psutil.Error:
                        pass
            return total
        except psutil.Error:
            return 0.0

    def settle(self, timeout: float = 2.0) -> None:
        """Wait until the postmaster has reaped exited backends (their CPU then counts)."""
        import psutil  # noqa: PLC0415

        if self.postmaster_pid is None:
            return
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                kids = psutil.Process(self.postmaster_pid).children()
                if not any(k.status() == psutil.STATUS_ZOMBIE for k in kids) and \
                        len(kids) <= self._baseline:
                    return
            except psutil.Error:
                return
            time.sleep(0.05)

    def mark(self) -> None:
        """Remember how many children the postmaster has now (its idle processes)."""
        import psutil  # noqa: PLC0415

        try:
            self._baseline = len(psutil.Process(self.postmaster_pid).children()) \
                if self.postmaster_pid else 0
        except psutil.Error:
            self._baseline = 0

    def snapshot(self) -> dict[str, float]:
        import resource  # noqa: PLC0415

        me = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {"t": time.perf_counter(), "machine": self._machine_busy(),
                "runtime": self._proc(self.runtime_pid, False),
                "postgres": self._proc(self.postmaster_pid, True),
                "bench": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}

    @staticmethod
    def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        """CPU seconds per group between two snapshots, and ``wall_s``."""
        d = {k: b[k] - a[k] for k in ("runtime", "postgres", "bench", "machine")}
        d["other"] = max(0.0, d["machine"] - d["runtime"] - d["postgres"] - d["bench"])
        d["wall_s"] = b["t"] - a["t"]
        return d
