"""What the worker tells its operator: a live line on a terminal, log lines otherwise.

Run by hand (stderr is a terminal), the worker redraws one progress line a second and
prints errors above it. Under systemd or ``make up`` it writes structured log lines
(pglocalai.service.logs: JSON by default, ``--log-format text`` for key=value), with a
``progress`` line every ``interval`` seconds while there is work.

>>> r = Report(tty=False)
>>> r.written(1, 100); r.rate()
0.0
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

from pglocalai.service.logs import get_logger

log = get_logger()

WINDOW_S = 10.0  # rows per second are counted over this window


class Report:
    def __init__(self, tty: bool | None = None, stream: TextIO | None = None,
                 interval: float = 10.0, fields: dict[str, Any] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.fields = fields or {}  # on every log line (the database, with --all-databases)
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval = interval
        self._lock = threading.Lock()
        self._done: deque[tuple[float, int]] = deque()
        self.total_written = 0
        self.total_failed = 0
        self._last_progress = 0.0
        self._line = ""

    # -- counters ----------------------------------------------------------------------

    def written(self, vectorizer: int, rows: int, failed: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            self._done.append((now, rows))
            self.total_written += rows
            self.total_failed += failed

    def rate(self) -> float:
        """Rows written per second over the last ``WINDOW_S`` seconds."""
        now = time.monotonic()
        with self._lock:
            while self._done and self._done[0][0] < now - WINDOW_S:
                self._done.popleft()
            rows = sum(n for _, n in self._done)
        return rows / WINDOW_S

    # -- output ------------------------------------------------------------------------

    def event(self, name: str, **fields: Any) -> None:
        """An event worth a line: started, connected, caught up, stopped."""
        if self.tty:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            self._print(f"{name.replace('_', ' ')}{': ' + extra if extra else ''}")
        else:
            log.info(name, **self.fields, **fields)

    def error(self, message: str, *, vectorizer: int | None = None, detail: str | None = None,
              hint: str | None = None) -> None:
        if self.tty:
            where = f"vectorizer {vectorizer}: " if vectorizer is not None else ""
            text = f"error: {where}{message}"
            if detail:
                text += f"\ndetail: {detail}"
            if hint:
                text += f"\nhint: {hint}"
            self._print(text)
        else:
            log.error("worker_error", **self.fields, vectorizer=vectorizer, message=message,
                      detail=detail, hint=hint)

    def progress(self, status: list[dict[str, Any]]) -> None:
        """``status``: rows of azure_local_ai.vectorizer_status (id, pending, failed...)."""
        rate = self.rate()
        pending = sum(int(s.get("pending") or 0) for s in status)
        failed = sum(int(s.get("failed") or 0) for s in status)
        if self.tty:
            parts = [f"{self.total_written:,} written", f"{pending:,} pending",
                     f"{rate:,.0f} rows/s"]
            if failed:
                parts.append(f"{failed:,} failed")
            line = f"vectorizers {','.join(str(s['id']) for s in status) or '-'}: " \
                   + ", ".join(parts)
            with self._lock:
                self._line = line
                self.stream.write("\r\033[K" + line)
                self.stream.flush()
            return
        now = time.monotonic()
        if (pending or rate) and now - self._last_progress >= self.interval:
            self._last_progress = now
            log.info("progress", **self.fields, written=self.total_written, pending=pending,
                     failed=failed, rows_per_second=round(rate, 1),
                     vectorizers={str(s["id"]): int(s.get("pending") or 0) for s in status})

    def finish(self) -> None:
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()

    def _print(self, text: str) -> None:
        with self._lock:
            if self._line:
                self.stream.write("\r\033[K")
            self.stream.write(text + "\n")
            if self._line:
                self.stream.write(self._line)
            self.stream.flush()
