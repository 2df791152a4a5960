"""Fixtures of the reliability and security tests (faults, bad input, load, privileges).

Every runtime started here is the test's own and is stopped by a finalizer; only the
soak test talks to the runtime `make up` started, and it changes nothing there. The
figures the tests measure are merged into ``.run/log/reliability-figures.json``
(docs/reliability.md quotes a run of them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from reliability_support import (
    E5,
    MINILM,
    ROOT,
    Runtime,
    connection_params,
    installed,
    models_dir,
    required,
)

FIGURES = ROOT / ".run" / "log" / "reliability-figures.json"


def _missing(message: str) -> None:
    if required():
        pytest.fail(message + " (run: make up)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_params() -> dict[str, str]:
    """Connection parameters of the `make up` cluster, with the extension created."""
    params = connection_params()
    try:
        with psycopg.connect(**params, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SET client_min_messages = warning")
            conn.execute("CREATE EXTENSION IF NOT EXISTS azure_local_ai CASCADE")
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        _missing(f"no PostgreSQL with azure_local_ai at {params or 'the defaults'}: {exc}")
    return params


@pytest.fixture(scope="session")
def store() -> Path:
    """The model store `make model` filled, with both models these tests use."""
    root = models_dir()
    for uri in (E5, MINILM):
        if not installed(uri, root):
            _missing(f"model {uri} is not installed in {root}")
    return root


@pytest.fixture(scope="session")
def runtime(store: Path) -> Iterator[Runtime]:
    """A runtime of our own with the real ONNX engine, for tests that do not kill it."""
    with Runtime(store=store, extra=["--preload", E5]) as rt:
        yield rt


@pytest.fixture(scope="session")
def fake_runtime() -> Iterator[Runtime]:
    """The fake engine: the plumbing without the cost of a model (100,000-text calls)."""
    with Runtime(engine="fake", extra=["--preload", "all"]) as rt:
        yield rt


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """Measured figures, merged into FIGURES at the end of the session."""
    found: dict[str, Any] = {}
    yield found
    if not found:
        return
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    try:
        merged = json.loads(FIGURES.read_text())
    except (OSError, ValueError):
        merged = {}
    merged.update(found)
    FIGURES.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
