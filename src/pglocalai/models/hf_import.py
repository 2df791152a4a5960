"""Install a model from a local folder in Hugging Face layout.

A deployment that has the official files (no model hub is needed here) installs them
into the same store as the converted pack. The folder holds ``config.json``
(a BERT encoder), ``tokenizer.json`` and the weights, either:

* ``model.safetensors``: our own graphs are built from them (fp32 and int8, pooling
  and normalisation inside the graph), exactly as for the converted pack; or
* an ONNX export (``model.onnx`` or ``onnx/model.onnx``) whose output is
  ``last_hidden_state``: copied as the fp32 variant, pooled by the engine.

Pooling comes from ``1_Pooling/config.json`` (mean or cls), normalisation from a
``Normalize`` module in ``modules.json`` (sentence-transformers layout).

Example::

    import_hf_folder(ModelStore(), "/srv/models/multilingual-e5-small",
                     "multilingual-e5-small:v1", force=True)
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pglocalai.errors import ModelFormatError, ModelStoreError
from pglocalai.models.convert import CONVERTER_VERSION
from pglocalai.models.onnx_session import cpu_session
from pglocalai.models.store import ModelInfo, ModelStore, validate_uri

Progress = Callable[[str], object]
ONNX_CANDIDATES = ("model.onnx", "onnx/model.onnx")
LICENSES = {"apache-2.0": "Apache-2.0", "mit": "MIT", "bsd-3-clause": "BSD-3-Clause",
            "cc-by-4.0": "CC-BY-4.0", "cc-by-sa-4.0": "CC-BY-SA-4.0"}
_ACTS = {"gelu": "gelu", "relu": "relu"}


def import_hf_folder(store: ModelStore, folder: str | Path, uri: str,
                     variants: Sequence[str] = ("fp32", "int8"), progress: Progress = print,
                     *, force: bool = False, weights: str = "auto",
                     source: str | None = None) -> ModelInfo:
    """Install the model in ``folder`` as ``uri``; ``weights`` is auto, safetensors or onnx."""
    validate_uri(uri)
    if not force and uri in store.uris():
        raise ModelStoreError(f'model "{uri}" is already installed',
                              hint="pass --force to replace it")
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFormatError(f"{folder} is not a folder")
    config = _json(folder / "config.json")
    if not (folder / "tokenizer.json").is_file():
        raise ModelFormatError(f"{folder.name} has no tokenizer.json",
                               hint="the tokenizer must be in Hugging Face tokenizers format")
    pooling, normalize = read_pooling(folder)
    max_tokens = read_max_tokens(folder, config)
    dims = int(config.get("hidden_size", 0))
    st = folder / "model.safetensors"
    onnx_file = next((folder / c for c in ONNX_CANDIDATES if (folder / c).is_file()), None)
    if weights == "auto":
        weights = "safetensors" if st.is_file() else "onnx" if onnx_file else "none"
    if weights == "safetensors" and not st.is_file() or weights == "onnx" and onnx_file is None \
            or weights not in ("safetensors", "onnx"):
        raise ModelFormatError(f"no usable weights in {folder.name}",
                               detail=f"looked for model.safetensors, {', '.join(ONNX_CANDIDATES)}")
    md: dict[str, Any] = {
        "format": 1, "uri": uri,
        "source": source or describe_source(folder, st if weights == "safetensors" else onnx_file),
        "license": read_license(folder, config), "dimensions": dims, "max_tokens": max_tokens,
        "pooling": pooling, "normalize": normalize, "tokenizer": "tokenizer.json",
    }
    if weights == "safetensors":
        # our graph builder made the graphs: record its version so stale installs get rebuilt
        md["converter_version"] = CONVERTER_VERSION
    with store.staging() as staging:
        changes = write_tokenizer(folder / "tokenizer.json", staging / "tokenizer.json",
                                  max_tokens)
        if changes:
            md["tokenizer_changes"] = changes
        if weights == "safetensors":
            md["variants"] = _build_from_safetensors(st, config, variants, pooling, normalize,
                                                     staging, progress)
        else:
            assert onnx_file is not None
            md["variants"] = _copy_onnx(onnx_file, dims, variants, staging, progress)
        md["default_variant"] = "int8" if "int8" in md["variants"] else "fp32"
        (staging / "metadata.json").write_text(json.dumps(md, indent=2) + "\n")
        progress(f"installing {uri} into {store.root}")
        return store.install(staging, force=force)


def bert_config(config: dict[str, Any]) -> Any:
    """The BertConfig of a Hugging Face BertModel ``config.json``; refuses other encoders."""
    from pglocalai.models.bert_weights import BertConfig  # noqa: PLC0415

    if config.get("model_type") != "bert":
        raise ModelFormatError(
            f"cannot build a graph for model_type {config.get('model_type')!r}, only bert",
            hint="export the model to ONNX (output last_hidden_state) and import that folder")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ModelFormatError("only absolute position embeddings are supported")
    act = _ACTS.get(str(config.get("hidden_act")))
    if act is None:
        raise ModelFormatError(f"unsupported activation {config.get('hidden_act')!r}",
                               hint="gelu (erf) and relu are supported")
    try:
        return BertConfig(vocab=int(config["vocab_size"]), hidden=int(config["hidden_size"]),
                          layers=int(config["num_hidden_layers"]),
                          heads=int(config["num_attention_heads"]),
                          ffn=int(config["intermediate_size"]),
                          max_positions=int(config["max_position_embeddings"]),
                          type_vocab=int(config.get("type_vocab_size", 2)),
                          eps=float(config.get("layer_norm_eps", 1e-12)), act=act)
    except KeyError as exc:
        raise ModelFormatError(f"config.json lacks {exc.args[0]}") from None


def read_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) from the sentence-transformers files; mean, False without them."""
    pooling = "mean"
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = _json(pool_cfg)
        modes = [k.removeprefix("pooling_mode_").removesuffix("_tokens").removesuffix("_token")
                 for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
        if modes not in (["mean"], ["cls"]):
            raise ModelFormatError(f"unsupported pooling {'+'.join(modes) or 'none'}",
                                   hint="mean or cls pooling is supported")
        pooling = modes[0]
    normalize = False
    modules = folder / "modules.json"
    if modules.is_file():
        mods = json.loads(modules.read_text())
        normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in mods)
    return pooling, normalize


