"""A Unigram ``tokenizer.json`` with its pieces in a Python dict instead of a byte trie.

``tokenizers`` keeps a Unigram vocabulary in a byte trie with a hash map per node:
for the 250,002 XLM-RoBERTa pieces of multilingual-e5-small that is ~250 MB of
the runtime's memory, more than the int8 graph. ``CompactUnigram`` keeps the
pieces in one dict (~45 MB) and runs the same Viterbi search as ``tokenizers``'
``Unigram.encode_optimized`` over it, while everything else in the
``tokenizer.json`` pipeline still runs in ``tokenizers`` itself: the normaliser
and the pre-tokenizer are the library's objects, built from the same file. It
yields the same ids as ``Tokenizer.encode`` (tests compare the two on the
multilingual set, the benchmark corpus and random text mixing special tokens,
whitespace, combining marks and unknown characters).
"""

from __future__ import annotations

import json
import re
import sys
from array import array
from typing import Any

from tokenizers import Tokenizer

from pglocalai.service.reading import Cuts

UNK_PENALTY = 10.0  # tokenizers' K_UNK_PENALTY: an unknown character scores min_score - 10
# The word cache is bounded in bytes, not entries: words longer than CACHE_WORD_CHARS are
# never kept (they are rare, and 2,000 words of 20 KB would hold 259 MiB), and the cache
# is emptied once the words and ids it holds reach CACHE_BYTES.
CACHE_BYTES = 8 * 1024 * 1024
CACHE_WORD_CHARS = 64
CONVERGE_EVERY = 256  # characters of a long word between two checks for decided ids
# Rust's char::is_whitespace (Unicode White_Space), which lstrip/rstrip use; Python's
# str.isspace differs on U+001C..U+001F
_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

_NUMBER = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?(?:[eE]([+-]?[0-9]+))?")
_U64_MAX = 2**64 - 1
_POW10 = tuple(float(f"1e{k}") for k in range(309))  # serde_json's table of exact literals


def rust_json_float(text: str) -> float:
    """A JSON number as ``serde_json`` (which ``tokenizers`` uses) reads it, not as Python does.

    serde_json (without its ``float_roundtrip`` feature) computes digits-as-integer
    divided or multiplied by a power of ten, which is off by one unit in the last
    place for about a quarter of the XLM-RoBERTa scores. Viterbi ties between
    segmentations such as ``é|éé`` and ``éé|é`` are decided by those last bits, so
    the compact tokenizer must hold the very same floats. Numbers whose digits do
    not fit in 64 bits (serde_json then drops digits) raise ValueError.
    """
    match = _NUMBER.fullmatch(text)
    if match is None:
        raise ValueError(f"not a JSON number: {text!r}")
    sign, integer, fraction, exp = match.groups()
    fraction = fraction or ""
    significand = int(integer + fraction)
    exponent = int(exp or 0) - len(fraction)
    if significand > _U64_MAX or abs(exponent) > 308:
        raise ValueError(f"number outside the reproduced range: {text!r}")
    value = float(significand)  # round to nearest, as Rust's `u64 as f64`
    value = value * _POW10[exponent] if exponent >= 0 else value / _POW10[-exponent]
    return -value if sign else value


def compact_unsupported(spec: dict[str, Any]) -> str | None:
    """Why ``CompactUnigram`` cannot stand in for this ``tokenizer.json``, or None."""
    model = spec.get("model") or {}
    if model.get("type") != "Unigram":
        return f"model type {model.get('type')} (compact supports Unigram)"
    if model.get("byte_fallback") or model.get("unk_id") is None or not model.get("vocab"):
        return "Unigram with byte_fallback or without unk_id"
    for token in spec.get("added_tokens") or []:
        if token.get("single_word") or token.get("normalized"):
            return f"added token {token.get('content')!r} with single_word or normalized"
    if template_of(spec) is None:
        return "post-processor other than a TemplateProcessing <special> $A <special> form"
    if '"first"' in json.dumps(spec.get("pre_tokenizer")):
        # prepend_scheme "first" looks at where a part sits in the whole text; the
        # compact path pre-tokenizes the parts between added tokens one by one
        return "a pre-tokenizer with prepend_scheme first"
    return None


