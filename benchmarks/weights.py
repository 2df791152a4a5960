"""Why a run over a few texts costs more per text (issue 15): the weights stream from memory.

Every model run reads all of the encoder's int8 weights, ~20 MB for multilingual-e5-small,
however few tokens it holds. Three measurements, one thread, in one process:

* read bandwidth by working-set size (a numpy sum): where the caches end and what one core
  gets from memory beyond them;
* the model's 72 integer matmuls alone (its shapes, ``MatMulIntegerToFloat`` as in the
  store's graph) on the rows of 1, 2, 4 and 16 short texts, two ways taking turns: twelve
  layers of weights (the model: ~20 MB per run) and one layer's weights run twelve times
  (the same work on 1.8 MB that stays in cache). The gap is the cost of streaming weights;
* the store's whole int8 graph on the same texts: the per-text cost a runtime batch pays.

    .venv/bin/python -m benchmarks.weights    # writes docs/benchmarks/weights.{json,md,png}
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine
from benchmarks.common import OUT_DIR, in_turn, model_dir, say, write_page
from benchmarks.machine import E5_SMALL
from pglocalai.models.onnx_session import session_options

TOKENS = 25  # a short passage, the benchmark corpus's typical length
TEXTS = (1, 2, 4, 16)
SIZES_MB = (1, 4, 8, 16, 24, 32, 64, 256)
ROUNDS = 3
# the three ways timed (keys of ``ways`` in the results; benchmarks.report reads them)
MODEL = "matmuls, model weights"
CACHED = "matmuls, one layer's weights x12"
WHOLE = "whole int8 graph"


def _session(model: Any) -> Any:
    import onnxruntime as ort  # noqa: PLC0415

    opts = session_options(threads=1)  # as the runtime: exact int8 on every CPU
    opts.log_severity_level = 3
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def linear_shapes(hidden: int, heads: int, ffn: int, **_: int) -> list[tuple[int, int]]:
    """(in, out) of one layer's Linears as the store's int8 graph has them: query and key
    carry one extra output per head (the padding mask, see pglocalai.models.bert_onnx)."""
    qk = hidden + heads
    return [(hidden, qk), (hidden, qk), (hidden, hidden), (hidden, hidden), (hidden, ffn),
            (ffn, hidden)]


def matmul_graph(layers: int) -> Any:
    """``layers`` layers of the model's integer matmuls, each on the activations fed in."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(0)
    nodes, inits, outs = [], [], []
    for layer in range(layers):
        for j, (k, n) in enumerate(linear_shapes(**E5_SMALL)):
            name = f"{layer}_{j}"
            inits += [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8),
                                              "w" + name),
                      numpy_helper.from_array(np.full(n, 1e-3, np.float32), "s" + name)]
            nodes.append(helper.make_node("MatMulIntegerToFloat", [
                f"x{k}", "w" + name, "one", "s" + name, "zp"], ["y" + name],
                domain="com.microsoft"))
            outs.append(helper.make_tensor_value_info("y" + name, TensorProto.FLOAT, None))
    inits += [numpy_helper.from_array(np.array(1, np.float32), "one"),
              numpy_helper.from_array(np.array(128, np.uint8), "zp")]
    ins = [helper.make_tensor_value_info(f"x{k}", TensorProto.UINT8, ["rows", k])
           for k in sorted({k for k, _ in linear_shapes(**E5_SMALL)})]
    graph = helper.make_graph(nodes, "linears", ins, outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("com.microsoft", 1)])


def weight_bytes() -> int:
    return E5_SMALL["layers"] * sum(k * n for k, n in linear_shapes(**E5_SMALL))


