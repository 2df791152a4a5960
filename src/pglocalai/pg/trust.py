"""Which runtime socket a PostgreSQL backend may talk to.

Standard library only: PL/Python imports this module inside the server.

Any role may ``SET azure_local_ai.runtime_socket``, and the backend sends its
texts there and commits the vectors it gets back. So the backend only talks to
a socket that nobody but root and the server's own user can swap:

* every folder from ``/`` down to the socket belongs to root or the server's
  user and no other user can write to it (neither by the mode's other nor its
  group bits, which also carry the mask of an access control list); folders
  above the socket's own may be sticky like ``/tmp``, its own folder may not;
* the path is walked one folder at a time with ``O_NOFOLLOW`` and the backend
  connects through the descriptor of the folder it checked
  (``/proc/self/fd/N/name``), so a symlink swapped in after the check changes
  nothing;
* after connecting, the peer's credentials (``SO_PEERCRED``) must be root or
  the server's user: the process that listens is the one that was checked.

Checked again on every connect and reconnect.

>>> sock = connect_trusted("/run/pglocalai/pglocalai.sock", timeout=2.0)
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from collections.abc import Collection

from pglocalai.errors import InsufficientPrivilege

_UCRED = struct.Struct("3i")  # pid, uid, gid
_HINT = ("put the runtime's socket in a folder that belongs to root or to the server's user and "
         "that no other user can write to")


def trusted_uids() -> tuple[int, int]:
    """Root and the server's own user."""
    return (0, os.geteuid())


def writable_by_others(info: os.stat_result, *, sticky_ok: bool) -> str | None:
    """Why users other than the owner could change an entry, or None.

    A POSIX access control list that lets a named user or group write shows in
    the group bits, which hold the ACL's mask, so checking them covers ACLs.
    """
    if sticky_ok and info.st_mode & stat.S_ISVTX:
        return None  # like /tmp: others may add entries, not replace ours
    if info.st_mode & stat.S_IWOTH:
        return "is writable by every user"
    if info.st_mode & stat.S_IWGRP:
        return "is writable by its group or through an access control list"
    return None


def _refuse(path: str, reason: str) -> InsufficientPrivilege:
    return InsufficientPrivilege(f'refusing to connect to the runtime socket "{path}"',
                                 detail=reason, hint=_HINT)


def _owner_name(uid: int) -> str:
    try:
        import pwd  # noqa: PLC0415 - Unix only

        return f'user "{pwd.getpwuid(uid).pw_name}"'
    except (ImportError, KeyError):
        return f"uid {uid}"


def open_checked_folder(path: str, trusted: Collection[int]) -> tuple[int, str]:
    """(descriptor of the socket's folder, socket name) after checking the whole path.

    Symlinks in the configured path are resolved once; the resolved path is
    then walked with ``O_NOFOLLOW``, so a swap after resolving fails instead
    of being followed. The caller closes the descriptor.
    """
    real = os.path.realpath(path)
    folder, name = os.path.split(real)
    parts = [p for p in folder.split("/") if p]
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    walked = "/"
    try:
        for depth in range(len(parts) + 1):
            info = os.fstat(fd)
            if info.st_uid not in trusted:
                raise _refuse(path, f'the folder "{walked}" belongs to {_owner_name(info.st_uid)}')
            why = writable_by_others(info, sticky_ok=depth < len(parts))
            if why:
                raise _refuse(path, f'the folder "{walked}" {why}')
            if depth == len(parts):
                break
            try:
                child = os.open(parts[depth], os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW,
                                dir_fd=fd)
            except OSError as exc:
                if exc.errno in (40, 20):  # ELOOP, ENOTDIR: swapped for a symlink or a file
                    raise _refuse(path, f'"{os.path.join(walked, parts[depth])}" changed while '
                                        "it was checked") from None
                raise
            os.close(fd)
            fd = child
            walked = os.path.join(walked, parts[depth])
        try:
            entry = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return fd, name  # connecting fails and says that the runtime is not running
        if not stat.S_ISSOCK(entry.st_mode):
            raise _refuse(path, f'"{real}" is not a socket')
        if entry.st_uid not in trusted:
            raise _refuse(path, f'the socket "{real}" belongs to {_owner_name(entry.st_uid)}')
        return fd, name
    except BaseException:
        os.close(fd)
        raise


def check_peer(sock: socket.socket, path: str, trusted: Collection[int]) -> None:
    """Refuse a listener that runs as someone other than root or the server's user."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, _gid = _UCRED.unpack(raw)
    if uid not in trusted:
        raise _refuse(path, f"the process listening on it (pid {pid}) runs as {_owner_name(uid)}")


def connect_trusted(path: str, timeout: float, trusted: Collection[int] | None = None
                    ) -> socket.socket:
    """A connected Unix socket to ``path``, or InsufficientPrivilege / OSError."""
    allowed = tuple(trusted) if trusted is not None else trusted_uids()
    folder_fd, name = open_checked_folder(path, allowed)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        via = f"/proc/self/fd/{folder_fd}/{name}"
        sock.connect(via if len(via) < 108 and os.path.isdir("/proc/self/fd") else
                     os.path.join(os.path.realpath(path)))
        check_peer(sock, path, allowed)
        return sock
    except BaseException:
        sock.close()
        raise
    finally:
        os.close(folder_fd)
