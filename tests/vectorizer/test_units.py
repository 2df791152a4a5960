"""The worker's and the chunker's pure parts: no PostgreSQL, no runtime, no model."""

from __future__ import annotations

import asyncio
import struct
import unicodedata
from collections.abc import Sequence

import pytest

from pglocalai import errors
from pglocalai.service.chunking import split_at, split_text
from pglocalai.vectorizer import embedding
from pglocalai.vectorizer.batch import Limits, estimate_tokens
from pglocalai.vectorizer.plan import CATALOG_EXAMPLE, Vectorizer
from pglocalai.vectorizer.presence import Backoff


def words_counter(texts: list[str]) -> list[int]:
    """A stand-in tokenizer: a token per word, a token per CJK character, two specials."""
    out = []
    for t in texts:
        cjk = sum(1 for ch in t if unicodedata.east_asian_width(ch) == "W")
        out.append(2 + len(t.split()) + cjk)
    return out


async def count(texts: list[str]) -> list[int]:
    return words_counter(texts)


def chunk(text: str, max_tokens: int, overlap: int = 0,
          prefix: str = "") -> tuple[list[str], list[int]]:
    return asyncio.run(split_text(text, max_tokens, overlap, count, prefix))


LONG = "\n\n".join(" ".join(f"Sentence {p}.{s} has some words in it." for s in range(8))
                   for p in range(6))


@pytest.mark.parametrize("overlap", [0, 5, 20])
@pytest.mark.parametrize("max_tokens", [12, 40, 200])
def test_chunks_give_the_text_back_and_fit(max_tokens: int, overlap: int) -> None:
    chunks, overlaps = chunk(LONG, max_tokens, overlap, prefix="passage: ")
    assert chunks[0] + "".join(c[o:] for c, o in zip(chunks[1:], overlaps[1:], strict=True)) \
        == LONG
    assert max(words_counter(["passage: " + c for c in chunks])) <= max_tokens
    assert overlaps[0] == 0
    for before, after, o in zip(chunks, chunks[1:], overlaps[1:], strict=False):
        assert before.endswith(after[:o])
        assert words_counter([after[:o]])[0] - 2 <= overlap


def test_paragraphs_then_sentences_then_words() -> None:
    by_paragraph, _ = chunk(LONG, 100)
    assert all(c.endswith("\n\n") for c in by_paragraph[:-1])
    by_sentence, _ = chunk(LONG, 30)
    assert all(c.endswith(". ") or c.endswith(".\n\n") for c in by_sentence[:-1])
    by_word, _ = chunk("one two three four five six seven", 5)
    assert by_word == ["one two three ", "four five six ", "seven"]


def test_scripts_without_spaces_and_combining_marks() -> None:
    text = "東京都の天気は晴れ" * 5 + "e\u0301" * 10  # e + combining acute accent
    chunks, _ = chunk(text, 6)
    assert "".join(chunks) == text
    assert not any(c.startswith("\u0301") for c in chunks)
    assert max(words_counter(chunks)) <= 6


def test_empty_text_and_a_limit_without_room() -> None:
    assert chunk("", 10) == ([], [])
    with pytest.raises(errors.InvalidArgument, match="leaves no room"):
        chunk("text", 3, prefix="a long prefix")
    assert split_at("a b", 2) == ["a ", "b"]


def test_statements_for_a_composite_key_of_odd_names() -> None:
    row = {**CATALOG_EXAMPLE, "input_column": 'Body "text"', "key_columns": [
        {"name": "Owner", "type": "uuid", "eq": "operator(pg_catalog.=)"},
        {"name": "at", "type": "timestamp with time zone", "eq": "operator(pg_catalog.=)"}]}
    v = Vectorizer.from_row(row)
    assert 's."Body ""text"""::text' in v.sql.read
    assert 's."Owner" operator(pg_catalog.=) v.k1::uuid and ' \
           's."at" operator(pg_catalog.=) v.k2::timestamp with time zone' in v.sql.write
    assert v.sql.write.count("%s") == 5  # two key arrays, hashes, vectors, ordinals
    assert "for update of q skip locked" in v.sql.claim


class FakeRuntime:
    """Refuses texts holding "bad"; fails whole requests while ``down``."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.down = False

    def embed_raw(self, model: str, texts: Sequence[str],
                  timeout_ms: int | None = None) -> tuple[int, bytes]:
        self.calls.append(len(texts))
        if self.down:
            raise errors.RuntimeUnavailable("runtime down")
        if any("bad" in t for t in texts):
            raise errors.InvalidArgument("refused", detail="a bad text")
        return 2, b"".join(struct.pack("<2f", len(t), 0.25) for t in texts)


def test_one_bad_text_fails_alone() -> None:
    rt = FakeRuntime()
    out = embedding.embed_texts(rt, "m", ["a", "bb", "bad", "dddd", "eeeee"])
    assert out.literals == ["[1,0.25]", "[2,0.25]", None, "[4,0.25]", "[5,0.25]"]
    assert out.errors == {2: "refused (a bad text)"}
    assert rt.calls[0] == 5 and len(rt.calls) <= 1 + 2 * 3


def test_a_runtime_that_is_down_fails_the_batch_not_the_rows() -> None:
    rt = FakeRuntime()
    rt.down = True
    with pytest.raises(errors.RuntimeUnavailable):
        embedding.embed_texts(rt, "m", ["a", "b"])
    assert rt.calls == [2]  # not split: it is nobody's text


def test_literals_round_trip_float32_exactly() -> None:
    raw = struct.pack("<3f", 0.1, -1e-8, 3.4028234663852886e38)
    (vec,) = embedding.vector_literals(3, raw)
    (arr,) = embedding.vector_literals(3, raw, array_literal=True)
    values = [float(x) for x in vec.strip("[]").split(",")]
    assert struct.pack("<3f", *values) == raw
    assert arr == "{" + vec[1:-1] + "}"


def test_a_text_over_the_request_limit_is_refused_without_a_request(monkeypatch) -> None:
    monkeypatch.setattr(embedding, "MAX_TEXT_BYTES", 10)
    rt = FakeRuntime()
    out = embedding.embed_texts(rt, "m", ["short", "x" * 11])
    assert out.literals[0] is not None and "exceeds the runtime's limit" in out.errors[1]
    assert rt.calls == [1]


def test_token_estimates_and_backoff() -> None:
    limits = Limits(max_tokens=512)
    assert estimate_tokens(40, 9, limits, chunked=False) == 2 + 13
    assert estimate_tokens(100_000, 0, limits, chunked=False) == 512
    assert estimate_tokens(100_000, 0, limits, chunked=True) == 25_002
    b = Backoff(first=0.5, cap=4.0)
    delays = [b.next() for _ in range(6)]
    assert 0.375 <= delays[0] <= 0.625 and max(delays) <= 5.0
    b.reset()
    assert b.next() <= 0.625
