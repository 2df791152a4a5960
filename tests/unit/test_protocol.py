"""Frame encoding and decoding (pglocalai.protocol), stdlib only."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest

from pglocalai import protocol
from pglocalai.errors import BadRequest, InputTooLarge, InvalidArgument, ProtocolMismatch
from pglocalai.protocol import MAX_FRAME_BYTES, PROTOCOL_VERSION, Frame, Kind


def roundtrip(frame: Frame) -> Frame:
    data = protocol.encode(frame)
    size = protocol.body_length(data[: protocol.PREFIX_SIZE])
    assert size == len(data) - protocol.PREFIX_SIZE
    return protocol.decode_body(data[protocol.PREFIX_SIZE:])


def test_roundtrip_keeps_kind_id_header_and_payload() -> None:
    payload = struct.pack("<3f", 1.0, -2.5, 0.125)
    frame = Frame(Kind.EMBEDDINGS, 0xFFFFFFFF, {"count": 1, "dim": 3}, payload)
    back = roundtrip(frame)
    assert (back.kind, back.request_id, back.header, back.payload) == (
        Kind.EMBEDDINGS, 0xFFFFFFFF, {"count": 1, "dim": 3}, payload)


def test_unicode_texts_travel_unchanged() -> None:
    texts = ["", "héllo wörld", "日本語のテキスト", "emoji 🧪🚀", "tab\tnew\nline\x00nul",
             "a" * 10000]
    back = roundtrip(Frame(Kind.EMBED, 7, {"model": "m:v1", "inputs": texts}))
    assert protocol.texts_of(back) == texts
    assert "inputs" not in back.header  # texts travel in the payload


def test_version_mismatch_is_reported_as_such() -> None:
    data = protocol.encode(Frame(Kind.HEALTH, 1, {}, version=PROTOCOL_VERSION + 1))
    with pytest.raises(ProtocolMismatch, match="protocol version"):
        protocol.decode_body(data[4:])


@pytest.mark.parametrize("size", [0, 5, protocol.HEAD_SIZE - 1, MAX_FRAME_BYTES + 1, 2**32 - 1])
def test_impossible_lengths_are_refused(size: int) -> None:
    with pytest.raises(BadRequest, match="invalid frame length"):
        protocol.body_length(struct.pack("<I", size))


def test_invalid_utf8_header_is_a_bad_request() -> None:
    head = b'{"model": "\xff\xfe"}'
    body = struct.pack("<BBII", PROTOCOL_VERSION, Kind.EMBED, 3, len(head)) + head
    with pytest.raises(BadRequest, match="UTF-8 JSON"):
        protocol.decode_body(body)


@pytest.mark.parametrize("head", [b"[1, 2]", b"42", b'"text"', b"{not json"])
def test_header_must_be_a_json_object(head: bytes) -> None:
    body = struct.pack("<BBII", PROTOCOL_VERSION, Kind.HEALTH, 1, len(head)) + head
    with pytest.raises(BadRequest):
        protocol.decode_body(body)


def test_header_running_past_the_frame_and_unknown_kind() -> None:
    body = struct.pack("<BBII", PROTOCOL_VERSION, Kind.HEALTH, 1, 100) + b"{}"
    with pytest.raises(BadRequest, match="past the end"):
        protocol.decode_body(body)
    body = struct.pack("<BBII", PROTOCOL_VERSION, 77, 1, 2) + b"{}"
    with pytest.raises(BadRequest, match="unknown message kind"):
        protocol.decode_body(body)
    with pytest.raises(BadRequest, match="truncated"):
        protocol.decode_body(b"\x01\x01")


@pytest.mark.parametrize("inputs", [None, "one string", [1, 2], ["ok", None], {"a": 1}])
def test_inputs_must_be_a_list_of_strings(inputs: object) -> None:
    with pytest.raises(InvalidArgument, match="inputs"):
        protocol.encode(Frame(Kind.EMBED, 1, {"model": "m:v1", "inputs": inputs}))


def test_oversized_frame_is_refused_by_the_encoder() -> None:
    with pytest.raises(InputTooLarge, match="frame limit"):
        protocol.encode(Frame(Kind.EMBED, 1, {}, b"\0" * MAX_FRAME_BYTES))


def test_client_side_modules_import_only_the_standard_library() -> None:
    code = ("import sys; import pglocalai.client, pglocalai.protocol, pglocalai.errors; "
            "bad = [m for m in ('numpy', 'onnxruntime', 'tokenizers', 'psutil') "
            "if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
