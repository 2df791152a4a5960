"""What this CPU offers the engines, read once from the kernel.

Which kernels are fast depends on a few instruction-set features: int8 dot products
(VNNI) for the int8 graph, bf16 units (AVX512-BF16, AMX) for a bf16 engine. The
runtime reports them in ``runtime_stats()`` next to the variant it runs, so that a
figure can be read against the hardware it came from (docs/benchmarks/engines.md
compares the engines on one such CPU).

>>> cpu_features()["int8_dot"]
True
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

# the flags (as /proc/cpuinfo names them) that change which kernels an engine picks
RELEVANT = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
            "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


@functools.cache
def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> dict[str, Any]:
    """Model name, the relevant flags present, and what they mean for the engines."""
    name, flags = platform.processor() or platform.machine(), set[str]()
    try:
        for line in Path(cpuinfo).read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                name = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass  # not Linux or no procfs: the engines still run, the report says less
    present = [f for f in RELEVANT if f in flags]
    return {"model": name, "flags": present,
            "int8_dot": bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags),
            "bf16": bool({"avx512_bf16", "amx_bf16"} & flags),
            "amx": "amx_tile" in flags}
