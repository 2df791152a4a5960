"""Chunks of a text that fit a model, cut at paragraphs, then sentences, then words.

Pure cutting, given an async token counter; the request itself is handled in
:mod:`pglocalai.service.handlers`. The request kind CHUNK (``Client.chunk``,
``azure_local_ai.chunk_text``, the vectorizer's chunks tables): one text,
``max_tokens``, ``overlap_tokens`` and an optional ``prefix`` in; the chunks and, for
each, how many of its leading characters repeat the end of the chunk before it (its
overlap) out. So::

    text == chunks[0] + "".join(c[o:] for c, o in zip(chunks[1:], overlaps[1:]))

Each chunk is cut where the text has a boundary: a blank line, else the end of a
sentence, else a space, else (scripts written without spaces, or one endless word) a
character, its combining marks kept with it. Every chunk, with the prefix in front and
the model's special tokens, is at most ``max_tokens`` by the model's own tokenizer:
sizes are estimated from the token counts of the pieces and each chunk is then counted
exactly and shortened if needed. The overlap is whole pieces from the end of the chunk
before, up to about ``overlap_tokens``.

>>> async def count(texts):  # one token per character, plus two specials
...     return [len(t) + 2 for t in texts]
>>> import asyncio
>>> asyncio.run(split_text("One. Two. Three.", 12, 0, count))
(['One. Two. ', 'Three.'], [0, 0])
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Awaitable, Callable

from pglocalai.errors import InvalidArgument

Counter = Callable[[list[str]], Awaitable[list[int]]]

# Where a piece may end, coarsest first; what a match covers stays with the piece before it.
_BOUNDARIES = [
    re.compile(r"\n[ \t\r\f\v]*\n\s*"),  # a blank line (paragraphs)
    re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+|[\u3002\uff01\uff1f\uff1b]+\s*"),  # sentences
    re.compile(r"\s+"),  # words
]
MAX_CHARS_PER_TOKEN = 16  # a tokenizer piece is rarely longer: a longer text surely overflows
MAX_CHUNKS = 100_000
# The cutting runs on the event loop between its token counts (which run in the tokenizer
# thread): bounding the text bounds each step (a regex pass, a list of characters) to a few ms,
# so one huge document cannot hold up every other request. About 64,000 tokens of prose.
MAX_CHUNK_CHARS = 256 * 1024


def _cut(text: str, pattern: re.Pattern[str]) -> list[str]:
    pieces, start = [], 0
    for m in pattern.finditer(text):
        if m.end() > start and m.end() < len(text):
            pieces.append(text[start : m.end()])
            start = m.end()
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _characters(text: str) -> list[str]:
    """Code points with their combining marks (and joiners) attached."""
    out: list[str] = []
    for ch in text:
        if out and (unicodedata.combining(ch) or ch in "\u200d\ufe0f" or out[-1][-1] == "\u200d"):
            out[-1] += ch
        else:
            out.append(ch)
    return out


CHARACTERS = len(_BOUNDARIES)  # the level of runs of characters; one more: single characters
_THREAD_CHARS = 16 * 1024  # cutting a longer text into characters runs off the event loop


async def _runs(text: str, size: int) -> list[str]:
    """``text`` in runs of ``size`` characters (marks kept with theirs). A token covers at
    least one character, so a run of ``size`` costs about ``size`` tokens at most: a text
    without spaces is cut in a few hundred counts, not one per character."""
    chars = await asyncio.to_thread(_characters, text) if len(text) > _THREAD_CHARS \
        else _characters(text)
    return ["".join(chars[i : i + size]) for i in range(0, len(chars), size)]


def split_at(text: str, level: int) -> list[str]:
    """``text`` cut at the boundaries of ``level`` (0 paragraphs .. 3 characters), lossless."""
    return _characters(text) if level >= len(_BOUNDARIES) else _cut(text, _BOUNDARIES[level])


async def split_text(text: str, max_tokens: int, overlap_tokens: int, count: Counter,
                     prefix: str = "") -> tuple[list[str], list[int]]:
    """The chunks of ``text`` and their overlaps in characters (see the module docstring)."""
    if max_tokens < 1 or overlap_tokens < 0:
        raise InvalidArgument("max_tokens must be positive and overlap_tokens not negative",
                              detail=f"max_tokens is {max_tokens}, overlap_tokens {overlap_tokens}")
    if not text:
        return [], []
    empty, fixed = await count(["", prefix])
    budget = max_tokens - fixed  # tokens left for the chunk's own text
    if budget < 1:
        raise InvalidArgument(
            f"max_tokens {max_tokens} leaves no room for text",
            detail=f"the prefix and the model's special tokens take {fixed} tokens",
            hint="raise max_tokens or shorten the prefix")
    overlap_tokens = min(overlap_tokens, budget // 2)
    pieces = await _fit([text], -1, budget, empty, count)
    chunks: list[str] = []
    overlaps: list[int] = []
    i, prev_start = 0, 0
    while i < len(pieces):
        tail = ""
        if chunks and overlap_tokens:
            tail, _ = await _tail(pieces[prev_start:i], overlap_tokens, empty, count)
        while True:
            end = await _longest(pieces, i, tail, prefix, max_tokens, budget, count)
            if end > i:
                break
            if tail:
                tail = ""  # the overlap goes before the piece itself is cut
                continue
            level = _level_below(pieces[i][0])
            finer = await _fit([pieces[i][0]], level, max(1, budget - 1), empty, count)
            if len(finer) == 1 and level == CHARACTERS:  # one run: its characters
                finer = await _fit([pieces[i][0]], CHARACTERS + 1, max(1, budget - 1), empty,
                                   count)
            if len(finer) == 1:
                end = i + 1  # one character over the limit: nothing finer exists
                break
            pieces[i : i + 1] = finer
        chunks.append(tail + "".join(p for p, _ in pieces[i:end]))
        overlaps.append(len(tail))
        if len(chunks) > MAX_CHUNKS:
            raise InvalidArgument(f"text gives more than {MAX_CHUNKS} chunks",
                                  hint="raise max_tokens or chunk a part of the text")
        prev_start, i = i, end
    return chunks, overlaps


async def _longest(pieces: list[tuple[str, int]], i: int, tail: str, prefix: str,
                   max_tokens: int, budget: int, count: Counter) -> int:
    """The largest ``end`` such that tail + pieces[i:end] fits (``i``: not even one piece).

    The sum of the pieces' own counts is only a first guess (a tokenizer merges across
    pieces, and counts each piece's start as a word start): it is checked by counting the
    chunk itself, grown while it fits, and bisected, in O(log pieces) counts a chunk.
    """
    async def fits(end: int) -> bool:
        text = tail + "".join(p for p, _ in pieces[i:end])
        if len(text) > MAX_CHARS_PER_TOKEN * max_tokens:
            return False  # surely too long: never ask the tokenizer to count a huge probe
        return (await count([prefix + text]))[0] <= max_tokens

    end, total = i + 1, pieces[i][1]
    while end < len(pieces) and total + pieces[end][1] <= budget:
        total += pieces[end][1]
        end += 1
    if await fits(end):
        lo, hi, step = end, len(pieces) + 1, max(1, (end - i) // 2)
        while lo < len(pieces):
            probe = min(len(pieces), lo + step)
            if not await fits(probe):
                hi = probe
                break
            lo, step = probe, step * 2
        if hi > len(pieces):
            return lo
    else:
        lo, hi = i, end
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if await fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


async def _tail(before: list[tuple[str, int]], limit: int, empty: int,
                count: Counter) -> tuple[str, int]:
    """The end of the chunk before (its pieces ``before``) worth at most ``limit`` tokens:
    whole pieces, then the last words (or characters) of the piece before them."""
    k, spent = len(before), 0
    while k > 0 and spent + before[k - 1][1] <= limit:
        k -= 1
        spent += before[k][1]
    tail = "".join(p for p, _ in before[k:])
    if k > 0 and spent < limit:
        piece = before[k - 1][0]
        words = split_at(piece, len(_BOUNDARIES) - 1)
        if len(words) == 1:
            words = split_at(piece, len(_BOUNDARIES))
        words = words[-(4 * limit):]  # more than the limit can hold in any case
        taken: list[str] = []
        for word, n in zip(reversed(words), reversed(await count(words)), strict=True):
            tokens = max(1, n - empty)
            if spent + tokens > limit:
                break
            taken.append(word)
            spent += tokens
        tail = "".join(reversed(taken)) + tail
    return tail, spent


def _level_below(piece: str) -> int:
    """The finest level at which ``piece`` can still be cut in more than one part."""
    for level in range(len(_BOUNDARIES) + 1):
        if len(split_at(piece, level)) > 1:
            return level
    return len(_BOUNDARIES)


async def _fit(texts: list[str], level: int, budget: int, empty: int,
               count: Counter) -> list[tuple[str, int]]:
    """``texts`` cut at ``level`` (-1: not cut), and pieces still over ``budget`` tokens cut at
    the next levels: (piece, its tokens without the specials)."""
    if level == CHARACTERS:  # runs first; a run that still overflows is cut in characters
        pieces = [p for t in texts for p in await _runs(t, max(1, budget // 2))]
    else:
        pieces = [p for t in texts for p in (split_at(t, level) if level >= 0 else [t])]
    # a piece that cannot fit whatever its words is cut without asking the tokenizer
    long = [len(p) > MAX_CHARS_PER_TOKEN * budget for p in pieces]
    sized = [p for p, too_long in zip(pieces, long, strict=True) if not too_long]
    counts = iter(await count(sized)) if sized else iter(())
    out: list[tuple[str, int]] = []
    for piece, too_long in zip(pieces, long, strict=True):
        tokens = budget + 1 if too_long else max(1, next(counts) - empty)
        if tokens <= budget or level > CHARACTERS or len(piece) == 1:
            out.append((piece, min(tokens, budget)))
        else:
            out.extend(await _fit([piece], level + 1, budget, empty, count))
    return out
