"""Bounded reading of texts: only what can yield the kept tokens is decoded and tokenised.

A text reaches the runtime as UTF-8 bytes of any size up to the request limit
(``protocol.MAX_TEXT_BYTES``). Its cost must not grow with it, so a text is read in
*windows* of at most ``WINDOW_CHARS`` characters, decoded from its bytes as they are
needed and tokenised one after the other:

* to embed, windows are read until the model's ``max_tokens`` are reached (the rest
  is only checked to be UTF-8), and never beyond ``SCAN_CHARS_PER_TOKEN *
  max_tokens`` characters (32,768 for 512 tokens);
* to count, every window is read, in bounded memory, up to ``MAX_COUNT_CHARS``
  characters; a longer text is refused with ``input_too_large``.

The jobs are generators that yield between windows (:class:`Slicer`), so the thread
that runs them (:mod:`pglocalai.service.slices`) can turn to another request after a
few milliseconds of work whatever the size of this one.

Why a window boundary changes no id. A window ends just before a space U+0020 (or a
newline, tab or U+3000 that the normaliser turns into one) whose two neighbours are
*ordinary*: a letter, digit, punctuation mark or symbol (Unicode L but Lm, N, P, S but
Sk) that is no grapheme Prepend or SpacingMark character and that the tokenizer's own normaliser
maps to a non-empty string that neither starts nor ends with whitespace nor starts
with a combining mark; and no added token with whitespace inside lies across it.
For the pipelines ``windowed`` admits (normalisers acting on a character, a grapheme
or a run of spaces: NFC/NFKC, Precompiled, Lowercase, BertNormalizer, single-character
or ``" {2,}"`` Replace; pre-tokenizers that split at whitespace: Metaspace, Bert,
Whitespace, ByteLevel, ...):

1. no added token spans the cut (only one with whitespace inside could, and none is
   near), and an lstrip/rstrip token takes the same whitespace in a window as in the
   whole text (Metaspace starts every part after a token with its own ``▁``);
2. grapheme clusters and canonical composition stop at the cut: a space composes
   with nothing, a neighbour is no Prepend/Extend/SpacingMark, so each side is
   normalised as it is in the whole text;
3. the space stays a lone space: its neighbours normalise to no whitespace, so no
   run of spaces crosses the cut;
4. the pre-tokenizer splits at that space, and the second window starts with it,
   so Metaspace prepends no extra ``▁`` and ByteLevel adds no prefix space;
5. the model segments each word alone (Unigram, WordPiece, BPE).

Hence ids(A + " " + B) == ids(A) + ids(" " + B), and a text's ids are the ids of
its windows one after the other. ``windows_agree`` checks this for a tokenizer at
load on sample texts, at every such cut. A stretch of ``FORCED_CUT_FACTOR`` windows
(8,192 characters) without such a space (unbroken CJK or Thai text, a giant word, junk)
is cut where it stands: the ids at that seam may differ from a whole-text tokenisation
(a word cut in two), so a token count may be off by a token or two per seam. To embed,
that matters only when the kept tokens need more than 8,192 characters of such text,
i.e. never for 512 tokens of CJK text (about 1,000 characters). The compact tokenizer
also stops inside a long word once its kept ids are decided (``CompactUnigram._segment``).
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import numpy as np

from pglocalai.errors import BadRequest, InferenceFailed, InputTooLarge, PglocalaiError

WINDOW_CHARS = 2048  # characters tokenised in one go: a few ms of work
FORCED_CUT_FACTOR = 4  # how far past a window a cut at a space is looked for
SCAN_CHARS_PER_TOKEN = 64  # natural text needs 2-10 characters per token
MAX_COUNT_CHARS = 1 << 20  # token_count reads at most this many characters of a text
_VALIDATE_BYTES = 1 << 20  # bytes of an unread tail checked as UTF-8 in one go
# Letters, digits, punctuation and symbols: never grapheme Extend (Mn, Me, Lm such as
# U+FF9E, Sk emoji modifiers) nor Prepend/SpacingMark but for the letters listed below
_ORDINARY = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Pc", "Pd", "Ps", "Pe", "Pi",
                       "Pf", "Po", "Sm", "Sc", "So"})
_OTHER_SPACES = "\t\n\r\x0b\x0c\u3000"  # whitespace a normaliser may map to U+0020
# Letters with grapheme property Prepend (they join the next character) or
# SpacingMark (they join the previous one), Unicode 15.1
_NOT_ORDINARY = frozenset(
    "\u0d4e\u0e33\u0eb3\U000111c2\U000111c3\U0001193f\U00011941\U00011a3a\U00011d46\U00011f02"
    + "".join(chr(c) for c in range(0x11A84, 0x11A8A)))

Text = str | bytes | bytearray | memoryview


class Cuts:
    """Where a tokenizer's texts may be cut (see the module docstring).

    ``spaces``: the characters a cut may be made before, U+0020 and, where the
    normaliser maps them to it, other whitespace (a newline, a tab, U+3000).
    """

    def __init__(self, normalize: Callable[[str], str] | None,
                 added_tokens: Iterable[str] = (), spaces: str = " ") -> None:
        self._normalize = normalize
        # an added token with whitespace inside could span a cut; others cannot, and
        # lstrip/rstrip take whitespace next to a token the same way in both windows
        self._spaced = tuple(t for t in added_tokens if any(c.isspace() for c in t))
        self._reach = max(map(len, self._spaced), default=0)
        self.spaces = spaces
        self._find = re.compile(f"[{re.escape(spaces)}]")
        self._known: dict[str, bool] = {}

    def widened(self) -> Cuts:
        """The same rule, cutting before any whitespace the normaliser makes a space."""
        norm = self._normalize
        extra = "".join(c for c in _OTHER_SPACES if norm is not None and norm(c) == " ")
        return Cuts(norm, self._spaced, " " + extra)

    def ordinary(self, char: str) -> bool:
        known = self._known.get(char)
        if known is None:
            known = self._known[char] = self._check(char)
            if len(self._known) > 65536:  # bounded: the cache of a long CJK/emoji mix
                self._known.clear()
        return known

    def _check(self, char: str) -> bool:
        if unicodedata.category(char) not in _ORDINARY or char in _NOT_ORDINARY:
            return False
        norm = self._normalize(char) if self._normalize is not None else char
        return (bool(norm) and not norm[0].isspace() and not norm[-1].isspace()
                and unicodedata.category(norm[0])[0] != "M")

    def at(self, text: str, p: int) -> bool:
        """Whether ``text`` may be cut before ``p`` (0 < p < len(text) - 1)."""
        if text[p] not in self.spaces or not (self.ordinary(text[p - 1])
                                              and self.ordinary(text[p + 1])):
            return False
        if self._spaced:
            near = text[max(0, p - self._reach + 1) : p + self._reach]
            return not any(token in near for token in self._spaced)
        return True

    def last(self, text: str, end: int) -> int | None:
        """The last cut in [1, end), or None; needs len(text) > end."""
        found = None
        for match in self._find.finditer(text, 1, end):
            if self.at(text, match.start()):
                found = match.start()
        return found

    def first(self, text: str, start: int, end: int) -> int | None:
        """The first cut in [start, end), or None; needs len(text) > end."""
        for match in self._find.finditer(text, max(1, start), end):
            if self.at(text, match.start()):
                return match.start()
        return None


class Slicer:
    """Says when a job has worked long enough to hand the thread to the next one."""

    def __init__(self, chars: int = WINDOW_CHARS) -> None:
        self.chars = chars
        self.spent = 0

    def due(self, chars: int) -> bool:
        self.spent += chars
        if self.spent >= self.chars:
            self.spent = 0
            return True
        return False


class _Source:
    """A text's characters, decoded from its UTF-8 bytes only as they are asked for."""

    def __init__(self, text: Text) -> None:
        self._text = text if isinstance(text, str) else None
        self._raw = memoryview(text) if self._text is None else memoryview(b"")  # type: ignore[arg-type]
        self._size = len(self._text) if self._text is not None else len(self._raw)
        self._pos = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    @property
    def done(self) -> bool:
        return self._pos >= self._size

    def read(self, n: int) -> str:
        """About ``n`` characters more (``n`` bytes decoded: n/4 to n characters)."""
        end = min(self._size, self._pos + n)
        start, self._pos = self._pos, end
        if self._text is not None:
            return self._text[start:end]
        return self._decoder.decode(self._raw[start:end], final=end >= self._size)


