"""Fixtures of the vectorizer tests: a database at the newest azure_local_ai and a worker to run.

The tests use the real cluster, the runtime `make up` started and its model (each module
is marked pg and model, except test_units). Each module gets its own database; each test
its own tables.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from support import (
    connect,
    create_database,
    database_name,
    drop_database,
    extension_version,
    missing,
)
from vectorizer_support import E5, conninfo

import pglocalai
from pglocalai.vectorizer.report import Report
from pglocalai.vectorizer.worker import Options, Worker

_names = itertools.count()


@pytest.fixture(scope="module")
def vec_db(pg_params: dict[str, str], deployed_socket: str) -> Iterator[dict[str, str]]:
    """A database with vector and the newest azure_local_ai whose sessions use the runtime."""
    name = database_name(f"vec{next(_names)}")
    try:
        db = create_database(pg_params, name, extra=("vector",))
        with connect(db) as conn:
            if extension_version(conn) != pglocalai.EXTENSION_VERSIONS[-1]:
                conn.execute("ALTER EXTENSION azure_local_ai UPDATE")
            settings = {"azure_local_ai.runtime_socket": deployed_socket}
            # until `make install-ext` serves 1.1.0: a folder holding <dir>/1.1.0/pglocalai
            if os.environ.get("PGLOCALAI_TEST_PYTHON_LIB_DIR"):
                settings["azure_local_ai.python_lib_dir"] = os.environ[
                    "PGLOCALAI_TEST_PYTHON_LIB_DIR"]
            for key, value in settings.items():
                conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                    sql.Identifier(name), sql.Identifier(*key.split(".")), sql.Literal(value)))
        with connect(db) as conn:
            conn.execute("SELECT azure_local_ai.model_metadata(%s)", (E5,))
    except psycopg.Error as exc:
        drop_database(pg_params, name)
        missing(f"no database with azure_local_ai {pglocalai.EXTENSION_VERSIONS[-1]} and a "
                f"working runtime: {exc}")
    yield db
    drop_database(pg_params, name)


@pytest.fixture()
def vconn(vec_db: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with connect(vec_db) as conn:
        yield conn


@pytest.fixture()
def run_worker(vec_db: dict[str, str], deployed_socket: str) -> Callable[..., str]:
    """Run a worker in this process until nothing is left to do (``--once``); check its exit
    code is ``expect`` and return what it printed."""

    def run(socket: str | None = None, expect: int = 0, **options: Any) -> str:
        opts = Options(dsn=conninfo(vec_db), socket=socket or deployed_socket, once=True,
                       signals=False, poll_interval=0.2, **options)
        out = io.StringIO()
        code = Worker(opts, Report(tty=True, stream=out)).run()
        assert code == expect, f"the worker exited with {code}, not {expect}:\n{out.getvalue()}"
        return out.getvalue()

    return run
