"""``pglocalai worker --all-databases``: one worker for every database of a cluster.

``pglocalai install`` runs one worker service per cluster: it cannot know which databases
will get vectorizers. This one looks at the cluster's databases every ``scan_interval``
seconds (at once on SIGHUP: ``systemctl reload``) and runs a :class:`Worker` in a thread for
each database that has an enabled vectorizer. A database whose last vectorizer is dropped
(or that is dropped) is left at the next look, so that the worker's sessions do not keep
holding it (``DROP DATABASE`` refuses while sessions are connected). A look costs one short
session per database that allows connections.

>>> Databases(Options(dsn="host=/var/run/postgresql port=5432")).run()  # doctest: +SKIP
0
"""

from __future__ import annotations

import signal
import threading
from dataclasses import replace
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from pglocalai.vectorizer.report import Report
from pglocalai.vectorizer.worker import Options, Worker

SCAN_INTERVAL_S = 10.0
DATABASES_QUERY = ("select datname from pg_catalog.pg_database "
                   "where datallowconn and not datistemplate order by 1")
HAS_VECTORIZERS = ("select exists (select from azure_local_ai.vectorizer "
                   "where disabled_reason is null)")


class Databases:
    """Workers (threads) for the databases that have vectorizers, kept in step by looking."""

    def __init__(self, options: Options, scan_interval: float = SCAN_INTERVAL_S) -> None:
        self.options = replace(options, signals=False, once=False)
        self.scan_interval = scan_interval
        self.stop = threading.Event()
        self.rescan = threading.Event()
        self.report = Report(tty=False)
        self._served: dict[str, tuple[Worker, threading.Thread]] = {}
        self._said: dict[str, str] = {}  # database ("" for the cluster) -> last error told

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; exit code 0."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: (self.stop.set(), self.rescan.set()))
            signal.signal(signal.SIGHUP, lambda *_: self.rescan.set())
        self.report.event("worker_started", mode="all databases",
                          scan_interval_s=self.scan_interval)
        try:
            while not self.stop.is_set():
                self.scan()
                self.rescan.wait(self.scan_interval)
                self.rescan.clear()
        finally:
            for name in list(self._served):
                self._leave(name, "stopping")
            self.report.event("worker_stopped", mode="all databases")
        return 0

    def scan(self) -> None:
        """Start a worker where vectorizers appeared, stop those whose database has none."""
        databases = self._databases()
        if databases is None:
            return  # the cluster is away: keep what runs, look again later
        for name in databases:
            wanted = self._has_vectorizers(name)
            served = self._served.get(name)
            if wanted and (served is None or not served[1].is_alive()):
                self._serve(name)
            elif wanted is False and served is not None:
                self._leave(name, "no enabled vectorizer")
        for name in set(self._served) - set(databases):
            self._leave(name, "database gone")

    def served(self) -> list[str]:
        return sorted(self._served)

    # -- looking --------------------------------------------------------------------------

    def _connect(self, database: str | None) -> psycopg.Connection[Any]:
        dsn = self.options.dsn if database is None else make_conninfo(self.options.dsn,
                                                                      dbname=database)
        return psycopg.connect(dsn, autocommit=True, connect_timeout=10,
                               application_name="pglocalai worker (looking)")

    def _databases(self) -> list[str] | None:
        try:
            with self._connect(None) as conn:
                names = [row[0] for row in conn.execute(DATABASES_QUERY)]
        except psycopg.Error as exc:
            self._tell("", "cannot list the databases", exc)
            return None
        self._said.pop("", None)
        return names

    def _has_vectorizers(self, database: str) -> bool | None:
        """True or False; None when it cannot tell (then nothing changes for it)."""
        try:
            with self._connect(database) as conn:
                found = conn.execute("select pg_catalog.to_regclass("
                                     "'azure_local_ai.vectorizer') is not null").fetchone()
                has = bool(found and found[0]) and bool(conn.execute(HAS_VECTORIZERS)
                                                        .fetchone()[0])  # type: ignore[index]
        except psycopg.OperationalError as exc:
            if "does not exist" in str(exc):  # dropped since it was listed
                return False
            self._tell(database, "cannot look at the database", exc)
            return None
        except psycopg.Error as exc:  # e.g. the role may not read the catalog
            self._tell(database, "cannot read the vectorizers", exc)
            return None
        self._said.pop(database, None)
        return has

    def _tell(self, database: str, message: str, exc: Exception) -> None:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if self._said.get(database) != detail:  # once per error, not once per look
            self._said[database] = detail
            where = f"database \"{database}\": " if database else ""
            self.report.error(where + message, detail=detail,
                              hint=f"looking again every {self.scan_interval:.0f} s")

    # -- serving --------------------------------------------------------------------------

    def _serve(self, database: str) -> None:
        options = replace(self.options, dsn=make_conninfo(self.options.dsn, dbname=database))
        worker = Worker(options, Report(tty=False, fields={"database": database}))
        thread = threading.Thread(target=self._run, args=(worker, database),
                                  name=f"worker-{database}", daemon=True)
        self._served[database] = (worker, thread)
        thread.start()

    def _run(self, worker: Worker, database: str) -> None:
        try:
            worker.run()
        except Exception as exc:  # noqa: BLE001 - started again at the next look
            worker.report.error(f"internal error: {type(exc).__name__}: {exc}",
                                hint=f"starting again within {self.scan_interval:.0f} s")

    def _leave(self, database: str, reason: str) -> None:
        worker, thread = self._served.pop(database)
        worker.stop.set()
        thread.join(timeout=self.options.request_timeout_ms / 1000 + 10)
        self.report.event("database_left", database=database, reason=reason)
