"""Bounded cost per request and per text, without a runtime: the protocol's limits, the
bounded reading of texts, the word cache in bytes and the tokenizer thread's turns.

The ids of the bounded reading are compared with ``tokenizers`` encoding the whole text,
here on a small Unigram vocabulary (tests/unit/test_compact_tokenizer.py); the same
comparison on the real multilingual-e5-small tokenizer is in test_runtime_reading.py.
"""

from __future__ import annotations

import asyncio
import json
import random
import struct
import tracemalloc
from array import array
from collections.abc import Generator

import pytest
from support.tokens import forced_cuts
from test_compact_tokenizer import unigram_json
from tokenizers import Tokenizer

from pglocalai import protocol
from pglocalai.errors import BadRequest, InputTooLarge, InvalidArgument
from pglocalai.protocol import MAX_HEADER_BYTES, MAX_TEXTS_PER_REQUEST, Frame, Kind
from pglocalai.service import compact as compact_module
from pglocalai.service import reading
from pglocalai.service.slices import SliceRunner
from pglocalai.service.tokenizer import CompactUnigram, load_tokenizer


def body(kind: Kind, head: bytes, payload: bytes = b"", request_id: int = 1) -> bytes:
    return struct.pack("<BBII", protocol.PROTOCOL_VERSION, kind, request_id, len(head)) \
        + head + payload


# -- the protocol's limits, before anything is decoded ---------------------------------


def test_seven_million_tiny_texts_are_refused_before_decoding() -> None:
    n = 7_000_000
    lengths = array("I", [1]) * n
    payload = struct.pack("<I", n) + lengths.tobytes() + b"x" * n  # 35 MB, a legal frame size
    frame = body(Kind.EMBED, b'{"model":"m:v1"}', payload)
    assert len(frame) <= protocol.MAX_FRAME_BYTES
    tracemalloc.start()
    try:
        with pytest.raises(InputTooLarge, match="7000000 texts"):
            protocol.decode_body(memoryview(frame))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing of the 35 MB was copied or decoded
    with pytest.raises(InputTooLarge, match="texts in one request"):  # nor does a client send it
        protocol.encode(Frame(Kind.EMBED, 1, {"model": "m:v1", "inputs": ["x"] * n}))


