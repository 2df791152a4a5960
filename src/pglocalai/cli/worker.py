"""``pglocalai worker``: keep the vectorizers of one database current.

Examples::

    pglocalai worker                                  # the database of PGHOST, PGDATABASE, ...
    pglocalai worker --dsn "dbname=shop host=/run/postgresql" --concurrency 2
    pglocalai worker --once                           # embed what is queued, then exit
    pglocalai worker --all-databases                  # every database of the cluster
    pglocalai worker --daemon --supervise --pidfile worker.pid --log-file worker.log

Every option also reads PGLOCALAI_WORKER_<NAME> from the environment (the socket:
PGLOCALAI_SOCKET); a flag wins over the environment.
"""

from __future__ import annotations

import argparse
import os
import signal
from typing import Any

from pglocalai.client import DEFAULT_SOCKET


def _env(name: str, default: str) -> str:
    return os.environ.get(f"PGLOCALAI_WORKER_{name}", default)


def add_worker_parser(subparsers: Any) -> None:
    """Add the worker command to a ``pglocalai`` argparse parser."""
    p = subparsers.add_parser(
        "worker", help="embed the rows that vectorizers queued (azure_local_ai 1.1.0)",
        description="Take the rows queued by azure_local_ai.create_vectorizer, embed them "
                    "through the runtime and write the vectors. Runs until SIGTERM.")
    p.add_argument("--dsn", default=_env("DSN", ""),
                   help="libpq connection string; empty: PGHOST, PGDATABASE, ... "
                        "[PGLOCALAI_WORKER_DSN]")
    p.add_argument("--socket", default=os.environ.get("PGLOCALAI_SOCKET") or DEFAULT_SOCKET,
                   help=f"the runtime's socket (default {DEFAULT_SOCKET}) [PGLOCALAI_SOCKET]")
    p.add_argument("--batch-tokens", type=int, default=int(_env("BATCH_TOKENS", "8192")),
                   help="estimated tokens per batch and transaction (default 8192); larger "
                        "batches write fewer, longer transactions [PGLOCALAI_WORKER_BATCH_TOKENS]")
    p.add_argument("--poll-interval", type=float, default=float(_env("POLL_INTERVAL", "5")),
                   help="seconds between looks at the queues when no notification came "
                        "(default 5) [PGLOCALAI_WORKER_POLL_INTERVAL]")
    p.add_argument("--inbox-interval", type=float, default=float(_env("INBOX_INTERVAL", "0.2")),
                   help="seconds between looks at the inboxes, where INSERTed rows arrive "
                        "without a notification (default 0.2) [PGLOCALAI_WORKER_INBOX_INTERVAL]")
    p.add_argument("--concurrency", type=int, default=int(_env("CONCURRENCY", "2")),
                   help="batches in flight, each with its own session (default 2: one is "
                        "written while the next is embedded) [PGLOCALAI_WORKER_CONCURRENCY]")
    p.add_argument("--vectorizer", type=int, action="append", default=[], metavar="ID",
                   help="serve only this vectorizer (repeatable; default: every one the role "
                        "can read)")
    p.add_argument("--once", action="store_true",
                   help="exit when nothing is left to do (exit code 1 if an error remains)")
    p.add_argument("--all-databases", action="store_true",
                   help="serve every database of the cluster that has a vectorizer (the DSN "
                        "says how to connect; its database is where the list is read)")
    p.add_argument("--scan-interval", type=float, default=float(_env("SCAN_INTERVAL", "10")),
                   help="with --all-databases: seconds between looks for databases that got "
                        "or lost vectorizers (default 10; SIGHUP: look now) "
                        "[PGLOCALAI_WORKER_SCAN_INTERVAL]")
    p.add_argument("--daemon", action="store_true",
                   help="detach from the terminal (needs --log-file)")
    p.add_argument("--supervise", action="store_true",
                   help="run the worker in a child process and start it again if it dies")
    p.add_argument("--pidfile", default=_env("PIDFILE", "") or None,
                   help="write the pid (the supervisor's, with --supervise) here "
                        "[PGLOCALAI_WORKER_PIDFILE]")
    p.add_argument("--log-file", default=_env("LOG_FILE", "") or None,
                   help="append the log lines to this file instead of stderr "
                        "[PGLOCALAI_WORKER_LOG_FILE]")
    p.add_argument("--log-format", choices=("json", "text"), default=_env("LOG_FORMAT", "json"),
                   help="log lines when stderr is not a terminal (default json) "
                        "[PGLOCALAI_WORKER_LOG_FORMAT]")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   default=_env("LOG_LEVEL", "info"), help="[PGLOCALAI_WORKER_LOG_LEVEL]")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from pglocalai.service import daemon  # noqa: PLC0415 - keep start-up light
    from pglocalai.service.logs import setup_logging  # noqa: PLC0415

    _check(args)
    ready_fd = daemon.daemonize() if args.daemon else None
    setup_logging(args.log_format, args.log_file, args.log_level)
    if args.pidfile:
        daemon.write_pidfile(args.pidfile)
    try:
        if args.supervise:
            # SIGHUP is for the worker (--all-databases: look now), not the end of the supervisor
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            return daemon.supervise(lambda fd: _run(args, fd), ready_fd)
        return _run(args, ready_fd)
    finally:
        daemon.remove_pidfile(args.pidfile)


def _check(args: argparse.Namespace) -> None:
    from pglocalai.errors import InvalidArgument  # noqa: PLC0415

    for name, value in (("--batch-tokens", args.batch_tokens), ("--concurrency", args.concurrency)):
        if value < 1:
            raise InvalidArgument(f"{name} must be at least 1, not {value}")
    for name, seconds in (("--poll-interval", args.poll_interval),
                          ("--inbox-interval", args.inbox_interval),
                          ("--scan-interval", args.scan_interval)):
        if seconds <= 0:
            raise InvalidArgument(f"{name} must be positive, not {seconds}")
    if args.daemon and not args.log_file:
        raise InvalidArgument("--daemon needs --log-file", hint="a daemon has no terminal")
    if args.all_databases and (args.once or args.vectorizer):
        raise InvalidArgument("--all-databases cannot be combined with --once or --vectorizer",
                              hint="name one database (--dsn) for those")


def _run(args: argparse.Namespace, ready_fd: int | None) -> int:
    """The worker itself; ``ready_fd`` is told "ok" once it starts (daemon, supervisor)."""
    from pglocalai.service import daemon  # noqa: PLC0415
    from pglocalai.vectorizer.worker import Options, Worker  # noqa: PLC0415

    daemon.notify_ready(ready_fd)  # it waits for the database and the runtime by itself
    report = None
    if args.log_file:
        from pglocalai.vectorizer.report import Report  # noqa: PLC0415

        report = Report(tty=False)  # a file gets log lines, even when started from a terminal
    options = Options(dsn=args.dsn, socket=args.socket, batch_tokens=args.batch_tokens,
                      poll_interval=args.poll_interval, inbox_interval=args.inbox_interval,
                      lanes=args.concurrency, once=args.once,
                      vectorizers=tuple(args.vectorizer))
    if args.all_databases:
        from pglocalai.vectorizer.databases import Databases  # noqa: PLC0415

        return Databases(options, args.scan_interval).run()
    return Worker(options, report).run()
