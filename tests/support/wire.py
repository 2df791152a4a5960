"""Raw frames on a runtime's socket, for tests that send what no Client would."""

from __future__ import annotations

import os
import pwd
import socket
import struct

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.errors import RuntimeUnavailable
from pglocalai.protocol import Frame


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    return sock


def raw_frame(kind: int, request_id: int, head: bytes, version: int = protocol.PROTOCOL_VERSION,
              payload: bytes = b"", declared_head: int | None = None) -> bytes:
    """A frame as the wire carries it; ``declared_head`` may lie about the header's length."""
    hlen = len(head) if declared_head is None else declared_head
    body = struct.pack("<BBII", version, kind, request_id, hlen) + head + payload
    return struct.pack("<I", len(body)) + body


def read_frame(sock: socket.socket) -> Frame | None:
    """The next frame, or None when the server closed the connection."""
    prefix = _recv(sock, protocol.PREFIX_SIZE)
    if prefix is None:
        return None
    body = _recv(sock, protocol.body_length(prefix))
    return None if body is None else protocol.decode_body(body)


def _recv(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def connect_as(path: str, user: str) -> int:
    """0 when a process of ``user`` can talk to the runtime at ``path``, else an errno
    (13: permission denied; 98: another failure). Needs root."""
    entry = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            try:
                Client(path, connect_timeout=5).health()
                code = 0
            except RuntimeUnavailable as exc:
                code = 13 if "permission denied" in (exc.detail or "") else 98
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
