"""CompactUnigram against tokenizers' own Unigram on small hand-built vocabularies.

The compact tokenizer must give exactly the ids of ``Tokenizer.encode``; random
texts over an alphabet that hits every branch (pieces, unknown characters that
fuse, a duplicated piece, special tokens with and without lstrip/rstrip,
whitespace the normaliser collapses) are compared one by one.
"""

from __future__ import annotations

import json
import random

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

from pglocalai.service import compact as compact_module
from pglocalai.service.tokenizer import (
    CompactUnigram,
    compact_unsupported,
    load_tokenizer,
    rust_json_float,
)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
LETTERS = "abcdeé\u0301ñ日本語ไทย"


def unigram_json(seed: int = 0, *, byte_fallback: bool = False) -> str:
    """A Unigram tokenizer.json shaped like XLM-RoBERTa's, with a random vocabulary."""
    rng = random.Random(seed)
    pieces = {"\u2581", "ab"} | set(LETTERS[:-3])  # ไทย stay unknown: they fuse into one <unk>
    while len(pieces) < 300:
        word = "".join(rng.choice(LETTERS[:-3]) for _ in range(rng.randint(1, 5)))
        pieces.add(("\u2581" if rng.random() < 0.4 else "") + word)
    vocab = [(s, 0.0) for s in SPECIALS]
    vocab += [(p, -rng.uniform(1, 12)) for p in sorted(pieces)]
    vocab.append(("ab", -0.5))  # a duplicate: the last id and its score win in tokenizers
    vocab.append(("<mask>", 0.0))
    tok = Tokenizer(models.Unigram(vocab, unk_id=3, byte_fallback=byte_fallback))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens([AddedToken(s, normalized=False) for s in SPECIALS]
                           + [AddedToken("<mask>", lstrip=True, normalized=False),
                              AddedToken("<r>", rstrip=True, normalized=False)])
    return tok.to_str()


def random_texts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    alphabet = list(LETTERS + " \t\n\u3000\u00a0\x1c") + ["  ", "<s>", "</s>", "<mask>", "<r>",
                                                           "<unk>", "<", "s>", "ab"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_compact_gives_the_ids_of_tokenizers(seed: int) -> None:
    text = unigram_json(seed)
    reference = Tokenizer.from_str(text)
    compact = load_tokenizer(text, "compact")
    assert compact.name == "compact"
    texts = random_texts(5000, seed)
    expected = [enc.ids for enc in reference.encode_batch(texts)]
    got = compact.encode_batch(texts)
    wrong = [(t, e, g) for t, e, g in zip(texts, expected, got, strict=True) if e != g]
    assert not wrong, wrong[:3]


def test_the_hard_cases_are_really_exercised() -> None:
    reference = Tokenizer.from_str(unigram_json())
    unk, mask = 3, reference.token_to_id("<mask>")
    assert reference.encode("ไทย").ids.count(unk) == 1  # three unknown characters, one <unk>
    spaced = reference.encode("a <mask>").ids
    assert spaced[-2] == mask and len(spaced) == 4  # lstrip took the space: no lone ▁
    duplicate = reference.token_to_id("ab")
    assert reference.encode("日ab").ids[2] == duplicate  # the last "ab", not the first
    assert duplicate != [p for p, _ in json.loads(unigram_json())["model"]["vocab"]].index("ab")


def test_scores_are_read_as_tokenizers_reads_them() -> None:
    rng = random.Random(3)
    scores = [repr(-rng.uniform(0, 20)) for _ in range(2000)] + ["-0.0", "0", "-1e-7", "1.5E+3"]
    vocab = ",".join(f'["p{i}", {s}]' for i, s in enumerate(scores))
    text = unigram_json().replace('"vocab":[', f'"vocab":[{vocab},', 1)
    as_read = [v for p, v in json.loads(Tokenizer.from_str(text).to_str())["model"]["vocab"]
               if p.startswith("p") and p[1:].isdigit()]
    assert [rust_json_float(s) for s in scores] == as_read
    assert any(float(s) != v for s, v in zip(scores, as_read, strict=True))  # Python differs
    with pytest.raises(ValueError):
        rust_json_float("1" * 25)


def test_pad_id_and_suffix() -> None:
    compact = load_tokenizer(unigram_json(), "compact")
    assert (compact.pad_id, compact.suffix) == (1, 1)
    assert compact.encode_batch([""]) == [[0, 2]]


def test_a_full_cache_is_emptied_and_results_stay_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compact_module, "CACHE_BYTES", 2000)  # a few dozen words
    text = unigram_json()
    compact = CompactUnigram(json.loads(text))
    texts = random_texts(200, seed=7)
    first = compact.encode_batch(texts)
    assert 0 < compact._cache_bytes <= 2000 and 0 < len(compact._cache) < 40
    assert compact.encode_batch(texts) == first == [
        e.ids for e in Tokenizer.from_str(text).encode_batch(texts)]


def test_other_tokenizers_use_tokenizers_itself() -> None:
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).to_str()
    assert "WordPiece" in (compact_unsupported(json.loads(wordpiece)) or "")
    assert load_tokenizer(wordpiece, "compact").name == "huggingface"
    fallback = unigram_json(byte_fallback=True)
    assert "byte_fallback" in (compact_unsupported(json.loads(fallback)) or "")
    assert load_tokenizer(fallback, "compact").name == "huggingface"
    assert load_tokenizer(unigram_json(), "huggingface").name == "huggingface"


def test_prepend_scheme_first_falls_back() -> None:
    spec = json.loads(unigram_json())
    spec["pre_tokenizer"]["prepend_scheme"] = "first"
    assert "first" in (compact_unsupported(spec) or "")
    tok = load_tokenizer(json.dumps(spec), "compact")
    assert tok.name == "huggingface"
    assert tok.encode_batch(["a<s>b"]) == [Tokenizer.from_str(json.dumps(spec)).encode("a<s>b").ids]


def test_unsupported_post_processor_falls_back() -> None:
    spec = json.loads(unigram_json())
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                              "use_regex": True}
    assert "TemplateProcessing" in (compact_unsupported(spec) or "")
    spec["post_processor"] = None
    assert compact_unsupported(spec) is None
    assert CompactUnigram(spec).encode("ab") == Tokenizer.from_str(json.dumps(spec)).encode(
        "ab").ids


@pytest.mark.parametrize("limit", [1, 2, 5, 17])
def test_a_limit_keeps_the_first_ids_exact(limit: int) -> None:
    text = unigram_json()
    compact = CompactUnigram(json.loads(text))
    reference = Tokenizer.from_str(text)
    for sample in random_texts(500, seed=limit) + ["ab " * 40, "<s>" * 30, "日本" * 50]:
        full = reference.encode(sample).ids
        short = compact.encode(sample, limit)
        assert short[-1] == 2  # the closing special is still there
        if len(full) <= limit + 1:
            assert short == full
        else:
            assert len(short) >= limit + 1 and short[:limit] == full[:limit], sample
