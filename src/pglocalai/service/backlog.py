"""The texts waiting for a batch, and how a batch is formed from them (pure logic).

``Backlog`` holds the waiting texts of one model and the one count of them;
``form_batch`` picks the next batch: the oldest text plus its nearest lengths
within the token budget (see :mod:`pglocalai.service.batching`).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

WINDOW_FACTOR = 4  # texts considered per batch decision: this many x max_batch_size



class Request:
    """One EMBED request: output rows filled as its texts come back from batches."""

    __slots__ = ("future", "out", "remaining", "queued", "open", "timer", "job", "started",
                 "timeout_ms")

    def __init__(self, future: asyncio.Future[np.ndarray], n: int, dim: int,
                 timeout_ms: int | None) -> None:
        self.future = future
        self.out = np.empty((n, dim), dtype="<f4")
        self.remaining = n
        self.queued = 0  # texts in the backlog, counted by Backlog alone
        self.open = True  # False once released: its share of the backlog is given back
        self.timer: asyncio.TimerHandle | None = None
        self.job: asyncio.Future[Any] | None = None  # its tokenisation, while it runs
        self.started = time.perf_counter()
        self.timeout_ms = timeout_ms


class Item:
    """One text waiting for a batch: its token ids and where its vector goes."""

    __slots__ = ("length", "seq", "req", "index", "ids")

    def __init__(self, length: int, seq: int, req: Request, index: int,
                 ids: np.ndarray) -> None:
        self.length = length
        self.seq = seq
        self.req = req
        self.index = index
        self.ids = ids


class Backlog:
    """The texts waiting for a batch, and the one count of them.

    ``queued`` counts the texts of open requests still waiting. It changes here
    only: +1 per text pushed or put back, -1 per text popped while its request is
    open, and -``req.queued`` when a request is released (its texts left behind are
    then popped without counting).
    """

    def __init__(self) -> None:
        self._items: deque[Item] = deque()
        self._seq = itertools.count()
        self.queued = 0

    def push(self, req: Request, token_ids: Sequence[np.ndarray]) -> None:
        seq = self._seq
        self._items.extend(Item(len(ids), next(seq), req, i, ids)
                           for i, ids in enumerate(token_ids))
        req.queued += len(token_ids)
        self.queued += len(token_ids)

    def pop_live(self, limit: int) -> list[Item]:
        """Up to ``limit`` texts whose request still waits for them, oldest first."""
        out: list[Item] = []
        items = self._items
        while items and len(out) < limit:
            item = items.popleft()
            req = item.req
            if req.open:
                req.queued -= 1
                self.queued -= 1
                if not req.future.done():
                    out.append(item)
        return out

    def put_back(self, items: list[Item]) -> None:
        for item in items:
            item.req.queued += 1
        self.queued += len(items)
        self._items.extendleft(reversed(items))

    def release(self, req: Request) -> None:
        self.queued -= req.queued
        req.queued = 0

    def clear(self) -> list[Item]:
        items = list(self._items)
        self._items.clear()
        return items


def form_batch(window: list[Item], budget: int, size: int) -> tuple[list[Item], list[Item]]:
    """(batch, the rest of ``window`` in its order): the oldest text (``window[0]``) and,
    in length order around it, always the neighbour that adds the least padding, while
    texts x longest stays within ``budget`` and texts within ``size``."""
    if not window:
        return [], []
    oldest = window[0]
    ordered = sorted(window, key=_length)  # stable: ties stay oldest first
    lo = hi = ordered.index(oldest)
    longest = oldest.length
    last = len(ordered) - 1
    while hi - lo + 1 < size:
        count = hi - lo + 1
        left = right = None
        if lo > 0 and (count + 1) * longest <= budget:
            left = longest - ordered[lo - 1].length
            if left > ordered[lo - 1].length:
                left = None  # it would add more padding than tokens
        if hi < last and (count + 1) * ordered[hi + 1].length <= budget:
            right = count * (ordered[hi + 1].length - longest)
            if right > ordered[hi + 1].length:
                right = None
        if left is None and right is None:
            break
        if right is None or (left is not None and left < right):
            lo -= 1
        else:
            hi += 1
            longest = ordered[hi].length
    batch = ordered[lo : hi + 1]
    if len(batch) == len(window):
        return batch, []
    chosen = {id(item) for item in batch}
    return batch, [item for item in window if id(item) not in chosen]


def _length(item: Item) -> int:
    return item.length
