"""Memory readings of processes, for tests that bound what a call may cost."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psutil

from support.env import Repeating


def private_bytes(proc: psutil.Process) -> int:
    """Memory only this process holds (USS): a backend's RSS also counts shared buffers."""
    return int(proc.memory_full_info().uss)


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class PeakSampler(Repeating):
    """Samples a memory reading of some processes in a thread; ``peaks`` holds the maxima."""

    def __init__(self, readers: dict[str, Callable[[], int]], interval: float = 0.1) -> None:
        super().__init__()
        self.readers = readers
        self.interval = interval
        self.peaks = {name: 0 for name in readers}

    def step(self) -> None:
        for name, read in self.readers.items():
            with contextlib.suppress(psutil.Error):
                self.peaks[name] = max(self.peaks[name], read())
