"""Text to token ids for the runtime: Hugging Face ``tokenizers``, or the compact Unigram.

Two implementations of one interface (:class:`TextTokenizer`): ``CompactUnigram``
(:mod:`pglocalai.service.compact`, the same ids as ``tokenizers`` with ~200 MB less
memory for multilingual-e5-small) for the ``tokenizer.json`` shapes it understands,
and ``HfTokenizer`` (``tokenizers.Tokenizer`` itself) for any other file;
:func:`load_tokenizer` says which, and why.

Both tokenise a *window* of a text at a time (``encode_window``): the runtime cuts a
long text into windows where the tokenisation of the whole is the tokenisation of the
parts one after the other (:mod:`pglocalai.service.reading`), so no text costs more
than a window's work at a time. ``windowed`` says whether this tokenizer's pipeline is
one where such cuts are known to be exact (its normaliser and pre-tokenizer act
locally); the check is by type, then confirmed on sample texts at load.

>>> tok = load_tokenizer(store.read_verified(uri, "tokenizer.json").decode(), "compact")
>>> tok.encode_batch(["Hello World!"])
[[0, 35378, 6661, 38, 2]]
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tokenizers import Tokenizer

from pglocalai.service.compact import (
    CompactUnigram,
    compact_unsupported,
    rust_json_float,
)
from pglocalai.service.logs import get_logger
from pglocalai.service.reading import Cuts, TextTokenizer, windows_agree

__all__ = ["MODES", "CompactUnigram", "HfTokenizer", "TextTokenizer", "compact_unsupported",
           "load_tokenizer", "rust_json_float"]

MODES = ("compact", "huggingface")

# Steps of a tokenizer.json pipeline that act on a character or a short neighbourhood:
# a text cut at a space between two letters is tokenised as its two parts are.
_LOCAL_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase", "StripAccents",
                                "BertNormalizer", "Precompiled", "Replace", "Sequence"})
_LOCAL_PRE_TOKENIZERS = frozenset({"Metaspace", "WhitespaceSplit", "Whitespace",
                                   "BertPreTokenizer", "Punctuation", "Digits", "ByteLevel",
                                   "UnicodeScripts", "Sequence"})


def load_tokenizer(tokenizer_json: str, mode: str = "compact") -> TextTokenizer:
    """The compact tokenizer when ``mode`` asks for it and the file allows it, else HF's."""
    spec: dict[str, Any] = {}
    if mode == "compact":
        try:
            spec = json.loads(tokenizer_json, parse_float=rust_json_float)
        except ValueError:
            spec = {}  # a number outside what rust_json_float reproduces: tokenizers reads it
    tok: TextTokenizer
    if mode == "compact" and spec and compact_unsupported(spec) is None:
        tok = CompactUnigram(spec)
    else:
        tok = HfTokenizer(Tokenizer.from_str(tokenizer_json))
        spec = spec or json.loads(tokenizer_json)
    tok.windowed = False
    reason = not_windowable(spec)
    if reason is None:
        spaces_only = tok.cuts
        tok.cuts = spaces_only.widened()  # newlines too, where they normalise to a space
        tok.windowed = windows_agree(tok)
        if not tok.windowed and tok.cuts.spaces != " ":
            tok.cuts = spaces_only
            tok.windowed = windows_agree(tok)
        reason = None if tok.windowed else "windows disagree with whole texts on samples"
    if reason is not None:
        get_logger().warning("tokenizer_not_windowed", reason=reason,
                             hint="long texts are tokenised in one piece of bounded size")
    return tok


def not_windowable(spec: dict[str, Any]) -> str | None:
    """Why cutting texts at spaces may change this pipeline's ids, or None."""
    for key, allowed in (("normalizer", _LOCAL_NORMALIZERS),
                         ("pre_tokenizer", _LOCAL_PRE_TOKENIZERS)):
        for step in _steps(spec.get(key)):
            kind = step.get("type")
            if kind not in allowed:
                return f"{key} {kind}"
            if kind == "Replace":
                pattern = step.get("pattern") or {}
                text = pattern.get("String", pattern.get("Regex", " "))
                if " " in str(text) and text != " {2,}":
                    return f"a Replace of {text!r}"  # it may act across a space
            if kind == "Metaspace" and (step.get("split") is False
                                        or step.get("prepend_scheme") == "first"):
                return "Metaspace without split, or prepending to the first part only"
    return None


def _steps(step: Any) -> list[dict[str, Any]]:
    if not isinstance(step, dict):
        return []
    inner = step.get("normalizers") or step.get("pretokenizers")
    if step.get("type") == "Sequence" and isinstance(inner, list):
        return [s for sub in inner for s in _steps(sub)]
    return [step]


class HfTokenizer:
    """``tokenizers.Tokenizer`` as loaded from the file; truncation is the engine's."""

    name = "huggingface"
    windowed = False

    def __init__(self, tok: Tokenizer) -> None:
        padding = tok.padding or {}
        self.pad_id = int(padding.get("pad_id", _special_id(tok, ("<pad>", "[PAD]"))))
        # counts must be the full length and truncation keeps the closing token,
        # so the tokenizer never pads or truncates: the caller cuts itself
        tok.no_truncation()
        tok.no_padding()
        self._tok = tok
        probe = tok.encode("a")
        mask, ids = list(probe.special_tokens_mask), list(probe.ids)
        lead = len(mask) - len(_lstrip_ones(mask))
        trail = len(mask) - len(_rstrip_ones(mask))
        self.prefix_ids, self.suffix_ids = ids[:lead], ids[len(ids) - trail:]
        self.suffix = trail
        self.normalize = tok.normalizer.normalize_str if tok.normalizer else None
        self.cuts = Cuts(self.normalize, [t.content for t in
                                          tok.get_added_tokens_decoder().values()])

    def encode_window(self, text: str, stop: int | None = None) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str], limit: int | None = None) -> list[list[int]]:
        if len(texts) == 1:
            return [self._tok.encode(texts[0]).ids]
        return [enc.ids for enc in self._tok.encode_batch(list(texts))]


def _lstrip_ones(mask: list[int]) -> list[int]:
    start = 0
    while start < len(mask) and mask[start] == 1:
        start += 1
    return mask[start:]


def _rstrip_ones(mask: list[int]) -> list[int]:
    end = len(mask)
    while end and mask[end - 1] == 1:
        end -= 1
    return mask[:end]


def _special_id(tok: Any, names: tuple[str, ...]) -> int:
    for name in names:
        found = tok.token_to_id(name)
        if found is not None:
            return int(found)
    return 0