class CompactUnigram:
    """A Unigram ``tokenizer.json`` with the pieces in a dict instead of a byte trie.

    Steps, as ``tokenizers`` does them: split the raw text on the added tokens
    (longest match first, honouring ``lstrip``/``rstrip``), normalise and
    pre-tokenize each remaining part with the file's own normaliser and
    pre-tokenizer, segment each word by Viterbi, wrap in the template's specials.

    >>> tok = CompactUnigram(json.loads(tokenizer_json))
    >>> tok.encode("Hello World!")
    [0, 35378, 6661, 38, 2]
    """

    name = "compact"
    windowed = False  # load_tokenizer decides

    def __init__(self, spec: dict[str, Any]) -> None:
        model = spec["model"]
        vocab = model["vocab"]
        self.unk_id = int(model["unk_id"])
        # a duplicated piece maps to its last id and that id's score, as in tokenizers
        ids = {str(piece): i for i, (piece, _) in enumerate(vocab)}
        self._ids = ids
        self._scores = array("d", (float(score) for _, score in vocab))
        self._longest = max(map(len, ids))
        self._unk_score = min(self._scores) - UNK_PENALTY
        self._cache: dict[str, array[int]] = {}
        self._cache_bytes = 0
        added = spec.get("added_tokens") or []
        self._split = _added_pattern(added)
        carrier = dict(spec, model={"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0]]},
                       added_tokens=[], post_processor=None, truncation=None, padding=None)
        tok = Tokenizer.from_str(json.dumps(carrier))
        self.normalize = tok.normalizer.normalize_str if tok.normalizer else None
        self._pre_tokenize = tok.pre_tokenizer.pre_tokenize_str if tok.pre_tokenizer else None
        self.cuts = Cuts(self.normalize, [str(t["content"]) for t in added])
        template = template_of(spec)
        assert template is not None  # load_tokenizer checked
        self.prefix_ids, self.suffix_ids = template
        self.suffix = len(self.suffix_ids)
        padding = spec.get("padding") or {}
        self.pad_id = int(padding.get("pad_id", ids.get("<pad>", ids.get("[PAD]", 0))))

    def encode_batch(self, texts: list[str], limit: int | None = None) -> list[list[int]]:
        return [self.encode(text, limit) for text in texts]

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """Ids of one text, specials included; with ``limit``, words after the
        ``limit``-th id are skipped (the closing specials still follow)."""
        stop = None if limit is None else max(0, limit - len(self.prefix_ids))
        return [*self.prefix_ids, *self.encode_window(text, stop), *self.suffix_ids]

    def encode_window(self, text: str, stop: int | None = None) -> list[int]:
        """Ids of ``text`` without the template's specials; with ``stop``, words after
        the ``stop``-th id are skipped.

        Words and added tokens are segmented independently, so skipping what follows
        leaves every earlier id as it is.
        """
        stop = sys.maxsize if stop is None else stop
        out: list[int] = []
        start = 0
        if self._split is not None:
            pattern, group_ids = self._split
            for match in pattern.finditer(text):
                if len(out) >= stop:
                    return out
                self._encode_part(text[start:match.start()], out, stop)
                out.append(group_ids[match.lastgroup or ""])
                start = match.end()
        self._encode_part(text[start:], out, stop)
        return out

    def _encode_part(self, part: str, out: list[int], stop: int) -> None:
        if not part or len(out) >= stop:
            return
        if self.normalize is not None:
            part = self.normalize(part)
        words = [w for w, _ in self._pre_tokenize(part)] if self._pre_tokenize else [part]
        cache = self._cache
        for word in words:
            if len(out) >= stop:
                return
            if len(word) > CONVERGE_EVERY and stop != sys.maxsize:
                out.extend(self._segment(word, stop - len(out)))  # only what is kept
                continue
            ids = cache.get(word)
            if ids is None:
                ids = array("i", self._segment(word))
                if len(word) <= CACHE_WORD_CHARS:
                    size = sys.getsizeof(word) + sys.getsizeof(ids) + 32  # + the dict slot
                    if self._cache_bytes + size > CACHE_BYTES:
                        cache.clear()
                        self._cache_bytes = 0
                    cache[word] = ids
                    self._cache_bytes += size
            out.extend(ids)

    def _segment(self, word: str, need: int | None = None) -> list[int]:
        """Best-scoring pieces; runs of unknown characters fuse into one ``<unk>``.

        Positions are characters here and UTF-8 bytes in tokenizers; pieces are whole
        characters, so both visit the same candidates in the same order (earlier
        start first, and a later candidate wins only with a strictly higher score).

        With ``need``, a long word stops as soon as its first ``need`` ids are known:
        every ``CONVERGE_EVERY`` characters the best paths to the last ``longest``
        positions are traced back; the whole word's best path passes through one of
        them, so where they all meet it is decided (partial traceback). The ids before
        that point are those of the whole word, exactly.
        """
        ids, scores, unk = self._ids, self._scores, self.unk_id
        n = len(word)
        best = [0.0] * (n + 1)
        start = [-1] * (n + 1)
        chosen = [0] * (n + 1)
        for i in range(n):
            base = best[i]
            single = False
            for j in range(i + 1, min(n, i + self._longest) + 1):
                piece = ids.get(word[i:j])
                if piece is None:
                    continue
                score = base + scores[piece]
                if start[j] < 0 or score > best[j]:
                    best[j], start[j], chosen[j] = score, i, piece
                single = single or j == i + 1
            if not single:
                score = base + self._unk_score
                if start[i + 1] < 0 or score > best[i + 1]:
                    best[i + 1], start[i + 1], chosen[i + 1] = score, i, unk
            if need is not None and (i + 1) % CONVERGE_EVERY == 0 and i + 1 < n:
                decided = self._decided(word, i + 1, start, chosen)
                if len(decided) >= need:
                    return decided
        return self._backtrace(word, n, start, chosen)

    def _decided(self, word: str, frontier: int, start: list[int],
                 chosen: list[int]) -> list[int]:
        """The ids every best path to the last ``longest`` positions shares."""
        ends = set(range(max(1, frontier - self._longest + 1), frontier + 1))
        while len(ends) > 1:
            last = max(ends)
            if last < frontier - 4 * CONVERGE_EVERY:
                return []  # not decided nearby (say, a run of one letter): go on reading
            ends.discard(last)
            ends.add(start[last])
        meet = ends.pop()
        if meet <= 0:
            return []
        out = self._backtrace(word, meet, start, chosen)
        if chosen[meet] == self.unk_id:
            out.pop()  # a run of unknown characters may go on past this point
        return out

    def _backtrace(self, word: str, end: int, start: list[int],
                   chosen: list[int]) -> list[int]:
        ids, unk = self._ids, self.unk_id
        out: list[int] = []
        unknown: list[str] = []
        while end > 0:
            begin = start[end]
            if chosen[end] == unk:
                unknown.append(word[begin:end])
            else:
                if unknown:
                    out.append(ids.get("".join(reversed(unknown)), unk))
                    unknown = []
                out.append(ids.get(word[begin:end], unk))
            end = begin
        if unknown:
            out.append(ids.get("".join(reversed(unknown)), unk))
        out.reverse()
        return out


def _added_pattern(added: list[dict[str, Any]]) -> tuple[re.Pattern[str], dict[str, int]] | None:
    """One regex over the added tokens, longest first, and the id behind each group.

    A token with ``lstrip``/``rstrip`` also takes the whitespace next to it, as
    ``tokenizers`` does; its group holds the token itself.
    """
    if not added:
        return None
    alternatives, group_ids = [], {}
    for n, token in enumerate(sorted(added, key=lambda t: len(t["content"]), reverse=True)):
        left = f"[{_WHITESPACE}]*" if token.get("lstrip") else ""
        right = f"[{_WHITESPACE}]*" if token.get("rstrip") else ""
        alternatives.append(f"{left}(?P<t{n}>{re.escape(token['content'])}){right}")
        group_ids[f"t{n}"] = int(token["id"])
    return re.compile("|".join(alternatives)), group_ids


def template_of(spec: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """(ids before, ids after) the text in the single-sequence template, or None."""
    post = spec.get("post_processor")
    if not post:
        return [], []
    if post.get("type") != "TemplateProcessing":
        return None
    before: list[int] = []
    after: list[int] = []
    seen_text = False
    for item in post.get("single", []):
        if "Sequence" in item and item["Sequence"].get("id") == "A" and not seen_text:
            seen_text = True
        elif "SpecialToken" in item:
            ids = (post.get("special_tokens", {}).get(item["SpecialToken"]["id"]) or {})
            ids = ids.get("ids")
            if not ids:
                return None
            (after if seen_text else before).extend(int(i) for i in ids)
        else:
            return None
    return (before, after) if seen_text else None
