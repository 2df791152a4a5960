"""The model store: round trip, checksums, clear errors, atomic and concurrent installs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pglocalai.cli.models import cmd_install, cmd_list, cmd_remove, cmd_show, cmd_verify
from pglocalai.errors import (
    ChecksumMismatch,
    InvalidArgument,
    ModelFormatError,
    ModelNotInstalled,
    ModelStoreError,
)
from pglocalai.models.convert import CONVERTER_VERSION
from pglocalai.models.store import (
    ModelStore,
    default_models_dir,
    dirname_to_uri,
    sha256_bytes,
    sha256_file,
    uri_to_dirname,
    validate_uri,
)

E5 = "multilingual-e5-small:v1"


def metadata(uri: str, **extra: object) -> dict[str, object]:
    md: dict[str, object] = {
        "format": 1, "uri": uri, "source": "unit test", "license": "MIT", "dimensions": 4,
        "max_tokens": 8, "pooling": "mean", "normalize": True, "default_variant": "int8",
        "tokenizer": "tokenizer.json",
        "variants": {v: {"file": f"model-{v}.onnx", "inputs": ["input_ids", "attention_mask"],
                         "output": "sentence_embedding", "description": v}
                     for v in ("fp32", "int8")},
    }
    md.update(extra)
    return md


def stage(folder: Path, uri: str, payload: bytes = b"graph", **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-fp32.onnx").write_bytes(payload + b"-fp32")
    (folder / "model-int8.onnx").write_bytes(payload + b"-int8")
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "metadata.json").write_text(json.dumps(metadata(uri, **extra)))
    return folder


def install(store: ModelStore, uri: str, payload: bytes = b"graph", force: bool = False):
    with store.staging() as staging:
        stage(staging, uri, payload)
        return store.install(staging, force=force)


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.root.iterdir() if p.name != ".lock")


def test_round_trip(store: ModelStore) -> None:
    info = install(store, E5)
    assert info.uri == E5 and info.path == store.root / "multilingual-e5-small@v1"
    assert (info.dimensions, info.max_tokens, info.default_variant) == (4, 8, "int8")
    assert set(info.variants) == {"fp32", "int8"}
    md = json.loads((info.path / "metadata.json").read_text())
    assert md["format"] == 1
    assert md["files"] == {n: sha256_file(info.path / n) for n in
                           ("model-fp32.onnx", "model-int8.onnx", "tokenizer.json")}
    assert store.read_verified(E5, "model-int8.onnx") == b"graph-int8"
    assert store.verify(E5) == info
    assert [m.uri for m in store.list()] == [E5]
    assert info.size_bytes() == sum((info.path / n).stat().st_size for n in md["files"])
    assert leftovers(store) == ["multilingual-e5-small@v1"]


def test_install_from_a_folder_outside_the_store(store: ModelStore, tmp_path: Path) -> None:
    src = stage(tmp_path / "elsewhere", "other:v2")
    info = store.install(src)
    assert info.path.parent == store.root and (src / "model-fp32.onnx").exists()
    assert store.read_verified("other:v2", "tokenizer.json") == b'{"version": "1.0"}'
    assert leftovers(store) == ["other@v2"]


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PGLOCALAI_MODELS", raising=False)
    monkeypatch.delenv("PGLOCALAI_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_models_dir() == tmp_path / ".run" / "models"
    monkeypatch.setenv("PGLOCALAI_HOME", str(tmp_path / "home"))
    assert default_models_dir() == tmp_path / "home" / "models"
    monkeypatch.setenv("PGLOCALAI_MODELS", str(tmp_path / "m"))
    assert default_models_dir() == tmp_path / "m"
    assert ModelStore().root == tmp_path / "m"


@pytest.mark.parametrize("uri", ["multilingual-e5-small:v1", "all-minilm-l6-v2:v1", "a:1",
                                 "x.y_z:v1.2-rc"])
def test_valid_uris(uri: str) -> None:
    assert validate_uri(uri) == uri
    assert dirname_to_uri(uri_to_dirname(uri)) == uri


@pytest.mark.parametrize("uri", ["", "model", "a:b:c", "../x:v1", "x:../v1", ".hidden:v1",
                                 "Upper:v1", "sp ace:v1", "a/b:v1", "x:", ":v1", "é:v1"])
def test_invalid_uris(uri: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        uri_to_dirname(uri)
    assert "name:version" in (err.value.detail or "")
    assert err.value.exit_code == 2


def test_corrupted_file_is_refused(store: ModelStore) -> None:
    info = install(store, E5)
    with open(info.path / "model-int8.onnx", "ab") as f:
        f.write(b"!")
    with pytest.raises(ChecksumMismatch) as err:
        store.read_verified(E5, "model-int8.onnx")
    e = err.value
    assert "model-int8.onnx" in e.message and E5 in e.message
    assert e.hint == f"reinstall it: pglocalai model install {E5} --force"
    assert sha256_bytes(b"graph-int8") in (e.detail or "")
    assert e.exit_code == 4 and e.sqlstate == "XX001"
    with pytest.raises(ChecksumMismatch):
        store.verify(E5)
    # the other files are still served
    assert store.read_verified(E5, "model-fp32.onnx") == b"graph-fp32"


def test_missing_file_and_foreign_names(store: ModelStore) -> None:
    info = install(store, "other:v1")
    (info.path / "model-fp32.onnx").unlink()
    with pytest.raises(ChecksumMismatch, match="missing") as err:
        store.read_verified("other:v1", "model-fp32.onnx")
    assert "--from-hf FOLDER --uri other:v1 --force" in (err.value.hint or "")
    with pytest.raises(ChecksumMismatch, match="missing"):
        store.verify("other:v1")
    for name in ("../other@v1/tokenizer.json", "metadata.json", "nope.onnx"):
        with pytest.raises(ModelFormatError, match="not part of model"):
            store.read_verified("other:v1", name)


def test_missing_model_lists_installed(store: ModelStore) -> None:
    with pytest.raises(ModelNotInstalled) as err:
        store.get(E5)
    assert err.value.hint == "no model is installed; run: pglocalai model install"
    install(store, "b:v1")
    install(store, "a:v1")
    with pytest.raises(ModelNotInstalled) as err:
        store.read_verified(E5, "tokenizer.json")
    assert err.value.message == f'model "{E5}" is not installed'
    assert err.value.hint == "installed models: a:v1, b:v1"
    assert err.value.sqlstate == "22023" and err.value.exit_code == 4
    with pytest.raises(ModelNotInstalled) as err:
        store.get("no version")
    assert err.value.hint == "installed models: a:v1, b:v1"


def test_listing_skips_and_reports_bad_folders(store: ModelStore) -> None:
    install(store, "good:v1")
    bad_json = store.root / "broken@v1"
    bad_json.mkdir()
    (bad_json / "metadata.json").write_text("{not json")
    stage(store.root / "wrong@v1", "else:v1")
    (store.root / "incomplete@v1").mkdir()
    (store.root / "not-a-model").mkdir()
    listing = store.scan()
    assert [m.uri for m in listing.models] == ["good:v1"]
    skipped = dict(listing.skipped)
    assert set(skipped) == {"broken@v1", "wrong@v1", "incomplete@v1", "not-a-model"}
    assert "else:v1" in skipped["wrong@v1"]
    assert "missing" in skipped["incomplete@v1"]
    with pytest.raises(ModelFormatError):
        store.get("broken:v1")


def test_invalid_metadata_is_refused_and_leaves_nothing(store: ModelStore) -> None:
    with store.staging() as staging:
        stage(staging, "x:v1", default_variant="fp16")
        with pytest.raises(ModelFormatError, match="invalid metadata") as err:
            store.install(staging)
        assert "default_variant" in (err.value.detail or "")
    assert leftovers(store) == []
    with store.staging() as staging:
        stage(staging, "x:v1")
        (staging / "sub").mkdir()
        with pytest.raises(ModelFormatError, match="only plain files"):
            store.install(staging)
    assert leftovers(store) == []


def test_failure_while_building_leaves_no_partial_folder(store: ModelStore) -> None:
    with pytest.raises(RuntimeError), store.staging() as staging:
        stage(staging, "x:v1")
        raise RuntimeError("conversion failed half way")
    assert leftovers(store) == []
    with pytest.raises(ModelNotInstalled):
        store.get("x:v1")


def test_existing_model_needs_force(store: ModelStore) -> None:
    install(store, "x:v1", b"old")
    with pytest.raises(ModelStoreError, match="already installed") as err:
        install(store, "x:v1", b"new")
    assert "--force" in (err.value.hint or "")
    assert store.read_verified("x:v1", "model-fp32.onnx") == b"old-fp32"
    install(store, "x:v1", b"new", force=True)
    assert store.read_verified("x:v1", "model-fp32.onnx") == b"new-fp32"
    assert leftovers(store) == ["x@v1"]


def test_concurrent_installs_do_not_collide(store: ModelStore) -> None:
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(3):
                install(store, "same:v1", f"p{i}".encode(), force=True)
            install(store, f"own{i}:v1", f"p{i}".encode())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.verify("same:v1").uri == "same:v1"
    assert sorted(store.uris()) == sorted(["same:v1"] + [f"own{i}:v1" for i in range(8)])
    assert not [n for n in leftovers(store) if n.startswith(".")]


def test_stale_staging_of_a_dead_process_is_cleaned(store: ModelStore) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = store.root / f".staging-{dead}-abc"
    stage(stale, "x:v1")
    mine = store.root / f".staging-{os.getpid()}-mine"
    mine.mkdir()
    install(store, "y:v1")
    assert not stale.exists() and mine.exists()


def test_remove(store: ModelStore) -> None:
    install(store, "x:v1")
    install(store, "y:v1")
    store.remove("x:v1")
    assert store.uris() == ["y:v1"]
    assert leftovers(store) == ["y@v1"]
    with pytest.raises(ModelNotInstalled):
        store.remove("x:v1")


# --- the CLI functions ---

def ns(store: ModelStore, **kw: object) -> argparse.Namespace:
    base = {"models_dir": str(store.root), "uri": None, "uri_opt": None, "from_hf": None,
            "variants": "fp32,int8", "weights": "auto", "force": False}
    base.update(kw)
    return argparse.Namespace(**base)


def test_cli_list_show_verify_remove(store: ModelStore, capsys: pytest.CaptureFixture) -> None:
    assert cmd_list(ns(store)) == 0
    assert "no model is installed" in capsys.readouterr().out
    install(store, E5)
    (store.root / "junk@v1").mkdir()
    assert cmd_list(ns(store)) == 0
    out = capsys.readouterr()
    assert "URI" in out.out and E5 in out.out and "fp32,int8*" in out.out and " B" in out.out
    assert "skipped folder junk@v1" in out.err
    assert cmd_show(ns(store, uri=E5)) == 0
    assert json.loads(capsys.readouterr().out)["uri"] == E5
    assert cmd_verify(ns(store, uri=E5)) == 0
    assert f"ok {E5} (3 files)" in capsys.readouterr().out
    assert cmd_verify(ns(store)) == 4  # the junk folder fails
    with open(store.root / "multilingual-e5-small@v1" / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(ChecksumMismatch):
        cmd_verify(ns(store, uri=E5))
    assert cmd_remove(ns(store, uri=E5)) == 0
    with pytest.raises(ModelNotInstalled):
        cmd_show(ns(store, uri=E5))


def test_cli_install_skips_a_verified_model(store: ModelStore,
                                            capsys: pytest.CaptureFixture) -> None:
    with store.staging() as staging:
        stage(staging, E5, converter_version=CONVERTER_VERSION)
        store.install(staging)
    assert cmd_install(ns(store)) == 0
    assert "already installed and verified" in capsys.readouterr().out


def test_cli_install_rebuilds_a_model_of_an_older_converter(
        store: ModelStore, capsys: pytest.CaptureFixture) -> None:
    with store.staging() as staging:
        stage(staging, E5, converter_version=CONVERTER_VERSION - 1)
        store.install(staging)
    assert cmd_install(ns(store)) == 0
    assert "rebuilding" in capsys.readouterr().out
    assert store.verify(E5).metadata["converter_version"] == CONVERTER_VERSION


def test_cli_install_argument_errors(store: ModelStore) -> None:
    with pytest.raises(InvalidArgument, match="no built-in source"):
        cmd_install(ns(store, uri="mine:v1"))
    with pytest.raises(InvalidArgument, match="--uri"):
        cmd_install(ns(store, from_hf="somewhere"))
    with pytest.raises(InvalidArgument, match="variants"):
        cmd_install(ns(store, variants="fp16"))
    with pytest.raises(InvalidArgument):
        cmd_install(ns(store, uri="Bad:uri"))


def test_readers_never_see_half_a_replaced_model(store: ModelStore) -> None:
    install(store, "x:v1", b"v0")
    stop = threading.Event()
    seen: set[bytes] = set()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(store.read_verified("x:v1", "model-fp32.onnx"))
                store.verify("x:v1")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(1, 40):
        install(store, "x:v1", f"v{i}".encode(), force=True)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen) > 1 and seen <= {f"v{i}-fp32".encode() for i in range(40)}


def test_replace_without_rename_exchange(store: ModelStore,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # file systems or kernels without renameat2(RENAME_EXCHANGE) fall back to two renames
    import pglocalai.models.store as store_module

    monkeypatch.setattr(store_module, "_exchange", lambda a, b: False)
    install(store, "x:v1", b"old")
    install(store, "x:v1", b"new", force=True)
    assert store.read_verified("x:v1", "model-int8.onnx") == b"new-int8"
    assert leftovers(store) == ["x@v1"]


def test_an_openvino_variant_must_name_its_weights_and_word_table(store: ModelStore) -> None:
    base = metadata("x:v1")["variants"]
    ov = {"file": "model-bf16.xml", "engine": "openvino", "output": "sentence_embedding",
          "inputs": ["word_embeddings", "attention_mask"], "description": "bf16"}
    with store.staging() as staging:
        stage(staging, "x:v1", variants={**base, "bf16": ov})  # type: ignore[dict-item]
        (staging / "model-bf16.xml").write_text("<net/>")
        with pytest.raises(ModelFormatError, match="invalid metadata") as err:
            store.install(staging)
    assert "needs its weights file" in (err.value.detail or "")
    assert "needs its word_table file" in (err.value.detail or "")
    with store.staging() as staging:
        stage(staging, "x:v1", variants={**base, "bf16": {
            **ov, "weights": "model-bf16.bin", "word_table": "words.npz"}})
        for name in ("model-bf16.xml", "model-bf16.bin", "words.npz"):
            (staging / name).write_bytes(b"x")
        info = store.install(staging)
    assert set(info.variants) == {"fp32", "int8", "bf16"}
    assert {"model-bf16.bin", "words.npz"} <= set(info.files)
