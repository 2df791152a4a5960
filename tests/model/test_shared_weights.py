"""Sessions that share weights parse a lean copy of the graph (``engine._session_graph``).

The copy names an external data file that ONNX Runtime must never read, so the vectors
are the proof: they must equal those of a plain session on the store's own graph, and
the copy must be gone once the sessions exist.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from pglocalai.models.convert import URI
from pglocalai.models.onnx_session import cpu_session
from pglocalai.models.store import ModelStore
from pglocalai.service.catalog import StoreCatalog
from pglocalai.service.engine import OnnxEngine, pad

SETTINGS = {"intra_op_parallelism": 2, "inter_op_parallelism": 1, "spin_control": True}
pytestmark = pytest.mark.model


def store_graph_vectors(store: ModelStore, engine: OnnxEngine,
                        batch: list[np.ndarray]) -> np.ndarray:
    """The same batch through a session on the store's graph, nothing shared."""
    with store.open_verified(URI, "model-int8.onnx") as path:
        session = cpu_session(path)
    ids, mask = pad(batch, engine.pad_id)
    return session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]


def test_shared_sessions_give_the_store_graphs_vectors(store: ModelStore, texts: list[str],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    engine = StoreCatalog(store.root).load(URI, "int8", SETTINGS, workers=2)
    assert isinstance(engine, OnnxEngine) and engine.wide_threads == 2  # two sessions
    assert list(tmp_path.iterdir()) == []  # the lean copy is removed once they exist
    batch = [engine.tokenize([t])[0] for t in texts[:24]]
    want = store_graph_vectors(store, engine, batch)
    np.testing.assert_array_equal(engine.run(batch, 0), want)
    # the wide session is built from the same lean copy (test_thread_invariance's bound)
    np.testing.assert_allclose(engine.run(batch, 0, wide=True), want, atol=1e-5, rtol=0)


def test_without_a_temporary_folder_the_sessions_parse_the_store_graph(
        store: ModelStore, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*_args: object, **_kwargs: object) -> None:
        raise PermissionError("no temporary folder here")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", refused)
    engine = StoreCatalog(store.root).load(URI, "int8", SETTINGS, workers=2)
    batch = [engine.tokenize([t])[0] for t in texts[:8]]
    np.testing.assert_array_equal(engine.run(batch, 0), store_graph_vectors(store, engine,
                                                                            batch))
