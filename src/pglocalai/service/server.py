"""The runtime: an asyncio listener on a Unix socket (and optionally loopback TCP).

Each connection is an :class:`asyncio.Protocol` that cuts the byte stream into
frames itself (no stream reader, no per-frame copies beyond the body). Every
request frame becomes its own task, so one connection may have many requests
in flight; each reply is written with a single ``transport.write`` of a whole
frame, so replies never interleave and may go out in any order (clients match
them by request id).

Robustness rules:

* a frame that cannot be parsed gets an ERROR ``bad_request`` reply; when its
  length prefix is impossible the stream is out of step and the connection is
  closed. The server itself never stops on bad input.
* a protocol version mismatch gets ERROR ``protocol_mismatch``.
* a client that disconnects has its tasks cancelled: queued texts are dropped.
* a client that stops reading is paused (no more requests are read from it)
  instead of buffering its replies without bound.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import signal
import time
from logging import DEBUG
from pathlib import Path
from typing import Any

from pglocalai import __version__, protocol
from pglocalai.errors import (
    BadRequest,
    InferenceFailed,
    InvalidArgument,
    ModelNotInstalled,
    PglocalaiError,
    ProtocolMismatch,
    RequestTimeout,
    ShuttingDown,
)
from pglocalai.protocol import Frame, Kind
from pglocalai.service import daemon
from pglocalai.service.config import ServiceConfig
from pglocalai.service.logs import get_logger
from pglocalai.service.models import Catalog, ModelManager
from pglocalai.service.settings import Settings
from pglocalai.service.stats import Stats

log = get_logger()

MAX_IN_FLIGHT = 256  # requests per connection before it stops being read
SHUTDOWN_GRACE_S = 10.0
_REQUEST_KINDS = frozenset({Kind.EMBED, Kind.TOKEN_COUNT, Kind.GET_SETTINGS, Kind.SET_SETTING,
                            Kind.LIST_MODELS, Kind.MODEL_METADATA, Kind.STATS, Kind.HEALTH,
                            Kind.AUTH})


def error_frame(request_id: int, exc: PglocalaiError) -> Frame:
    return Frame(Kind.ERROR, request_id, exc.to_wire())


class Connection(asyncio.Protocol):
    def __init__(self, server: Server, secret: str | None) -> None:
        self.server = server
        self.secret = secret  # None: no authentication needed (Unix socket)
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.tasks: set[asyncio.Task[None]] = set()
        self._paused_by: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=4 << 20)
        self.server.connections.add(self)
        self.server.stats.connections += 1
        if log.isEnabledFor(DEBUG):
            log.debug("connection_opened", open=len(self.server.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if log.isEnabledFor(DEBUG):
            log.debug("connection_closed", in_flight=len(self.tasks),
                      error=str(exc) if exc else None)
        for task in self.tasks:
            task.cancel()  # the client is gone: drop its queued work
        self.buf = bytearray()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        prefix = protocol.PREFIX_SIZE
        while len(buf) - start >= prefix:
            try:
                size = protocol.body_length(bytes(buf[start : start + prefix]))
            except BadRequest as exc:
                # the stream is out of step: nothing after this can be trusted
                self.server.stats.bad_frames += 1
                self.write(error_frame(0, exc))
                self.close()
                return
            end = start + prefix + size
            if len(buf) < end:
                break
            body = bytes(buf[start + prefix : end])
            start = end
            self.on_frame(body)
            if self.transport is None or self.transport.is_closing():
                return
        if start:
            del buf[:start]

    def on_frame(self, body: bytes) -> None:
        request_id = int.from_bytes(body[2:6], "little") if len(body) >= 6 else 0
        try:
            frame = protocol.decode_body(body)
        except (BadRequest, ProtocolMismatch) as exc:
            self.server.stats.bad_frames += 1
            self.write(error_frame(request_id, exc))
            return
        if self.secret is not None:
            self.authenticate(frame)
            return
        if frame.kind not in _REQUEST_KINDS:
            self.server.stats.bad_frames += 1
            self.write(error_frame(request_id, BadRequest(
                f"unexpected message kind {frame.kind.name.lower()} from a client")))
            return
        quick = self.server.quick(frame)
        if quick is not None:
            self.write(quick)
            return
        task = asyncio.get_running_loop().create_task(self.serve(frame))
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self.pause("in_flight")

    def authenticate(self, frame: Frame) -> None:
        given = frame.header.get("secret") if frame.kind == Kind.AUTH else None
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self.secret.encode()):
            self.secret = None
            self.write(Frame(Kind.RESULT, frame.request_id, {"authenticated": True}))
            return
        log.warning("authentication_failed", kind=frame.kind.name.lower())
        self.write(error_frame(frame.request_id, BadRequest(
            "authentication failed" if frame.kind == Kind.AUTH else "authentication required",
            hint="TCP clients must send the shared secret first (--secret-file)")))
        self.close()

    async def serve(self, frame: Frame) -> None:
        try:
            reply = await self.server.handle(frame)
        except PglocalaiError as exc:
            reply = error_frame(frame.request_id, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one request's bug never stops the server
            log.error("internal_error", kind=frame.kind.name.lower(), error=str(exc),
                      exc_info=True)
            reply = error_frame(frame.request_id, InferenceFailed(
                "internal error in the runtime", detail=f"{type(exc).__name__}: {exc}"))
        self.write(reply)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if len(self.tasks) < MAX_IN_FLIGHT // 2:
            self.resume("in_flight")

    def write(self, frame: Frame) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            data = protocol.encode(frame)
        except BadRequest as exc:
            data = protocol.encode(error_frame(frame.request_id, exc))
        transport.write(data)

    def pause_writing(self) -> None:
        self.pause("writing")

    def resume_writing(self) -> None:
        self.resume("writing")

    def pause(self, reason: str) -> None:
        if not self._paused_by and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._paused_by.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused_by:
            self._paused_by.discard(reason)
            if not self._paused_by and self.transport is not None \
                    and not self.transport.is_closing():
                self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Server:
    """Listeners, request dispatch and lifecycle of one runtime."""

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
                 pid=os.getpid(), workers=cfg.workers, engine=cfg.engine, **where)

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

    # -- requests ---------------------------------------------------------------

    def quick(self, frame: Frame) -> Frame | None:
        """Replies that need no waiting, built on the spot (no task)."""
        kind, h, rid = frame.kind, frame.header, frame.request_id
        if kind == Kind.HEALTH:
            body: dict[str, Any] = {
                "status": "stopping" if self.stopping else "ok", "version": __version__,
                "protocol": protocol.PROTOCOL_VERSION,
                "models_loaded": sorted(self.models.queues), "uptime_s": self.stats.uptime(),
                "pid": os.getpid(), "engine": self.config.engine}
            if self.supervisor_pid:
                body["supervisor_pid"] = self.supervisor_pid
            return Frame(Kind.RESULT, rid, body)
        try:
            if kind == Kind.GET_SETTINGS:
                keys = h.get("keys") or []
                if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                    raise BadRequest("keys must be a list of strings")
                return Frame(Kind.RESULT, rid, {"settings": self.models.settings.get(keys)})
            if kind == Kind.STATS:
                snap = self.stats.snapshot(self.models.queue_depths())
                snap["workers"] = self.config.workers
                return Frame(Kind.RESULT, rid, snap)
            if kind == Kind.AUTH:
                return Frame(Kind.RESULT, rid, {"authenticated": True})
        except PglocalaiError as exc:
            return error_frame(rid, exc)
        return None

    async def handle(self, frame: Frame) -> Frame:
        kind, h, rid = frame.kind, frame.header, frame.request_id
        if kind == Kind.EMBED:
            arrived = time.monotonic()
            uri, texts, timeout_ms = _model_of(h), protocol.texts_of(h), _timeout_of(h)
            if self.stopping:
                raise ShuttingDown("the runtime is shutting down", hint="retry in a moment")
            queue = await self.models.get(uri)
            if timeout_ms:
                left = timeout_ms - int((time.monotonic() - arrived) * 1000)
                if left <= 0:
                    queue.stats.timeouts += 1
                    queue.stats.errors += 1
                    raise RequestTimeout(f"request timed out after {timeout_ms} ms",
                                         detail="the model was still loading")
                timeout_ms = left
            try:
                out = await queue.embed(texts, timeout_ms)
            except PglocalaiError:
                queue.stats.errors += 1
                raise
            if log.isEnabledFor(DEBUG):
                log.debug("embed", model=uri, texts=len(texts), request_id=rid)
            return Frame(Kind.EMBEDDINGS, rid, {"count": len(out), "dim": queue.dim},
                         out.tobytes())
        if kind == Kind.TOKEN_COUNT:
            uri, texts = _model_of(h), protocol.texts_of(h)
            queue = await self.models.get(uri)
            counts = await queue.count_tokens(texts)
            return Frame(Kind.RESULT, rid, {"counts": counts})
        if kind == Kind.SET_SETTING:
            key = h.get("key")
            if not isinstance(key, str):
                raise BadRequest("key must be a string")
            values = await self.models.set_setting(key, h.get("value"))
            return Frame(Kind.RESULT, rid, {"settings": values})
        if kind == Kind.LIST_MODELS:
            return Frame(Kind.RESULT, rid, {"models": self.models.list_models()})
        if kind == Kind.MODEL_METADATA:
            return Frame(Kind.RESULT, rid, {"metadata": self.models.metadata(_model_of(h))})
        raise BadRequest(f"unsupported request kind {kind.name.lower()}")


def _model_of(header: dict[str, Any]) -> str:
    model = header.get("model")
    if not isinstance(model, str):
        raise BadRequest("model must be a model URI such as multilingual-e5-small:v1")
    if len(model) > 256:
        # the caller's argument, not a broken frame: the SQLSTATE of an unknown model (22023);
        # an empty or malformed URI gets the same from the catalog, with the installed ones
        raise ModelNotInstalled(f'model "{model[:60]}..." is not installed',
                                detail=f"a model uri is name:version of at most 256 characters, "
                                       f"not {len(model)}",
                                hint="azure_local_ai.list_models() lists the installed models")
    return model


def _timeout_of(header: dict[str, Any]) -> int | None:
    value = header.get("timeout_ms")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"timeout_ms must be a non-negative integer, not {value!r}")
    return value or None


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
    """Start, preload, report ready, run until SIGTERM/SIGINT, shut down gracefully."""
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
