"""Structured logs: one JSON object per line (``ts``, ``level``, ``event``, fields).

Machines read the runtime's logs (journald, log shippers), so every line is a
self-contained JSON object; ``--log-format text`` gives a human form of the same
fields. Request-level events are logged at debug and guarded by
``log.isEnabledFor`` so that they cost nothing when debug is off.

>>> log = get_logger()
>>> log.info("listening", socket="/run/pglocalai/pglocalai.sock")
{"ts":"2026-01-01T12:00:00.000Z","level":"info","event":"listening","socket":"..."}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_LOGGER_NAME = "pglocalai"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in getattr(record, "fields", {}).items())
        line = f"{_timestamp(record.created)} {record.levelname.lower():7} {record.getMessage()}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _timestamp(created: float) -> str:
    ms = int((created % 1) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{ms:03d}Z"


class Logger:
    """Thin wrapper over :mod:`logging` taking structured keyword fields."""

    def __init__(self, inner: logging.Logger) -> None:
        self._inner = inner

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - mirrors logging
        return self._inner.isEnabledFor(level)

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._inner.isEnabledFor(level):
            self._inner.log(level, event, exc_info=exc_info, extra={"fields": fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get_logger() -> Logger:
    return Logger(logging.getLogger(_LOGGER_NAME))


def setup_logging(log_format: str = "json", log_file: str | None = None,
                  level: str = "info") -> None:
    """Send the runtime's logs to ``log_file`` (appended) or stderr."""
    inner = logging.getLogger(_LOGGER_NAME)
    for handler in list(inner.handlers):
        inner.removeHandler(handler)
        handler.close()
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TextFormatter() if log_format == "text" else _JsonFormatter())
    inner.addHandler(handler)
    inner.setLevel(getattr(logging, level.upper(), logging.INFO))
    inner.propagate = False
