"""The vectorizer worker: lanes that take batches off the queues until told to stop.

Threads, each with its own database session:

* ``lanes`` lanes (``--concurrency``), each with its own runtime connection: while one
  lane writes a batch, another one's texts are in the model, so the runtime stays busy.
* a listener: ``LISTEN azure_local_ai_vectorizer`` wakes idle lanes at once; lanes also
  look every ``poll_interval`` seconds, so a lost notification costs at most that. An INSERT
  sends no notification (azure_local_ai 1.2.0: it only appends to the vectorizer's inbox), so
  the listener looks into the inboxes every ``inbox_interval`` seconds.
* the main thread: heartbeat and errors into azure_local_ai.vectorizer_worker, due
  retries back into the queues, the catalog reloaded, progress shown.

Nothing stops a worker but a signal (pgai #335): a lost database connection is
reconnected with backoff, a runtime that is down is waited for (rows stay queued), a
vectorizer whose model is missing or whose tables the role may not write is paused for a
minute and named in the status view. SIGTERM or SIGINT: lanes finish their batch, the
worker deregisters and exits 0.

>>> worker = Worker(Options(socket="/run/pglocalai/pglocalai.sock", once=True))
>>> worker.run()  # doctest: +SKIP
0
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pglocalai import errors
from pglocalai.client import DEFAULT_SOCKET, Client
from pglocalai.vectorizer.batch import Limits, Stale, fold_inbox, run_batch, work_waiting
from pglocalai.vectorizer.embedding import MODEL, describe
from pglocalai.vectorizer.plan import CATALOG_QUERY, Vectorizer
from pglocalai.vectorizer.presence import Backoff, Presence
from pglocalai.vectorizer.report import Report

CHANNEL = "azure_local_ai_vectorizer"
PAUSE_S = 60.0  # a vectorizer that cannot work (model, privileges) is tried again after this
HEARTBEAT_S = 10.0
EXTENSION_WAIT_S = 30.0


@dataclass(frozen=True)
class Options:
    dsn: str = ""  # empty: the libpq environment (PGHOST, PGDATABASE, ...)
    socket: str = DEFAULT_SOCKET
    batch_tokens: int = 8192
    poll_interval: float = 5.0
    inbox_interval: float = 0.2  # how often the inboxes (INSERTed rows) are looked at
    lanes: int = 2
    once: bool = False  # stop when nothing is left to do (tests, one-off backfills)
    vectorizers: tuple[int, ...] = ()  # empty: every vectorizer the role can read
    request_timeout_ms: int = 300_000
    signals: bool = True  # SIGTERM and SIGINT stop it (when run in the main thread)


class Worker:
    def __init__(self, options: Options, report: Report | None = None) -> None:
        self.options = options
        self.report = report or Report()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._wakes = [threading.Event() for _ in range(max(1, options.lanes))]
        self._catalog: dict[int, Vectorizer] = {}
        self._paused: dict[int, float] = {}
        self._errors: dict[int | None, tuple[str, float]] = {}
        self._runtime_backoff = Backoff()
        self._runtime_until = 0.0
        self._reload = threading.Event()
        self._presence = Presence(options.vectorizers)
        self._max_tokens: dict[str, int] = {}
        self._lane_ended = threading.Event()

    # -- life cycle --------------------------------------------------------------------

    def run(self) -> int:
        """Work until SIGTERM/SIGINT (or, with ``once``, until nothing is left); exit code."""
        if self.options.signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop.set())
        control = self._connect(Backoff())
        while control is not None and not self._extension_ready(control):
            self.stop.wait(EXTENSION_WAIT_S)  # until the extension is created or updated
        if control is None or self.stop.is_set():
            return 0
        self._presence.register(control)
        self._load(control)
        self.report.event("worker_started", pid=os.getpid(), lanes=len(self._wakes),
                          vectorizers=",".join(map(str, self._catalog)) or "none yet")
        threads = [threading.Thread(target=self._lane_until_done, args=(i,), name=f"lane-{i}",
                                    daemon=True) for i in range(len(self._wakes))]
        listener = threading.Thread(target=self._listen, name="listener", daemon=True)
        for t in [*threads, listener]:
            t.start()
        try:
            next_beat = 0.0
            while not self.stop.is_set():
                if self.options.once and not any(t.is_alive() for t in threads):
                    break
                if time.monotonic() >= next_beat or self._reload.is_set():
                    control = self._maintain(control)
                    next_beat = time.monotonic() + (1.0 if self.options.once else HEARTBEAT_S)
                self._lane_ended.wait(1.0)  # a lane that ends (--once) wakes us at once
                self._lane_ended.clear()
        finally:
            self.stop.set()
            for wake in self._wakes:
                wake.set()
            for t in threads:
                t.join(timeout=self.options.request_timeout_ms / 1000 + 10)
            self._presence.leave(control)
            self.report.finish()
            self.report.event("worker_stopped", written=self.report.total_written,
                              failed=self.report.total_failed)
        # --once: a vectorizer that could not work (model missing, privilege) fails the run; a
        # runtime that was away and came back does not
        return 1 if self.options.once and any(k is not None for k in self._errors) else 0

    def _connect(self, backoff: Backoff) -> psycopg.Connection[Any] | None:
        """A session; None when stopping.

        The session keeps the role's own search_path: the source's triggers run in it as
        they run for any writer. Everything the worker itself names is schema-qualified.
        """
        while not self.stop.is_set():
            try:
                conn = psycopg.connect(self.options.dsn, autocommit=True,
                                       application_name="pglocalai worker", connect_timeout=10)
                backoff.reset()
                return conn
            except psycopg.OperationalError as exc:
                delay = backoff.next()
                self.report.error("cannot connect to the database",
                                  detail=str(exc).strip().splitlines()[0],
                                  hint=f"retrying in {delay:.1f} s")
                self.stop.wait(delay)
        return None

    def _extension_ready(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether the database has vectorizers (azure_local_ai 1.1.0 or later). A service
        waits for them (the extension may be updated after it starts); --once fails."""
        if conn.execute("select pg_catalog.to_regclass('azure_local_ai.vectorizer')"
                        ).fetchone()[0] is not None:
            return True
        error = errors.InvalidArgument(
            f"database \"{conn.info.dbname}\" has no vectorizers",
            detail="the azure_local_ai extension is missing or older than 1.1.0",
            hint="CREATE EXTENSION azure_local_ai CASCADE, or ALTER EXTENSION azure_local_ai "
                 "UPDATE" + ("" if self.options.once else
                             f"; the worker looks again every {EXTENSION_WAIT_S:.0f} s"))
        if self.options.once:
            raise error
        if not getattr(self, "_said_no_extension", False):
            self._said_no_extension = True
            self.report.error(error.message, detail=error.detail, hint=error.hint)
        return False

    # -- the catalog, heartbeat, retries -------------------------------------------------

    def _load(self, conn: psycopg.Connection[Any]) -> None:
        # names and types come back schema-qualified whatever the session's search_path
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute("set local search_path to pg_catalog, pg_temp")
            rows = cur.execute(CATALOG_QUERY).fetchall()
        wanted = set(self.options.vectorizers)
        catalog = {}
        for row in rows:
            if wanted and row["id"] not in wanted:
                continue
            old = self._catalog.get(row["id"])
            same = old is not None and old.generation == row["generation"] \
                and old.source == row["source"] and old.input_column == row["input_column"] \
                and old.disabled_reason == row["disabled_reason"] \
                and old.target_type == row["target_type"] \
                and old.has_inbox == bool(row["has_inbox"])
            catalog[row["id"]] = old if same and old is not None else Vectorizer.from_row(row)
        with self._lock:
            added = set(catalog) - set(self._catalog)
            self._catalog = catalog
        for vid in sorted(added):
            v = catalog[vid]
            self.report.event("vectorizer", id=vid, source=v.label(), destination=v.destination,
                              model=v.model_uri, disabled=v.disabled_reason or "no")
            self._wake_all()  # its rows may have been queued (and notified) before

    def _maintain(self, conn: psycopg.Connection[Any] | None) -> psycopg.Connection[Any] | None:
        try:
            if conn is None or conn.closed:
                conn = self._connect(Backoff(cap=5.0))
                if conn is None:
                    return None
                self._presence.register(conn)
            self._reload.clear()
            self._load(conn)
            for v in self._active():
                # keeps the inbox short while lanes wait (a runtime that is down); a missing
                # privilege is a lane's to report, with its hint. Lanes that looked while this
                # ran found the inbox locked and the queue empty: wake them for what it moved
                with suppress(psycopg.errors.InsufficientPrivilege):
                    if fold_inbox(conn, v):
                        self._wake_all()
                if conn.execute(v.sql.failures_exist).fetchone()[0]:
                    n = conn.execute(v.sql.requeue_due).rowcount
                    if n:
                        self.report.event("retrying_failed_rows", vectorizer=v.id, rows=n)
            self._runtime_check()
            self._heartbeat(conn)
            with conn.cursor(row_factory=dict_row) as cur:
                status = cur.execute("select id, pending, failed from "
                                     "azure_local_ai.vectorizer_status order by id").fetchall()
            self.report.progress([s for s in status if s["id"] in self._catalog])
        except psycopg.OperationalError:
            with suppress(Exception):
                conn.close()  # type: ignore[union-attr]
            return None
        except psycopg.Error as exc:
            self.report.error(f"maintenance failed: {exc}".strip())
        return conn

    def _runtime_check(self) -> None:
        """Clear a runtime error once the runtime answers again (lanes may have no work)."""
        if None not in self._errors:
            return
        try:
            with Client(self.options.socket, connect_timeout=2.0) as client:
                client.health()
        except errors.PglocalaiError:
            return
        with self._lock:
            self._errors.pop(None, None)
        self.report.event("runtime_back", socket=self.options.socket)

    def _heartbeat(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            latest = max(self._errors.items(), key=lambda e: e[1][1], default=(None, (None, None)))
        self._presence.beat(conn, latest[1][0], latest[1][1], latest[0])

    def _active(self) -> list[Vectorizer]:
        now = time.monotonic()
        with self._lock:
            return [v for v in self._catalog.values()
                    if v.disabled_reason is None and self._paused.get(v.id, 0.0) <= now]

    def _fail(self, message: str, vectorizer: int | None, *, pause: float = 0.0,
              detail: str | None = None, hint: str | None = None) -> None:
        with self._lock:
            known = self._errors.get(vectorizer)
            self._errors[vectorizer] = (message, time.time())
            if pause and vectorizer is not None:
                self._paused[vectorizer] = time.monotonic() + pause
        if known is None or known[0] != message:  # say it once, not once per attempt
            self.report.error(message, vectorizer=vectorizer, detail=detail, hint=hint)

    def _succeeded(self, vectorizer: int) -> None:
        with self._lock:
            cleared = vectorizer in self._errors or None in self._errors
            self._errors.pop(vectorizer, None)
            self._errors.pop(None, None)
        self._runtime_backoff.reset()
        if cleared:
            self.report.event("recovered", vectorizer=vectorizer)

    # -- lanes ----------------------------------------------------------------------------

    def _lane_until_done(self, index: int) -> None:
        try:
            self._lane(index)
        finally:
            self._lane_ended.set()

    def _lane(self, index: int) -> None:
        client = Client(self.options.socket, connect_timeout=5.0)
        db_backoff = Backoff()
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self.stop.is_set():
                if conn is None or conn.closed:
                    conn = self._connect(db_backoff)
                    if conn is None:
                        return
                wait = self._runtime_until - time.monotonic()
                if wait > 0:
                    self.stop.wait(wait)
                    continue
                worked, clean = self._round(index, conn, client)
                if worked:
                    continue
                if not clean and conn.closed:
                    continue
                if self.options.once and clean:
                    return
                self._wakes[index].wait(self.options.poll_interval)
                self._wakes[index].clear()
        finally:
            client.close()
            if conn is not None:
                conn.close()

    def _round(self, index: int, conn: psycopg.Connection[Any],
               client: Client) -> tuple[bool, bool]:
        """One pass over the vectorizers: (whether a batch was done, whether it found nothing
        wrong and nothing on its way)."""
        worked, clean = False, True
        active = self._active()
        if active:  # lanes start at different vectorizers
            shift = index % len(active)
            active = active[shift:] + active[:shift]
        for v in active:
            if self.stop.is_set():
                break
            limits = Limits(batch_tokens=self.options.batch_tokens,
                            max_tokens=self._model_tokens(client, v.model_uri),
                            timeout_ms=self.options.request_timeout_ms)
            try:
                result = run_batch(conn, client, v, limits)
            except Stale:
                self._reload.set()
                clean = False
                continue
            except psycopg.OperationalError as exc:
                self._fail("lost the database connection", None,
                           detail=str(exc).strip().splitlines()[0] if str(exc) else None,
                           hint="reconnecting")
                conn.close()
                return worked, False
            except psycopg.errors.InsufficientPrivilege as exc:
                self._fail(str(exc).strip(), v.id, pause=PAUSE_S, hint=v.privileges_hint())
                clean = False
                continue
            except psycopg.Error as exc:
                self._fail(f"{type(exc).__name__}: {str(exc).strip()}", v.id, pause=10.0)
                self._reload.set()
                clean = False
                continue
            except errors.PglocalaiError as exc:
                if isinstance(exc, MODEL):
                    self._fail(describe(exc), v.id, pause=PAUSE_S, hint=exc.hint)
                else:  # the runtime is down or busy: the rows stay queued, wait for it
                    delay = self._runtime_backoff.next()
                    with self._lock:
                        self._runtime_until = time.monotonic() + delay
                    self._fail(describe(exc), None, hint=f"retrying in {delay:.1f} s")
                return worked, False
            except Exception as exc:  # noqa: BLE001 - a worker never dies silently
                self._fail(f"internal error: {type(exc).__name__}: {exc}", v.id, pause=10.0)
                clean = False
                continue
            if result is None:
                # --once ends when nothing is left: rows another session is moving from the
                # inbox to the queue (the heartbeat, another lane), or has moved since this
                # lane looked, were not claimable then but are not done either
                if self.options.once and work_waiting(conn, v):
                    clean = False
                continue
            worked = True
            self._succeeded(v.id)
            self.report.written(v.id, result.written, result.failed)
            for message in result.errors[:3]:
                self.report.error(f"row not embedded: {message}", vectorizer=v.id)
            if result.stale:
                self.report.event("rows_changed_meanwhile", vectorizer=v.id, rows=result.stale)
        return worked, clean

    def _model_tokens(self, client: Client, model: str) -> int:
        known = self._max_tokens.get(model)
        if known is None:
            try:
                known = int(client.model_metadata(model, timeout_ms=10_000)
                            .get("max_tokens") or 512)
            except errors.PglocalaiError:
                return 512  # the batch itself will report what is wrong
            self._max_tokens[model] = known
        return known

    # -- notifications ------------------------------------------------------------------------

    def _listen(self) -> None:
        backoff = Backoff()
        while not self.stop.is_set():
            conn = self._connect(backoff)
            if conn is None:
                return
            try:
                conn.execute(f"listen {CHANNEL}")
                self._wake_all()  # what was queued while we were away
                while not self.stop.is_set():
                    for note in self._notifications(conn):
                        self._wake_all(note.payload)
                    if self._inboxes_waiting(conn):
                        self._wake_all()
            except psycopg.OperationalError:
                self.stop.wait(backoff.next())
            finally:
                conn.close()

    def _notifications(self, conn: psycopg.Connection[Any]) -> Iterator[Any]:
        yield from conn.notifies(timeout=min(self.options.poll_interval, 1.0,
                                             self.options.inbox_interval), stop_after=1)

    def _inboxes_waiting(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether an active vectorizer's inbox has rows: one statement for all of them. An
        inbox that cannot be read counts as waiting: a lane then meets the error, reports it
        with its hint and pauses that vectorizer, which leaves this statement."""
        inboxes = [v.sql.inbox_any for v in self._active() if v.has_inbox]
        if not inboxes:
            return False
        try:
            return bool(conn.execute(f"select exists ({' union all '.join(inboxes)})"
                                     ).fetchone()[0])
        except psycopg.OperationalError:
            raise
        except psycopg.Error:
            return True

    def _wake_all(self, payload: str = "") -> None:
        vid, wanted = int(payload) if payload.isdigit() else 0, self.options.vectorizers
        if vid and vid not in self._catalog and (not wanted or vid in wanted):
            self._reload.set()  # a new vectorizer: loaded now, not at the next heartbeat
            self._lane_ended.set()  # (wakes the main thread; _load wakes the lanes)
        for wake in self._wakes:
            wake.set()

