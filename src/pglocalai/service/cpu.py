"""What this CPU offers the engines, read once from the kernel.

Which kernels are fast depends on a few instruction-set features: int8 dot products
(VNNI) for the int8 graph, bf16 units (AVX512-BF16, AMX) for a bf16 engine. The
runtime reports them in ``runtime_stats()`` next to the variant it runs, so that a
figure can be read against the hardware it came from (docs/benchmarks/engines.md
compares the engines on one such CPU).

>>> cpu_features()["int8_kernel"]    # on an x86 CPU with VNNI
'u8s8-vnni'
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

# the flags (as /proc/cpuinfo names them) that change which kernels an engine picks
RELEVANT = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def cpuinfo_fields(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo ("model name", "flags", ...); empty
    where there is no procfs."""
    fields: dict[str, str] = {}
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass  # not Linux or no procfs: the engines still run, the report says less
    return fields


@functools.cache
def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Model name, the relevant flags present, and what they mean for the engines."""
    fields = cpuinfo_fields(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    present = [f for f in RELEVANT if f in flags]
    int8_dot = bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return {"model": name, "flags": present, "int8_dot": int8_dot,
            # ONNX Runtime's integer matmul: uint8 x int8 summed in 32 bits where there is
            # VNNI; uint8 x uint8 on other x86 CPUs, which is exact but ~0.8x as fast
            # (pglocalai.models.onnx_session); the platform's own kernels elsewhere
            "int8_kernel": ("u8s8-vnni" if int8_dot else "u8u8") if x86 else "native",
            "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "amx": "amx_tile" in flags}
