"""Bounded reading with the installed models' own tokenizers: the ids a model keeps and the
token counts are those of ``tokenizers`` encoding the whole text, for long texts of every
script in the multilingual set, long words, URLs, base64, code and unbroken CJK.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest
from support import E5, MINILM
from support.tokens import forced_cuts
from tokenizers import Tokenizer

from pglocalai.models.store import ModelStore
from pglocalai.service import reading
from pglocalai.service.tokenizer import load_tokenizer

pytestmark = pytest.mark.model
DATA = Path(__file__).parent.parent / "data" / "multilingual.json"


def long_texts() -> list[str]:
    base = [d["text"] for d in json.loads(DATA.read_text(encoding="utf-8"))["texts"]]
    rng = random.Random(11)
    blob = base64.b64encode(rng.randbytes(30_000)).decode()
    extras = [
        "x" * 3000, "Donaudampfschifffahrtsgesellschaftskapitän" * 80, blob[:7000],
        "https://example.com/" + "/".join(f"p{i}?q={i}&r=é" for i in range(450)),
        "def f(x):\n    return [y ** 2 for y in range(x) if y % 3 == 0]\n" * 60,
        "日本語の文章は空白なしで続きます。" * 400,  # 6,800 characters without a space
        "ไทยภาษาไม่มีช่องว่าง" * 300, "e\u0301" * 2000, "   \t\n  " * 500, "<s></s><mask>" * 300,
    ]
    out = list(base)
    for size in (2000, 8000, 30_000, 90_000):
        for _ in range(12):
            parts: list[str] = []
            while sum(map(len, parts)) < size:
                parts.append(rng.choice(base if rng.random() < 0.85 else extras))
            out.append(rng.choice([" ", "\n", "  "]).join(parts))
    return out + extras


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return long_texts()


@pytest.mark.parametrize("uri", [E5, MINILM])
@pytest.mark.parametrize("mode", ["compact", "huggingface"])
def test_bounded_reading_keeps_the_ids_of_the_whole_text(model_store: Path, texts: list[str],
                                                        uri: str, mode: str) -> None:
    tokenizer_json = ModelStore(model_store).read_verified(uri, "tokenizer.json").decode()
    tok = load_tokenizer(tokenizer_json, mode)
    assert tok.windowed
    reference = Tokenizer.from_str(tokenizer_json)
    reference.no_truncation()
    reference.no_padding()
    limit = 512
    kept = reading.run_now(reading.embed_job(tok, [t.encode() for t in texts], limit))
    counts = reading.run_now(reading.count_job(tok, texts))
    assert sum(map(len, texts)) > 1_500_000  # the bound matters: texts are long
    exact = 0
    for text, ids, count in zip(texts, kept, counts, strict=True):  # type: ignore[call-overload]
        if forced_cuts(tok, text):  # 8,192 characters without a cut: documented below
            continue
        full = reference.encode(text).ids
        expected = full if len(full) <= limit else full[: limit - 1] + full[-1:]
        assert list(ids) == expected, text[:80]
        assert count == len(full), text[:80]
        exact += 1
    assert exact > 0.9 * len(texts)


def test_a_stretch_longer_than_the_forced_cut_is_counted_nearly(model_store: Path) -> None:
    """Documented: 8,192 characters without a cut are cut where they stand."""
    tokenizer_json = ModelStore(model_store).read_verified(E5, "tokenizer.json").decode()
    tok = load_tokenizer(tokenizer_json, "compact")
    reference = Tokenizer.from_str(tokenizer_json)
    reference.no_truncation()
    url = "https://example.com/" + "/".join(f"p{i}?q={i}&r=é" for i in range(3000))  # 49 KB
    full = reference.encode(url).ids
    kept = reading.run_now(reading.embed_job(tok, [url], 512))[0]
    assert list(kept) == full[:511] + full[-1:]  # the kept tokens come before the first seam
    count = reading.run_now(reading.count_job(tok, [url]))[0]
    seams = len(url) // (reading.FORCED_CUT_FACTOR * reading.WINDOW_CHARS)
    assert abs(count - len(full)) <= 2 * seams  # a token or two per seam
