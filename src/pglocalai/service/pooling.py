"""Pooling and normalisation for graphs whose output is ``last_hidden_state``.

Our own graphs pool and normalise inside ONNX. An imported third-party graph
may stop at the token states; these pure functions turn them into sentence
vectors the way sentence-transformers does (``1_Pooling``), so both kinds of
model give the same kind of vector.

>>> v = pool(hidden, mask, "mean", normalize=True)   # float32 [batch, dim]
"""

from __future__ import annotations

import numpy as np

from pglocalai.errors import ModelFormatError

POOLINGS = ("mean", "cls")


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Average of the token states where ``mask`` is 1 (padding excluded)."""
    m = mask.astype(np.float32)[:, :, None]
    summed = (hidden.astype(np.float32) * m).sum(axis=1)
    counts = np.maximum(m.sum(axis=1), 1e-9)
    return summed / counts


def cls_pool(hidden: np.ndarray) -> np.ndarray:
    """The state of the first token (``[CLS]``/``<s>``)."""
    return np.ascontiguousarray(hidden[:, 0, :], dtype=np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero instead of NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """Sentence vectors [batch, dim] from token states [batch, seq, dim]."""
    if hidden.ndim != 3:
        raise ModelFormatError(f"expected token states of rank 3, not {hidden.ndim}")
    if pooling == "mean":
        out = mean_pool(hidden, mask)
    elif pooling == "cls":
        out = cls_pool(hidden)
    else:
        raise ModelFormatError(f"unsupported pooling \"{pooling}\"",
                               hint="supported: " + ", ".join(POOLINGS))
    return l2_normalize(out) if normalize else out.astype(np.float32, copy=False)
