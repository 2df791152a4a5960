"""``pglocalai serve | status | stop``: run and control the runtime.

Examples::

    pglocalai serve --socket /run/pglocalai/pglocalai.sock --socket-owner postgres
    pglocalai serve --daemon --supervise --pidfile .run/pglocalai.pid --preload all
    pglocalai status --socket /run/pglocalai/pglocalai.sock
    pglocalai stop --pidfile .run/pglocalai.pid
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pglocalai.errors import PglocalaiError, RuntimeUnavailable
from pglocalai.service import daemon
from pglocalai.service.config import DEFAULT_SOCKET, OPTIONS, ServiceConfig
from pglocalai.service.logs import get_logger, setup_logging


def add_service_parser(subparsers: Any) -> None:
    """Add the serve, status and stop commands to a ``pglocalai`` argparse parser."""
    serve = subparsers.add_parser(
        "serve", help="run the embedding runtime",
        description="Run the embedding runtime. Every option also reads PGLOCALAI_<NAME> "
                    "from the environment; a flag wins over the environment.")
    add_serve_options(serve)
    serve.set_defaults(func=cmd_serve)

    status = subparsers.add_parser("status", help="show whether the runtime answers")
    _add_address(status)
    status.add_argument("--json", action="store_true", help="print health and stats as JSON")
    status.set_defaults(func=cmd_status)

    stop = subparsers.add_parser("stop", help="stop the runtime (SIGTERM, graceful)")
    _add_address(stop)
    stop.add_argument("--pidfile", default=os.environ.get("PGLOCALAI_PIDFILE"),
                      help="pidfile written by serve [PGLOCALAI_PIDFILE]")
    stop.add_argument("--timeout", type=float, default=30.0,
                      help="seconds to wait for it to exit (default 30)")
    stop.set_defaults(func=cmd_stop)


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``serve`` (config.OPTIONS), each with its environment variable."""
    for opt in OPTIONS:
        if opt.flag:
            parser.add_argument(opt.cli, action="store_true", default=None,
                                help=f"{opt.help} [{opt.env}]")
        else:
            parser.add_argument(opt.cli, type=opt.parse, choices=opt.choices, default=None,
                                metavar=opt.name.upper() if not opt.choices else None,
                                help=f"{opt.help} [{opt.env}]")


def _add_address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=os.environ.get("PGLOCALAI_SOCKET") or DEFAULT_SOCKET,
                        help=f"runtime socket (default {DEFAULT_SOCKET}) [PGLOCALAI_SOCKET]")


# -- serve ---------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace,
              catalog: Callable[[ServiceConfig], Any] | None = None) -> int:
    """Run the runtime as ``args`` say; ``catalog(cfg)`` replaces the model store (tests)."""
    cfg = ServiceConfig.resolve(vars(args))
    ready_fd = None
    log_file = cfg.log_file
    if cfg.daemon:
        if not log_file:
            log_file = str(Path(cfg.state_dir) / "pglocalai.log")
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        ready_fd = daemon.daemonize()
    setup_logging(cfg.log_format, log_file, cfg.log_level)
    if cfg.pidfile:
        daemon.write_pidfile(cfg.pidfile)
    try:
        if cfg.supervise:
            return daemon.supervise(lambda fd: run_server(cfg, fd, True, catalog), ready_fd)
        return run_server(cfg, ready_fd, catalog=catalog)
    finally:
        daemon.remove_pidfile(cfg.pidfile)


def run_server(cfg: ServiceConfig, ready_fd: int | None = None, supervised: bool = False,
               catalog: Callable[[ServiceConfig], Any] | None = None) -> int:
    """Run one runtime until SIGTERM/SIGINT; the exit code tells the supervisor what to do."""
    from pglocalai.service.server import Server, serve  # noqa: PLC0415
    from pglocalai.service.settings import Settings  # noqa: PLC0415

    log = get_logger()
    started = False
    # the tokenizer runs in one thread of its own: rayon threads of encode_batch
    # would only compete with the inference workers for the same cores
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    async def main() -> None:
        nonlocal started
        models = (catalog or store_catalog)(cfg)
        server = Server(cfg, models, Settings.load(Path(cfg.state_dir)))
        if supervised:
            server.supervisor_pid = os.getppid()

        def ready() -> None:
            nonlocal started
            started = True
            daemon.notify_ready(ready_fd)

        await serve(server, ready)

    try:
        asyncio.run(main())
        return 0
    except (PglocalaiError, OSError) as exc:
        hint = getattr(exc, "hint", None)
        log.error("runtime_failed" if started else "start_failed", error=str(exc), hint=hint,
                  exc_info=not isinstance(exc, PglocalaiError))
        message = f"error: {exc}" + (f" (hint: {hint})" if hint else "")
        if not started and (cfg.daemon or cfg.log_file):
            sys.stderr.write(message + "\n")  # the log does not go to the terminal
        daemon.notify_ready(ready_fd, message)
        return 1 if started else daemon.EXIT_CONFIG


def store_catalog(cfg: ServiceConfig) -> Any:
    """The models of the model store ``cfg`` names."""
    from pglocalai.service.catalog import StoreCatalog  # noqa: PLC0415 - heavy

    return StoreCatalog(Path(cfg.models_dir) if cfg.models_dir else None, cfg.tokenizer,
                        cfg.wide_runs)


# -- status and stop -----------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from pglocalai.client import Client  # noqa: PLC0415

    try:
        with Client(args.socket, connect_timeout=2.0) as client:
            health = client.health()
            stats = client.stats() if args.json else None
    except RuntimeUnavailable as exc:
        print(f"pglocalai runtime is not running at {args.socket}: {exc.detail}")
        return exc.exit_code
    if args.json:
        print(json.dumps({"health": health, "stats": stats}, indent=2))
    else:
        loaded = ", ".join(health.get("models_loaded") or []) or "none"
        print(f"pglocalai runtime {health.get('version')} is {health.get('status')} at "
              f"{args.socket} (pid {health.get('pid')}, up {health.get('uptime_s')} s, "
              f"models loaded: {loaded})")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    pid = daemon.read_pidfile(args.pidfile) if args.pidfile else None
    if pid is None:
        pid = _pid_from_runtime(args.socket)
    if pid is None or not daemon.alive(pid):
        print("pglocalai runtime is not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while daemon.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if daemon.alive(pid):
        print(f"pglocalai runtime (pid {pid}) did not stop within {args.timeout:.0f} s")
        return 1
    print(f"pglocalai runtime (pid {pid}) stopped")
    return 0


def _pid_from_runtime(socket_path: str) -> int | None:
    from pglocalai.client import Client  # noqa: PLC0415

    try:
        with Client(socket_path, connect_timeout=2.0) as client:
            health = client.health()
    except PglocalaiError:
        return None
    pid = health.get("supervisor_pid") or health.get("pid")
    return int(pid) if pid else None
