"""ONNX Runtime session options that every graph here runs with, in one place.

Exact int8 on every x86 CPU. ONNX Runtime multiplies uint8 activations by int8 weights
with ``vpmaddubsw`` on x86 CPUs without VNNI (AVX2, and AVX-512 before VNNI). That
instruction adds two products into 16 bits and saturates: a large activation is a code
near 255 (zero point 128), so two of them times two weights of one sign that add up past
128 pass 32,767, and the sum is cut off. The int8 graph then gave other vectors than on a CPU with
VNNI (cosine to fp32 0.99870 instead of 0.99912 on the fidelity texts, min 0.99661
instead of 0.99777; docs/models.md). ``session.x64quantprecision`` makes ONNX Runtime
store the int8 weights as uint8 (plus 128, zero point 128) on those CPUs, and its
uint8 x uint8 kernel widens to 16 bits before it multiplies: the integer sums are exact
there as they are with VNNI. So a vector is the same on a primary and on a standby with
another CPU, as an IMMUTABLE function promises, at ~0.8x the int8 speed on the CPUs that
need it.

The option is set only where it is needed: where a session without it saturates
(:func:`exact_option_needed`, a probe once per process). On a CPU with VNNI it is not
free: it switches ONNX Runtime to its uint8 x uint8 kernel there too, and the int8 graph
ran at ~0.53x its speed (AMD Zen 4, AVX512-VNNI) for the same vectors bit for bit.
:func:`int8_sums_exact` checks the sessions' sums on the CPU at hand (the runtime reports
it per model in ``runtime_stats()``), so that an ONNX Runtime that stops honouring the
option does not go unnoticed.

>>> session = cpu_session(path, threads=1)
>>> int8_sums_exact()
True
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# the SessionOptions config entries that keep the int8 matmuls exact (see above)
EXACT_INT8 = {"session.x64quantprecision": "1"}


# the zero point the uint8 weights of :func:`weights_as_uint8` share
UINT8_WEIGHT_ZERO_POINT = "pglocalai_weight_zp128"


def weights_as_uint8(model: Any) -> int:
    """Rewrite ``model`` (an onnx ModelProto, in place) as the option makes ONNX Runtime
    run it on a CPU without VNNI: each integer matmul's int8 weights as uint8 (plus 128)
    with zero point 128. The same integers, so the same vectors; done once here, it spares
    every session its own converted copy while it loads (+48 MiB at the runtime's peak
    with two sessions). Returns how many weights it rewrote."""
    from onnx import numpy_helper  # noqa: PLC0415 - heavy

    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "MatMulIntegerToFloat" or len(node.input) > 5:
            continue  # not the int8 graph's Linear, or it has a weight zero point already
        w = inits.get(node.input[1])
        if w is None or w.data_type != 3:  # INT8
            continue
        if w.name not in done:
            codes = numpy_helper.to_array(w).astype(np.int16) + 128
            w.CopyFrom(numpy_helper.from_array(codes.astype(np.uint8), w.name))
            done.add(w.name)
        node.input.append(UINT8_WEIGHT_ZERO_POINT)  # b_zero_point
    if done and UINT8_WEIGHT_ZERO_POINT not in inits:
        model.graph.initializer.append(
            numpy_helper.from_array(np.array(128, np.uint8), UINT8_WEIGHT_ZERO_POINT))
    return len(done)


def session_options(threads: int = 0) -> Any:
    """SessionOptions for this CPU: with the entries above where :func:`exact_option_needed`;
    ``threads`` intra-op threads (0: ORT's own)."""
    return _options(threads, exact=exact_option_needed())


def _options(threads: int, exact: bool) -> Any:
    import onnxruntime as ort  # noqa: PLC0415 - heavy, and optional where no graph runs

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if exact:
        for key, value in EXACT_INT8.items():
            opts.add_session_config_entry(key, value)
    return opts


def cpu_session(model: str | bytes, threads: int = 0) -> Any:
    """An InferenceSession on the CPU provider with :func:`session_options`."""
    import onnxruntime as ort  # noqa: PLC0415

    return ort.InferenceSession(model, session_options(threads),
                                providers=["CPUExecutionProvider"])


# the probe's shape: 64 products per sum, 16 sums per row
PROBE_K, PROBE_N = 64, 16


def saturating_case() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 codes, int8 weights) where any two neighbouring products add up past 32,767:
    codes near 255, weights near ±127 with one sign per 4 inputs (a kernel pairs or
    quadruples neighbouring inputs)."""
    rng = np.random.default_rng(7)
    codes = rng.integers(250, 256, size=(4, PROBE_K)).astype(np.uint8)
    signs = rng.choice(np.array([-1, 1]), size=(PROBE_K // 4, PROBE_N)).repeat(4, axis=0)
    weights = rng.integers(120, 128, size=(PROBE_K, PROBE_N)) * signs
    return codes, weights.astype(np.int8)


def int8_matmul_graph(weights: np.ndarray) -> bytes:
    """y = (codes - 128) @ weights, written as the int8 graph writes a Linear."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415 - heavy

    k, n = weights.shape
    node = helper.make_node("MatMulIntegerToFloat", ["codes", "w", "one", "ws", "zp"], ["y"],
                            domain="com.microsoft")
    graph = helper.make_graph(
        [node], "int8-matmul",
        [helper.make_tensor_value_info("codes", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array(1, np.float32), "one"),
         numpy_helper.from_array(np.ones(n, np.float32), "ws"),
         numpy_helper.from_array(np.array(128, np.uint8), "zp")])
    return helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]).SerializeToString()


def exact_sums(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (codes.astype(np.int64) - 128) @ weights.astype(np.int64)


def sums_exact(opts: Any) -> bool:
    """Whether a session with ``opts`` sums the saturating case's products exactly."""
    import onnxruntime as ort  # noqa: PLC0415

    codes, weights = saturating_case()
    session = ort.InferenceSession(int8_matmul_graph(weights), opts,
                                   providers=["CPUExecutionProvider"])
    (y,) = session.run(["y"], {"codes": codes})
    # sums up to 64 * 127 * 127: exact in float32 below 2**24
    return bool(np.array_equal(y.astype(np.int64), exact_sums(codes, weights)))


@functools.cache
def exact_option_needed() -> bool:
    """Whether ONNX Runtime's own int8 kernel saturates on this CPU (x86 without VNNI), so
    that sessions need :data:`EXACT_INT8` (a few ms, once)."""
    return not sums_exact(_options(1, exact=False))


@functools.cache
def int8_sums_exact() -> bool:
    """Whether a session made here sums int8 products exactly on this CPU (a few ms, once)."""
    if not exact_option_needed():
        return True  # its probe ran the options sessions get here, and found the sums exact
    return sums_exact(session_options(threads=1))
