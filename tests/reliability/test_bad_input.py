"""Bad input through SQL and straight to the socket: the documented result or a clear error.

NULL and empty inputs, unknown models, batch_size 0, ids of another length and negative
timeouts are covered by extension/test/sql (create_embeddings, errors, extras) and
tests/integration/test_sql.py; this file adds what they do not: huge texts and arrays
with bounded memory, control characters, invalid UTF-8, and the remaining argument cases.
"""

from __future__ import annotations

import json
import math
import socket
import struct
from typing import Any

import numpy as np
import psycopg
import pytest
from support import (
    E5,
    PeakSampler,
    Runtime,
    backend,
    connect,
    mib,
    private_bytes,
)

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.protocol import Kind

pytestmark = pytest.mark.pg

MEMORY_BOUND = 200 << 20  # bytes a 100,000-text call may add to a backend or the runtime
SENTENCE = "semantic search inside postgres "  # 32 bytes


def cosine(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


# -- size -----------------------------------------------------------------------------------------


def test_a_one_megabyte_text_is_truncated_to_512_tokens(pg_db: dict[str, str],
                                                        runtime: Runtime) -> None:
    big = f"repeat('{SENTENCE}', 32768)"  # 1 MiB
    with connect(pg_db, runtime.socket) as conn:
        assert conn.execute(f"SELECT octet_length({big})").fetchone() == (1 << 20,)
        vec, count = conn.execute(
            f"SELECT azure_local_ai.create_embeddings(%s, {big}),"
            f" azure_local_ai.token_count(%s, {big})", (E5, E5)).fetchone()
        # the first 511 tokens and </s> are those of any repetition longer than 512 tokens
        short = conn.execute(f"SELECT azure_local_ai.create_embeddings(%s, repeat('{SENTENCE}',"
                             f" 200))", (E5,)).fetchone()[0]
        assert len(vec) == 384 and cosine(vec, short) >= 0.99999
        assert count > 4 * 32768  # token_count counts every token, before truncation
        # inside an array, next to short texts, it is the same vector and theirs are intact
        rows = conn.execute(f"SELECT embedding FROM azure_local_ai.create_embeddings(%s,"
                            f" ARRAY['before', {big}, 'after'])", (E5,)).fetchall()
        alone = conn.execute("SELECT azure_local_ai.create_embeddings(%s, 'after')",
                             (E5,)).fetchone()[0]
        assert cosine(rows[1][0], vec) >= 0.99999 and cosine(rows[2][0], alone) >= 0.99999


def test_an_array_beyond_the_request_limit_is_cut_and_a_text_beyond_it_refused(
        pg_db: dict[str, str], runtime: Runtime) -> None:
    """70 texts of ~1 MiB (70 MiB, more than one request may carry) are sent in several
    requests whatever batch_size says; a single text over the limit is refused with 54000
    before anything is sent, and the session goes on."""
    texts = f"ARRAY(SELECT repeat('{SENTENCE}', 32768) || g FROM generate_series(1, 70) g)"
    limit = protocol.MAX_TEXT_BYTES
    with connect(pg_db, runtime.socket) as conn:
        assert conn.execute(
            f"SELECT count(*), count(embedding) FROM azure_local_ai.create_embeddings(%s, {texts},"
            " batch_size => 1000)", (E5,)).fetchone() == (70, 70)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT azure_local_ai.create_embeddings(%s, repeat('ab ', %s))",
                         (E5, limit // 3 + 1))
        diag = info.value.diag
        assert diag.sqlstate == "54000"  # a documented limit, not a protocol violation
        assert diag.message_primary.endswith(f"exceeds the limit of {limit} bytes")
        assert "shorter texts" in (diag.message_hint or "")
        assert conn.execute("SELECT array_length(azure_local_ai.create_embeddings(%s, 'x'), 1)",
                            (E5,)).fetchone() == (384,)


def test_a_100000_element_array_runs_in_bounded_memory(pg_db: dict[str, str],
                                                       fake_runtime: Runtime,
                                                       figures: dict[str, Any]) -> None:
    """The ids overload (Azure's batch form); the plain array one streams the same way.

    The fake engine keeps the runtime's share cheap: what could grow without bound is
    the plumbing (client, PL/Python rows, queues), not the fixed-size model.
    """
    n = 100_000
    texts = f"ARRAY(SELECT 'element number ' || g FROM generate_series(1, {n}) g)"
    ids = f"ARRAY(SELECT g FROM generate_series(1, {n}) g)"
    query = (f"SELECT count(*), count(embedding), min(array_length(embedding, 1))"
             f" FROM azure_local_ai.create_embeddings(%s, {texts}, {ids}, batch_size => 128)")
    with connect(pg_db, fake_runtime.socket) as conn:
        # warm up: the package is loaded and the connection open before the baseline
        conn.execute(query.replace(str(n), "1000"), (E5,))
        server, runtime = backend(conn), fake_runtime.process()
        readers = {"backend": lambda: private_bytes(server),
                   "backend_rss": lambda: server.memory_info().rss,
                   "runtime": lambda: runtime.memory_info().rss}
        base = {name: read() for name, read in readers.items()}
        with PeakSampler(readers) as peaks:
            row = conn.execute(query, (E5,)).fetchone()
        assert row == (n, n, 384)
        grown = {name: max(0, peaks.peaks[name] - base[name]) for name in base}
    for name, added in grown.items():
        assert added < MEMORY_BOUND, f"{name} grew by {mib(added)}"
    figures["array_100000_ids"] = {
        "texts": n, "batch_size": 128,
        "backend_private_mib_before": round(base["backend"] / 2**20, 1),
        "backend_peak_growth_mib": round(grown["backend"] / 2**20, 1),
        "backend_rss_mib_before": round(base["backend_rss"] / 2**20, 1),
        "backend_rss_peak_growth_mib": round(grown["backend_rss"] / 2**20, 1),
        "runtime_rss_mib_before": round(base["runtime"] / 2**20, 1),
        "runtime_peak_growth_mib": round(grown["runtime"] / 2**20, 1)}


# -- characters -----------------------------------------------------------------------------------

ODD_TEXTS = {
    "c0 controls": "".join(chr(c) for c in range(1, 32)) + "text",
    "del and c1": "a\x7fb" + "".join(chr(c) for c in range(0x80, 0xA0)),
    "only controls": "\x01\x02\x03\x1b[31m\x07",
    "zero width and bom": "zero\u200bwidth\u200djoiner\ufeffbom\u2060",
    "bidi overrides": "\u202eevil\u202c \u2066isolate\u2069 \u200fmark",
    "separators": "line\u2028paragraph\u2029tab\tvt\x0bff\x0c",
    "private use and nonchar": "\ue000\U000f0000\ufffe\uffff\U0010ffff",
    "combining pile": "e" + "\u0301" * 200,
}


def test_control_and_format_characters_give_unit_vectors(pg_db: dict[str, str],
                                                         runtime: Runtime) -> None:
    labels, texts = list(ODD_TEXTS), list(ODD_TEXTS.values())
    with connect(pg_db, runtime.socket) as conn:
        arrays = [r[0] for r in conn.execute(
            "SELECT embedding FROM azure_local_ai.create_embeddings(%s, %s::text[])",
            (E5, texts))]
        for label, text, from_array in zip(labels, texts, arrays, strict=True):
            vec, tokens = conn.execute(
                "SELECT azure_local_ai.create_embeddings(%s, %s), azure_local_ai.token_count(%s,"
                " %s)", (E5, text, E5, text)).fetchone()
            assert len(vec) == 384 and all(math.isfinite(v) for v in vec), label
            assert abs(np.linalg.norm(vec) - 1.0) < 1e-3, label
            assert cosine(vec, from_array) >= 0.99999, label
            assert tokens >= 2, label


@pytest.mark.parametrize(("expression", "sqlstate"), [
    ("chr(0)", "54000"),  # text cannot hold NUL
    (r"E'a\u0000b'", "42601"),
    (r"convert_from('\xff'::bytea, 'UTF8')", "22021"),  # nor invalid UTF-8
    (r"convert_from('\xc0af'::bytea, 'UTF8')", "22021"),  # overlong
    (r"convert_from('\xeda080'::bytea, 'UTF8')", "22021"),  # a surrogate
])
def test_postgresql_stops_nul_and_invalid_utf8_before_the_extension(
        pg_db: dict[str, str], runtime: Runtime, expression: str, sqlstate: str) -> None:
    with connect(pg_db, runtime.socket) as conn, pytest.raises(psycopg.Error) as info:
        conn.execute(f"SELECT azure_local_ai.create_embeddings(%s, {expression})", (E5,))
    assert info.value.diag.sqlstate == sqlstate


def raw_frame(kind: int, request_id: int, head: bytes, texts: list[bytes] | None = None) -> bytes:
    """A frame as the wire carries it; ``texts`` (raw bytes) packed as the payload."""
    payload = b"" if texts is None else struct.pack(
        f"<{len(texts) + 1}I", len(texts), *map(len, texts)) + b"".join(texts)
    body = struct.pack("<BBII", protocol.PROTOCOL_VERSION, kind, request_id, len(head)) + head
    return struct.pack("<I", len(body) + len(payload)) + body + payload


def read_reply(sock: socket.socket) -> protocol.Frame:
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the runtime closed the connection"
            data += chunk
        return data

    return protocol.decode_body(exact(protocol.body_length(exact(protocol.PREFIX_SIZE))))


INVALID_UTF8 = {  # (header, texts as raw bytes)
    "invalid byte": (b'{"model":"%s"}', [b"ok", b"bad \xff\xfe byte"]),
    "overlong": (b'{"model":"%s"}', [b"\xc0\xaf"]),
    "truncated sequence": (b'{"model":"%s"}', [b"euro \xe2\x82"]),
    "encoded surrogate": (b'{"model":"%s"}', [b"\xed\xa0\x80"]),
    "escaped lone surrogate in the model": (b'{"model":"e5\\ud800"}', [b"x"]),
    "in the model name": (b'{"model":"e5\xff"}', [b"x"]),
}


@pytest.mark.parametrize("kind", [Kind.EMBED, Kind.TOKEN_COUNT])
def test_invalid_utf8_sent_straight_to_the_socket_is_a_bad_request(runtime: Runtime,
                                                                   kind: Kind) -> None:
    pid = runtime.pid()
    with Client(runtime.socket) as witness:
        expected = witness.embed(E5, ["a valid text"])[0]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(runtime.socket)
    try:
        for i, (label, (body, texts)) in enumerate(INVALID_UTF8.items()):
            head = body.replace(b"%s", E5.encode())
            # a bad frame, then a good one on the same connection: both are answered
            sock.sendall(raw_frame(kind, 10 + i, head, texts) + raw_frame(
                Kind.EMBED, 1000 + i, json.dumps({"model": E5}).encode(), [b"a valid text"]))
            replies = {f.request_id: f for f in (read_reply(sock), read_reply(sock))}
            bad, good = replies[10 + i], replies[1000 + i]
            assert bad.kind == Kind.ERROR and bad.header["code"] == "bad_request", label
            assert bad.header["message"] in (
                "frame header is not valid UTF-8 JSON",
                "frame header holds a lone surrogate (\\ud800-\\udfff)",
                f"input text {len(texts)} is not valid UTF-8"), label
            assert good.kind == Kind.EMBEDDINGS, label
            vec = np.frombuffer(good.payload, "<f4")
            assert cosine(list(vec), expected) >= 0.99999, label
    finally:
        sock.close()
    assert runtime.pid() == pid


# -- arguments ------------------------------------------------------------------------------------

ARGUMENTS = {
    "timeout 0, text overload (no runtime-side limit)": (
        "SELECT array_length(azure_local_ai.create_embeddings(%s, 'x', timeout_ms => 0), 1)",
        None, (384,)),
    "timeout 0, ids overload": (
        "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], ARRAY[1],"
        " timeout_ms => 0)", None, (1,)),
    "negative timeout, ids overload": (
        "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], ARRAY[1],"
        " timeout_ms => -1)", "22023", "timeout_ms must not be negative"),
    "negative timeout, get_setting": (
        "SELECT azure_local_ai.get_setting(ARRAY[%s], -1)", "22023",
        "timeout_ms must not be negative"),
    "batch_size 0, ids overload": (
        "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], ARRAY[1],"
        " batch_size => 0)", "22023", "batch_size must be at least 1"),
    "negative batch_size, ids overload": (
        "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], ARRAY[1],"
        " batch_size => -128)", "22023", "batch_size must be at least 1"),
    "largest batch_size": (
        "SELECT count(*) FROM azure_local_ai.create_embeddings(%s, ARRAY['a', 'b'],"
        " batch_size => 9223372036854775807)", None, (2,)),
    "ids longer than inputs": (
        "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['a'], ARRAY['x', 'y', 'z'])",
        "22023", "inputs and ids must have the same length"),
    "unknown model, ids overload": (
        "SELECT * FROM azure_local_ai.create_embeddings(%s || '-nope', ARRAY['a'], ARRAY[1])",
        "22023", f'model "{E5}-nope" is not installed'),
    "empty model uri": (
        "SELECT azure_local_ai.create_embeddings(substr(%s, 1, 0), 'x')", "22023",
        'model "" is not installed'),
    "model uri of 300 characters": (
        "SELECT azure_local_ai.token_count(repeat(%s, 13), 'x')", "22023", None),
    "path in the model uri": (
        "SELECT azure_local_ai.model_metadata('../' || %s)", "22023", None),
}


@pytest.mark.parametrize("case", sorted(ARGUMENTS))
def test_arguments_give_the_documented_result_or_sqlstate(pg_db: dict[str, str],
                                                          runtime: Runtime, case: str) -> None:
    query, sqlstate, expected = ARGUMENTS[case]
    with connect(pg_db, runtime.socket) as conn:
        if sqlstate is None:
            assert conn.execute(query, (E5,)).fetchone() == expected
            return
        with pytest.raises(psycopg.Error) as info:
            conn.execute(query, (E5,))
        diag = info.value.diag
        assert diag.sqlstate == sqlstate, (diag.sqlstate, diag.message_primary)
        if expected:
            assert diag.message_primary == expected
        if "model" in case:
            assert "installed models" in (diag.message_hint or "") or "list_models" in (
                diag.message_hint or "")
        # the session goes on
        assert conn.execute("SELECT 1").fetchone() == (1,)
