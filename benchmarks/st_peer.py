"""sentence-transformers on PyTorch (CPU): the common application choice, as a peer.

Runs inside the separate peer virtual environment (torch is never installed in
the project's own), so it imports nothing from this project:

    .run/bench-peer-venv/bin/python benchmarks/st_peer.py --model HF_DIR \
        --texts T.json --singles Q.json --out PREFIX

Writes ``PREFIX.npy`` (normalised vectors, input order) and ``PREFIX.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _rss() -> dict[str, float]:
    out = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "VmHWM"):
                out[key + "_mib"] = int(rest.split()[0]) / 1024.0
    return out


def _pct(samples: list[float]) -> dict[str, float]:
    s = sorted(x * 1000.0 for x in samples)
    if not s:
        return {}

    def q(p: float) -> float:  # linear interpolation, as numpy's default
        k = (len(s) - 1) * p
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)

    return {"p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99),
            "mean_ms": sum(s) / len(s), "max_ms": s[-1], "n": len(s)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--singles")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()

    import numpy as np
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    singles = json.loads(Path(args.singles).read_text(encoding="utf-8")) if args.singles else []
    t_load = time.perf_counter()
    model = SentenceTransformer(args.model, device="cpu", local_files_only=True)
    load_s = time.perf_counter() - t_load
    with torch.inference_mode():
        model.encode(texts[: args.batch], batch_size=args.batch, normalize_embeddings=True)
        t0 = time.perf_counter()
        vecs = model.encode(texts, batch_size=args.batch, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)
        bulk_s = time.perf_counter() - t0
        lat = []
        for q in singles:
            t = time.perf_counter()
            model.encode([q], normalize_embeddings=True, show_progress_bar=False)
            lat.append(time.perf_counter() - t)
    np.save(args.out + ".npy", np.asarray(vecs, dtype=np.float32))
    versions = {"torch": torch.__version__,
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__, "numpy": np.__version__}
    info = {"engine": "sentence-transformers", "versions": versions,
            "threads": args.threads, "batch": args.batch, "texts": len(texts),
            "load_seconds": load_s, "seconds": bulk_s, "texts_per_s": len(texts) / bulk_s,
            "single": _pct(lat), "memory": _rss()}
    Path(args.out + ".json").write_text(json.dumps(info, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
