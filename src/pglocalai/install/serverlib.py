"""The files the server itself reads: the extension's control and SQL files, and the
standard-library-only part of the package that PL/Python imports.

Why a copy and not the checkout: PL/Python runs inside the server as its own user with the
system's python3, and a clone may sit where that user cannot read (root's home is 0700).
One folder per extension version, so a database still on an older version keeps its code.

Run by ``scripts/install-ext.sh`` with the system interpreter (no virtual environment)::

    /usr/bin/python3 -I src/pglocalai/install/serverlib.py /usr/local/lib/pglocalai
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

if __name__ == "__main__":  # run as a script: import the package from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pglocalai.install import SYSTEM_PYTHON, extension_versions, fsops  # noqa: E402

# The modules PL/Python may import: they import nothing outside the standard library
# (tests/unit/test_stdlib_only.py); pg/ is taken whole.
SERVER_MODULES = ("__init__.py", "errors.py", "protocol.py", "client.py")
EXTENSION = "azure_local_ai"


def package_dir() -> Path:
    """src/pglocalai of this checkout (or of the installed package)."""
    return Path(__file__).resolve().parents[1]


def server_files(package: Path) -> list[str]:
    """The package files the server needs, relative to ``package``."""
    files = [m for m in SERVER_MODULES if (package / m).is_file()]
    pg = package / "pg"
    if pg.is_dir():
        files += sorted(p.relative_to(package).as_posix() for p in pg.rglob("*.py"))
    return files


def lib_targets(lib_dir: Path) -> list[Path]:
    """``<lib_dir>/<v>/pglocalai`` for every extension version the package serves."""
    return [lib_dir / v / "pglocalai" for v in extension_versions()]


def install_server_lib(lib_dir: Path, package: Path | None = None) -> list[Path]:
    """Copy the server-side package into every version's folder; returns the folders.

    Each one is built in a staging folder, byte-compiled with the server's interpreter
    (the server's user cannot write __pycache__ there) and swapped in whole.
    """
    package = package or package_dir()
    files = server_files(package)
    targets = lib_targets(lib_dir)
    for target in targets:
        fsops.make_dirs(target.parent)
        tag = uuid.uuid4().hex[:8]
        staging = target.with_name(f".pglocalai.new.{tag}")
        old = target.with_name(f".pglocalai.old.{tag}")
        try:
            fsops.install_tree(package, staging, files)
            compile_and_swap(staging, target, old)
        finally:
            fsops.remove_tree(staging)
            fsops.remove_tree(old)
    return targets


def compile_and_swap(staging: Path, target: Path, old: Path) -> None:
    """Byte-compile ``staging`` with the server's interpreter and put it at ``target``."""
    subprocess.run([SYSTEM_PYTHON, "-m", "compileall", "-q", str(staging)], check=True,
                   stdout=subprocess.DEVNULL)
    fsops.replace_tree(staging, target, old)
    fsops.remove_tree(old)


def extension_sources(extension_dir: Path) -> list[Path]:
    """The control file and every versioned SQL script (what PGXS's DATA installs)."""
    control = extension_dir / f"{EXTENSION}.control"
    if not control.is_file():
        from pglocalai.install import InstallError  # noqa: PLC0415

        raise InstallError(f"\"{control}\" does not exist",
                           hint="run pglocalai install from a clone of the repository")
    return [control, *sorted((extension_dir / "sql").glob(f"{EXTENSION}--*.sql"))]


def main(argv: list[str]) -> int:
    lib_dir = Path(argv[0]) if argv else Path("/usr/local/lib/pglocalai")
    for target in install_server_lib(lib_dir):
        print(target.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