def bandwidth(sizes_mb: tuple[int, ...] = SIZES_MB) -> list[dict[str, float]]:
    """GB/s of one core summing a float64 array of each size (best of 5 batches)."""
    out = []
    for mb in sizes_mb:
        a = np.ones(mb * 2**20 // 8)
        a.sum()
        reps = max(3, 1000 // mb)
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                a.sum()
            best = min(best, (time.perf_counter() - t0) / reps)
        out.append({"mb": mb, "gb_per_s": mb / 1024 / best})
    return out


def _time(fn: Any, reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def runs(rounds: int = ROUNDS) -> dict[str, Any]:
    """ms per run of the three ways, per number of texts: medians of rounds taken in turns."""
    layers = E5_SMALL["layers"]
    model, one = _session(matmul_graph(layers)), _session(matmul_graph(1))
    graph = _session(str(model_dir() / "model-int8.onnx"))
    rng = np.random.default_rng(1)
    got: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        for texts in TEXTS:
            rows = texts * TOKENS
            feed = {f"x{k}": rng.integers(0, 256, (rows, k), dtype=np.uint8)
                    for k in {k for k, _ in linear_shapes(**E5_SMALL)}}
            ids = rng.integers(5, 200_000, (texts, TOKENS))
            ids[:, 0] = 0
            whole = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            ways = {MODEL: lambda f=feed: model.run(None, f),
                    CACHED: lambda f=feed: [
                        one.run(None, f) for _ in range(layers)],
                    WHOLE: lambda w=whole: graph.run(None, w)}
            for name in in_turn(list(ways), r):
                got.setdefault((name, texts), []).append(
                    _time(ways[name], max(5, 160 // texts)) * 1e3)
    out: dict[str, Any] = {"tokens_per_text": TOKENS, "rounds": rounds, "threads": 1,
                           "weight_mb": weight_bytes() / 2**20, "ways": {}}
    macs = weight_bytes()  # one multiply-add per weight per token
    for (name, texts), ms in got.items():
        med = statistics.median(ms)
        out["ways"].setdefault(name, []).append({
            "texts": texts, "ms_per_run": med, "ms_per_text": med / texts,
            "range_ms": [min(ms), max(ms)],
            "gops": 2 * macs * texts * TOKENS / med / 1e6 if name.startswith("matmuls") else None})
    return out


def measure(rounds: int = ROUNDS) -> dict[str, Any]:
    say("weights: read bandwidth by working-set size")
    bw = bandwidth()
    say(f"weights: the model's matmuls with its weights and with one layer's, {rounds} rounds")
    return {"bandwidth": bw, **runs(rounds)}


def table(res: dict[str, Any]) -> str:
    bw = " | ".join(f"{b['mb']} MB: {b['gb_per_s']:.1f}" for b in res["bandwidth"])
    ways = res["ways"]
    head = ("| texts per run | " + " | ".join(ways) + " | streaming cost | the rest of the "
            "graph, per text |\n|---|" + "---|" * (len(ways) + 2) + "\n")
    body = ""
    for i, texts in enumerate(TEXTS):
        cells = []
        for rows in ways.values():
            r = rows[i]
            g = f", {r['gops']:.0f} GOPS" if r["gops"] else ""
            cells.append(f"{r['ms_per_run']:.2f} ms ({r['ms_per_text']:.2f}/text{g})")
        model = ways[MODEL][i]["ms_per_run"]
        cached = ways[CACHED][i]["ms_per_run"]
        rest = (ways[WHOLE][i]["ms_per_run"] - model) / texts
        body += (f"| {texts} | " + " | ".join(cells) + f" | {model - cached:+.2f} ms "
                 f"| {rest:.2f} ms |\n")
    return ("# Weights streamed per run\n\nWritten by `python -m benchmarks.weights` (part of "
            "`make bench`); one thread, texts of "
            f"{res['tokens_per_text']} tokens, medians of {res['rounds']} rounds in turns. "
            f"The encoder's int8 weights: {res['weight_mb']:.1f} MB, read by every run.\n\n"
            f"Read bandwidth of one core by working set (GB/s): {bw}.\n\n" + head + body
            + "\nStreaming cost: the model's matmuls minus the same matmuls on one layer's "
            "weights, which stay in cache. It is paid once per run, however many texts the "
            "run holds; so a run over one or two texts costs more per text than a full batch, "
            "which is what row-by-row calls and many sessions of single texts pay. The rest of the "
            "graph: the whole graph minus the model's matmuls (attention, GELU, LayerNorm, "
            "the per-token quantisation, the word table), per text.\n")


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    bw = res["bandwidth"]
    a.plot([x["mb"] for x in bw], [x["gb_per_s"] for x in bw], "o-", color="#1f6fb4")
    a.axvline(res["weight_mb"], color="#c0392b", ls="--",
              label=f"the model's int8 weights ({res['weight_mb']:.0f} MB)")
    a.set_xscale("log")
    a.set_xlabel("working set, MB")
    a.set_ylabel("GB/s, one core")
    a.set_title("read bandwidth", fontsize=10)
    a.legend(fontsize=8)
    for name, rows in res["ways"].items():
        b.plot([r["texts"] for r in rows], [r["ms_per_text"] for r in rows], "o-", label=name)
    b.set_xscale("log", base=2)
    b.set_xticks(list(TEXTS), [str(t) for t in TEXTS])
    b.set_xlabel("texts per run")
    b.set_ylabel("ms per text, one thread")
    b.set_title(f"{res['tokens_per_text']}-token texts", fontsize=10)
    b.set_ylim(bottom=0)
    b.legend(fontsize=8)
    fig.suptitle("every run streams the weights: a few texts per run cost more per text")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(res: dict[str, Any], out: Path = OUT_DIR) -> None:
    write_page(out, "weights", {"machine": machine.machine(), "weights": res}, table(res),
               lambda path: plot(res, path))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=ROUNDS)
    p.add_argument("--out", type=Path, default=OUT_DIR)
    args = p.parse_args()
    res = measure(args.rounds)
    write(res, args.out)
    print(table(res))


if __name__ == "__main__":
    main()