def _windows(cuts: Cuts, src: _Source, size: int, max_chars: int | None) -> Iterator[str]:
    """The text in windows of about ``size`` characters, cut where ids do not change.

    Without such a cut in the first ``size`` characters, the first one within
    ``FORCED_CUT_FACTOR * size`` is taken; only a stretch longer than that without one
    is cut where it stands.
    """
    buf = ""
    given = 0
    while True:
        cut, end = None, size
        while True:
            while len(buf) <= end and not src.done:
                buf += src.read(end)
            last = src.done
            if max_chars is not None and given + len(buf) >= max_chars:
                buf, last = buf[: max_chars - given], True  # read as if the text ended here
            if last and len(buf) <= end:
                if buf:
                    yield buf
                return
            cut = cuts.last(buf, end) if end == size else cuts.first(buf, size, end)
            if cut is not None or end > size:
                break
            end = FORCED_CUT_FACTOR * size
        if cut is None:
            cut = end
            while cut > size and unicodedata.category(buf[cut])[0] == "M":
                cut -= 1  # at least keep a letter and its marks together
        given += cut
        yield buf[:cut]
        buf = buf[cut:]


def embed_ids(tok: TextTokenizer, text: Text, max_tokens: int,
              slicer: Slicer) -> Generator[None, None, list[int]]:
    """The ids a model keeps of ``text``: its first ``max_tokens`` with the specials."""
    budget = max(0, max_tokens - len(tok.prefix_ids) - len(tok.suffix_ids))
    src = _Source(text)
    scan = SCAN_CHARS_PER_TOKEN * max_tokens
    size = WINDOW_CHARS if tok.windowed else scan
    ids: list[int] = []
    for window in _windows(tok.cuts, src, size, scan):
        ids += tok.encode_window(window, budget - len(ids))
        if len(ids) >= budget:
            break
        if slicer.due(len(window)):
            yield
    while not src.done:  # the rest is never tokenised, but it must be UTF-8 all the same
        src.read(_VALIDATE_BYTES)
        yield
    return [*tok.prefix_ids, *ids[:budget], *tok.suffix_ids]


