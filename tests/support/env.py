"""Where the test set-up is, what a test may touch, and small waiting helpers.

``.run/env`` (written by `make up`) is read here and nowhere else: a variable of the
environment wins over the file, so ``source .run/env`` and a plain ``pytest`` see the same.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
E5 = "multilingual-e5-small:v1"
MINILM = "all-minilm-l6-v2:v1"
MARKERS = {
    "pg": "the private PostgreSQL cluster (and runtime) that make up started",
    "runtime": "a runtime process of its own (pglocalai serve)",
    "model": "an installed model",
}

# The markers of the test being set up or run (conftest sets them); None outside pytest.
_current_marks: set[str] | None = None


def run_env(env_file: Path = ROOT / ".run" / "env") -> dict[str, str]:
    """The variables `make up` wrote into .run/env (empty when it did not run)."""
    values: dict[str, str] = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            m = re.fullmatch(r"export (\w+)='(.*)'", line.strip())
            if m:
                values[m.group(1)] = m.group(2)
    return values


def setting(name: str) -> str | None:
    """An environment variable, else its value in .run/env."""
    return os.environ.get(name) or run_env().get(name)


def required() -> bool:
    """Under `make test` (and CI) a missing server or model is a failure, not a skip."""
    return bool(os.environ.get("CI") or os.environ.get("PGLOCALAI_REQUIRE_PG"))


def missing(message: str) -> None:
    """Fail when the set-up is required (PGLOCALAI_REQUIRE_PG=1), else skip."""
    if required():
        pytest.fail(message + " (run: make up)")
    pytest.skip(message)


def set_current_marks(marks: set[str] | None) -> None:
    global _current_marks
    _current_marks = marks


def needs(marker: str) -> None:
    """Refuse a test that uses ``marker``'s resource without carrying the marker.

    This keeps ``pytest -m "not pg and not model"`` honest: a test that reaches the
    cluster, a runtime process or a model store unmarked fails in every run.
    """
    if _current_marks is not None and marker not in _current_marks:
        raise AssertionError(f"this test uses {MARKERS[marker]} but is not marked "
                             f"{marker}: add @pytest.mark.{marker}")


def models_dir() -> Path:
    """The model store `make up` filled (the runtime's default)."""
    explicit = setting("PGLOCALAI_MODELS")
    if explicit:
        return Path(explicit)
    home = setting("PGLOCALAI_HOME")
    return Path(home) / "models" if home else ROOT / ".run" / "models"


def model_store(*uris: str) -> Path:
    """The model store, holding ``uris`` (default: both models); fails or skips if not."""
    needs("model")
    root = models_dir()
    for uri in uris or (E5, MINILM):
        if not (root / uri.replace(":", "@") / "metadata.json").is_file():
            missing(f"model {uri} is not installed in {root}")
    return root


def private_dir(prefix: str = "pglocalai-test-") -> Path:
    """A fresh folder under /tmp that the server's user may traverse (pytest's may not)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o755)
    return base


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without the `make up` runtime's PGLOCALAI_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGLOCALAI_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env.update(extra)
    return env


def pglocalai_command(*args: str) -> list[str]:
    """The ``pglocalai`` command line of this checkout."""
    return [sys.executable, "-m", "pglocalai.cli.main", *args]


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``pglocalai *args`` to its end; stdout and stderr as text."""
    return subprocess.run(pglocalai_command(*args), env=env or subprocess_env(), cwd="/",
                          capture_output=True, text=True, timeout=timeout)


def wait_until(predicate: Callable[[], object], timeout: float = 30.0,
               what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.02)


def run_threads(target: Callable[[int], object], count: int) -> list[BaseException]:
    """Run ``target(0)`` ... ``target(count - 1)`` in threads at once; what they raised."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


class Repeating:
    """Calls ``step()`` every ``interval`` seconds in a thread while the block runs.

    >>> with Sampler() as s:   # a subclass that defines step()
    ...     work()
    """

    interval = 0.1

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def step(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.interval)

    def __enter__(self) -> Repeating:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
