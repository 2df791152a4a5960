"""PNG plots of the results (matplotlib, Agg): throughput, latency, concurrency, profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.report import COMMITS, PATHS, SINGLE, VECTORIZER  # noqa: E402

OURS = "#1f6fb4"
PEER = "#9a9a9a"
OURS_KEYS = {"sql_bulk_array", "sql_bulk_rows", "runtime_bulk", "sql", "runtime"}


def _subtitle(r: dict[str, Any]) -> str:
    cpu = r["machine"]["cpu"]
    return (f"{cpu['affinity_cpus']} cores {cpu['model']}, "
            f"{r['data'].get('passages', '?')} passages, "
            f"~{r['data'].get('tokens', {}).get('mean', 0):.0f} tokens each")


def throughput(r: dict[str, Any], path: Path) -> bool:
    items = [(PATHS[k][0], v["texts_per_s"], k) for k, v in r["throughput"].items()
             if k in PATHS and v and v.get("texts_per_s")]
    if not items:
        return False
    items.sort(key=lambda x: x[1])
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(items) + 1.6))
    bars = ax.barh([i[0] for i in items], [i[1] for i in items],
                   color=[OURS if i[2] in OURS_KEYS else PEER for i in items])
    for bar, (_, v, _) in zip(bars, items, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}",
                va="center", fontsize=9)
    ax.set_xlabel("texts per second (higher is better)")
    ax.set_title("Bulk embedding throughput\n" + _subtitle(r), fontsize=10)
    ax.set_xlim(0, max(i[1] for i in items) * 1.15)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def latency(r: dict[str, Any], path: Path) -> bool:
    items = [(SINGLE[k], v, k) for k, v in r["single"].items() if k in SINGLE and v]
    if not items:
        return False
    items.sort(key=lambda x: x[1]["p50_ms"])
    fig, ax = plt.subplots(figsize=(9, 0.7 * len(items) + 1.6))
    h = 0.26
    for j, (pct, alpha) in enumerate((("p50_ms", 1.0), ("p95_ms", 0.65), ("p99_ms", 0.35))):
        ys = [i + h - j * h for i in range(len(items))]  # p50 on top of each group
        vals = [it[1][pct] for it in items]
        ax.barh(ys, vals, height=h, alpha=alpha, label=pct.replace("_ms", ""),
                color=[OURS if it[2] in OURS_KEYS else PEER for it in items])
        for y, v in zip(ys, vals, strict=True):
            ax.text(v, y, f" {v:.1f}", va="center", fontsize=7)
    ax.set_yticks(range(len(items)), [it[0] for it in items])
    top = max(it[1]["p99_ms"] for it in items)
    if top / max(min(it[1]["p50_ms"] for it in items), 1e-3) > 30:  # very wide range: log
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("milliseconds per call, log scale (lower is better)")
    else:
        ax.set_xlim(0, top * 1.12)
        ax.set_xlabel("milliseconds per call (lower is better)")
    ax.set_title("One short text: latency p50 / p95 / p99\n" + _subtitle(r), fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def concurrency(r: dict[str, Any], path: Path) -> bool:
    levels = [lv for lv in r.get("concurrency") or [] if lv.get("texts_per_s")]
    if not levels:
        return False
    x = [lv["sessions"] for lv in levels]
    fig, ax = plt.subplots(figsize=(8, 5.2))
    ax.plot(x, [lv["texts_per_s"] for lv in levels], "o-", color=OURS, label="texts/s (pgbench)")
    bulk = (r["throughput"].get("sql_bulk_array") or {}).get("texts_per_s")
    if bulk:
        ax.axhline(bulk, color=OURS, ls="--", lw=1, label=f"bulk SQL {bulk:,.0f}/s")
        ax.axhline(0.7 * bulk, color=OURS, ls=":", lw=1, label="70% of bulk SQL")
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("texts per second", color=OURS)
    ax.set_ylim(0, max([lv["texts_per_s"] for lv in levels] + [bulk or 0]) * 1.15)
    ax2 = ax.twinx()
    ax2.plot(x, [lv["p99_ms"] for lv in levels], "s-", color="#c2410c", label="p99 latency")
    ax2.plot(x, [lv["p50_ms"] for lv in levels], "s--", color="#c2410c", alpha=0.5,
             label="p50 latency")
    ax2.set_ylabel("latency per call, ms", color="#c2410c")
    ax2.set_ylim(0, max(lv["p99_ms"] for lv in levels) * 1.2)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center",
              bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    ax.set_title("Concurrent sessions, one create_embeddings(text) per transaction\n"
                 + _subtitle(r), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def profile(r: dict[str, Any], path: Path) -> bool:
    profs = r.get("profile") or {}
    if not profs:
        return False
    fig, axes = plt.subplots(1, len(profs), figsize=(5.2 * len(profs), 4.2), squeeze=False)
    for ax, (variant, prof) in zip(axes[0], sorted(profs.items()), strict=True):
        ops = prof["op_types"][:8]
        rest = sum(o["share"] for o in prof["op_types"][8:])
        labels = [o["op"] for o in ops] + (["other"] if rest > 0 else [])
        shares = [100 * o["share"] for o in ops] + ([100 * rest] if rest > 0 else [])
        ax.barh(labels[::-1], shares[::-1], color=OURS)
        for i, v in enumerate(shares[::-1]):
            ax.text(v, i, f" {v:.1f}%", va="center", fontsize=8)
        ax.set_xlim(0, max(shares) * 1.25)
        ax.set_xlabel("% of kernel time")
        ms = prof["wall_s"] / prof["texts"] * 1000
        ax.set_title(f"{variant}: batches of {prof['batch']}, {ms:.2f} ms per text", fontsize=10)
    fig.suptitle("Where the time goes: ONNX Runtime kernel time by op type", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str],
          log_if_wide: bool = True) -> None:
    ax.bar(labels, values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    if log_if_wide and max(values) > 20 * min(values) > 0:  # very wide range: log
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
        ax.set_ylim(min(values) / 2, max(values) * 2)
    else:
        ax.set_ylim(0, max(values) * 1.3)
    ax.grid(axis="y", alpha=0.3)


def vectorizer(r: dict[str, Any], path: Path) -> bool:
    """Backfill vs array overload, INSERT rates with and without, lag percentiles."""
    v = r.get("vectorizer") or {}
    b, t, lg = v.get("backfill") or {}, v.get("trigger") or {}, v.get("lag") or {}
    if not b.get("array_texts_per_s"):
        return False
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 4.6))
    _bars(a1, [VECTORIZER[k].replace(" ", "\n", 1) for k in ("array", "backfill")],
          [b["array_texts_per_s"], b["backfill_texts_per_s"]], [PEER, OURS])
    a1.axhline(0.9 * b["array_texts_per_s"], color="#c2410c", ls=":", lw=1,
               label=f"0.9× {VECTORIZER['array']}")
    a1.set_ylabel("texts per second (higher is better)")
    a1.set_title(f"Backfill: the same {b['texts']:,} passages\n(" + (
        f"median of {b['rounds']} rounds)" if b["rounds"] > 1 else "one round)"), fontsize=9)
    a1.legend(loc="upper left", fontsize=8)
    labels, rates, colors = [], [], []
    for commit in COMMITS:
        m = t.get(f"synchronous_commit_{commit}")
        if m:
            labels += [f"{VECTORIZER[k]}\nsync {commit}" for k in ("plain", "vec")]
            rates += [1000 / m["plain_ms"]["mean_ms"], 1000 / m["vectorizer_ms"]["mean_ms"]]
            colors += [PEER, OURS]
    if rates:
        _bars(a2, labels, rates, colors)
    a2.set_ylabel("single-row INSERTs per second" + (", log scale" if a2.get_yscale() == "log"
                                                      else ""))
    a2.set_title("INSERT with and without a vectorizer\n(one session, synchronous_commit "
                 "on and off)", fontsize=9)
    pct = lg.get("lag_ms") or {}
    keys = [k for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms") if k in pct]
    if keys:
        _bars(a3, [k.replace("_ms", "") for k in keys], [pct[k] for k in keys], [OURS] * len(keys),
              log_if_wide=False)
        a3.axhline(2000, color="#c2410c", ls=":", lw=1, label="p95 target 2 s")
        a3.set_ylim(0, max(2200, *(pct[k] for k in keys)) * 1.15)
        a3.legend(loc="upper left", fontsize=8)
    a3.set_ylabel("milliseconds (lower is better)")
    a3.set_title(f"{VECTORIZER['lag'].capitalize()} at {lg.get('rate_per_s', 0):.0f} inserts/s\n"
                 f"{lg.get('vectorized', 0):,} of {lg.get('inserts', 0):,} rows vectorized",
                 fontsize=9)
    fig.suptitle("Vectorizer (azure_local_ai 1.1.0)\n" + _subtitle(r), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PEER_COLORS = ["#7f7f7f", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
               "#17becf", "#bcbd22"]  # matplotlib's tab10 without its blue (ours)


def lengths(r: dict[str, Any], path: Path) -> bool:
    """Token-length sweep: texts/s (log) and useful GFLOP/s against tokens, a line per path."""
    from benchmarks.sweep_texts import flops, series  # noqa: PLC0415

    res = r.get("lengths") or {}
    lines = series(res) if res.get("rows") or res.get("peers") else []
    if not lines:
        return False
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5.4))
    ours_styles, peer_i = iter(["o-", "s-", "^-"]), 0
    for label, ours, pts in lines:
        ts = sorted(pts)
        if ours:
            kw = {"color": OURS, "fmt": next(ours_styles, "o-"), "lw": 2.2}
        else:
            kw = {"color": PEER_COLORS[peer_i % len(PEER_COLORS)], "fmt": "o--", "lw": 1.3}
            peer_i += 1
        for ax, ys in ((a1, [pts[t] for t in ts]), (a2, [pts[t] * flops(t) / 1e9 for t in ts])):
            ax.plot(ts, ys, kw["fmt"], color=kw["color"], lw=kw["lw"], ms=4, label=label)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ts = sorted({t for _, _, pts in lines for t in pts})
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.set_xlabel("tokens per text")
        ax.grid(alpha=0.3, which="both")
    a1.set_yscale("log")
    a1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
    a1.set_ylabel("texts per second, log scale (higher is better)")
    a1.set_title("Throughput", fontsize=10)
    a2.set_ylim(0, None)
    a2.set_ylabel("useful GFLOP/s (2·MACs·T + 48·T²·384 per text)")
    a2.set_title("Useful compute rate", fontsize=10)
    handles, labels = a1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    sub = _subtitle(r).split(",")[0] if r.get("machine") else "one run"
    fig.suptitle("Token-length sweep: pglocalai through SQL (blue) and in-process peers on the "
                 "same texts\n" + sub, fontsize=10)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * ((len(lines) + 2) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def draw_all(r: dict[str, Any], out: Path) -> dict[str, str]:
    done = {}
    for name, fn in (("throughput", throughput), ("latency", latency),
                     ("concurrency", concurrency), ("profile", profile),
                     ("vectorizer", vectorizer), ("lengths", lengths)):
        p = out / f"{name}.png"
        try:
            if fn(r, p):
                done[name] = p.name
        except Exception as exc:  # noqa: BLE001 - a broken plot must not lose the results
            done[name] = f"failed: {type(exc).__name__}: {exc}"
    return done