def count_ids(tok: TextTokenizer, text: Text, slicer: Slicer) -> Generator[None, None, int]:
    """The full token count of ``text``, specials included, in bounded memory."""
    if len(text) > 4 * MAX_COUNT_CHARS:  # bytes: more than the limit even at 4 per character
        raise _too_long_to_count()
    src = _Source(text)
    count = chars = 0
    for window in _windows(tok.cuts, src, WINDOW_CHARS if tok.windowed else MAX_COUNT_CHARS,
                           MAX_COUNT_CHARS + 1):
        chars += len(window)
        if chars > MAX_COUNT_CHARS:
            raise _too_long_to_count()
        count += len(tok.encode_window(window))
        if slicer.due(len(window)):
            yield
    return count + len(tok.prefix_ids) + len(tok.suffix_ids)


def embed_job(tok: TextTokenizer, texts: Sequence[Text],
              max_tokens: int) -> Generator[None, None, list[np.ndarray]]:
    """int64 ids per text, as the model keeps them (a job for ``slices.SliceRunner``)."""
    slicer = Slicer()
    out = []
    for index, text in enumerate(texts):
        with _text_errors(index):
            ids = yield from embed_ids(tok, text, max_tokens, slicer)
        out.append(np.array(ids, dtype=np.int64))
    return out


def count_job(tok: TextTokenizer, texts: Sequence[Text]) -> Generator[None, None, list[int]]:
    """Full token counts per text (a job for ``slices.SliceRunner``)."""
    slicer = Slicer()
    out = []
    for index, text in enumerate(texts):
        with _text_errors(index):
            out.append((yield from count_ids(tok, text, slicer)))
    return out


