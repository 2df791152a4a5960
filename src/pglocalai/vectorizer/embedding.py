"""Texts to vector literals through the runtime; a text the runtime refuses fails alone.

A request fails as a whole. When the failure is the texts' fault (the runtime refused one, or
inference failed on it), the request is split in halves and each half sent again, down to
the single text that fails: that row gets a failure record and every other row its vector
(pgai #559 lost a whole batch to one bad item). Failures that are nobody's text, such as the
runtime being down or the model missing, are raised to the worker, which keeps the rows
queued and backs off.

>>> class Echo:
...     def embed_raw(self, model, texts, timeout_ms=None):
...         if "bad" in texts: raise errors.InvalidArgument("refused")
...         return 2, array("f", [0.5, 1.0] * len(texts)).tobytes()
>>> out = embed_texts(Echo(), "m", ["a", "bad", "c"])
>>> out.literals, out.errors
(['[0.5,1]', None, '[0.5,1]'], {1: 'refused'})
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pglocalai import errors, protocol

# A request holds at most this many texts and bytes (below the protocol's own limits, so that
# a batch of long texts goes as a few requests rather than one huge one).
MAX_TEXTS = min(512, getattr(protocol, "MAX_TEXTS_PER_REQUEST", 4096))
MAX_REQUEST_BYTES = 16 * 1024 * 1024
# One text larger than this can never be sent: it fails without a request.
MAX_TEXT_BYTES = getattr(protocol, "MAX_TEXT_BYTES", 64 * 1024 * 1024) - 1024

# Nobody's text is at fault: keep the rows queued, back off, try again.
TRANSIENT: tuple[type[errors.PglocalaiError], ...] = (
    errors.RuntimeUnavailable, errors.Overloaded, errors.RequestTimeout, errors.ShuttingDown,
    errors.ProtocolMismatch)
# The vectorizer cannot work at all (model missing or damaged): pause it, keep its rows queued.
MODEL: tuple[type[errors.PglocalaiError], ...] = (errors.ModelStoreError,)


class Embedder(Protocol):
    def embed_raw(self, model: str, texts: Sequence[str],
                  timeout_ms: int | None = None) -> tuple[int, bytes]: ...


def is_texts_fault(exc: errors.PglocalaiError) -> bool:
    """Whether splitting the request can isolate the cause (one text's fault)."""
    return not isinstance(exc, TRANSIENT + MODEL)


@dataclass
class Embedded:
    """One literal per text (None where it failed) and the failures by index."""

    literals: list[str | None]
    errors: dict[int, str] = field(default_factory=dict)


def describe(exc: errors.PglocalaiError) -> str:
    """An error as one line: message, then detail."""
    return f"{exc.message} ({exc.detail})" if exc.detail else exc.message


def embed_texts(client: Embedder, model: str, texts: Sequence[str], *,
                array_literal: bool = False, timeout_ms: int | None = None) -> Embedded:
    """Vector literals of ``texts`` (``[...]`` for vector, ``{...}`` for real[])."""
    out = Embedded([None] * len(texts))
    todo: list[int] = []
    for i, text in enumerate(texts):
        size = len(text.encode("utf-8"))
        if size > MAX_TEXT_BYTES:
            out.errors[i] = (f"input of {size} bytes exceeds the runtime's limit of "
                             f"{MAX_TEXT_BYTES} bytes per text")
        else:
            todo.append(i)
    for part in _requests(texts, todo):
        _embed(client, model, texts, part, out, array_literal, timeout_ms)
    return out


def _requests(texts: Sequence[str], todo: list[int]) -> list[list[int]]:
    parts: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i in todo:
        n = len(texts[i]) * 4  # at most 4 UTF-8 bytes per character: no encoding needed here
        if current and (len(current) >= MAX_TEXTS or size + n > MAX_REQUEST_BYTES):
            parts.append(current)
            current, size = [], 0
        current.append(i)
        size += n
    if current:
        parts.append(current)
    return parts


def _embed(client: Embedder, model: str, texts: Sequence[str], idx: list[int], out: Embedded,
           array_literal: bool, timeout_ms: int | None) -> None:
    try:
        dim, raw = client.embed_raw(model, [texts[i] for i in idx], timeout_ms)
    except errors.PglocalaiError as exc:
        if not is_texts_fault(exc):
            raise
        if len(idx) == 1:
            out.errors[idx[0]] = describe(exc)
            return
        half = len(idx) // 2
        _embed(client, model, texts, idx[:half], out, array_literal, timeout_ms)
        _embed(client, model, texts, idx[half:], out, array_literal, timeout_ms)
        return
    for i, literal in zip(idx, vector_literals(dim, raw, array_literal), strict=True):
        out.literals[i] = literal


_FORMATS: dict[tuple[int, bool], str] = {}


def vector_literals(dim: int, raw: bytes, array_literal: bool = False) -> list[str]:
    """Text literals of the float32 vectors in ``raw``; "%.9g" round-trips float32 exactly,
    so the column receives the very values create_embeddings() would return."""
    if dim < 1:
        raise errors.ProtocolMismatch(f"the runtime sent vectors of {dim} dimensions")
    fmt = _FORMATS.get((dim, array_literal))
    if fmt is None:
        body = ",".join(["%.9g"] * dim)
        fmt = _FORMATS[(dim, array_literal)] = "{" + body + "}" if array_literal else f"[{body}]"
    values = array("f", raw)
    if sys.byteorder != "little":
        values.byteswap()
    return [fmt % tuple(values[i : i + dim]) for i in range(0, len(values), dim)]
