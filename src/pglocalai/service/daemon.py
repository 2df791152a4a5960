"""Process plumbing: socket ownership and stale-socket cleanup, pidfile, daemon
mode and the supervisor that restarts a runtime that died.

None of this touches ONNX Runtime: the supervisor forks before any model or
thread exists, so every child starts from a clean process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pglocalai.errors import InvalidArgument
from pglocalai.service.logs import get_logger

log = get_logger()

EXIT_CONFIG = 2  # the supervisor does not restart a runtime that exits with this code
READY_TIMEOUT_S = 300.0


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
    """
    sock_path = Path(path)
    directory = sock_path.parent
    ids = lookup_owner(owner) if owner else None
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    info = directory.stat()
    shared = bool(info.st_mode & stat.S_ISVTX) and bool(info.st_mode & stat.S_IWOTH)
    if shared:
        log.warning("socket_directory_shared", directory=str(directory),
                    hint="give the runtime a directory of its own, e.g. /run/pglocalai")
    else:
        # the directory is the first gate: only its owner may reach the socket
        os.chmod(directory, 0o700)
        if ids is not None:
            os.chown(directory, *ids)
    lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        raise AlreadyRunning(f"another runtime is running on \"{path}\"",
                             hint="stop it first (pglocalai stop) or use another --socket") \
            from None
    if sock_path.exists() or sock_path.is_symlink():
        if not stat.S_ISSOCK(sock_path.lstat().st_mode):
            os.close(lock_fd)
            raise InvalidArgument(f"\"{path}\" exists and is not a socket",
                                  hint="remove it or choose another --socket")
        if _answers(path):
            os.close(lock_fd)
            raise AlreadyRunning(f"another runtime answers on \"{path}\"",
                                 hint="stop it first (pglocalai stop) or use another --socket")
        log.info("stale_socket_removed", socket=path)
        sock_path.unlink()
    return lock_fd


def secure_socket(path: str, owner: str | None) -> None:
    """0600: only the owner (and root) may connect."""
    os.chmod(path, 0o600)
    if owner:
        os.chown(path, *lookup_owner(owner))


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
    for name in (path, f"{path}.lock"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    if lock_fd is not None:
        os.close(lock_fd)


# -- pidfile -----------------------------------------------------------------


def write_pidfile(path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str | None) -> None:
    if path and read_pidfile(path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def read_pidfile(path: str) -> int | None:
    try:
        return int(Path(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- daemon and readiness ------------------------------------------------------


def daemonize() -> int:
    """Detach (double fork, new session); returns the write end of a readiness pipe.

    The original process stays until the daemon reports ``ok`` (listening) or an
    error on that pipe, so ``pglocalai serve --daemon`` exits 0 only once the
    runtime answers, and with the daemon's error otherwise.
    """
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        os._exit(_await_ready(read_fd))
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return write_fd


def _await_ready(read_fd: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT_S
    data = b""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        while time.monotonic() < deadline:
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
            if data.endswith(b"\n"):
                break
    message = data.decode("utf-8", "replace").strip()
    if message == "ok":
        return 0
    sys.stderr.write((message or "error: the runtime exited before it was ready") + "\n")
    return 1


def notify_ready(fd: int | None, message: str = "ok") -> None:
    """Tell the waiting ``--daemon`` parent how the start went (once)."""
    if fd is None:
        return
    try:
        os.write(fd, (message.replace("\n", " ") + "\n").encode("utf-8"))
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- supervisor ----------------------------------------------------------------


def supervise(run_child: Callable[[int | None], int], ready_fd: int | None,
              min_backoff: float = 0.5, max_backoff: float = 30.0) -> int:
    """Run ``run_child`` in a forked child and restart it when it dies, with backoff.

    SIGTERM/SIGINT are forwarded to the child and end the loop. A child that
    exits with EXIT_CONFIG (bad configuration, another runtime running) is not
    restarted. The backoff resets once a child has run for a minute.
    """
    state = {"stop": False, "child": 0}

    def on_signal(signum: int, _frame: object) -> None:
        state["stop"] = True
        if state["child"]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["child"], signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = min_backoff
    while not state["stop"]:
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = run_child(ready_fd)
            finally:
                os._exit(code)
        state["child"] = pid
        if ready_fd is not None:
            os.close(ready_fd)  # only the first child reports readiness
            ready_fd = None
        log.info("supervisor_started_child", pid=pid)
        status = _wait(pid)
        state["child"] = 0
        code = os.waitstatus_to_exitcode(status)
        if state["stop"]:
            break
        if code == EXIT_CONFIG:
            log.error("supervisor_giving_up", pid=pid, exit_code=code)
            return code
        if time.monotonic() - started > 60:
            backoff = min_backoff
        log.warning("supervisor_restarting", pid=pid, exit_code=code, backoff_s=backoff)
        _sleep_unless_stopped(backoff, state)
        backoff = min(backoff * 2, max_backoff)
    log.info("supervisor_stopped")
    return 0


def _wait(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise


def _sleep_unless_stopped(seconds: float, state: dict[str, object]) -> None:
    end = time.monotonic() + seconds
    while not state["stop"] and time.monotonic() < end:
        time.sleep(min(0.05, end - time.monotonic()))