def read_max_tokens(folder: Path, config: dict[str, Any]) -> int:
    """What sentence-transformers would truncate to, never above the position table."""
    limit = int(config.get("max_position_embeddings", 512))
    st_cfg = folder / "sentence_bert_config.json"
    candidates: list[Any] = []
    if st_cfg.is_file():
        candidates.append(_json(st_cfg).get("max_seq_length"))
    tok = json.loads((folder / "tokenizer.json").read_text())
    candidates.append((tok.get("truncation") or {}).get("max_length"))
    tok_cfg = folder / "tokenizer_config.json"
    if tok_cfg.is_file():
        candidates.append(_json(tok_cfg).get("model_max_length"))
    for value in candidates:
        if isinstance(value, int) and 0 < value < 1_000_000:
            return min(value, limit)
    return limit


def read_license(folder: Path, config: dict[str, Any]) -> str:
    """The SPDX-style licence from the model card front matter or config.json, else unknown."""
    readme = folder / "README.md"
    if readme.is_file():
        m = re.search(r"^license:\s*([\w.+-]+)\s*$", readme.read_text(errors="replace"), re.M)
        if m:
            return LICENSES.get(m.group(1).lower(), m.group(1))
    value = config.get("license")
    return str(value) if value else "unknown"


def describe_source(folder: Path, weights: Path | None) -> str:
    """Folder name, model card title and weights file: no absolute path."""
    title = ""
    readme = folder / "README.md"
    if readme.is_file():
        m = re.search(r"^#\s+(.+?)\s*$", readme.read_text(errors="replace"), re.M)
        title = f" ({m.group(1)})" if m else ""
    rel = weights.relative_to(folder).as_posix() if weights else "?"
    return f"Hugging Face folder {folder.name}{title}, weights {rel}"


