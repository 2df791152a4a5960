"""What the token-length sweep measures with: its lengths, its texts, and their useful work.

Shared by the SQL paths (:mod:`benchmarks.lengths`), the peers on the same texts
(:mod:`benchmarks.length_peers`) and the plot (:mod:`benchmarks.plots`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.common import model_dir
from benchmarks.machine import flops_per_text

LENGTHS = (16, 64, 128, 256, 512)
FN = "azure_local_ai.create_embeddings"
SESSIONS = 8


def flops(tokens: int) -> float:
    """Useful FLOPs of one text (issue 15): 2 · weight MACs · T + 48 · T² · 384."""
    return float(flops_per_text(tokens))


def make_texts(passages: Sequence[str], tokens: int, count: int) -> list[str]:
    """``count`` texts of ``tokens`` tokens (with <s> and </s>), cut from joined passages."""
    from tokenizers import Tokenizer  # noqa: PLC0415

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_truncation()
    body = tokens - 2
    out: list[str] = []
    start = 0
    while len(out) < count:
        parts: list[str] = []
        while True:
            parts.append(passages[start % len(passages)])
            start += 1
            text = "passage: " + " ".join(parts)
            enc = tok.encode(text, add_special_tokens=False)
            if len(enc.ids) >= body:
                break
        out.append(text[: enc.offsets[body - 1][1]])
    return out


def rows_for(tokens: int, quick: bool) -> int:
    """About the same work per length: ~64k tokens (quick ~16k), at least 32 rows."""
    return max(32, (16_384 if quick else 65_536) // tokens)


def series(res: dict[str, Any]) -> list[tuple[str, bool, dict[int, float]]]:
    """(label, ours?, {tokens: texts/s}) for every path and peer that ran."""
    out = [(f"pglocalai, {label}", True, {r["tokens"]: r[f"{key}_tps"] for r in res["rows"]})
           for key, label in (("array", "array call"), ("row", "row by row"),
                              ("sessions", f"{res.get('sessions', SESSIONS)} sessions"))]
    out += [(p["label"], False, {r["tokens"]: r["texts_per_s"] for r in p["rows"]})
            for p in (res.get("peers") or {}).values() if p.get("rows")]
    return [s for s in out if s[2]]
