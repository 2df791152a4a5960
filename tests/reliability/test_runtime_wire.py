"""Every byte sequence on the runtime's socket gets a reply or a clear close.

Hypothesis builds byte sequences from valid frames of every kind, frames with a wrong
version, kind, header (not JSON, not an object, nested 50,000 deep, lone surrogates,
over the header limit), text payloads that do not add up or are not UTF-8, random
bytes, impossible length prefixes, and cuts them anywhere. A reference framer says
what the runtime must answer:

* each complete frame before an impossible length gets exactly one reply with its
  request id (in any order), and the connection stays open;
* an impossible length gets ``ERROR bad_request`` and the connection is closed: the
  stream is out of step (replies to frames before it may be cut short by the close);
* a frame cut short gets nothing until the client ends the stream; then the runtime
  closes the connection.

Nothing is left hanging: a read that waits 10 s fails the example.
"""

from __future__ import annotations

import json
import socket
import struct
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import E5, Runtime, read_frame

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.protocol import MAX_FRAME_BYTES, Frame, Kind

pytestmark = pytest.mark.runtime
EXAMPLES = settings(max_examples=250, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
SAFE_KINDS = [k for k in Kind if k != Kind.SET_SETTING]  # a valid one would change settings


@pytest.fixture(scope="module")
def runtime_socket() -> Iterator[str]:
    with Runtime(preload="all", max_queue=5000) as rt:
        yield rt.socket
        with Client(rt.socket) as c:  # still serving after all of it
            assert len(c.embed(E5, ["after the fuzzing"])[0]) == 384
        assert rt.stop() == 0


def raw(kind: int, rid: int, head: bytes, payload: bytes = b"",
        version: int = protocol.PROTOCOL_VERSION) -> bytes:
    body = struct.pack("<BBII", version, kind, rid, len(head)) + head + payload
    return struct.pack("<I", len(body)) + body


rids = st.integers(0, 2**32 - 1) | st.integers(1, 64)
texts = st.lists(st.text(max_size=40), max_size=5)
valid = st.builds(
    lambda kind, rid, model, ts, keys: protocol.encode(Frame(kind, rid, {
        Kind.EMBED: {"model": model, "inputs": ts, "timeout_ms": 10_000},
        Kind.TOKEN_COUNT: {"model": model, "inputs": ts}, Kind.GET_SETTINGS: {"keys": keys},
        Kind.MODEL_METADATA: {"model": model}, Kind.AUTH: {"secret": "x"},
    }.get(kind, {}))),
    st.sampled_from([k for k in SAFE_KINDS if k < 100]), rids,
    st.sampled_from([E5, "fake-tiny:v1", "nope:v1", ""]), texts,
    st.lists(st.sampled_from(["spin_control", "intra_op_parallelism", "x"]), max_size=3))
heads = st.sampled_from([
    b"", b"{}", b"[]", b"null", b"{", b'{"model":5}', b'{"model":"\\ud800"}',
    b'{"keys":["\\udfff"]}', b"[" * 50_000, b'{"inputs":["x"]}', b"\xff\xfe",
    b'{"timeout_ms":"soon"}', b'{"timeout_ms":-5}', b"{" + b" " * (70 * 1024) + b"}",
]) | st.binary(max_size=64)
payloads = st.sampled_from([
    b"", protocol.pack_texts(["ok"]), struct.pack("<I", 2) + b"\0" * 4,
    struct.pack("<II", 1, 3) + b"\xff\xfe\xfd", struct.pack("<I", 10**6),
    struct.pack("<II", 1, 5) + b"ab",
]) | st.binary(max_size=64)
odd = st.builds(raw, st.sampled_from([int(k) for k in Kind] + [0, 77, 255]), rids, heads,
                payloads, st.sampled_from([protocol.PROTOCOL_VERSION, 1, 0, 255]))
impossible = st.sampled_from([0, 3, 9, MAX_FRAME_BYTES + 1, 2**32 - 1]).map(
    lambda n: struct.pack("<I", n))
# frames, then maybe junk: random bytes or an impossible length (which ends what is read)
pieces = st.builds(lambda frames, tail: [*frames, tail],
                   st.lists(st.one_of(valid, valid, odd), min_size=1, max_size=8),
                   st.just(b"") | st.binary(min_size=1, max_size=40) | impossible)


def expected(data: bytes) -> tuple[Counter[int], bool]:
    """(request ids that must be answered, whether an impossible length closes the stream)."""
    ids: Counter[int] = Counter()
    pos = 0
    while len(data) - pos >= 4:
        (n,) = struct.unpack_from("<I", data, pos)
        if n < protocol.HEAD_SIZE or n > MAX_FRAME_BYTES:
            return ids, True
        if pos + 4 + n > len(data):
            break  # cut short: waits for the rest
        ids[protocol.request_id_of(data[pos + 4 : pos + 4 + n])] += 1
        pos += 4 + n
    return ids, False


@EXAMPLES
@given(parts=pieces, cut=st.integers(0, 2**20))
def test_every_byte_sequence_gets_a_reply_or_a_clear_close(runtime_socket: str,
                                                           parts: list[bytes], cut: int) -> None:
    data = b"".join(parts)
    if cut % 3 == 0:
        data = data[: cut % (len(data) + 1)]  # a stream cut anywhere
    want, closes = expected(data)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)  # a read that waits this long means the runtime left us hanging
        s.connect(runtime_socket)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            assert closes  # only an out-of-step stream is closed on us
        got: Counter[int] = Counter()
        last: Frame | None = None
        while closes or sum(got.values()) < sum(want.values()):
            try:
                reply = read_frame(s)
            except ConnectionResetError:
                reply = None
            if reply is None:
                break
            assert reply.kind in (Kind.RESULT, Kind.EMBEDDINGS, Kind.ERROR)
            got[reply.request_id] += 1
            last = reply
        if closes:
            assert last is not None and last.header["code"] == "bad_request" \
                and "invalid frame length" in last.header["message"]
            got[0] -= 1  # that error; the replies before it answer frames that were sent
            assert all(got[r] <= want[r] for r in got), (got, want)
        else:
            assert got == want, (got, want)  # one reply per complete frame
            s.shutdown(socket.SHUT_WR)  # the client ends the stream: a clear close follows
            assert read_frame(s) is None


def test_a_header_nested_fifty_thousand_deep_and_lone_surrogates_get_answers(
        runtime_socket: str) -> None:
    frames = [(Kind.GET_SETTINGS, b'{"keys":' + b"[" * 50_000), (Kind.EMBED, b"[" * 60_000),
              (Kind.MODEL_METADATA, b'{"model":"e5\\ud800"}'),
              (Kind.GET_SETTINGS, b'{"keys":["\\udfff"]}')]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(runtime_socket)
        for rid, (kind, head) in enumerate(frames, 1):
            s.sendall(raw(kind, rid, head))
            reply = read_frame(s)
            assert reply is not None and reply.request_id == rid
            assert reply.header["code"] == "bad_request", json.dumps(reply.header)
        s.sendall(raw(Kind.HEALTH, 9, b"{}"))
        reply = read_frame(s)
        assert reply is not None and reply.header["status"] == "ok"
