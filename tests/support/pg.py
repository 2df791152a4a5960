"""PostgreSQL sessions on the private cluster that `make up` started (psycopg 3).

Tests run in throwaway databases (``create_database``), never in the cluster's own
database, so each run sees a fresh ``CREATE EXTENSION azure_local_ai CASCADE``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

from support.env import ROOT, missing, needs, setting

PG_KEYS = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGDATABASE": "dbname"}


def connection_params() -> dict[str, str]:
    """The cluster's PG* settings as psycopg keywords (environment over .run/env)."""
    return {key: value for env, key in PG_KEYS.items() if (value := setting(env))}


def connect(params: dict[str, str], socket: str | None = None) -> psycopg.Connection[Any]:
    """An autocommit session, pointed at the runtime on ``socket`` when given."""
    needs("pg")
    conn = _session(params)
    if socket is not None:
        conn.execute("SELECT set_config('azure_local_ai.runtime_socket', %s, false)", (socket,))
    return conn


def _session(params: dict[str, str]) -> psycopg.Connection[Any]:
    """A session without the marker check: fixtures also run in a later test's teardown."""
    return psycopg.connect(**params, autocommit=True, connect_timeout=10)


def create_database(params: dict[str, str], name: str, *, extension: bool = True,
                    version: str | None = None, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """A new database ``name`` (dropped first if left over), with azure_local_ai at ``version``
    (default: the control file's) unless ``extension`` is false, and the ``extra`` extensions.
    Returns its connection parameters."""
    with _session(params) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = {**params, "dbname": name}
    with _session(db) as conn:
        conn.execute("SET client_min_messages = warning")
        if extension:
            version_clause = sql.SQL(" VERSION {}").format(sql.Literal(version)) if version \
                else sql.SQL("")
            conn.execute(sql.SQL("CREATE EXTENSION azure_local_ai{} CASCADE").format(
                version_clause))
        for other in extra:
            conn.execute(sql.SQL("CREATE EXTENSION {}").format(sql.Identifier(other)))
    return db


def drop_database(params: dict[str, str], name: str) -> None:
    with _session(params) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


@contextlib.contextmanager
def throwaway_database(params: dict[str, str], prefix: str,
                       **kw: Any) -> Iterator[dict[str, str]]:
    """``create_database`` (``kw`` as there) under a fresh name, dropped however the block
    ends; a database that cannot be made skips the test, or fails it under `make test`."""
    name = database_name(prefix)
    try:
        db = create_database(params, name, **kw)
    except psycopg.Error as exc:
        drop_database(params, name)
        missing(f"cannot create a database with azure_local_ai: {exc}")
    try:
        yield db
    finally:
        drop_database(params, name)


def database_name(prefix: str) -> str:
    """``prefix`` and this process's id: parallel runs do not meet."""
    return f"{prefix}_{os.getpid()}"


def backend(conn: psycopg.Connection[Any]) -> psutil.Process:
    """The server process of a session."""
    return psutil.Process(conn.info.backend_pid)


def extension_version(conn: psycopg.Connection[Any]) -> str:
    return conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'azure_local_ai'").fetchone()[0]


def install_package(lib_dir: Path, version: str, package_version: str | None = None) -> Path:
    """What `make install-ext` installs into ``lib_dir/version``: the standard-library
    modules only, readable by the server's user; ``package_version`` overrides its version.
    Returns the package folder."""
    target = lib_dir / version / "pglocalai"
    src = ROOT / "src" / "pglocalai"
    shutil.copytree(src / "pg", target / "pg", ignore=shutil.ignore_patterns("__pycache__"))
    for module in src.glob("*.py"):  # the package's top level: the stdlib-only modules
        shutil.copy(module, target / module.name)
    if package_version:
        (target / "__init__.py").write_text(f'__version__ = "{package_version}"\n')
    for path in [lib_dir, *lib_dir.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target
