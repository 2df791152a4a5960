"""glibc's malloc from Python, through one handle: give freed memory back, say what it holds.

The runtime trims the heap after loading a model and after a large frame (memory freed but
kept shows in RSS for good otherwise), and ``runtime_stats()`` reports what malloc holds
next to RSS, where a slow leak shows first (:func:`pglocalai.service.stats.heap_bytes`).
Both are glibc's: elsewhere the trim does nothing and the figures are left out.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None  # not glibc


@functools.cache
def _mallinfo2() -> Any:
    fn = getattr(_libc(), "mallinfo2", None)  # glibc 2.33 and later
    if fn is not None:
        fn.restype = _MallInfo2
        fn.argtypes = []
    return fn


def release_free_memory() -> None:
    """Hand the heap that was freed (a loaded graph's protobuf, a large frame) back to the
    system."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def malloc_bytes() -> dict[str, int]:
    """``heap_in_use_bytes`` (allocated and not freed, mapped chunks included) and
    ``heap_free_bytes`` (freed but kept by malloc); empty without glibc."""
    fn = _mallinfo2()
    if fn is None:
        return {}
    info = fn()
    return {"heap_in_use_bytes": int(info.uordblks + info.hblkhd),
            "heap_free_bytes": int(info.fordblks)}
