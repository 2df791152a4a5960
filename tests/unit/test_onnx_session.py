"""The runtime's ONNX Runtime sessions compute the int8 graph's integer sums exactly.

On an x86 CPU without VNNI, ONNX Runtime's default uint8 x int8 kernel adds pairs of
products in 16 bits and saturates (pglocalai.models.onnx_session). There the exactness
test fails without ``session.x64quantprecision``; with VNNI it passes either way, and the
option test below still fails if a session is built without the option.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from pglocalai.models.onnx_session import EXACT_INT8, cpu_session, session_options
from pglocalai.service.cpu import cpu_features
from pglocalai.service.engine import _session

SETTINGS = {"intra_op_parallelism": 1, "inter_op_parallelism": 1, "spin_control": False}
K, N = 64, 16


def saturating_case() -> tuple[np.ndarray, np.ndarray]:
    """uint8 codes far from their zero point 128 and int8 weights near +-127: every pair
    of products is past 32,767, where a 16-bit pair sum saturates."""
    rng = np.random.default_rng(7)
    codes = rng.choice(np.array([1, 2, 254, 255], np.uint8), size=(4, K))
    weights = (rng.choice(np.array([-127, -120, 120, 127]), size=(K, N))).astype(np.int8)
    return codes, weights


def int8_matmul_graph(weights: np.ndarray) -> bytes:
    """y = (codes - 128) @ weights as the int8 graph writes it (MatMulIntegerToFloat)."""
    node = helper.make_node("MatMulIntegerToFloat", ["codes", "w", "one", "ws", "zp"], ["y"],
                            domain="com.microsoft")
    graph = helper.make_graph(
        [node], "int8-matmul",
        [helper.make_tensor_value_info("codes", TensorProto.UINT8, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array(1, np.float32), "one"),
         numpy_helper.from_array(np.ones(N, np.float32), "ws"),
         numpy_helper.from_array(np.array(128, np.uint8), "zp")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    return model.SerializeToString()


def exact(codes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (codes.astype(np.int64) - 128) @ weights.astype(np.int64)


def test_the_runtimes_sessions_sum_int8_products_exactly(tmp_path: Path) -> None:
    codes, weights = saturating_case()
    path = tmp_path / "int8-matmul.onnx"
    save(helper.ModelProto.FromString(int8_matmul_graph(weights)), str(path))
    session = _session(str(path), SETTINGS, threads=1, weights={})
    (y,) = session.run(["y"], {"codes": codes})
    # sums up to 64 * 127 * 127: exact in float32 below 2**24
    assert np.array_equal(y.astype(np.int64), exact(codes, weights)), (
        f"int8 sums are not exact on this CPU ({cpu_features()['model']})")


def test_helper_sessions_sum_int8_products_exactly() -> None:
    codes, weights = saturating_case()
    (y,) = cpu_session(int8_matmul_graph(weights), threads=1).run(["y"], {"codes": codes})
    assert np.array_equal(y.astype(np.int64), exact(codes, weights))


def test_every_session_carries_the_exact_int8_option(tmp_path: Path) -> None:
    path = tmp_path / "int8-matmul.onnx"
    path.write_bytes(int8_matmul_graph(saturating_case()[1]))
    runtime = _session(str(path), SETTINGS, threads=1, weights={}).get_session_options()
    for opts in (runtime, session_options(threads=2)):
        for key, value in EXACT_INT8.items():
            assert opts.get_session_config_entry(key) == value
