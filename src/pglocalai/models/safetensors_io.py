"""Read ``.safetensors`` files with numpy alone (no PyTorch, no safetensors package).

Format: u64 little-endian header length N, N bytes of JSON
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``),
then the raw little-endian tensor bytes, offsets relative to the end of the header.

>>> weights = read_safetensors("model.safetensors")     # float tensors as float32
>>> weights["embeddings.word_embeddings.weight"].shape
(30522, 384)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pglocalai.errors import ModelFormatError

MAX_HEADER = 100 << 20  # a header beyond 100 MB is a corrupt or hostile file
_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
_FLOATS = ("F64", "F32", "F16", "BF16")


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """(tensor entries without ``__metadata__``, byte offset where the data starts)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ModelFormatError(f"{path.name} is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise ModelFormatError(f"{path.name}: safetensors header of {n} bytes is too large")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"{path.name}: unreadable safetensors header",
                               detail=str(exc)) from exc
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path.name}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path: str | Path, *, float32: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the file; float tensors as float32 unless ``float32=False``."""
    path = Path(path)
    header, start = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    size = len(data) - start
    out: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        try:
            dtype, shape = entry["dtype"], [int(d) for d in entry["shape"]]
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{path.name}: malformed entry for tensor {name}") from None
        if dtype not in _DTYPES:
            raise ModelFormatError(f"{path.name}: tensor {name} has unsupported dtype {dtype}")
        np_dtype = np.dtype(_DTYPES[dtype])
        count = int(np.prod(shape)) if shape else 1
        if not 0 <= begin <= end <= size or end - begin != count * np_dtype.itemsize:
            raise ModelFormatError(f"{path.name}: tensor {name} has inconsistent offsets",
                                   detail=f"{dtype}{shape} at [{begin}, {end}) of {size} bytes")
        arr = data[start + begin : start + end].view(np_dtype).reshape(shape)
        if dtype == "BF16":
            # bfloat16 is the top half of a float32 (numpy has no bfloat16: always float32)
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif float32 and dtype in _FLOATS:
            arr = arr.astype(np.float32)
        else:
            arr = np.array(arr)  # detach from the memory map
        out[name] = arr
    return out
