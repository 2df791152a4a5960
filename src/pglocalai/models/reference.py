"""Pure-numpy forward pass of a post-LN BERT encoder with mean pooling.

It is the yardstick for the ONNX graphs built by :mod:`pglocalai.models.bert_onnx`:
written straight from the maths, with no fusion and no quantisation, so a graph
that agrees with it computes the model and not merely something close to it.

>>> vecs = bert_embed(weights, config, ids, mask)         # float32 [batch, hidden]
"""

from __future__ import annotations

import math

import numpy as np

from pglocalai.errors import ModelFormatError
from pglocalai.models.bert_weights import BertConfig, canonical_weights, word_embedding_table

_ERF = np.frompyfunc(math.erf, 1, 1)
# Maclaurin series of erf: 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1))
_SERIES = np.array([(-1) ** n / (math.factorial(n) * (2 * n + 1)) for n in range(41)])
# (bound on |x|, terms for < 1e-15 there): most GELU inputs are small, so they get few terms
_RANGES = ((1.0, 19), (2.5, 41))


def erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-14: a power series where it converges fast, math.erf beyond."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    ax = np.abs(x)
    low = 0.0
    for bound, terms in _RANGES:
        sel = (ax > low) & (ax <= bound) if low else ax <= bound
        xs = x[sel]
        z = xs * xs
        acc = np.full_like(xs, _SERIES[terms - 1])
        for c in _SERIES[terms - 2 :: -1]:
            acc = acc * z + c
        out[sel] = 2.0 / math.sqrt(math.pi) * xs * acc
        low = bound
    rest = ax > low
    out[rest] = _ERF(x[rest]).astype(np.float64)
    return out


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray, act: str) -> np.ndarray:
    if act == "gelu":
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)).astype(x.dtype))
    if act == "relu":
        return np.maximum(x, 0)
    raise ModelFormatError(f"unsupported activation {act!r}")


def bert_hidden(
    weights: dict[str, np.ndarray],
    config: BertConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    dtype: type = np.float64,
) -> np.ndarray:
    """Last hidden state [batch, seq, hidden], computed in ``dtype`` (float64: a tight check)."""
    w = canonical_weights(weights)

    def p(name: str) -> np.ndarray:
        return np.asarray(w[name], dtype=dtype)

    ids = np.asarray(input_ids, dtype=np.int64)
    mask = np.asarray(attention_mask, dtype=np.int64)
    batch, seq = ids.shape
    h, nh = config.hidden, config.heads
    hd = h // nh
    x = word_embedding_table(w, ids).astype(dtype)
    x = x + p("embeddings.position_embeddings.weight")[:seq] + p(
        "embeddings.token_type_embeddings.weight")[0]
    x = _layer_norm(x, p("embeddings.LayerNorm.weight"), p("embeddings.LayerNorm.bias"), config.eps)
    # masked keys get no weight at all (as with an additive -inf)
    key_ok = (mask > 0)[:, None, None, :]
    for i in range(config.layers):
        pre = f"encoder.layer.{i}."

        def lin(t: np.ndarray, name: str, pre: str = pre) -> np.ndarray:
            wt = np.ascontiguousarray(p(pre + name + ".weight").T)  # 2-D matmuls use BLAS
            y = t.reshape(-1, t.shape[-1]) @ wt + p(pre + name + ".bias")
            return y.reshape(*t.shape[:-1], wt.shape[1])

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, seq, nh, hd).transpose(0, 2, 1, 3)

        q = heads(lin(x, "attention.self.query"))
        k = heads(lin(x, "attention.self.key"))
        v = heads(lin(x, "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
        scores = np.where(key_ok, scores, -np.inf)
        scores = scores - scores.max(axis=-1, keepdims=True)
        probs = np.where(key_ok, np.exp(scores), 0.0)
        probs = probs / probs.sum(axis=-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, h)
        x = _layer_norm(lin(ctx, "attention.output.dense") + x,
                        p(pre + "attention.output.LayerNorm.weight"),
                        p(pre + "attention.output.LayerNorm.bias"), config.eps)
        mid = _gelu(lin(x, "intermediate.dense"), config.act)
        x = _layer_norm(lin(mid, "output.dense") + x, p(pre + "output.LayerNorm.weight"),
                        p(pre + "output.LayerNorm.bias"), config.eps)
    return x


def mean_pool_normalize(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Mean over the tokens the mask keeps, then L2-normalised (sentence-transformers' recipe)."""
    m = np.asarray(attention_mask, dtype=hidden.dtype)[:, :, None]
    mean = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norm = np.sqrt((mean * mean).sum(axis=-1, keepdims=True))
    return mean / np.maximum(norm, 1e-12)


def bert_embed(
    weights: dict[str, np.ndarray],
    config: BertConfig,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    dtype: type = np.float64,
) -> np.ndarray:
    """Pooled, normalised sentence embeddings as float32 [batch, hidden]."""
    hidden = bert_hidden(weights, config, input_ids, attention_mask, dtype)
    return mean_pool_normalize(hidden, attention_mask).astype(np.float32)
