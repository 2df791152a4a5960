"""Released SQL scripts never change, and every release has its upgrade path.

``extension/sql/FROZEN.sha256`` lists the sha256 of every released script (full install
scripts and upgrade scripts). Editing one of them fails here: a database that installed
the release keeps the objects that script made, so a later change would make two
databases of the "same" version differ. Ship a new upgrade script instead.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pglocalai

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "extension" / "sql"
FROZEN = SQL_DIR / "FROZEN.sha256"


def frozen() -> dict[str, str]:
    entries = {}
    for line in FROZEN.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, name = line.split()
            entries[name] = digest
    return entries


def default_version() -> str:
    control = (ROOT / "extension" / "azure_local_ai.control").read_text(encoding="utf-8")
    found = re.search(r"^default_version\s*=\s*'([^']+)'", control, re.M)
    assert found, "no default_version in the control file"
    return found.group(1)


def test_released_scripts_are_unchanged() -> None:
    entries = frozen()
    assert "azure_local_ai--1.0.0.sql" in entries, "1.0.0 is released: its script must be pinned"
    for name, digest in entries.items():
        actual = hashlib.sha256((SQL_DIR / name).read_bytes()).hexdigest()
        assert actual == digest, f"{name} was edited after its release: ship an upgrade script"


def test_every_version_is_reachable_by_upgrades_from_1_0_0() -> None:
    """The package's versions, in order, each with one upgrade script from the one before."""
    versions = list(pglocalai.EXTENSION_VERSIONS)
    assert versions[0] == "1.0.0" and versions[-1] == default_version()
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))))
    scripts = {p.name for p in SQL_DIR.glob("azure_local_ai--*.sql")}
    expected = {"azure_local_ai--1.0.0.sql"} | {
        f"azure_local_ai--{old}--{new}.sql" for old, new in zip(versions, versions[1:],
                                                                  strict=False)}
    # no full script after 1.0.0: CREATE EXTENSION runs 1.0.0 and the upgrades, so a fresh
    # install and an upgraded one are the same by construction
    assert scripts == expected


def test_every_released_script_but_the_newest_is_pinned() -> None:
    """The newest upgrade may still change until it is released; everything before may not."""
    versions = list(pglocalai.EXTENSION_VERSIONS)
    released = {"azure_local_ai--1.0.0.sql"} | {
        f"azure_local_ai--{old}--{new}.sql" for old, new in zip(versions[:-1], versions[1:-1],
                                                                  strict=False)}
    assert released <= set(frozen())
