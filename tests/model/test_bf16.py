"""The bf16 variant (OpenVINO at bf16 on the fp32 encoder): true to fp32, invariant, finite.

It runs only when asked for (``--variant bf16``), but what it promises is the same as
the default's: a text's vector alone equals the same text in any batch and on any
thread count, whatever its length; and it must be truer than int8.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from pglocalai.errors import ModelFormatError
from pglocalai.models.bert_weights import word_embedding_table
from pglocalai.models.convert import URI
from pglocalai.models.store import ModelStore
from pglocalai.models.word_table import WordTable
from pglocalai.service import openvino_engine
from pglocalai.service.catalog import StoreCatalog
from pglocalai.service.openvino_engine import OpenVinoEngine

pytestmark = pytest.mark.model
VOCAB = 250002  # the tokenizer's pieces (the table has 35 rows more)
SETTINGS = {"intra_op_parallelism": 2, "inter_op_parallelism": 1, "spin_control": True}


@pytest.fixture(scope="module")
def engine(store: ModelStore) -> Iterator[OpenVinoEngine]:
    loaded = StoreCatalog(store.root).load(URI, "bf16", SETTINGS, workers=2)
    assert isinstance(loaded, OpenVinoEngine) and loaded.chosen_by == "--variant"
    yield loaded


def test_bf16_is_truer_than_int8(engine: OpenVinoEngine, texts: list[str],
                                 fp32_vectors: np.ndarray) -> None:
    ids = engine.tokenize(texts)
    got = np.concatenate([engine.run(ids[i:i + 16]) for i in range(0, len(ids), 16)])
    cos = (got * fp32_vectors).sum(axis=1)
    assert np.isfinite(got).all()
    assert cos.mean() >= 0.9999 and cos.min() >= 0.9995, (cos.mean(), cos.min())


def test_a_text_alone_equals_it_in_any_batch_at_any_length(engine: OpenVinoEngine,
                                                          texts: list[str]) -> None:
    lengths = sorted({int(x) for x in np.geomspace(1, 512, 24)} | {16, 17, 255, 512})
    batch = [*engine.tokenize(texts[:24]), *openvino_engine.random_texts(lengths, VOCAB, 3)]
    alone = np.concatenate([engine.run([ids]) for ids in batch])
    assert np.isfinite(alone).all()
    rng = np.random.default_rng(5)
    for size in (3, 16, len(batch)):
        order = rng.permutation(len(batch))
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            got = engine.run([batch[i] for i in rows])
            worst = float(np.abs(got - alone[rows]).max())
            assert worst <= 1e-5, f"batch of {size}: {worst:.2e}"


def test_the_thread_count_does_not_change_vectors(engine: OpenVinoEngine,
                                                 texts: list[str]) -> None:
    batch = [*engine.tokenize(texts[:16]), *openvino_engine.random_texts([17, 64, 300], VOCAB, 9)]
    before = engine.run(batch)
    try:
        engine.configure({**SETTINGS, "intra_op_parallelism": 1}, workers=2)
        one = engine.run(batch)
    finally:
        engine.configure(SETTINGS, workers=2)
    assert np.array_equal(before, one)


def test_the_word_table_widens_exactly(pack_weights: tuple[dict[str, np.ndarray], object],
                                       store: ModelStore) -> None:
    table = WordTable(store.read_verified(URI, "word-embeddings-q4.npz"))
    dense = word_embedding_table(pack_weights[0])
    ids = np.array([[0, 2, 6, 35377, 250001], [1, 3, 100, 200000, 250036]])
    assert np.array_equal(table.rows(ids), dense[ids])


def test_the_self_check_refuses_an_engine_that_is_not_invariant(
        engine: OpenVinoEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    openvino_engine.self_check(engine)  # the real one passes
    real = engine.run

    def drifting(batch: list[np.ndarray], worker: int = 0, wide: bool = False) -> np.ndarray:
        return real(batch) + (1e-4 if len(batch) > 1 else 0.0)  # as padding once did

    monkeypatch.setattr(engine, "run", drifting)
    with pytest.raises(ModelFormatError, match="not batch-invariant"):
        openvino_engine.self_check(engine)
