"""A word-embedding table kept as q4_0 blocks, widened to fp32 a row at a time.

250k rows x 384 in fp32 are 384 MB; as the pack's 4-bit blocks they are 54 MB, and
widening a gathered row is exact. The bf16 engine (:mod:`pglocalai.service.openvino_engine`)
feeds the widened rows to its graph; the converter checks that graph with them.

>>> table = WordTable(npz_bytes)
>>> table.rows(np.array([[0, 35377, 2]])).shape
(1, 3, 384)
"""

from __future__ import annotations

import io

import numpy as np

from pglocalai.errors import ModelFormatError


class WordTable:
    """The word-embedding table as q4_0 blocks: rows widened to fp32 on demand, exactly."""

    def __init__(self, npz: bytes) -> None:
        with np.load(io.BytesIO(npz), allow_pickle=False) as data:
            self.nibbles = np.ascontiguousarray(data["nibbles"], dtype=np.uint8)
            self.scales = np.ascontiguousarray(data["scales"], dtype=np.float16)
        if self.nibbles.shape[0] != self.scales.shape[0] \
                or self.nibbles.shape[1] != self.scales.shape[1] * 16:
            raise ModelFormatError("the word table's blocks do not match their scales",
                                   detail=f"{self.nibbles.shape} and {self.scales.shape}")
        self.hidden = self.scales.shape[1] * 32

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 [*ids.shape, hidden]: byte j of a block holds weights j and j + 16."""
        packed = self.nibbles[ids].reshape(*ids.shape, -1, 16)
        q = np.concatenate([packed & 15, packed >> 4], axis=-1).astype(np.float32)
        q -= 8
        q *= self.scales[ids].astype(np.float32)[..., None]
        return q.reshape(*ids.shape, self.hidden)