def test_the_frame_limit_is_what_the_largest_legal_request_needs() -> None:
    assert protocol.MAX_FRAME_BYTES == (protocol.HEAD_SIZE + MAX_HEADER_BYTES
                                        + 4 * (1 + MAX_TEXTS_PER_REQUEST) + protocol.MAX_TEXT_BYTES)
    protocol.encode(Frame(Kind.EMBED, 1, {"model": "m:v1", "inputs": [""] * MAX_TEXTS_PER_REQUEST}))
    with pytest.raises(InputTooLarge):
        protocol.encode(Frame(Kind.EMBED, 1, {"inputs": [""] * (MAX_TEXTS_PER_REQUEST + 1)}))
    with pytest.raises(InputTooLarge, match="bytes of text"):
        protocol.pack_texts(["a" * (protocol.MAX_TEXT_BYTES // 2 + 1)] * 2)


def test_a_header_over_the_limit_is_refused_without_being_parsed() -> None:
    head = b"{" + b" " * MAX_HEADER_BYTES + b"}"  # valid JSON, but too long
    with pytest.raises(BadRequest, match="exceeds the limit"):
        protocol.decode_body(body(Kind.HEALTH, head))
    assert protocol.decode_body(body(Kind.HEALTH, b"{" + b" " * 100 + b"}")).header == {}


@pytest.mark.parametrize("head", [b"[" * 60_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
                                  b'{"keys":' + b"[" * 50_000])
def test_deeply_nested_headers_are_a_bad_request(head: bytes) -> None:
    with pytest.raises(BadRequest, match="nests too deeply|not valid"):
        protocol.decode_body(body(Kind.GET_SETTINGS, head))


@pytest.mark.parametrize(("kind", "head"), [
    (Kind.MODEL_METADATA, b'{"model":"e5\\ud800"}'),
    (Kind.GET_SETTINGS, b'{"keys":["\\udfff"]}'),
    (Kind.SET_SETTING, b'{"key":"spin_control","value":"\\udc80"}'),
])
def test_lone_surrogates_in_a_header_are_a_bad_request(kind: Kind, head: bytes) -> None:
    with pytest.raises(BadRequest, match="lone surrogate"):
        protocol.decode_body(body(kind, head))
    pair = body(Kind.MODEL_METADATA, b'{"model":"e5 \\ud83d\\ude00"}')  # a pair is a character
    assert protocol.decode_body(pair).header["model"] == "e5 \U0001f600"


def test_text_payloads_must_add_up_and_be_utf8() -> None:
    good = protocol.pack_texts(["ab", "é"])
    frame = protocol.decode_body(body(Kind.EMBED, b'{"model":"m:v1"}', good))
    assert protocol.texts_of(frame) == ["ab", "é"]
    for payload, message in [(b"", "carry its texts"), (good[:-1], "do not add up"),
                             (struct.pack("<I", 3) + b"\0\0", "run past"),
                             (good + b"x", "do not add up")]:
        with pytest.raises(BadRequest, match=message):
            protocol.decode_body(body(Kind.EMBED, b'{"model":"m:v1"}', payload))
    bad = struct.pack("<II", 1, 2) + b"\xff\xfe"
    with pytest.raises(BadRequest, match="input text 1 is not valid UTF-8"):
        protocol.texts_of(protocol.decode_body(body(Kind.EMBED, b"{}", bad)))
    with pytest.raises(BadRequest, match="in the frame payload"):
        protocol.decode_body(body(Kind.EMBED, b'{"model":"m:v1","inputs":["x"]}', good))
    with pytest.raises(InvalidArgument):
        protocol.timeout_of({"timeout_ms": -1})
    with pytest.raises(BadRequest):
        protocol.timeout_of({"timeout_ms": "soon"})


# -- bounded reading: the ids of the whole text, a window at a time ----------------------

WORDS = ["ab", "abc", "bé", "e\u0301d", "日本", "語ab", "ñaa", "dd", "<s>", "<mask>", "c<r>",
         "ไทย", "aé日", "ccc", "b"]


def word_texts(n: int, seed: int) -> list[str]:
    """Texts of words (with specials, marks, CJK, unknown characters inside) between spaces
    and other whitespace; every word starts and ends with a letter."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = []
        for _ in range(rng.randint(0, 60)):
            word = "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5)))
            words.append(f"b{word}é" + rng.choice([" "] * 6 + ["  ", "\t", "\u3000", " , "]))
        out.append("".join(words))
    return out


@pytest.fixture(scope="module", params=["compact", "huggingface"])
def tok_and_reference(request: pytest.FixtureRequest) -> tuple[object, Tokenizer]:
    text = unigram_json(seed=5)
    tok = load_tokenizer(text, request.param)
    assert tok.windowed  # its pipeline is one where a cut at a space changes nothing
    reference = Tokenizer.from_str(text)
    reference.no_truncation()
    return tok, reference


@pytest.mark.parametrize("window", [24, 64, 4096])
def test_windows_give_the_ids_of_the_whole_text(tok_and_reference: tuple[object, Tokenizer],
                                               window: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    tok, reference = tok_and_reference
    monkeypatch.setattr(reading, "WINDOW_CHARS", window)  # many cuts per text
    texts = [t for t in word_texts(300, seed=window) if not forced_cuts(tok, t)]
    assert len(texts) > 270  # nearly all texts are read at cuts only
    for limit in (6, 40, 10_000):
        got = reading.run_now(reading.embed_job(tok, texts, limit))  # type: ignore[arg-type]
        for text, ids in zip(texts, got, strict=True):
            full = reference.encode(text).ids
            expected = full if len(full) <= limit else full[: limit - 1] + full[-1:]
            assert list(ids) == expected, (text, window, limit)
    counts = reading.run_now(reading.count_job(tok, [t.encode() for t in texts]))  # type: ignore[arg-type]
    assert counts == [len(reference.encode(t).ids) for t in texts]


def test_a_stretch_without_a_cut_is_read_in_pieces_and_embedding_stays_exact(
        tok_and_reference: tuple[object, Tokenizer], monkeypatch: pytest.MonkeyPatch) -> None:
    tok, reference = tok_and_reference
    monkeypatch.setattr(reading, "WINDOW_CHARS", 16)
    word = "abé日本語" * 40  # 240 characters, no space: cut at 4 x 16 characters
    text = f"ab {word} ab"
    full = reference.encode(text).ids
    first = reading.run_now(reading.embed_job(tok, [text], 8))[0]  # type: ignore[arg-type]
    assert list(first) == full[:7] + full[-1:]  # the kept ids come before the first seam
    pieces = [text[:67], text[67:131], text[131:195], text[195:]]  # where the windows fell
    by_pieces = [i for p in pieces for i in reference.encode(p, add_special_tokens=False).ids]
    count = reading.run_now(reading.count_job(tok, [text]))[0]  # type: ignore[arg-type]
    assert count == len(by_pieces) + 2  # documented: a seam may add or lose a token or two


def test_an_embedded_text_is_read_only_as_far_as_its_kept_tokens(
        tok_and_reference: tuple[object, Tokenizer]) -> None:
    tok, _ = tok_and_reference
    calls: list[int] = []
    inner = tok.encode_window  # type: ignore[attr-defined]

    def spy(text: str, stop: int | None = None) -> list[int]:
        calls.append(len(text))
        return inner(text, stop)  # type: ignore[no-any-return]

    tok.encode_window = spy  # type: ignore[attr-defined]
    try:
        huge = ("ab bé dd " * 1_000_000).encode()  # 9 MB
        ids = reading.run_now(reading.embed_job(tok, [huge], 512))[0]  # type: ignore[arg-type]
    finally:
        del tok.encode_window  # type: ignore[attr-defined]
    assert len(ids) == 512
    assert sum(calls) <= reading.WINDOW_CHARS  # one window of 9 MB was tokenised
    scan = reading.SCAN_CHARS_PER_TOKEN * 512
    junk, head = "\u200b" * 200_000 + " ab", "\u200b" * scan  # few tokens in 200,000 characters
    ids, cut = reading.run_now(reading.embed_job(tok, [junk, head], 512))  # type: ignore[arg-type]
    assert len(ids) < 512 and list(ids) == list(cut)  # read as if it ended after `scan`


def test_invalid_utf8_anywhere_in_a_text_is_refused(
        tok_and_reference: tuple[object, Tokenizer]) -> None:
    tok, _ = tok_and_reference
    for text in [b"ab \xff", b"ab " * 400_000 + b"\xc3", b"ab " * 400_000 + b"\xed\xa0\x80 ab"]:
        with pytest.raises(BadRequest, match="input text 2 is not valid UTF-8"):
            reading.run_now(reading.embed_job(tok, [b"ok", text], 512))  # type: ignore[arg-type]


def test_token_count_stops_at_its_documented_cap(
        tok_and_reference: tuple[object, Tokenizer]) -> None:
    tok, reference = tok_and_reference
    at_cap = "ab " * (reading.MAX_COUNT_CHARS // 3) + "a"  # exactly MAX_COUNT_CHARS characters
    assert len(at_cap) == reading.MAX_COUNT_CHARS
    count = reading.run_now(reading.count_job(tok, [at_cap]))[0]  # type: ignore[arg-type]
    assert count == len(reference.encode(at_cap).ids)
    for over in (at_cap + "b", "日" * (reading.MAX_COUNT_CHARS + 1), "x" * (1 << 24)):
        with pytest.raises(InputTooLarge, match="too long to count"):
            reading.run_now(reading.count_job(tok, [over.encode()]))  # type: ignore[arg-type]


# -- the compact tokenizer's word cache is bounded in bytes --------------------------------


def test_word_cache_is_bounded_in_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compact_module, "CACHE_BYTES", 200_000)
    tok = CompactUnigram(json.loads(unigram_json(seed=2)))
    rng = random.Random(3)
    for i in range(300):  # long distinct words: none is kept (2,000 of 20 KB held 259 MiB)
        tok.encode_window("".join(rng.choice("abcdé") for _ in range(1000)) + str(i))
        assert tok._cache_bytes <= 200_000
    assert tok._cache_bytes < 1000
    for i in range(20_000):  # many short words: the cache empties itself when full
        tok.encode_window(f"ab{i}")
        assert tok._cache_bytes <= 200_000
    assert 0 < len(tok._cache) < 20_000


# -- the tokenizer thread: a job at a time, a slice each -----------------------------------


def test_a_short_job_does_not_wait_for_a_long_one_to_finish() -> None:
    done: list[str] = []

    def job(name: str, slices: int) -> Generator[None, None, str]:
        for _ in range(slices):
            sum(range(20_000))  # a slice of work
            yield
        done.append(name)
        return name

    async def main() -> tuple[str, str, list[str]]:
        runner = SliceRunner()
        try:
            long = runner.submit(job("long", 400))
            await asyncio.sleep(0.01)  # the long one has started
            short = await runner.submit(job("short", 3))
            finished = list(done)  # the long job still has most of its turns to take
            return short, await long, finished
        finally:
            runner.close()

    short, long, finished = asyncio.run(main())
    assert (short, long, finished, done) == ("short", "long", ["short"], ["short", "long"])


def test_a_cancelled_job_stops_at_its_next_turn() -> None:
    turns: list[int] = []

    def job() -> Generator[None, None, None]:
        for i in range(1_000_000):
            turns.append(i)
            yield

    async def main() -> None:
        runner = SliceRunner()
        try:
            future = runner.submit(job())
            while len(turns) < 10:
                await asyncio.sleep(0.001)
            future.cancel()
            seen = len(turns)
            await asyncio.sleep(0.05)
            assert len(turns) <= seen + 2 and runner.pending() == 0
        finally:
            runner.close()

    asyncio.run(main())


def test_a_long_word_stops_once_its_kept_ids_are_decided() -> None:
    tok = CompactUnigram(json.loads(unigram_json(seed=4)))
    rng = random.Random(9)
    early = 0
    for _ in range(150):
        alphabet = rng.choice(["abcdeé日本語ñ", "ab", "日本語ไทย", "aé\u0301ñb"])
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(300, 3000)))
        full = tok._segment(word)
        for need in (1, 10, 100):
            part = tok._segment(word, need)
            assert part == full[: len(part)], word  # the first ids of the whole word
            assert len(part) >= need or part == full
            early += len(part) < len(full)
    assert early > 200  # it did stop early, most of the time
