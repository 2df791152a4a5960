"""ONNX Runtime session options that every graph here runs with, in one place.

Exact int8 on every x86 CPU. ONNX Runtime multiplies uint8 activations by int8 weights
with ``vpmaddubsw`` on x86 CPUs without VNNI (AVX2, and AVX-512 before VNNI). That
instruction adds two products into 16 bits and saturates: our activations sit around
their zero point 128, so a pair of products passes 32,767 as soon as a weight passes
±64, and the sum is cut off. The int8 graph then gave other vectors than on a CPU with
VNNI (cosine to fp32 0.99870 instead of 0.99912 on the fidelity texts, min 0.99661
instead of 0.99777; docs/models.md). ``session.x64quantprecision`` makes ONNX Runtime
store the int8 weights as uint8 (plus 128, zero point 128) on those CPUs, and its
uint8 x uint8 kernel widens to 16 bits before it multiplies: the integer sums are exact
there as they are with VNNI. On CPUs with VNNI the option changes nothing. So a vector
is the same on a primary and on a standby with another CPU, as an IMMUTABLE function
promises, at ~0.8x the int8 speed on the CPUs that need it.

>>> session = ort.InferenceSession(path, session_options(threads=1))
"""

from __future__ import annotations

from typing import Any

# the SessionOptions config entries that keep the int8 matmuls exact (see above)
EXACT_INT8 = {"session.x64quantprecision": "1"}


def session_options(threads: int = 0) -> Any:
    """SessionOptions with the entries above; ``threads`` intra-op threads (0: ORT's own)."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy, and optional where no graph runs

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in EXACT_INT8.items():
        opts.add_session_config_entry(key, value)
    return opts


def cpu_session(model: str | bytes, threads: int = 0) -> Any:
    """An InferenceSession on the CPU provider with :func:`session_options`."""
    import onnxruntime as ort  # noqa: PLC0415

    return ort.InferenceSession(model, session_options(threads),
                                providers=["CPUExecutionProvider"])