def run_now(job: Generator[None, None, object]) -> object:
    """Run a job to its end in this thread (small requests, tests)."""
    while True:
        try:
            next(job)
        except StopIteration as stop:
            return stop.value


@contextmanager
def _text_errors(index: int) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as exc:
        raise BadRequest(f"input text {index + 1} is not valid UTF-8", detail=str(exc)) \
            from None
    except PglocalaiError as exc:
        if exc.detail is None:
            exc.detail = f"input text {index + 1}"
        raise
    except Exception as exc:  # noqa: BLE001 - the tokenizer's own exception types
        raise InferenceFailed(f"input text {index + 1} could not be tokenized",
                              detail=f"{type(exc).__name__}: {exc}") from None


def _too_long_to_count() -> InputTooLarge:
    return InputTooLarge(f"text too long to count its tokens: more than {MAX_COUNT_CHARS} "
                         "characters", hint="count a part of it, e.g. left(input, 1000000)")


# Texts whose cuts exercise scripts, marks, digits, punctuation and added tokens.
_SAMPLES = (
    "第一段落の文章です。\n第二段落が続きます、ここで。\n\n第三段落。\r\n最後。\t終わり「引用」\u3000次",
    "Ende.\nNeuer Absatz: 42%\tTabs, (Klammern) [eckig] {geschweift} \"q\" ¿que? ¡si! €5 §3 © ±1",
    "emoji 🧪 🚀 👍🏻 ok 🇫🇷 🇩🇪 flags \u200d joiner a\u0301 b \u00b4 c \ufe70 d \u037a e",
    "The quick brown fox jumps over the lazy dog 42 times, doesn't it? Yes: 3.14 e.g. x-y z",
    "Ça coûte 12 € à Paris ; Straße Maß Öl ärger naïve café résumé e\u0301te\u0301 ﬁn ﬀ",
    "Москва столица России а Київ столиця України Αθήνα πρωτεύουσα της Ελλάδας 123 456",
    "مرحبا بكم في القاهرة ١٢٣ שלום עולם ירושלים नमस्ते दुनिया हिंदी भाषा বাংলা ভাষা",
    "日本語 の テキスト 東京 大阪 中文 文本 北京 한국어 텍스트 서울 ไทย ภาษา กรุงเทพ",
    "emoji 🧪 test 🚀 a\u200db ㈱ ① Ⅻ ¼ x² ＡＢＣ full width ｱｲｳ half width ０１２",
    "tabs\tand\nnew lines\r\n  and   runs    of spaces a\u3000b\u00a0c end",
    "<s> a <mask> b </s> c<unk>d <pad> e [CLS] f [SEP] g [MASK] h",
)


def windows_agree(tok: TextTokenizer) -> bool:
    """Whether cutting at every admissible space of the samples keeps this tokenizer's ids."""
    for sample in _SAMPLES:
        whole = tok.encode_window(sample)
        for p in range(1, len(sample) - 1):
            if (sample[p] == " " and tok.cuts.at(sample, p)
                    and tok.encode_window(sample[:p]) + tok.encode_window(sample[p:]) != whole):
                return False
    return True


# What reading needs of a tokenizer; pglocalai.service.tokenizer provides both implementations.
class TextTokenizer(Protocol):
    name: str  # "compact" or "huggingface": which implementation runs
    pad_id: int
    prefix_ids: list[int]  # the template's specials before the text
    suffix_ids: list[int]  # and after it; both are kept when a text is cut
    suffix: int  # len(suffix_ids)
    normalize: Callable[[str], str] | None  # the file's normaliser
    windowed: bool  # cutting texts into windows is exact for this pipeline
    cuts: Cuts  # where a text may be cut

    def encode_window(self, text: str, stop: int | None = None) -> list[int]:
        """Ids of ``text`` without the template's specials, never padded.

        With ``stop``, it may stop early once it has at least ``stop`` ids: its first
        ``stop`` ids are those of the full encoding.
        """
        ...

    def encode_batch(self, texts: list[str], limit: int | None = None) -> list[list[int]]:
        """Ids per text with the specials (``limit``: as ``encode_window``'s ``stop``)."""
        ...
