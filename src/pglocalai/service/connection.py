"""One client connection: cuts the byte stream into frames and answers each one.

Each connection is an :class:`asyncio.Protocol` that cuts the stream into frames
itself (no stream reader). Every request frame becomes its own task (``quick``
kinds are answered on the spot), so one connection may have many requests in
flight; each reply is written with a single ``transport.write`` of a whole frame,
so replies never interleave and may go out in any order (clients match them by
request id).

What any byte sequence gets (never silence):

* a length prefix no frame can have (below the head, above the frame limit, or above
  the pre-authentication limit on TCP): an ``ERROR bad_request``, then the
  connection is closed, since the stream is out of step;
* a frame that does not parse (version, kind, header, text counts and lengths):
  an ``ERROR`` for it, the connection goes on;
* a frame of a reply kind, or any kind before a TCP client authenticated: an ``ERROR``
  (then the close, for the latter);
* a frame cut short by the client closing: nothing is left to answer, the
  connection is closed by the client itself.

Memory per connection is bounded: a client that stops reading is paused once
4 MiB of replies wait, and so is one with ``MAX_IN_FLIGHT`` requests or
``MAX_IN_FLIGHT_BYTES`` of request frames in flight. A frame is received into a
buffer of its own size and its texts are served from that buffer, not copied.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from logging import DEBUG
from typing import TYPE_CHECKING

from pglocalai import protocol
from pglocalai.errors import (
    AuthenticationFailed,
    BadRequest,
    InferenceFailed,
    PglocalaiError,
    ProtocolError,
    RequestTimeout,
)
from pglocalai.protocol import Frame, Kind
from pglocalai.service.handlers import HANDLERS, Deadline
from pglocalai.service.heap import release_free_memory
from pglocalai.service.logs import get_logger

if TYPE_CHECKING:
    from pglocalai.service.state import RuntimeState

log = get_logger()

MAX_IN_FLIGHT = 256  # requests per connection before it stops being read
MAX_IN_FLIGHT_BYTES = protocol.MAX_FRAME_BYTES  # request bytes per connection, the same
AUTH_DEADLINE_S = 10.0  # a TCP client that has not authenticated by then is closed
MAX_UNAUTHENTICATED = 32  # TCP connections waiting to authenticate, beyond: closed at once
_LARGE_FRAME = 1 << 20  # frames from this size on get a buffer of their own


def error_frame(request_id: int, exc: PglocalaiError) -> Frame:
    return Frame(Kind.ERROR, request_id, exc.to_wire())


class Connection(asyncio.Protocol):
    def __init__(self, server: RuntimeState, secret: str | None) -> None:
        self.server = server
        self.secret = secret  # None: no authentication needed (Unix socket, or done)
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self._body: bytearray | None = None  # a large frame being received
        self._filled = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.in_flight_bytes = 0
        self._paused_by: set[str] = set()
        self._auth_timer: asyncio.TimerHandle | None = None

    # -- lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=4 << 20)
        self.server.connections.add(self)
        self.server.stats.connection_opened()
        if self.secret is not None:
            waiting = sum(1 for c in self.server.connections if c.secret is not None)
            if waiting > MAX_UNAUTHENTICATED:
                log.warning("too_many_unauthenticated", limit=MAX_UNAUTHENTICATED)
                transport.abort()
                return
            self._auth_timer = asyncio.get_running_loop().call_later(
                AUTH_DEADLINE_S, self._auth_expired)
        if log.isEnabledFor(DEBUG):
            log.debug("connection_opened", open=len(self.server.connections))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.stats.connection_closed()
        if self._auth_timer is not None:
            self._auth_timer.cancel()
        if log.isEnabledFor(DEBUG):
            log.debug("connection_closed", in_flight=len(self.tasks),
                      error=str(exc) if exc else None)
        for task in self.tasks:
            task.cancel()  # the client is gone: drop its queued work
        self.buf = bytearray()
        self._body = None

    def _auth_expired(self) -> None:
        if self.secret is not None:
            log.warning("authentication_timeout", seconds=AUTH_DEADLINE_S)
            self.write(error_frame(0, AuthenticationFailed(
                f"no authentication within {AUTH_DEADLINE_S:.0f} s")))
            self.close()

    # -- framing --------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._body is not None:
            data = self._fill(data)
            if self._body is not None or self._closing():
                return
        buf = self.buf
        buf += data
        start = 0
        prefix = protocol.PREFIX_SIZE
        while len(buf) - start >= prefix:
            limit = protocol.MAX_FRAME_BYTES if self.secret is None else \
                protocol.MAX_PREAUTH_FRAME_BYTES
            try:
                size = protocol.body_length(buf[start : start + prefix], limit)
            except BadRequest as exc:
                # the stream is out of step: nothing after this can be trusted
                self.server.stats.bad_frames += 1
                self.write(error_frame(0, exc))
                self.close()
                return
            end = start + prefix + size
            if len(buf) < end:
                if size >= _LARGE_FRAME:  # receive it in a buffer of its own size
                    self._body = bytearray(size)
                    self._filled = 0
                    rest = bytes(buf[start + prefix :])
                    del buf[:]
                    self._fill(rest)
                    return
                break
            body = bytes(buf[start + prefix : end])
            start = end
            self.on_frame(body)
            if self._closing():
                return
            if self._paused_by:
                break  # the rest waits in the buffer until resume()
        if start:
            del buf[:start]

    def _fill(self, data: bytes) -> bytes:
        """Copy into the large frame's buffer; hand it on once full; return what is left."""
        body = self._body
        assert body is not None
        take = min(len(data), len(body) - self._filled)
        body[self._filled : self._filled + take] = data[:take]
        self._filled += take
        if self._filled == len(body):
            self._body = None
            self.on_frame(memoryview(body))
        return data[take:]

    def _closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    # -- requests -------------------------------------------------------------

    def on_frame(self, body: bytes | memoryview) -> None:
        arrived = time.monotonic()
        request_id = protocol.request_id_of(body)
        kind: Kind | None = None
        try:
            frame = protocol.decode_body(body)
            kind = frame.kind
            if self.secret is not None:
                self.authenticate(frame)
                return
            route = HANDLERS.get(frame.kind)
            if route is None:
                raise BadRequest(f"unexpected message kind {frame.kind.name.lower()} "
                                 "from a client")
            deadline = Deadline(protocol.timeout_of(frame.header), arrived)
            if route.quick:
                self.write(route.handle(self.server, frame, deadline))
                return
        except PglocalaiError as exc:
            if isinstance(exc, ProtocolError):
                self.server.stats.bad_frames += 1
            self.write(error_frame(request_id, exc))
            return
        except Exception as exc:  # noqa: BLE001 - one request's bug never stops the server
            self.write(error_frame(request_id, _internal(kind, exc)))
            return
        size = len(body)
        task = asyncio.get_running_loop().create_task(self.serve(route.handle, frame, deadline))
        self.tasks.add(task)
        self.in_flight_bytes += size
        task.add_done_callback(lambda t: self._task_done(t, size))
        if len(self.tasks) >= MAX_IN_FLIGHT:
            self.pause("in_flight")
        if self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES:
            self.pause("in_flight_bytes")

    def authenticate(self, frame: Frame) -> None:
        given = frame.header.get("secret") if frame.kind == Kind.AUTH else None
        assert self.secret is not None
        if isinstance(given, str) and hmac.compare_digest(given.encode(), self.secret.encode()):
            self.secret = None
            if self._auth_timer is not None:
                self._auth_timer.cancel()
            self.write(Frame(Kind.RESULT, frame.request_id, {"authenticated": True}))
            return
        log.warning("authentication_failed", kind=frame.kind.name.lower())
        self.write(error_frame(frame.request_id, AuthenticationFailed(
            "authentication failed" if frame.kind == Kind.AUTH else "authentication required",
            hint="TCP clients must send the shared secret first (--secret-file)")))
        self.close()

    async def serve(self, handle: object, frame: Frame, deadline: Deadline) -> None:
        try:
            reply = await handle(self.server, frame, deadline)  # type: ignore[operator]
        except RequestTimeout as exc:
            reply = error_frame(frame.request_id, deadline.restate(exc))
            _forget_frames(exc)
        except PglocalaiError as exc:
            reply = error_frame(frame.request_id, exc)
            _forget_frames(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one request's bug never stops the server
            reply = error_frame(frame.request_id, _internal(frame.kind, exc))
            _forget_frames(exc)
        self.write(reply)

    def _task_done(self, task: asyncio.Task[None], size: int) -> None:
        self.tasks.discard(task)
        self.in_flight_bytes -= size
        if size >= _LARGE_FRAME:  # once the task is gone, give its buffer back to the system
            asyncio.get_running_loop().call_soon(release_free_memory)
        if len(self.tasks) < MAX_IN_FLIGHT // 2:
            self.resume("in_flight")
        if self.in_flight_bytes < MAX_IN_FLIGHT_BYTES:
            self.resume("in_flight_bytes")

    # -- writing and flow control -----------------------------------------------

    def write(self, frame: Frame) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            data = protocol.encode(frame)
        except PglocalaiError as exc:  # a reply too large
            data = protocol.encode(error_frame(frame.request_id, exc))
        except Exception as exc:  # noqa: BLE001 - an unencodable reply still gets an answer
            data = protocol.encode(error_frame(frame.request_id, _internal(frame.kind, exc)))
        transport.write(data)

    def pause_writing(self) -> None:
        self.pause("writing")

    def resume_writing(self) -> None:
        self.resume("writing")

    def pause(self, reason: str) -> None:
        if not self._paused_by and not self._closing():
            assert self.transport is not None
            self.transport.pause_reading()
        self._paused_by.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused_by:
            self._paused_by.discard(reason)
            if not self._paused_by and not self._closing():
                assert self.transport is not None
                self.transport.resume_reading()
                if len(self.buf) >= protocol.PREFIX_SIZE:  # frames read before the pause
                    asyncio.get_running_loop().call_soon(self._resume_buffered)

    def _resume_buffered(self) -> None:
        if not self._paused_by and not self._closing() and self._body is None:
            self.data_received(b"")

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _forget_frames(exc: BaseException | None) -> None:
    """Drop an answered error's tracebacks: their frames hold the request's texts (up to
    64 MiB), and a future holding the error closes a cycle the collector frees late."""
    seen = 0
    while exc is not None and seen < 8:
        exc.__traceback__ = None
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


def _internal(kind: Kind | None, exc: Exception) -> InferenceFailed:
    log.error("internal_error", kind=kind.name.lower() if kind else None, error=str(exc),
              exc_info=True)
    return InferenceFailed("internal error in the runtime",
                           detail=f"{type(exc).__name__}: {exc}")
