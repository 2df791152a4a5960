"""Fixtures of the reliability and security tests (faults, bad input, load, privileges).

The runtimes, sessions and databases come from tests/conftest.py; every runtime those
tests start is their own, and only the soak test talks to the runtime `make up` started
(it changes nothing there). The figures the tests measure are merged into
``.run/log/reliability-figures.json`` (docs/reliability.md quotes a run of them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support import ROOT

FIGURES = ROOT / ".run" / "log" / "reliability-figures.json"


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
