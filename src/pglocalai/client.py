"""Blocking client for the runtime, used by PL/Python, the CLI and tests.

Standard library only: PL/Python imports this module inside the server.

Example::

    >>> from pglocalai.client import Client
    >>> with Client("/run/pglocalai/pglocalai.sock") as c:
    ...     vectors = c.embed("multilingual-e5-small:v1", ["query: hello"])
    >>> len(vectors[0])
    384

The connection is kept open between calls (a backend reuses it for the whole
session). Waiting for a reply happens in short slices so that a caller inside
PostgreSQL can let the server act on a query cancel or ``statement_timeout``
between them (``check_interrupt``).
"""

from __future__ import annotations

import os
import socket
import sys
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence

from pglocalai import errors, protocol
from pglocalai.protocol import Frame, Kind

TYPE_CHECKING = False  # not typing's: see "Loading" in pglocalai.pg.functions
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/pglocalai/pglocalai.sock"
START_HINT = "start it with \"make up\" or \"pglocalai serve --socket {path}\""


class Client:
    """One connection to the runtime, reconnecting once when the runtime restarted.

    ``address`` is a Unix socket path or ``tcp://127.0.0.1:PORT`` (then
    ``secret`` is required). ``check_interrupt`` is called every
    ``poll_interval`` seconds while a reply is awaited; if it raises, the
    connection is dropped (its reply would arrive out of turn) and the
    exception propagates. ``open_unix(path, timeout)`` replaces the plain
    connect to a Unix socket: a PostgreSQL backend passes
    :func:`pglocalai.pg.trust.connect_trusted`, which checks who could have
    swapped the socket and who listens on it, on every connect.
    """

    def __init__(
        self,
        address: str = DEFAULT_SOCKET,
        *,
        secret: str | None = None,
        connect_timeout: float = 2.0,
        poll_interval: float = 0.05,
        check_interrupt: Callable[[], object] | None = None,
        open_unix: Callable[[str, float], socket.socket] | None = None,
    ) -> None:
        self.address = address
        self.open_unix = open_unix
        self.secret = secret
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval
        self.check_interrupt = check_interrupt
        self._sock: socket.socket | None = None
        self._next_id = 1

    # -- public API -------------------------------------------------------

    def embed_raw(self, model: str, texts: Sequence[str],
                  timeout_ms: int | None = None) -> tuple[int, bytes]:
        """(dimensions, float32 bytes of len(texts) vectors) for ``texts``."""
        reply = self.request(Kind.EMBED, {"model": model, "inputs": list(texts),
                                          "timeout_ms": timeout_ms}, timeout_ms)
        count, dim = int(reply.header["count"]), int(reply.header["dim"])
        if count != len(texts) or len(reply.payload) != 4 * count * dim:
            raise errors.ProtocolMismatch(
                f"expected {len(texts)} vectors, the runtime sent {count}")
        return dim, reply.payload

    def embed(self, model: str, texts: Sequence[str],
              timeout_ms: int | None = None) -> list[list[float]]:
        """One list of floats per text, in input order."""
        dim, raw = self.embed_raw(model, texts, timeout_ms)
        flat = array("f")
        flat.frombytes(raw)
        if sys.byteorder != "little":
            flat.byteswap()
        values = flat.tolist()
        return [values[i : i + dim] for i in range(0, len(values), dim)]

    def embed_stream(self, model: str, chunks: Iterable[Sequence[str]],
                     timeout_ms: int | None = None, depth: int = 2) -> Iterator[tuple[int, bytes]]:
        """Embed chunk after chunk with up to ``depth`` requests in flight.

        Yields ``(dim, float32 bytes)`` per chunk, in order. Keeping the next
        chunk queued in the runtime while the caller consumes the current one
        keeps the model busy during the round trip. Not retried on a broken
        connection: the caller may already have consumed part of the stream.
        """
        sock = self._connect()
        pending: deque[tuple[int, int]] = deque()  # (request_id, texts)
        early: dict[int, Frame] = {}
        it = iter(chunks)
        exhausted = False
        budget = None if timeout_ms is None else timeout_ms / 1000.0 + 5.0
        try:
            while True:
                while not exhausted and len(pending) < depth:
                    chunk = next(it, None)
                    if chunk is None:
                        exhausted = True
                        break
                    rid = self._new_id()
                    frame = Frame(Kind.EMBED, rid, {"model": model, "inputs": list(chunk),
                                                    "timeout_ms": timeout_ms})
                    try:
                        sock.settimeout(None)
                        sock.sendall(protocol.encode(frame))
                    except OSError:
                        raise self._unavailable("the runtime closed the connection") from None
                    pending.append((rid, len(chunk)))
                if not pending:
                    return
                rid, n = pending.popleft()
                while rid not in early:
                    try:
                        reply = self._read_frame(sock, budget)
                    except _Disconnected:
                        raise self._unavailable("the runtime closed the connection") from None
                    early[reply.request_id] = reply
                reply = early.pop(rid)
                if reply.kind == Kind.ERROR:
                    raise errors.from_wire(reply.header)
                dim = int(reply.header["dim"])
                if int(reply.header["count"]) != n or len(reply.payload) != 4 * n * dim:
                    raise errors.ProtocolMismatch(f"expected {n} vectors from the runtime")
                yield dim, reply.payload
        except BaseException:
            # replies still in flight would arrive out of turn: drop the connection
            self.close()
            raise

    def token_count(self, model: str, texts: Sequence[str],
                    timeout_ms: int | None = None) -> list[int]:
        return list(self.request(Kind.TOKEN_COUNT, {"model": model, "inputs": list(texts)},
                                 timeout_ms).header["counts"])

    def chunk(self, model: str, text: str, max_tokens: int, overlap_tokens: int = 0,
              prefix: str = "", timeout_ms: int | None = None) -> list[str]:
        """``text`` in chunks of at most ``max_tokens`` (``prefix`` and specials included)."""
        return list(self.request(Kind.CHUNK, {
            "model": model, "inputs": [text], "max_tokens": max_tokens,
            "overlap_tokens": overlap_tokens, "prefix": prefix}, timeout_ms).header["chunks"])

    def get_settings(self, keys: Sequence[str] = (),
                     timeout_ms: int | None = None) -> dict[str, Any]:
        return dict(self.request(Kind.GET_SETTINGS, {"keys": list(keys)}, timeout_ms)
                    .header["settings"])

    def set_setting(self, key: str, value: str, timeout_ms: int | None = None) -> dict[str, Any]:
        return dict(self.request(Kind.SET_SETTING, {"key": key, "value": value}, timeout_ms)
                    .header["settings"])

    def list_models(self, timeout_ms: int | None = None) -> list[dict[str, Any]]:
        return list(self.request(Kind.LIST_MODELS, {}, timeout_ms).header["models"])

    def model_metadata(self, model: str, timeout_ms: int | None = None) -> dict[str, Any]:
        return dict(self.request(Kind.MODEL_METADATA, {"model": model}, timeout_ms)
                    .header["metadata"])

    def stats(self, timeout_ms: int | None = None) -> dict[str, Any]:
        return dict(self.request(Kind.STATS, {}, timeout_ms).header)

    def health(self, timeout_ms: int | None = 5000) -> dict[str, Any]:
        return dict(self.request(Kind.HEALTH, {}, timeout_ms).header)

    # -- transport --------------------------------------------------------

    def request(self, kind: Kind, header: dict[str, Any],
                timeout_ms: int | None = None) -> Frame:
        """Send one request and return its reply; runtime errors are raised typed.

        A request on a reused connection that finds it closed (the runtime
        restarted) is sent once more on a fresh connection: every request is
        idempotent, so this is safe.
        """
        request_id = self._new_id()
        if timeout_ms is not None and "timeout_ms" not in header:
            header = {**header, "timeout_ms": timeout_ms}  # the runtime enforces it
        data = protocol.encode(Frame(kind, request_id, header))
        reused = self._sock is not None
        try:
            reply = self._roundtrip(data, timeout_ms)
        except _Disconnected:
            self.close()
            if not reused:
                raise self._unavailable("the runtime closed the connection") from None
            try:
                reply = self._roundtrip(data, timeout_ms)
            except _Disconnected:
                self.close()
                raise self._unavailable("the runtime closed the connection") from None
        if reply.request_id != request_id:
            self.close()
            raise errors.ProtocolMismatch(
                f"reply to request {reply.request_id} arrived for request {request_id}")
        if reply.kind == Kind.ERROR:
            raise errors.from_wire(reply.header)
        return reply

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0x7FFFFFFF or 1
        return request_id

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _roundtrip(self, data: bytes, timeout_ms: int | None) -> Frame:
        sock = self._connect()
        try:
            sock.settimeout(None)
            sock.sendall(data)
        except OSError as exc:
            raise _Disconnected() from exc
        # The runtime enforces timeout_ms itself and answers with a timeout
        # error; this local limit only guards against a runtime that hangs.
        budget = None if timeout_ms is None else timeout_ms / 1000.0 + 5.0
        try:
            return self._read_frame(sock, budget)
        except BaseException:
            # a half-read reply leaves the stream out of step: never reuse it
            self.close()
            raise

    def _read_frame(self, sock: socket.socket, budget: float | None) -> Frame:
        prefix = self._recv_exact(sock, protocol.PREFIX_SIZE, budget)
        body = self._recv_exact(sock, protocol.body_length(prefix), budget)
        return protocol.decode_body(body, max_header=protocol.MAX_FRAME_BYTES)  # a reply

    def _recv_exact(self, sock: socket.socket, n: int, budget: float | None) -> bytes:
        buf = bytearray()
        waited = 0.0
        sock.settimeout(self.poll_interval)
        while len(buf) < n:
            try:
                chunk = sock.recv(min(n - len(buf), 1 << 20))
            except TimeoutError:
                waited += self.poll_interval
                if budget is not None and waited > budget:
                    raise errors.RequestTimeout(
                        f"the runtime did not answer within {budget:.0f} s") from None
                if self.check_interrupt is not None:
                    self.check_interrupt()
                continue
            except OSError as exc:
                raise _Disconnected() from exc
            if not chunk:
                raise _Disconnected()
            buf += chunk
        return bytes(buf)

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        try:
            if self.address.startswith("tcp://"):
                host, _, port = self.address[6:].rpartition(":")
                sock = socket.create_connection((host, int(port)), self.connect_timeout)
            elif self.open_unix is not None:
                sock = self.open_unix(self.address, self.connect_timeout)
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                sock.connect(self.address)
        except (OSError, ValueError) as exc:
            raise self._unavailable(_describe(exc)) from None
        self._sock = sock
        if self.address.startswith("tcp://"):
            self.request(Kind.AUTH, {"secret": self.secret or ""})
        return sock

    def _unavailable(self, detail: str) -> errors.RuntimeUnavailable:
        return errors.RuntimeUnavailable(
            f"could not connect to the pglocalai runtime at \"{self.address}\"",
            detail=detail,
            hint=START_HINT.format(path=self.address),
        )


class _Disconnected(Exception):
    """The connection broke before a whole reply arrived."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the socket file does not exist (is the runtime running?)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (the runtime is not running)"
    if isinstance(exc, PermissionError):
        return f"permission denied for user {_whoami()}"
    return f"{type(exc).__name__}: {exc}"


def _whoami() -> str:
    try:
        import pwd  # noqa: PLC0415 - Unix only, only needed for this message

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
