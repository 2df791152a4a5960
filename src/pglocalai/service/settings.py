"""ONNX Runtime thread settings: validated, persisted atomically, reloaded at start.

The keys and defaults are Azure's (``azure_local_ai.get_setting``):

=======================  =========  =========================================
key                      default    meaning
=======================  =========  =========================================
intra_op_parallelism     all CPUs   threads inside one operator (matmuls)
inter_op_parallelism     1          threads across independent operators
spin_control             true       pool threads spin briefly instead of sleeping
=======================  =========  =========================================

Example::

    >>> s = Settings.load(Path(".run"))
    >>> s.validate("spin_control", "off")
    {'intra_op_parallelism': 2, 'inter_op_parallelism': 1, 'spin_control': False}
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pglocalai.errors import InvalidArgument, UnknownSetting
from pglocalai.service.logs import get_logger

FILENAME = "settings.json"
MAX_THREADS = 256


def cpu_count() -> int:
    """CPUs this process may run on (respects taskset/cgroup affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def defaults() -> dict[str, Any]:
    return {"intra_op_parallelism": cpu_count(), "inter_op_parallelism": 1,
            "spin_control": True}


KEYS = tuple(defaults())


def _parse_threads(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"invalid value for {key}: expected an integer, not {value}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidArgument(f"invalid value for {key}: expected an integer, "
                                  f"not \"{value}\"") from None
    if not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise InvalidArgument(f"invalid value for {key}: expected an integer between 1 and "
                              f"{MAX_THREADS}, not {value!r}")
    return value


def _parse_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "on", "yes", "1", "t"):
        return True
    if text in ("false", "off", "no", "0", "f"):
        return False
    raise InvalidArgument(f"invalid value for {key}: expected true or false, not \"{value}\"")


def parse(key: str, value: Any) -> Any:
    """The typed value of one setting; raises UnknownSetting or InvalidArgument."""
    if key not in KEYS:
        raise UnknownSetting(f"unknown setting \"{key}\"", hint="valid settings: "
                             + ", ".join(KEYS))
    if key == "spin_control":
        return _parse_bool(key, value)
    return _parse_threads(key, value)


class Settings:
    """Current values plus their file; ``commit`` persists before it publishes."""

    def __init__(self, path: Path | None, values: dict[str, Any]) -> None:
        self.path = path
        self._values = dict(values)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, state_dir: Path | None) -> Settings:
        """Defaults overlaid with ``<state_dir>/settings.json`` when it is valid."""
        values = defaults()
        path = None if state_dir is None else Path(state_dir) / FILENAME
        if path is not None and path.exists():
            log = get_logger()
            try:
                stored = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(stored, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                log.error("settings_unreadable", path=str(path), error=str(exc))
                stored = {}
            for key, value in stored.items():
                try:
                    values[key] = parse(key, value)
                except (UnknownSetting, InvalidArgument) as exc:
                    log.warning("setting_ignored", path=str(path), key=key, error=str(exc))
        return cls(path, values)

    def get(self, keys: Sequence[str] = ()) -> dict[str, Any]:
        """All settings, or the named ones (unknown names raise UnknownSetting)."""
        with self._lock:
            values = dict(self._values)
        if not keys:
            return values
        for key in keys:
            if key not in values:
                parse(key, None)  # raises UnknownSetting with the list of keys
        return {key: values[key] for key in keys}

    def validate(self, key: str, value: Any) -> dict[str, Any]:
        """The full settings as they would be after setting ``key``; changes nothing."""
        parsed = parse(key, value)
        with self._lock:
            values = dict(self._values)
        values[key] = parsed
        return values

    def commit(self, values: dict[str, Any]) -> None:
        """Persist ``values`` atomically (temp file, fsync, rename), then publish them."""
        with self._lock:
            if self.path is not None:
                _write_atomic(self.path, values)
            self._values = dict(values)


def _write_atomic(path: Path, values: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(values, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
