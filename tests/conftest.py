"""The fixtures and markers every test folder shares (helpers: tests/support).

Markers, by what a test needs (``pytest -m "not pg and not model"`` runs with neither):
  pg       the private PostgreSQL cluster and runtime that `make up` started
  runtime  a runtime process of its own (``pglocalai serve``; a thread does not count)
  model    an installed model (tests/model also converts one when none is installed)
A fixture below adds its markers to every test that uses it; a test that starts a
``Runtime`` or connects by itself carries the marker, or ``support.needs`` fails it.
Without the set-up a test skips, under PGLOCALAI_REQUIRE_PG=1 (`make test`) it fails.

Fixtures:
  pg_params      session  connection parameters of the cluster (its own database: do
                          not create objects there)
  pg_db          session  parameters of a throwaway database with
                          ``CREATE EXTENSION azure_local_ai CASCADE`` and vector; dropped after
  pg_conn        function an autocommit psycopg connection to pg_db
  make_db        function ``make_db(version=None, extension=True)``: parameters of a fresh
                          database of the test's own, dropped after the test
  deployed_socket session the socket of the runtime `make up` started, answering
  model_store    session  the model store (Path) with multilingual-e5-small and all-minilm
  runtime        session  a runtime process of our own, real engine, E5 preloaded, its socket
                          owned by postgres (``connect(pg_db, runtime.socket)``)
  fake_runtime   session  the same with the fake engine, every fake model preloaded
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from support import (
    E5,
    Runtime,
    connect,
    connection_params,
    missing,
    setting,
    throwaway_database,
)
from support import env as support_env
from support import model_store as find_model_store

from pglocalai.client import Client
from pglocalai.errors import PglocalaiError

# The markers a fixture brings along (item.fixturenames holds what fixtures use, too).
FIXTURE_MARKERS = {
    "pg_params": ("pg",), "deployed_socket": ("pg",),
    "model_store": ("model",), "runtime": ("runtime", "model"), "fake_runtime": ("runtime",),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, markers in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                for marker in markers:
                    item.add_marker(marker)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    support_env.set_current_marks({m.name for m in item.iter_markers()})


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_params() -> dict[str, str]:
    params = connection_params()
    try:
        with connect(params) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        missing(f"no PostgreSQL at {params or 'the defaults'}: {exc}")
    return params


@pytest.fixture(scope="session")
def pg_db(pg_params: dict[str, str]) -> Iterator[dict[str, str]]:
    with throwaway_database(pg_params, "test", extra=("vector",)) as db:
        yield db


@pytest.fixture()
def pg_conn(pg_db: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with connect(pg_db) as conn:
        yield conn


@pytest.fixture()
def make_db(pg_params: dict[str, str]) -> Iterator[Callable[..., dict[str, str]]]:
    count = itertools.count()
    with contextlib.ExitStack() as made:

        def make(version: str | None = None, extension: bool = True) -> dict[str, str]:
            return made.enter_context(throwaway_database(
                pg_params, f"test_own{next(count)}", extension=extension, version=version))

        yield make


@pytest.fixture(scope="session")
def deployed_socket(pg_params: dict[str, str]) -> str:
    socket = setting("PGLOCALAI_SOCKET")
    if not socket:
        missing("PGLOCALAI_SOCKET is not set and there is no .run/env")
    try:
        with Client(socket) as client:
            client.health()
    except PglocalaiError as exc:
        missing(f"the runtime of make up does not answer at {socket}: {exc}")
    return socket


# -- models and runtimes --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_store() -> Path:
    return find_model_store()


@pytest.fixture(scope="session")
def runtime(model_store: Path) -> Iterator[Runtime]:
    with Runtime(model=True, store=model_store, preload=E5, socket_owner="postgres") as rt:
        yield rt


@pytest.fixture(scope="session")
def fake_runtime() -> Iterator[Runtime]:
    with Runtime(preload="all", socket_owner="postgres") as rt:
        yield rt
