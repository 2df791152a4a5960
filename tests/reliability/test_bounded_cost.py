"""Bounded cost per text and per request, with the real model on a runtime of our own.

While one client sends an 8 MiB text, then a 64 MiB one (embedding and counting their
tokens), and then a frame of 7 million tiny texts, a witness client makes short calls
(one word: embed, token_count, get_setting). Every witness call must finish within
WITNESS_BOUND_S and the runtime's memory must grow by less than RSS_BOUND; the big text's
vector is that of its first 512 tokens; the 7 million texts are refused before any is
decoded. docs/security.md ("Bounded cost") quotes the figures of a run.
"""

from __future__ import annotations

import socket
import struct
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import E5, PeakSampler, Runtime, Witness, mib, read_frame

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.errors import InputTooLarge
from pglocalai.protocol import Kind

pytestmark = [pytest.mark.runtime, pytest.mark.model]
WITNESS_BOUND_S = 1.0  # the guarantee: short calls are not held up by a big one
RSS_BOUND = 300 << 20
SHORT = "ab " * 600  # 600 tokens: cut to the same 512 as any longer repetition


@pytest.fixture(scope="module")
def runtime(model_store: Path) -> Iterator[Runtime]:
    with Runtime(model=True, store=model_store, preload=E5) as rt, Client(rt.socket) as c:
        texts = [f"passage {i}: " + "words that fill a batch " * 6 for i in range(64)]
        for _ in range(3):  # ONNX Runtime's arena grows to its working size first
            c.embed(E5, texts)
        c.embed(E5, [SHORT] * 8)
        yield rt


def measured(rt: Runtime, work: Any) -> dict[str, Any]:
    """Run ``work(client)`` beside a witness; RSS, the witness's slowest call, the result."""
    proc = rt.process()
    before = proc.memory_info().rss
    with Client(rt.socket) as client, Witness(
            rt.socket, kinds=("embed", "token_count", "get_setting"), interval=0.01) as witness, \
            PeakSampler({"rss": lambda: proc.memory_info().rss}, interval=0.02) as peak:
        time.sleep(0.2)  # the witness is running
        started = time.monotonic()
        try:
            result: Any = work(client)
        except Exception as exc:  # noqa: BLE001 - returned to the test
            result = exc
        seconds = time.monotonic() - started
        time.sleep(0.2)
    assert not witness.errors, witness.errors[:3]
    assert witness.calls >= 3
    return {"result": result, "seconds": round(seconds, 3), "witness_calls": witness.calls,
            "witness_slowest_s": round(witness.slowest, 3), "rss_before": before,
            "rss_growth": peak.peaks["rss"] - before}


def check(figures: dict[str, Any], name: str, m: dict[str, Any]) -> None:
    figures[f"bounded_cost_{name}"] = {k: (mib(v) if k.startswith("rss") else v)
                                       for k, v in m.items() if k != "result"}
    assert m["witness_slowest_s"] < WITNESS_BOUND_S, m
    assert m["rss_growth"] < RSS_BOUND, (name, mib(m["rss_growth"]))


@pytest.mark.parametrize("mib_size", [8, 64])
def test_a_huge_text_costs_a_bounded_time_and_memory(runtime: Runtime, figures: dict[str, Any],
                                                     mib_size: int) -> None:
    text = ("ab " * ((mib_size << 20) // 3 + 1))[: mib_size << 20]  # exactly mib_size MiB
    assert len(text.encode()) <= protocol.MAX_TEXT_BYTES
    with Client(runtime.socket) as c:
        expected = np.asarray(c.embed(E5, [SHORT])[0])
    baseline = runtime.process().memory_info().rss
    m = measured(runtime, lambda c: c.embed(E5, [text], timeout_ms=120_000))
    check(figures, f"embed_{mib_size}mib", m)
    assert not isinstance(m["result"], Exception), m["result"]
    vector = np.asarray(m["result"][0])
    assert np.array_equal(vector, expected)  # its first 512 tokens, bit for bit
    m = measured(runtime, lambda c: c.token_count(E5, [text], timeout_ms=120_000))
    check(figures, f"token_count_{mib_size}mib", m)
    assert isinstance(m["result"], InputTooLarge)  # the documented cap, a clear error
    assert "too long to count" in m["result"].message
    time.sleep(0.5)
    left = runtime.process().memory_info().rss - baseline
    figures[f"bounded_cost_rss_left_after_{mib_size}mib"] = mib(left)
    assert left < 32 << 20  # nothing of the big text stays behind


def test_token_count_up_to_its_cap_is_exact_and_bounded(runtime: Runtime,
                                                        figures: dict[str, Any]) -> None:
    text = "ab " * ((1 << 20) // 3)  # 1,048,575 characters: just under the cap
    m = measured(runtime, lambda c: c.token_count(E5, [text], timeout_ms=120_000))
    check(figures, "token_count_1mi_chars", m)
    # one ▁ab per word, a ▁ for the trailing space, <s> and </s>
    assert m["result"] == [(1 << 20) // 3 + 3]


def test_a_text_over_the_request_limit_is_refused_before_it_is_sent(runtime: Runtime) -> None:
    with Client(runtime.socket) as c, pytest.raises(InputTooLarge, match="exceeds"):
        c.embed(E5, ["a" * (protocol.MAX_TEXT_BYTES + 1)])


def test_seven_million_tiny_texts_are_refused_before_decoding(runtime: Runtime,
                                                              figures: dict[str, Any]) -> None:
    n = 7_000_000
    payload = struct.pack("<I", n) + (array("I", [1]) * n).tobytes() + b"x" * n
    head = b'{"model":"%s"}' % E5.encode()
    body = struct.pack("<BBII", protocol.PROTOCOL_VERSION, Kind.EMBED, 77, len(head)) + head
    frame = struct.pack("<I", len(body) + len(payload)) + body + payload  # 35 MB

    def send(_client: Client) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(60)
            s.connect(runtime.socket)
            s.sendall(frame)
            return read_frame(s)

    m = measured(runtime, send)
    check(figures, "seven_million_texts", m)
    reply = m["result"]
    assert reply is not None and reply.request_id == 77, reply
    assert reply.header["code"] == "input_too_large" and "7000000 texts" in \
        reply.header["message"]
    assert m["rss_growth"] < 100 << 20  # the frame's bytes, not 7 million decoded texts


@pytest.mark.parametrize("script", ["prose", "cjk"])
def test_chunking_the_largest_text_allowed_is_bounded(runtime: Runtime, figures: dict[str, Any],
                                                      script: str) -> None:
    """CHUNK cuts on the event loop between token counts: at its cap, others still pass."""
    from pglocalai.service.chunking import MAX_CHUNK_CHARS  # noqa: PLC0415 - runtime side

    unit = "Words make sentences. " if script == "prose" else "漢字仮名交じり文"
    text = (unit * (MAX_CHUNK_CHARS // len(unit) + 1))[:MAX_CHUNK_CHARS]
    m = measured(runtime, lambda c: c.chunk(E5, text, 256, 0))
    assert not isinstance(m["result"], Exception), m["result"]
    chunks = m["result"]
    assert "".join(chunks) == text and len(chunks) > 100  # no overlap asked: the text back
    check(figures, f"chunk_{script}", m)
    with Client(runtime.socket) as c, pytest.raises(InputTooLarge):
        c.chunk(E5, text + "x", 256, 0)
