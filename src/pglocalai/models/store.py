"""The model store: one folder per model URI, with metadata and the sha256 of every file.

Layout (``multilingual-e5-small:v1`` lives in ``multilingual-e5-small@v1``)::

    <root>/
      .lock                               # flock held while a folder is renamed in or out
      multilingual-e5-small@v1/
        metadata.json                     # uri, dimensions, variants, files -> sha256, ...
        model-fp32.onnx  model-int8.onnx  tokenizer.json

The runtime loads nothing that does not match its checksum (:meth:`ModelStore.read_verified`,
:meth:`ModelStore.open_verified`).
Installs are atomic: files are written into a hidden staging folder inside the root,
fsynced, then renamed into place under the lock (a replaced model is swapped with one
``renameat2(RENAME_EXCHANGE)``), so a reader sees the old model or the new one, never half.

Example::

    store = ModelStore()                              # $PGLOCALAI_MODELS or ./.run/models
    info = store.get("multilingual-e5-small:v1")
    onnx_bytes = store.read_verified(info.uri, info.variants["int8"]["file"])
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pglocalai.errors import (
    ChecksumMismatch,
    InvalidArgument,
    ModelFormatError,
    ModelNotInstalled,
    ModelStoreError,
)
from pglocalai.models.metadata import (  # re-exported: the store is where callers look
    BUILTIN,
    FORMAT,
    METADATA,
    ModelInfo,
    dirname_to_uri,
    metadata_problems,
    plain_name,
    reinstall_hint,
    sha256_bytes,
    sha256_file,
    uri_to_dirname,
    validate_uri,
)

__all__ = ["BUILTIN", "FORMAT", "METADATA", "Listing", "ModelInfo", "ModelStore",
           "default_models_dir", "dirname_to_uri", "metadata_problems", "reinstall_hint",
           "sha256_bytes", "sha256_file", "uri_to_dirname", "validate_uri"]

LOCK = ".lock"
_TEMP_PREFIXES = (".staging-", ".old-", ".removing-")


def default_models_dir() -> Path:
    """``$PGLOCALAI_MODELS``, else ``$PGLOCALAI_HOME/models``, else ``./.run/models``."""
    if os.environ.get("PGLOCALAI_MODELS"):
        return Path(os.environ["PGLOCALAI_MODELS"])
    if os.environ.get("PGLOCALAI_HOME"):
        return Path(os.environ["PGLOCALAI_HOME"]) / "models"
    return Path.cwd() / ".run" / "models"


@dataclass(frozen=True)
class Listing:
    models: list[ModelInfo]
    skipped: list[tuple[str, str]]  # (folder name, why it was skipped)


class ModelStore:
    """The models under one root folder (see the module docstring)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_models_dir()

    # -- reading ------------------------------------------------------------------
    def scan(self) -> Listing:
        """Every installed model, plus the folders skipped because their metadata is bad."""
        models: list[ModelInfo] = []
        skipped: list[tuple[str, str]] = []
        entries = sorted(self.root.iterdir()) if self.root.is_dir() else []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            uri = dirname_to_uri(entry.name)
            if uri is None:
                skipped.append((entry.name, "not a model folder name (expected name@version)"))
                continue
            try:
                models.append(self._load(uri, entry))
            except ModelStoreError as exc:
                skipped.append((entry.name, exc.detail or exc.message))
        return Listing(models, skipped)

    def list(self) -> list[ModelInfo]:
        return self.scan().models

    def uris(self) -> list[str]:
        return [m.uri for m in self.list()]

    def get(self, uri: str) -> ModelInfo:
        """The installed model, or ModelNotInstalled whose hint lists the installed ones."""
        return self._load(uri, self._folder(uri))

    def read_verified(self, uri: str, filename: str) -> bytes:
        """The bytes of one model file, read once and checked against its sha256."""
        return self._checked(uri, [filename], keep="bytes")[filename]

    @contextlib.contextmanager
    def open_verified(self, uri: str, filename: str) -> Iterator[str]:
        """A path to one model file, valid inside the block, whose bytes were checked.

        For readers that take a path (ONNX Runtime): no copy of a large graph is held
        in Python. The path names the open file that was hashed (``/proc/self/fd``),
        not the folder entry, so an install that swaps the folder meanwhile cannot
        change what the reader gets.
        """
        f = self._checked(uri, [filename], keep="open")[filename]
        with f:
            yield f"/proc/self/fd/{f.fileno()}"

    def verify(self, uri: str) -> ModelInfo:
        """Check every file of a model against its checksum; raise on the first bad one."""
        return self._checked(uri, None, keep="")[""]

    def _checked(self, uri: str, names: list[str] | None, *, keep: str) -> dict[str, Any]:
        # Metadata and files are read through one directory handle, so both come from the
        # same install even while `install --force` swaps the folder; a failure seen
        # across such a swap is retried rather than reported as corruption.
        for attempt in range(3):
            folder = self._folder(uri)
            try:
                dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                raise ModelNotInstalled(f'model "{uri}" is not installed',
                                        hint=self._installed_hint()) from None
            try:
                return self._check_at(uri, folder, dfd, names, keep)
            except ModelStoreError:
                if attempt == 2 or not _replaced(folder, dfd):
                    raise
            finally:
                os.close(dfd)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_at(self, uri: str, folder: Path, dfd: int, names: list[str] | None,
                  keep: str) -> dict[str, Any]:
        info = self._load(uri, folder, dfd)
        for name in names or []:
            if name not in info.files or not plain_name(name):
                raise ModelFormatError(f'file {name!r} is not part of model "{uri}"',
                                       detail=f"its files are {', '.join(sorted(info.files))}")
        out: dict[str, Any] = {"": info}
        for name in sorted(names or info.files):
            try:
                f = os.fdopen(os.open(name, os.O_RDONLY, dir_fd=dfd), "rb")
            except FileNotFoundError:
                raise ChecksumMismatch(f'file {name} of model "{uri}" is missing',
                                       hint=reinstall_hint(uri, info.metadata)) from None
            if keep == "bytes":
                with f:
                    out[name] = f.read()
                actual = sha256_bytes(out[name])
            else:
                actual = hashlib.file_digest(f, "sha256").hexdigest()
                if keep == "open" and actual == info.files[name]:
                    f.seek(0)
                    out[name] = f  # the caller closes it
                else:
                    f.close()
            if actual != info.files[name]:
                raise _mismatch(uri, name, info.files[name], actual, info.metadata)
        return out

    # -- writing ------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh hidden folder inside the root to build a model in; removed on error.

        Pass it to :meth:`install` inside the ``with`` block: installing moves it away.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".staging-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        path.mkdir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def install(self, staging_dir: str | Path, *, force: bool = False) -> ModelInfo:
        """Move a fully built model folder into the store, atomically.

        ``staging_dir`` holds the model files and a ``metadata.json`` (its ``files`` and
        ``format`` are filled in here). A folder outside the root is copied in first so
        that the final step is a rename within one file system.
        """
        staging = Path(staging_dir)
        md = _read_json(staging / METADATA)
        files = sorted(p.name for p in staging.iterdir() if p.name != METADATA)
        for name in files:
            if not plain_name(name) or not (staging / name).is_file():
                raise ModelFormatError(f"cannot install {name!r}: only plain files are allowed",
                                       detail=f"in staging folder {staging.name}")
        md["format"] = FORMAT
        md["files"] = {name: sha256_file(staging / name) for name in files}
        problems = metadata_problems(md)
        if problems:
            raise ModelFormatError("the model to install has invalid metadata",
                                   detail="; ".join(problems))
        uri = md["uri"]
        target = self.root / uri_to_dirname(uri)
        with contextlib.ExitStack() as stack:
            self.root.mkdir(parents=True, exist_ok=True)
            if staging.resolve().parent != self.root.resolve():
                inner = stack.enter_context(self.staging())
                for name in files:
                    shutil.copyfile(staging / name, inner / name)
                staging = inner
            _write_json(staging / METADATA, md)
            for name in [*files, METADATA, "."]:
                _fsync_path(staging / name)
            with self._locked():
                self._cleanup_stale()
                if target.exists() and not force:
                    raise ModelStoreError(f'model "{uri}" is already installed',
                                          hint="pass --force to replace it")
                trash = None
                if not target.exists():
                    os.rename(staging, target)
                elif _exchange(staging, target):
                    trash = staging  # now holds the replaced model
                else:
                    trash = self.root / f".old-{os.getpid()}-{uuid.uuid4().hex[:12]}"
                    os.rename(target, trash)
                    os.rename(staging, target)
                _fsync_path(self.root)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        return ModelInfo.from_metadata(target, md)

    def remove(self, uri: str) -> None:
        """Delete a model: renamed out of sight under the lock, then deleted."""
        info = self.get(uri)
        with self._locked():
            trash = self.root / f".removing-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            os.rename(info.path, trash)
            _fsync_path(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    # -- internals ----------------------------------------------------------------
    def _folder(self, uri: str) -> Path:
        try:
            folder = self.root / uri_to_dirname(uri)
        except InvalidArgument as exc:
            raise ModelNotInstalled(f'model "{uri}" is not installed', detail=exc.detail,
                                    hint=self._installed_hint()) from None
        if not folder.is_dir():
            raise ModelNotInstalled(f'model "{uri}" is not installed',
                                    hint=self._installed_hint())
        return folder

    def _load(self, uri: str, folder: Path, dir_fd: int | None = None) -> ModelInfo:
        md = _read_json(folder / METADATA, dir_fd)
        if md.get("uri") != uri:
            raise ModelFormatError(f"invalid metadata in {folder.name}/{METADATA}",
                                   detail=f"it names {md.get('uri')!r}, expected {uri!r}",
                                   hint=reinstall_hint(uri, md))
        return ModelInfo.from_metadata(folder, md)

    def _installed_hint(self) -> str:
        uris = self.uris()
        if not uris:
            return "no model is installed; run: pglocalai model install"
        return "installed models: " + ", ".join(uris)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _cleanup_stale(self) -> None:
        """Remove temporary folders left by processes that died (called under the lock)."""
        for entry in self.root.iterdir():
            if entry.name.startswith(_TEMP_PREFIXES):
                pid = entry.name.split("-")[1]
                if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                    shutil.rmtree(entry, ignore_errors=True)


def _mismatch(uri: str, name: str, expected: str, actual: str,
              md: dict[str, Any]) -> ChecksumMismatch:
    return ChecksumMismatch(f'checksum mismatch for {name} of model "{uri}"',
                            detail=f"expected sha256 {expected}, found {actual}",
                            hint=reinstall_hint(uri, md))


def _read_json(path: Path, dir_fd: int | None = None) -> dict[str, Any]:
    where = f"{path.parent.name}/{path.name}"
    try:
        fd = os.open(path.name if dir_fd is not None else path, os.O_RDONLY, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ModelFormatError(f"{where} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFormatError(f"cannot read {where}", detail=str(exc)) from exc
    if not isinstance(data, dict):
        raise ModelFormatError(f"{where} is not a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replaced(folder: Path, dfd: int) -> bool:
    """Whether ``folder`` now names another directory than the open handle ``dfd``."""
    try:
        return os.stat(folder).st_ino != os.fstat(dfd).st_ino
    except FileNotFoundError:
        return True


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
