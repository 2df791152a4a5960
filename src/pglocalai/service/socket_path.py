"""The runtime socket's folder, lock file and socket file, handled without path races.

The runtime may be started by root (tests, a hand-run ``pglocalai serve``) with a socket
folder that another user owns (``--socket-owner postgres``). That user could swap any name
in the folder for a symbolic link to, say, /etc/shadow between two path operations, so no
privileged step here follows a name twice:

* the folder is opened once with ``O_NOFOLLOW`` and fixed through that descriptor
  (``fchmod``/``fchown``), never by path;
* the lock file is created with ``O_EXCL | O_NOFOLLOW`` (or opened ``O_NOFOLLOW``) and must be
  a regular file with one link;
* the socket gets its mode from the umask at ``bind`` (0600), not from a ``chmod`` by path,
  and its owner from ``lchown`` after an ``lstat`` shows it is still a socket.

Deployments (``make up``, the systemd unit, ``pglocalai install``) avoid the question
altogether: the runtime runs as the server's user and owns everything it creates.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from pglocalai.errors import InvalidArgument
from pglocalai.service.logs import get_logger

log = get_logger()

# 0600 for the socket: bind creates it with 0777 & ~umask
SOCKET_UMASK = 0o177
_saved_umask: int | None = None


class AlreadyRunning(InvalidArgument):
    """Another runtime answers on the socket (or holds its lock)."""


def lookup_owner(user: str) -> tuple[int, int]:
    import pwd  # noqa: PLC0415 - Unix only

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise InvalidArgument(f"user \"{user}\" does not exist",
                              hint="--socket-owner takes the name of an existing user, "
                                   "e.g. postgres") from None
    return entry.pw_uid, entry.pw_gid


def prepare_socket_path(path: str, owner: str | None) -> int:
    """Create the socket's directory (0700, owned by ``owner``), take the socket's
    lock and remove a stale socket file; returns the lock's file descriptor.

    Refuses to start when another runtime holds the lock or answers on the socket.
    On return the umask is 0177, so the socket that the caller binds next is 0600;
    :func:`secure_socket` (or :func:`release_socket`) puts the umask back.
    """
    global _saved_umask
    sock_path = Path(path)
    ids = lookup_owner(owner) if owner else None
    _prepare_directory(sock_path.parent, ids)
    lock_fd = _take_lock(f"{path}.lock", path)
    try:
        _remove_stale_socket(path)
    except BaseException:
        os.close(lock_fd)
        raise
    if _saved_umask is None:
        _saved_umask = os.umask(SOCKET_UMASK)
    return lock_fd


def _prepare_directory(directory: Path, ids: tuple[int, int] | None) -> None:
    if not directory.is_symlink() and not directory.exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=0o700)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidArgument(f"the socket's folder \"{directory}\" is not a directory",
                                  detail="it is a symbolic link or another kind of file",
                                  hint="give the runtime a real directory of its own, "
                                       "e.g. /run/pglocalai") from None
        raise
    try:
        info = os.fstat(dfd)
        if info.st_mode & stat.S_ISVTX and info.st_mode & stat.S_IWOTH:
            # /tmp and the like: not ours to lock down (the socket's 0600 still applies)
            log.warning("socket_directory_shared", directory=str(directory),
                        hint="give the runtime a directory of its own, e.g. /run/pglocalai")
            return
        # the directory is the first gate: only its owner may reach the socket
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.fchmod(dfd, 0o700)
        if ids is not None and (info.st_uid, info.st_gid) != ids:
            os.fchown(dfd, *ids)
    finally:
        os.close(dfd)


def _take_lock(lock_path: str, sock_path: str) -> int:
    """An flock on ``lock_path``, a regular file with one link, created without following
    a symbolic link; retried when a stopping runtime unlinks the file meanwhile."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(10):
        try:
            fd = os.open(lock_path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                fd = os.open(lock_path, flags)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _bad_lock(lock_path, exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise InvalidArgument(f"the lock file \"{lock_path}\" is not a plain file",
                                      detail=f"mode {oct(info.st_mode)}, {info.st_nlink} links",
                                      hint="remove it, then start the runtime again")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise AlreadyRunning(f"another runtime is running on \"{sock_path}\"",
                                     hint="stop it first (pglocalai stop) or use another "
                                          "--socket") from None
            try:
                now = os.lstat(lock_path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # locked a file that a stopping runtime had just unlinked: again
    raise AlreadyRunning(f"could not take the lock of \"{sock_path}\"",
                         hint="another runtime keeps starting and stopping on that socket")


def _bad_lock(lock_path: str, exc: OSError) -> InvalidArgument:
    if exc.errno == errno.ELOOP:
        return InvalidArgument(f"the lock file \"{lock_path}\" is a symbolic link",
                               hint="remove it, then start the runtime again")
    if exc.errno == errno.EACCES:
        return InvalidArgument(f"cannot open the lock file \"{lock_path}\"",
                               detail=f"{exc.strerror}; it may be left by a runtime that ran "
                                      "as another user",
                               hint="remove it if no runtime uses that socket")
    return InvalidArgument(f"cannot open the lock file \"{lock_path}\"", detail=str(exc))


def _remove_stale_socket(path: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise InvalidArgument(f"\"{path}\" exists and is not a socket",
                              hint="remove it or choose another --socket")
    if _answers(path):
        raise AlreadyRunning(f"another runtime answers on \"{path}\"",
                             hint="stop it first (pglocalai stop) or use another --socket")
    log.info("stale_socket_removed", socket=path)
    os.unlink(path)  # unlink never follows a link: a swapped-in one is what goes


def secure_socket(path: str, owner: str | None) -> None:
    """Check the socket just bound (0600 from the umask) and give it to ``owner``."""
    _restore_umask()
    info = os.lstat(path)
    if not stat.S_ISSOCK(info.st_mode):
        raise InvalidArgument(f"\"{path}\" was replaced after the runtime bound it",
                              detail=f"it is now mode {oct(info.st_mode)}",
                              hint="someone who can write to the socket's folder changed it")
    if stat.S_IMODE(info.st_mode) & 0o177:
        raise InvalidArgument(f"the socket \"{path}\" is mode {oct(stat.S_IMODE(info.st_mode))}, "
                              "not 0600", hint="bind it after prepare_socket_path")
    if owner:
        ids = lookup_owner(owner)
        if (info.st_uid, info.st_gid) != ids:
            # lchown: if the name was swapped for a link since the lstat, the link changes
            os.chown(path, *ids, follow_symlinks=False)


def _restore_umask() -> None:
    global _saved_umask
    if _saved_umask is not None:
        os.umask(_saved_umask)
        _saved_umask = None


def _answers(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def release_socket(path: str, lock_fd: int | None) -> None:
    """Remove the socket and its lock file (unlink never follows a link)."""
    _restore_umask()
    for name in (path, f"{path}.lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    if lock_fd is not None:
        os.close(lock_fd)
