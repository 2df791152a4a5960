"""The runtime's ONNX Runtime sessions compute the int8 graph's integer sums exactly.

On an x86 CPU without VNNI, ONNX Runtime's default uint8 x int8 kernel adds pairs of
products in 16 bits and saturates (pglocalai.models.onnx_session). There the exactness
tests fail without ``session.x64quantprecision``; with VNNI they pass either way. The
option costs ~2x on a CPU with VNNI, so the option test fails on every CPU where a
session carries it needlessly or lacks it where it is needed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pglocalai.models.onnx_session import (
    EXACT_INT8,
    cpu_session,
    exact_option_needed,
    exact_sums,
    int8_matmul_graph,
    int8_sums_exact,
    saturating_case,
    session_options,
    sums_exact,
    weights_as_uint8,
)
from pglocalai.service.cpu import cpu_features
from pglocalai.service.engine import _session

SETTINGS = {"intra_op_parallelism": 1, "inter_op_parallelism": 1, "spin_control": False}


def test_the_probe_would_saturate_16_bit_pair_sums() -> None:
    codes, weights = saturating_case()
    pairs = (codes[:, 0::2, None].astype(np.int64) * weights[None, 0::2, :]
             + codes[:, 1::2, None].astype(np.int64) * weights[None, 1::2, :])
    assert np.abs(pairs).min() > 32_767


def test_the_runtimes_sessions_sum_int8_products_exactly(tmp_path: Path) -> None:
    codes, weights = saturating_case()
    path = tmp_path / "int8-matmul.onnx"
    path.write_bytes(int8_matmul_graph(weights))
    (y,) = _session(str(path), SETTINGS, threads=1, weights={}).run(["y"], {"codes": codes})
    assert np.array_equal(y.astype(np.int64), exact_sums(codes, weights)), (
        f"int8 sums are not exact on this CPU ({cpu_features()['model']})")


def test_the_self_check_finds_the_sums_exact() -> None:
    assert int8_sums_exact() is True


def test_sessions_carry_the_exact_int8_option_where_the_cpu_needs_it(tmp_path: Path) -> None:
    needed = not sums_exact(ort.SessionOptions())  # ONNX Runtime left to itself
    assert exact_option_needed() is needed
    path = tmp_path / "int8-matmul.onnx"
    path.write_bytes(int8_matmul_graph(saturating_case()[1]))
    runtime = _session(str(path), SETTINGS, threads=1, weights={}).get_session_options()
    for opts in (runtime, session_options(threads=2)):
        assert _entries(opts) == (EXACT_INT8 if needed else {}), (
            f"the exact int8 option is {'missing' if needed else 'set needlessly'} on this "
            f"CPU ({cpu_features()['model']})")


def _entries(opts: ort.SessionOptions) -> dict[str, str]:
    """The entries of :data:`EXACT_INT8` that ``opts`` carries."""
    got = {}
    for key in EXACT_INT8:
        with contextlib.suppress(RuntimeError):  # ONNX Runtime's answer for an entry not set
            got[key] = opts.get_session_config_entry(key)
    return got


def test_uint8_weights_give_the_int8_graphs_vectors_bit_for_bit() -> None:
    """The runtime rewrites the weights itself on a CPU without VNNI (less memory while
    loading than ONNX Runtime's own rewrite in every session): the same integers."""
    from test_reference import CONFIG, random_bert  # noqa: PLC0415

    from pglocalai.models.bert_onnx import build_bert_onnx  # noqa: PLC0415

    model = build_bert_onnx(random_bert(CONFIG), CONFIG, "int8")
    rng = np.random.default_rng(5)
    feed = {"input_ids": rng.integers(2, CONFIG.vocab, size=(3, 11)),
            "attention_mask": np.ones((3, 11), np.int64)}
    want = cpu_session(model.SerializeToString(), threads=1).run(None, feed)[0]
    assert weights_as_uint8(model) == 6 * CONFIG.layers  # q, k, v, output, ffn in and out
    weights = {n.input[1] for n in model.graph.node if n.op_type == "MatMulIntegerToFloat"}
    assert {t.data_type for t in model.graph.initializer if t.name in weights} == {2}  # UINT8
    got = cpu_session(model.SerializeToString(), threads=1).run(None, feed)[0]
    np.testing.assert_array_equal(got, want)
