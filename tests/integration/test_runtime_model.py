"""The runtime with the real multilingual-e5-small:v1 model from the model store."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import E5, MINILM, Runtime, run_threads

from pglocalai.client import Client
from pglocalai.errors import ChecksumMismatch
from pglocalai.models.store import ModelStore

pytestmark = pytest.mark.model

TEXTS = [
    "query: how do I create embeddings inside PostgreSQL?",
    "passage: PostgreSQL ist ein objektrelationales Datenbanksystem.",
    "", " ", "passage: 東京は日本の首都です。", "🧪🚀 emoji only", "e\u0301te\u0301   spaced  out ",
    "<s> literal special tokens </s>", "ไทย ภาษา", "x" * 3000,
    " ".join(["a long passage that goes far over the limit"] * 120),
]


@pytest.fixture(scope="module")
def model_server(model_store: Path) -> Iterator[Runtime]:
    with Runtime(thread=True, model=True, store=model_store, preload=E5, workers=2) as rt:
        yield rt


def alone(rt: Runtime, texts: list[str]) -> np.ndarray:
    """Each text run by itself, straight through the loaded engine."""
    engine = rt.server.models.queues[E5].engine
    return np.concatenate([engine.run(engine.tokenize([t])) for t in texts])


def vectors(dim: int, raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").reshape(-1, dim)


def test_embeddings_are_unit_vectors_in_input_order(model_server: Runtime) -> None:
    with Client(model_server.socket) as c:
        dim, raw = c.embed_raw(E5, TEXTS)
    got = vectors(dim, raw)
    assert got.shape == (len(TEXTS), 384) and np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(got, alone(model_server, TEXTS), atol=1e-5)


def test_token_counts_are_full_counts(model_server: Runtime) -> None:
    with Client(model_server.socket) as c:
        counts = c.token_count(E5, ["", "query: hello", " ".join(["word"] * 700)])
    assert counts[0] == 2  # <s></s>
    assert counts[1] > 2 and counts[2] > 512  # before truncation


def test_concurrent_clients_get_their_own_vectors(model_server: Runtime) -> None:
    requests = {n: [[TEXTS[(n * 3 + i + j) % len(TEXTS)] + f" #{n}.{i}.{j}"
                     for j in range(1 + (n + i) % 4)] for i in range(6)] for n in range(8)}
    got: dict[int, list[np.ndarray]] = {}

    def client(n: int) -> None:
        with Client(model_server.socket) as c:
            got[n] = [vectors(*c.embed_raw(E5, texts)) for texts in requests[n]]

    errors = run_threads(client, 8)
    assert not errors, errors[0]
    for n, texts_list in requests.items():
        for texts, out in zip(texts_list, got[n], strict=True):
            np.testing.assert_allclose(out, alone(model_server, texts), atol=1e-5)


def test_settings_change_rebuilds_sessions_and_keeps_results(model_server: Runtime) -> None:
    with Client(model_server.socket) as c:
        before = vectors(*c.embed_raw(E5, TEXTS[:4]))
        original = c.get_settings()
        try:
            assert c.set_setting("intra_op_parallelism", "1")["intra_op_parallelism"] == 1
            after = vectors(*c.embed_raw(E5, TEXTS[:4]))
        finally:
            c.set_setting("intra_op_parallelism", str(original["intra_op_parallelism"]))
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_corrupted_model_is_refused_and_others_keep_working(model_store: Path,
                                                            tmp_path: Path) -> None:
    store = tmp_path / "models"
    store.mkdir()
    (store / "multilingual-e5-small@v1").symlink_to(model_store / "multilingual-e5-small@v1")
    shutil.copytree(model_store / "all-minilm-l6-v2@v1", store / "all-minilm-l6-v2@v1")
    info = ModelStore(store).get(MINILM)
    graph = store / "all-minilm-l6-v2@v1" / info.variants[info.default_variant]["file"]
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with Runtime(thread=True, model=True, store=store, workers=1) as rt, \
            Client(rt.socket) as c:
        with pytest.raises(ChecksumMismatch) as err:
            c.embed(MINILM, ["hello"])
        assert graph.name in err.value.message + (err.value.detail or "")
        assert len(c.embed(E5, ["query: still works"])[0]) == 384
        models = {m["uri"]: m for m in c.list_models()}
        assert models[E5]["loaded"] and not models[MINILM]["loaded"]
        assert rt.server.models.queues.keys() == {E5}


@pytest.mark.runtime
def test_int8_runtime_process_stays_under_350_mb_at_its_peak_too(model_store: Path) -> None:
    """The memory target of the model issue, on a real ``pglocalai serve`` process.

    Two workers with one thread each share one ONNX Runtime session (the default on
    two CPUs); pinned so that a machine with more CPUs, where each worker gets its own
    session and thus its own copy of the weights, measures the same configuration.
    """
    rt = Runtime(model=True, store=model_store, workers=2, variant="int8", log_format="json")
    rt.state_dir.mkdir()
    (rt.state_dir / "settings.json").write_text(json.dumps(
        {"intra_op_parallelism": 2, "inter_op_parallelism": 1, "spin_control": True}))
    data = Path(__file__).parent.parent / "data" / "multilingual.json"
    passages = [f"passage: {t['text']}" for t in json.loads(data.read_text())["texts"]]
    with rt, Client(rt.socket) as client:
        for _ in range(4):
            client.embed_raw(E5, TEXTS)
            for i in range(0, len(passages), 64):
                client.embed_raw(E5, passages[i : i + 64])
        rss = rt.process().memory_info().rss
        peak = peak_rss(rt.process().pid)
        rt.stop()
        log = rt.log()
    assert '"tokenizer":"compact"' in log
    assert rss < 350e6, f"runtime RSS {rss / 1e6:.0f} MB with the int8 model loaded"
    # issue 15's line, at the peak: loading the model (the graph parsed for the shared
    # weights and for each session) and the passages embedded since
    assert peak < 350 * 2**20, f"runtime peak RSS {peak / 2**20:.0f} MiB"


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def served_by_variant(model_store: Path,
                      variant: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """TEXTS embedded in one call and one by one by a runtime of ``variant``, and its stats."""
    with Runtime(model=True, store=model_store, preload=E5, workers=2, variant=variant) as rt:
        rt.wait_healthy()
        with Client(rt.socket) as c:
            dim, raw = c.embed_raw(E5, TEXTS)
            one_by_one = np.concatenate([vectors(dim, c.embed_raw(E5, [t])[1]) for t in TEXTS])
            stats = c.stats()
    return vectors(dim, raw), one_by_one, stats


@pytest.mark.runtime
def test_the_bf16_variant_serves_when_asked_for(model_store: Path,
                                                model_server: Runtime) -> None:
    """``--variant bf16`` runs OpenVINO: close to int8, batch-invariant, and it says so."""
    got, one_by_one, stats = served_by_variant(model_store, "bf16")
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, one_by_one, atol=1e-5, rtol=0)
    int8 = alone(model_server, TEXTS)
    assert float((got * int8).sum(axis=1).min()) >= 0.99
    model = stats["models"][E5]
    assert model["variant"] == "bf16" and model["engine"].startswith("openvino ")
    assert model["variant_chosen_by"] == "--variant"
    assert stats["engine"]["variant_asked"] == "bf16"


@pytest.mark.runtime
def test_the_int8_smooth_variant_serves_when_asked_for(model_store: Path,
                                                       model_server: Runtime) -> None:
    """``--variant int8-smooth`` runs its own graph on ONNX Runtime: batch-invariant, close
    to int8 but not the same vectors, and the stats say which variant runs."""
    got, one_by_one, stats = served_by_variant(model_store, "int8-smooth")
    np.testing.assert_allclose(got, one_by_one, atol=1e-5, rtol=0)
    int8 = alone(model_server, TEXTS)
    cos = (got * int8).sum(axis=1)
    assert cos.min() >= 0.995 and not np.allclose(got, int8, atol=1e-5)
    model = stats["models"][E5]
    assert model["variant"] == "int8-smooth" and model["engine"].startswith("onnxruntime ")
    assert model["variant_chosen_by"] == "--variant"
