"""How much CPU other processes use right now, from /proc: may a short run take every core?

A lone short text runs ~1.4x faster on two threads than on one while the second core is
free, and up to 2x slower when another process holds it (docs/runtime.md, "Short texts
one call at a time"). The queue asks :meth:`CpuLoad.free_cores` before it runs such a
text wide: the cores that other processes left idle over the last sampling interval
(about ``INTERVAL`` seconds). This process's own use counts as free: it is the work the
wide run would take over.

>>> load = CpuLoad()
>>> load.free_cores()   # None until two samples INTERVAL apart exist, then e.g. 1.7
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

# seconds between two samples: long enough to average a few model runs (a short text
# takes ~3-5 ms), short enough to see a neighbour that starts work within a second
INTERVAL = 0.25


def _read(path: str) -> str:
    return Path(path).read_text(encoding="ascii", errors="replace")


def busy_seconds(stat: str, cpus: set[int]) -> tuple[float, float]:
    """(busy, total) CPU seconds since boot of the given CPUs, from /proc/stat text."""
    busy = total = 0
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in rest.split()]
        all_ = sum(fields[:8])  # guest time is already counted in user
        busy += all_ - fields[3] - (fields[4] if len(fields) > 4 else 0)  # idle, iowait
        total += all_
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, total / tick


def own_busy_seconds(stat: str) -> float:
    """CPU seconds this process used (user + system, all threads), from /proc/self/stat."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuLoad:
    """Samples /proc at most every ``INTERVAL`` s; cheap to ask as often as one likes."""

    def __init__(self, read: Callable[[str], str] = _read,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self.cpus = set(os.sched_getaffinity(0))  # the CPUs this process may run on
        self._last: tuple[float, float, float, float] | None = None  # at, busy, total, own
        self._free: float | None = None

    def free_cores(self) -> float | None:
        """Cores left idle by everything but this process over the last interval; None
        when it cannot be known (no procfs, or not yet two samples)."""
        now = self._clock()
        if self._last is not None and now - self._last[0] < INTERVAL:
            return self._free
        try:
            busy, total = busy_seconds(self._read("/proc/stat"), self.cpus)
            own = own_busy_seconds(self._read("/proc/self/stat"))
        except (OSError, ValueError, IndexError):
            self._free = None  # not Linux, or procfs not mounted: assume busy
            return None
        if self._last is not None and total > self._last[2]:
            _, busy0, total0, own0 = self._last
            wall = (total - total0) / len(self.cpus)  # each CPU counts every tick
            others = max(0.0, (busy - busy0) - (own - own0)) / wall
            self._free = max(0.0, len(self.cpus) - others)
        self._last = (now, busy, total, own)
        return self._free