def write_tokenizer(src: Path, dst: Path, max_tokens: int) -> str | None:
    """Copy tokenizer.json, setting truncation to max_tokens and no padding; say what changed."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    raw = src.read_text(encoding="utf-8")
    tok = json.loads(raw)
    want = {"direction": "Right", "max_length": max_tokens, "strategy": "LongestFirst",
            "stride": 0}
    trunc = tok.get("truncation") or {}
    changes = []
    if trunc.get("max_length") != max_tokens or trunc.get("strategy") != "LongestFirst" \
            or trunc.get("direction", "Right") != "Right":
        changes.append(f"truncation {trunc.get('max_length')} -> {max_tokens}")
    if tok.get("padding") is not None:
        changes.append("fixed padding removed (the engine pads each batch)")
    if changes:
        tok["truncation"], tok["padding"] = want, None
        raw = json.dumps(tok, ensure_ascii=False)
    try:
        Tokenizer.from_str(raw)
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise ModelFormatError(f"{src.name} is not a valid tokenizer", detail=str(exc)) from exc
    dst.write_text(raw, encoding="utf-8")
    return "; ".join(changes) or None


def _build_from_safetensors(path: Path, config: dict[str, Any], variants: Sequence[str],
                            pooling: str, normalize: bool, staging: Path,
                            progress: Progress) -> dict[str, dict[str, Any]]:
    import onnx  # noqa: PLC0415

    from pglocalai.models.bert_onnx import build_bert_onnx  # noqa: PLC0415
    from pglocalai.models.safetensors_io import read_safetensors  # noqa: PLC0415

    cfg = bert_config(config)
    if (pooling, normalize) != ("mean", True):
        raise ModelFormatError(
            f"graphs are built with mean pooling and normalisation, this model uses "
            f"{pooling} pooling{' with' if normalize else ' without'} normalisation",
            hint="export the model to ONNX (output last_hidden_state) and import that")
    progress(f"reading {path.name}")
    weights = read_safetensors(path)
    out: dict[str, dict[str, Any]] = {}
    for variant in variants:
        progress(f"building the {variant} graph")
        model = build_bert_onnx(weights, cfg, variant)
        name = f"model-{variant}.onnx"
        onnx.save_model(model, str(staging / name))
        _smoke_test(staging / name, cfg.hidden, "sentence_embedding")
        out[variant] = {
            "file": name, "inputs": ["input_ids", "attention_mask"],
            "output": "sentence_embedding",
            "description": ("fp32 graph of the safetensors weights, exact" if variant == "fp32"
                            else "int8 weights per output channel, per-token activation scales"),
        }
    return out


def _copy_onnx(path: Path, dims: int, variants: Sequence[str], staging: Path,
               progress: Progress) -> dict[str, dict[str, Any]]:
    import onnx  # noqa: PLC0415
    from onnx.external_data_helper import uses_external_data  # noqa: PLC0415

    if "fp32" not in variants:
        raise ModelFormatError("an ONNX export can only be installed as the fp32 variant")
    if any(v != "fp32" for v in variants):
        progress("note: only the fp32 variant is installed from an ONNX export")
    model = onnx.load_model(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise ModelFormatError(f"{path.name} keeps its weights in external data files",
                               hint="save the model as one .onnx file (under 2 GB)")
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if not {"input_ids", "attention_mask"} <= set(inputs) or \
            not set(inputs) <= {"input_ids", "attention_mask", "token_type_ids"}:
        raise ModelFormatError(f"unexpected inputs {inputs} in {path.name}",
                               detail="expected input_ids, attention_mask [, token_type_ids]")
    if "last_hidden_state" not in outputs:
        raise ModelFormatError(f"{path.name} has no last_hidden_state output",
                               detail=f"its outputs are {', '.join(outputs)}")
    progress(f"copying {path.name}")
    shutil.copyfile(path, staging / "model-fp32.onnx")
    _smoke_test(staging / "model-fp32.onnx", dims, "last_hidden_state")
    return {"fp32": {"file": "model-fp32.onnx", "inputs": inputs, "output": "last_hidden_state",
                     "description": f"the folder's own ONNX export ({path.name}), pooled by "
                                    "the engine"}}


def _smoke_test(path: Path, dims: int, output: str) -> None:
    """Run the graph on a short batch: a broken build fails here, not in the runtime."""
    sess = cpu_session(str(path))
    feeds = {"input_ids": np.array([[1, 5, 2], [1, 2, 0]], np.int64),
             "attention_mask": np.array([[1, 1, 1], [1, 1, 0]], np.int64)}
    if "token_type_ids" in {i.name for i in sess.get_inputs()}:
        feeds["token_type_ids"] = np.zeros((2, 3), np.int64)
    (out,) = sess.run([output], feeds)
    if out.shape[0] != 2 or out.shape[-1] != dims or not np.all(np.isfinite(out)):
        raise ModelFormatError(f"{path.name} produced {out.shape} output, expected {dims} dims")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{path.parent.name}/{path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read {path.name}", detail=str(exc)) from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path.name} is not a JSON object")
    return data
