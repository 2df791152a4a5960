"""How a worker shows itself: its row in azure_local_ai.vectorizer_worker, and its backoff.

The row carries a heartbeat, the last error that is not a row's own (runtime down, a
privilege missing) and the worker's own session (pid, start): vectorizer_status counts a
worker alive while that session exists, so a worker killed by SIGKILL stops counting at
once, without waiting for its heartbeat to age.
"""

from __future__ import annotations

import os
import random
import socket
from contextlib import suppress
from typing import Any

import psycopg

from pglocalai import __version__


class Backoff:
    """0.5 s doubling to 30 s, with jitter so that workers do not come back in step.

    >>> b = Backoff(first=1.0, cap=4.0)
    >>> [round(b.next() / d) for d in (1.0, 2.0, 4.0, 4.0)]
    [1, 1, 1, 1]
    """

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap, self.delay = first, cap, 0.0

    def next(self) -> float:
        self.delay = min(self.cap, self.delay * 2 or self.first)
        return self.delay * random.uniform(0.75, 1.25)

    def reset(self) -> None:
        self.delay = 0.0


class Presence:
    """The worker's row: ``register`` on start (and after a reconnect), ``beat`` every few
    seconds with the error to show, ``leave`` on a clean exit."""

    def __init__(self, vectorizers: tuple[int, ...]) -> None:
        self.vectorizers = list(vectorizers) or None
        self.id: str | None = None

    def register(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute("delete from azure_local_ai.vectorizer_worker "
                     "where heartbeat_at < pg_catalog.now() - interval '1 hour' or id = %s",
                     (self.id,))  # our row of a session that was cut, if any
        self.id = str(conn.execute(
            "insert into azure_local_ai.vectorizer_worker (host, pid, version, vectorizers, "
            "backend_start) values (%s, %s, %s, %s, (select backend_start from "
            "pg_catalog.pg_stat_activity where pid = pg_catalog.pg_backend_pid())) returning id",
            (socket.gethostname(), os.getpid(), __version__, self.vectorizers)).fetchone()[0])

    def beat(self, conn: psycopg.Connection[Any], error: str | None, error_at: float | None,
             vectorizer: int | None) -> None:
        cur = conn.execute(
            "update azure_local_ai.vectorizer_worker set heartbeat_at = pg_catalog.now(), "
            "last_error = %s, last_error_at = pg_catalog.to_timestamp(%s), "
            "last_error_vectorizer = %s where id = %s", (error, error_at, vectorizer, self.id))
        if cur.rowcount == 0:  # removed meanwhile (or its session was cut): come back
            self.register(conn)

    def leave(self, conn: psycopg.Connection[Any] | None) -> None:
        if conn is None or conn.closed or self.id is None:
            return
        with suppress(psycopg.Error):
            conn.execute("delete from azure_local_ai.vectorizer_worker where id = %s", (self.id,))
            conn.close()
