"""Wire protocol between clients (PL/Python, CLI, tests) and the runtime.

Standard library only: PL/Python imports this module inside the server.

Every message is one frame::

    u32 length            bytes that follow this field
    u8  version           PROTOCOL_VERSION; a mismatch is answered with an error
    u8  kind              Kind
    u32 request_id        echoed in the reply
    u32 header_length     UTF-8 JSON object of that many bytes (at most MAX_HEADER_BYTES
                          in a request)
    ...header...
    ...payload...         raw bytes: the texts of EMBED and TOKEN_COUNT, the vectors of
                          EMBEDDINGS

Texts travel packed in the payload, never in the JSON header, so that the runtime
knows how many texts and bytes a request holds before it decodes anything::

    u32 n                 texts, at most MAX_TEXTS_PER_REQUEST
    u32 length[n]         UTF-8 bytes of each text
    ...bytes...           the texts one after the other (at most MAX_TEXT_BYTES in all)

``encode`` takes them from ``header["inputs"]`` (a list of str) and ``texts_of`` gives
them back. Vectors travel as raw float32 little-endian (1,536 bytes for 384
dimensions), never as JSON numbers.

Every request header may hold ``timeout_ms`` (integer, null or 0 for none): the runtime
answers ``timeout`` once that many milliseconds have passed since the frame arrived,
whatever the kind.

>>> data = encode(Frame(Kind.EMBED, 1, {"model": "multilingual-e5-small:v1",
...                                     "inputs": ["query: hello"], "timeout_ms": 5000}))
>>> frame = decode_body(data[PREFIX_SIZE:])
>>> texts_of(frame)
['query: hello']
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections.abc import Sequence
from enum import IntEnum

from pglocalai.errors import BadRequest, InputTooLarge, InvalidArgument, ProtocolMismatch

TYPE_CHECKING = False  # not typing's: see "Loading" in pglocalai.pg.functions
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_VERSION = 2

_PREFIX = struct.Struct("<I")
_HEAD = struct.Struct("<BBII")  # version, kind, request_id, header_length
PREFIX_SIZE = _PREFIX.size
HEAD_SIZE = _HEAD.size

# Limits of one request. The client refuses to send more and the runtime checks them
# before it decodes anything, so a request's cost to the runtime is bounded by them.
MAX_TEXTS_PER_REQUEST = 4096
MAX_TEXT_BYTES = 64 * 1024 * 1024  # UTF-8 bytes of all the texts of one request
MAX_HEADER_BYTES = 64 * 1024  # the JSON header of a request (texts are not in it)
# The largest legal request, and so the length prefix the runtime accepts. Replies are
# bounded by it as well: 4,096 vectors of up to 4,096 float32 dimensions.
MAX_FRAME_BYTES = HEAD_SIZE + MAX_HEADER_BYTES + 4 * (1 + MAX_TEXTS_PER_REQUEST) + MAX_TEXT_BYTES
# Before a TCP client has authenticated, it may send only frames this small (AUTH).
MAX_PREAUTH_FRAME_BYTES = 4096

TIMEOUT_FIELD = "timeout_ms"
TEXTS_FIELD = "inputs"  # in a Frame's header before encode / after texts_of, never on the wire

Buffer = bytes | bytearray | memoryview


class Kind(IntEnum):
    # requests: header fields (every request may also hold timeout_ms)
    EMBED = 1  # {"model"} + texts -> EMBEDDINGS
    TOKEN_COUNT = 2  # {"model"} + texts -> RESULT {"counts"}
    GET_SETTINGS = 3  # {"keys": [str]} -> RESULT {"settings"}
    SET_SETTING = 4  # {"key", "value"} -> RESULT {"settings"}
    LIST_MODELS = 5  # {} -> RESULT {"models"}
    MODEL_METADATA = 6  # {"model"} -> RESULT {"metadata"}
    STATS = 7  # {} -> RESULT {...}
    HEALTH = 8  # {} -> RESULT {...}
    AUTH = 9  # {"secret"}: first frame on a TCP connection -> RESULT {"authenticated"}
    CHUNK = 10  # {"model", "max_tokens", "overlap_tokens", "prefix"} + one text
    #             -> RESULT {"chunks", "overlaps"} (pglocalai.service.chunking)
    # replies
    RESULT = 100  # JSON header only
    EMBEDDINGS = 101  # {"count", "dim"} + float32 payload
    ERROR = 102  # {"code", "message", "detail", "hint"}


TEXT_KINDS = frozenset({Kind.EMBED, Kind.TOKEN_COUNT, Kind.CHUNK})


class Frame:
    """One message. A plain class, not a dataclass: ``dataclasses`` imports ``inspect``,
    ~10 ms that every new PostgreSQL session pays when it loads this package."""

    __slots__ = ("kind", "request_id", "header", "payload", "version")

    def __init__(self, kind: Kind, request_id: int, header: dict[str, Any] | None = None,
                 payload: Buffer = b"", version: int = PROTOCOL_VERSION) -> None:
        self.kind = kind
        self.request_id = request_id
        self.header = {} if header is None else header
        self.payload = payload
        self.version = version

    def __repr__(self) -> str:
        return (f"Frame({self.kind!r}, {self.request_id}, {self.header!r}, "
                f"<{len(self.payload)} bytes>, version={self.version})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment] - mutable, like the dataclass it replaces


def encode(frame: Frame) -> bytes:
    """Serialise a frame, length prefix included; texts of ``header["inputs"]`` go packed.

    Raises InputTooLarge when the frame is beyond what the runtime accepts.
    """
    header, payload = frame.header, frame.payload
    if frame.kind in TEXT_KINDS and TEXTS_FIELD in header:
        header = {k: v for k, v in header.items() if k != TEXTS_FIELD}
        payload = pack_texts(frame.header[TEXTS_FIELD])
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    body_len = HEAD_SIZE + len(head) + len(payload)
    if body_len > MAX_FRAME_BYTES:
        raise InputTooLarge(
            f"request of {body_len} bytes exceeds the {MAX_FRAME_BYTES} byte frame limit",
            hint="send fewer or shorter texts per call (lower batch_size)")
    return b"".join((
        _PREFIX.pack(body_len),
        _HEAD.pack(frame.version, int(frame.kind), frame.request_id & 0xFFFFFFFF, len(head)),
        head,
        payload,
    ))


def pack_texts(texts: Sequence[str]) -> bytes:
    """The payload of a text request; InputTooLarge beyond the request limits."""
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise InvalidArgument("inputs must be a list of strings")
    if len(texts) > MAX_TEXTS_PER_REQUEST:
        raise InputTooLarge(
            f"{len(texts)} texts in one request exceed the limit of {MAX_TEXTS_PER_REQUEST}",
            hint="send fewer texts per call (lower batch_size)")
    try:
        raw = [t.encode("utf-8") for t in texts]
    except UnicodeEncodeError as exc:
        raise InvalidArgument("input text is not valid unicode", detail=str(exc)) from None
    total = sum(map(len, raw))
    if total > MAX_TEXT_BYTES:
        raise InputTooLarge(
            f"request of {total} bytes of text exceeds the limit of {MAX_TEXT_BYTES} bytes",
            hint="send fewer or shorter texts per call (lower batch_size)")
    lengths = array("I", [len(r) for r in raw])
    if lengths.itemsize != 4:  # pragma: no cover - every platform PostgreSQL runs on
        raise RuntimeError("array('I') is not 32 bits here")
    return b"".join((_PREFIX.pack(len(raw)), _little(lengths), *raw))


def body_length(prefix: Buffer, limit: int = MAX_FRAME_BYTES) -> int:
    """Length announced by a 4-byte prefix; refuses sizes no valid frame has."""
    (n,) = _PREFIX.unpack(prefix)
    if n < HEAD_SIZE or n > limit:
        raise BadRequest(f"invalid frame length {n}",
                         detail=f"a frame here holds {HEAD_SIZE} to {limit} bytes")
    return n


def request_id_of(body: Buffer) -> int:
    """The request id of a frame body, even one that does not parse (0 if too short)."""
    return int(_HEAD.unpack_from(body)[2]) if len(body) >= HEAD_SIZE else 0


def decode_body(body: Buffer, max_header: int = MAX_HEADER_BYTES) -> Frame:
    """Parse what follows the length prefix. Raises BadRequest or ProtocolMismatch.

    Only the JSON header is decoded (at most ``max_header`` bytes); a text request's
    payload is checked against the request limits, not decoded (see ``raw_texts``).
    A memoryview body gives a memoryview payload: nothing is copied.
    """
    if len(body) < HEAD_SIZE:
        raise BadRequest("truncated frame")
    version, kind, request_id, head_len = _HEAD.unpack_from(body)
    if version != PROTOCOL_VERSION:
        raise ProtocolMismatch(
            f"protocol version {version} is not supported, expected {PROTOCOL_VERSION}",
            hint="install the same pglocalai version for the extension and the runtime")
    if HEAD_SIZE + head_len > len(body):
        raise BadRequest("frame header runs past the end of the frame")
    if head_len > max_header:
        raise BadRequest(f"frame header of {head_len} bytes exceeds the limit of {max_header}")
    try:
        kind = Kind(kind)
    except ValueError:
        raise BadRequest(f"unknown message kind {kind}") from None
    header = _json_object(bytes(body[HEAD_SIZE : HEAD_SIZE + head_len]))
    frame = Frame(kind, request_id, header, body[HEAD_SIZE + head_len :], version)
    if kind in TEXT_KINDS:
        if TEXTS_FIELD in header:
            raise BadRequest("texts travel in the frame payload, not in the header",
                             hint="build requests with pglocalai.protocol.encode")
        raw_texts(frame.payload)  # counts and lengths, before any text is decoded
    return frame


def raw_texts(payload: Buffer) -> list[memoryview]:
    """The UTF-8 bytes of each text of a text request, not decoded, not copied."""
    view = memoryview(payload)
    if len(view) < 4:
        raise BadRequest("a text request must carry its texts in the payload")
    (n,) = _PREFIX.unpack_from(view)
    if n > MAX_TEXTS_PER_REQUEST:
        raise InputTooLarge(
            f"{n} texts in one request exceed the limit of {MAX_TEXTS_PER_REQUEST}",
            hint="send fewer texts per call (lower batch_size)")
    start = 4 + 4 * n
    if len(view) < start:
        raise BadRequest("text lengths run past the end of the frame")
    lengths = array("I")
    lengths.frombytes(view[4:start])
    lengths = _little(lengths)
    if sum(lengths) != len(view) - start:
        raise BadRequest("text lengths do not add up to the payload",
                         detail=f"{sum(lengths)} bytes announced, {len(view) - start} sent")
    out = []
    for length in lengths:
        out.append(view[start : start + length])
        start += length
    return out


def texts_of(frame: Frame) -> list[str]:
    """The texts of a text request, decoded (BadRequest if one is not UTF-8)."""
    out = []
    for index, raw in enumerate(raw_texts(frame.payload)):
        try:
            out.append(str(raw, "utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest(f"input text {index + 1} is not valid UTF-8",
                             detail=str(exc)) from None
    return out


def timeout_of(header: dict[str, Any]) -> int | None:
    """The request's ``timeout_ms``: None for none (null or 0); BadRequest if not an integer."""
    value = header.get(TIMEOUT_FIELD)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"timeout_ms must be an integer, not {type(value).__name__}")
    if value < 0:
        raise InvalidArgument(f"timeout_ms must not be negative, not {value}",
                              hint="pass 0 for no limit")
    return value or None


def _json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("frame header is not valid UTF-8 JSON", detail=str(exc)) from None
    except RecursionError:
        raise BadRequest("frame header nests too deeply") from None
    if not isinstance(header, dict):
        raise BadRequest("frame header must be a JSON object")
    try:
        # "\ud800" is valid JSON but no UTF-8: a reply quoting it could not be encoded
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("frame header holds a lone surrogate (\\ud800-\\udfff)") from None
    return header


def _little(values: array) -> array:  # type: ignore[type-arg]
    if sys.byteorder != "little":  # pragma: no cover - the wire is little-endian
        values = array(values.typecode, values)
        values.byteswap()
    return values
