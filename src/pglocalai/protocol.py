"""Wire protocol between clients (PL/Python, CLI, tests) and the runtime.

Standard library only: PL/Python imports this module inside the server.

Every message is one frame::

    u32 length            bytes that follow this field
    u8  version           PROTOCOL_VERSION; a mismatch is answered with an error
    u8  kind              Kind
    u32 request_id        echoed in the reply
    u32 header_length     UTF-8 JSON object of that many bytes
    ...header...
    ...payload...         raw bytes; for EMBEDDINGS: count x dim float32 little-endian

Vectors travel as raw float32 bytes (1,536 bytes for 384 dimensions), never as
JSON numbers. Texts travel in the JSON header: it is already UTF-8 and
PostgreSQL text is valid UTF-8.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from pglocalai.errors import BadRequest, ProtocolMismatch

PROTOCOL_VERSION = 1
# Large enough for a batch of long texts, small enough that a bogus length
# prefix cannot make the runtime allocate gigabytes.
MAX_FRAME_BYTES = 64 * 1024 * 1024

_PREFIX = struct.Struct("<I")
_HEAD = struct.Struct("<BBII")  # version, kind, request_id, header_length
PREFIX_SIZE = _PREFIX.size
HEAD_SIZE = _HEAD.size


class Kind(IntEnum):
    # requests
    EMBED = 1  # {"model", "inputs": [str], "timeout_ms"}
    TOKEN_COUNT = 2  # {"model", "inputs": [str]}
    GET_SETTINGS = 3  # {"keys": [str]}
    SET_SETTING = 4  # {"key", "value"}
    LIST_MODELS = 5  # {}
    MODEL_METADATA = 6  # {"model"}
    STATS = 7  # {}
    HEALTH = 8  # {}
    AUTH = 9  # {"secret"}: first frame on a TCP connection
    # replies
    RESULT = 100  # JSON header only
    EMBEDDINGS = 101  # {"count", "dim"} + float32 payload
    ERROR = 102  # {"code", "message", "detail", "hint"}


@dataclass
class Frame:
    kind: Kind
    request_id: int
    header: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""
    version: int = PROTOCOL_VERSION


def encode(frame: Frame) -> bytes:
    """Serialise a frame, length prefix included."""
    head = json.dumps(frame.header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    body_len = HEAD_SIZE + len(head) + len(frame.payload)
    if body_len > MAX_FRAME_BYTES:
        raise BadRequest(
            f"request of {body_len} bytes exceeds the {MAX_FRAME_BYTES} byte frame limit",
            hint="send fewer or shorter texts per call (lower batch_size)",
        )
    return b"".join((
        _PREFIX.pack(body_len),
        _HEAD.pack(frame.version, int(frame.kind), frame.request_id & 0xFFFFFFFF, len(head)),
        head,
        frame.payload,
    ))


def body_length(prefix: bytes) -> int:
    """Length announced by a 4-byte prefix; refuses sizes no valid frame has."""
    (n,) = _PREFIX.unpack(prefix)
    if n < HEAD_SIZE or n > MAX_FRAME_BYTES:
        raise BadRequest(f"invalid frame length {n}")
    return n


def decode_body(body: bytes) -> Frame:
    """Parse what follows the length prefix. Raises BadRequest or ProtocolMismatch."""
    if len(body) < HEAD_SIZE:
        raise BadRequest("truncated frame")
    version, kind, request_id, head_len = _HEAD.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"protocol version {version} is not supported, expected {PROTOCOL_VERSION}",
            hint="install the same pglocalai version for the extension and the runtime",
        )
    if HEAD_SIZE + head_len > len(body):
        raise BadRequest("frame header runs past the end of the frame")
    try:
        kind = Kind(kind)
    except ValueError:
        raise BadRequest(f"unknown message kind {kind}") from None
    raw = body[HEAD_SIZE : HEAD_SIZE + head_len]
    try:
        header = json.loads(raw.decode("utf-8")) if head_len else {}
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("frame header is not valid UTF-8 JSON", detail=str(exc)) from None
    if not isinstance(header, dict):
        raise BadRequest("frame header must be a JSON object")
    return Frame(kind, request_id, header, bytes(body[HEAD_SIZE + head_len :]), version)


def texts_of(header: dict[str, Any]) -> list[str]:
    """The validated ``inputs`` list of a request header."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
        raise BadRequest("inputs must be a list of strings")
    return inputs
