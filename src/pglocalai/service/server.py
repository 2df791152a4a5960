"""The runtime: asyncio listeners on a Unix socket (and optionally loopback TCP).

``Server`` owns the listeners, the models (:mod:`~pglocalai.service.manager`), the
statistics and the lifecycle: start, preload, serve until SIGTERM/SIGINT, drain,
stop. What is done with the bytes of a connection is in
:mod:`~pglocalai.service.connection`, what is done for each request kind in
:mod:`~pglocalai.service.handlers`.

>>> server = Server(config, StoreCatalog(), Settings.load(Path(".run")))
>>> asyncio.run(serve(server))
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from pglocalai import __version__, protocol
from pglocalai.errors import InvalidArgument
from pglocalai.service import daemon
from pglocalai.service.catalog import Catalog
from pglocalai.service.config import ServiceConfig
from pglocalai.service.connection import Connection
from pglocalai.service.logs import get_logger
from pglocalai.service.manager import ModelManager
from pglocalai.service.settings import Settings
from pglocalai.service.stats import Stats

log = get_logger()

SHUTDOWN_GRACE_S = 10.0


class Server:
    """Listeners, models and lifecycle of one runtime."""

    def __init__(self, config: ServiceConfig, catalog: Catalog, settings: Settings) -> None:
        self.config = config
        self.stats = Stats()
        self.models = ModelManager(catalog, config, settings, self.stats)
        self.connections: set[Connection] = set()
        self.stopping = False
        self._listeners: list[asyncio.AbstractServer] = []
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None
        self.supervisor_pid: int | None = None

    async def start(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        # a start that fails must leave no socket behind: check the secret before listening
        secret = _read_secret(cfg.secret_file or "") if cfg.tcp else None
        self._lock_fd = daemon.prepare_socket_path(cfg.socket, cfg.socket_owner)
        where: dict[str, Any] = {"socket": cfg.socket}
        try:
            unix = await loop.create_unix_server(lambda: Connection(self, None),
                                                 path=cfg.socket, backlog=512)
            self._listeners.append(unix)
            daemon.secure_socket(cfg.socket, cfg.socket_owner)
            if cfg.tcp:
                host, port = cfg.tcp_address()
                tcp = await loop.create_server(lambda: Connection(self, secret), host=host,
                                               port=port, backlog=512)  # may be taken
                self._listeners.append(tcp)
                where["tcp"] = f"{host}:{tcp.sockets[0].getsockname()[1]}"
        except BaseException:
            for listener in self._listeners:
                listener.close()
            self._listeners.clear()
            daemon.release_socket(cfg.socket, self._lock_fd)
            self._lock_fd = None
            raise
        log.info("listening", version=__version__, protocol=protocol.PROTOCOL_VERSION,
                 pid=os.getpid(), workers=cfg.workers,
                 engine=getattr(self.models.catalog, "engine", "onnx"), **where)

    def tcp_port(self) -> int | None:
        for listener in self._listeners[1:]:
            return int(listener.sockets[0].getsockname()[1])
        return None

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self, grace: float = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting, let in-flight work finish (up to ``grace``), then close."""
        self.stopping = True
        log.info("shutting_down", connections=len(self.connections))
        for listener in self._listeners:
            listener.close()
        drained = await self.models.drain(grace)
        pending = [t for c in self.connections for t in c.tasks]
        if pending:
            await asyncio.wait(pending, timeout=1.0 if drained else 0.1)
        await self.models.close()
        for conn in list(self.connections):
            conn.close()
        await asyncio.sleep(0)
        if self._lock_fd is not None:  # only the runtime that holds the lock owns the socket
            daemon.release_socket(self.config.socket, self._lock_fd)
            self._lock_fd = None
        log.info("stopped", drained=drained)


def _read_secret(path: str) -> str:
    try:
        info = os.stat(path)
        secret = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the secret file \"{path}\"", detail=str(exc)) \
            from None
    if info.st_mode & 0o004:
        raise InvalidArgument(f"secret file \"{path}\" is readable by everyone",
                              hint=f"chmod 600 {path}")
    if len(secret) < 16:
        raise InvalidArgument("the shared secret must be at least 16 characters")
    return secret


async def serve(server: Server, ready: Any = None, install_signals: bool = True) -> None:
    """Start, preload, report ready, run until SIGTERM/SIGINT, shut down gracefully.

    A model that cannot be preloaded is logged and left out (its requests get its
    error); the runtime serves the others.
    """
    loop = asyncio.get_running_loop()
    await server.start()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
    try:
        await server.models.preload(server.config.preload)
        if ready is not None:
            ready()
        await server.wait_stopped()
    finally:
        await server.shutdown()
        if install_signals:  # the shutdown is done: a second SIGTERM must not cut the exit
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
                signal.signal(sig, signal.SIG_IGN)
