"""File operations for a root process that must not be tricked by another user's links.

Rules (issue 11): a folder is entered only after ``lstat`` shows a real directory that
nobody but root (or the owner we hand it to) can write; files are created with
``O_EXCL | O_NOFOLLOW`` under a temporary name and renamed into place, so a link planted
at the final name is replaced, never followed; ownership and mode are set through the
open descriptor (``fchown``/``fchmod``). Trees are staged next to their target and
swapped in with one rename, so a reader sees the old tree or the new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from pglocalai.install import InstallError


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def tree_digest(root: str | Path) -> str:
    """One sha256 over a tree's relative paths, modes and file contents (links refused)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in path.parts:
            continue
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            raise InstallError(f"\"{path}\" is a symbolic link", hint="remove it and re-run")
        digest.update(f"{rel}\0{stat.S_IMODE(info.st_mode):o}\0".encode())
        if stat.S_ISREG(info.st_mode):
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def check_trusted_dir(path: Path, owners: Iterable[int] = (0,)) -> None:
    """``path`` is a real directory owned by one of ``owners`` that others cannot write."""
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise InstallError(f"\"{path}\" is not a directory", detail="it may be a symbolic link",
                           hint="remove it, or choose another location")
    # a sticky folder (/tmp) is fine: nobody can rename or remove root's entries in it
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX
    if info.st_uid not in tuple(owners) or shared:
        raise InstallError(f"refusing to write into \"{path}\"",
                           detail=f"it belongs to uid {info.st_uid} with mode "
                                  f"{oct(stat.S_IMODE(info.st_mode))}",
                           hint="only root may be able to write to the folders pglocalai "
                                "installs into")


def make_dirs(path: str | Path, mode: int = 0o755) -> list[Path]:
    """Create ``path`` and its missing parents as root-owned folders; returns those created.

    Every existing ancestor must be root's and not writable by others, so nobody can swap
    a folder on the way for a link.
    """
    path = Path(path)
    created: list[Path] = []
    for folder in [*reversed(path.parents), path]:
        if folder == Path("/"):
            continue
        try:
            check_trusted_dir(folder)
            continue
        except FileNotFoundError:
            pass
        folder.mkdir(mode=mode)
        _fix_dir(folder, mode)  # mkdir's mode went through the umask
        created.append(folder)
    return created


def _fix_dir(folder: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)


def make_private_dir(path: str | Path, owner: tuple[int, int], mode: int = 0o700) -> bool:
    """A folder for the server's user (its parent must be root's); True when created."""
    path = Path(path)
    make_dirs(path.parent)
    created = False
    try:
        path.mkdir(mode=mode)
        created = True
    except FileExistsError:
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise InstallError(f"\"{path}\" is not a directory",
                               hint="remove it and re-run") from None
    _fix_dir(path, mode, owner)
    return created


def write_file(path: str | Path, data: bytes, mode: int = 0o644,
               owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to a fresh file next to ``path`` and rename it over ``path``.

    Safe in a folder another user can write (a Debian cluster's conf.d belongs to
    postgres): the new file is created O_EXCL | O_NOFOLLOW through the folder's
    descriptor, and rename replaces whatever name is there without following it.
    """
    path = Path(path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    tmp = f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dfd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(dfd)


def read_file(path: str | Path) -> bytes | None:
    """The bytes of a regular file, or None when there is none (a link counts as none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: a symbolic link
            return None
        raise
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read()


def remove_file(path: str | Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def install_tree(source: Path, target: Path, files: Iterable[str]) -> None:
    """Copy ``files`` (paths relative to ``source``) into a staging folder next to
    ``target`` (0755 folders, 0644 files, owned by root) and swap it in."""
    make_dirs(target.parent)
    staging = target.with_name(f".{target.name}.new.{uuid.uuid4().hex[:8]}")
    old = target.with_name(f".{target.name}.old.{uuid.uuid4().hex[:8]}")
    staging.mkdir(mode=0o755)
    try:
        for rel in files:
            dest = staging / rel
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            shutil.copyfile(source / rel, dest, follow_symlinks=False)
            os.chmod(dest, 0o644)
        replace_tree(staging, target, old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def replace_tree(staging: Path, target: Path, old: Path) -> None:
    """Put ``staging`` at ``target``; a tree already there is moved to ``old`` first."""
    if target.is_symlink() or target.exists():
        os.rename(target, old)
    os.rename(staging, target)


def remove_tree(path: Path) -> None:
    """Remove a tree (rmtree never follows links inside it); a link at ``path`` itself is
    only unlinked."""
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def remove_empty_dirs(paths: Iterable[Path]) -> None:
    """rmdir each of ``paths`` that is empty, deepest first."""
    for path in sorted(set(paths), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(FileNotFoundError, OSError):
            path.rmdir()
