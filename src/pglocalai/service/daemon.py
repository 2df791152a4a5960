"""Process plumbing: pidfile, daemon mode and the supervisor that restarts a runtime
that died (the socket's folder, lock and file are in :mod:`pglocalai.service.socket_path`).

None of this touches ONNX Runtime: the supervisor forks before any model or
thread exists, so every child starts from a clean process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pglocalai.service.logs import get_logger
from pglocalai.service.socket_path import (  # noqa: F401 - the runtime's entry points
    AlreadyRunning,
    lookup_owner,
    prepare_socket_path,
    release_socket,
    secure_socket,
)

log = get_logger()

EXIT_CONFIG = 2  # the supervisor does not restart a runtime that exits with this code
READY_TIMEOUT_S = 300.0
# A runtime that fails this many starts in a row (it never became ready) is not started again:
# a broken model store or configuration would otherwise be retried forever.
MAX_START_FAILURES = 5


# -- pidfile -----------------------------------------------------------------


# pidfile path -> its open file, whose lock this process holds (forked children share it)
_HELD: dict[str, int] = {}


def write_pidfile(path: str) -> None:
    """Written to a fresh file (O_EXCL, O_NOFOLLOW) and renamed over ``path``: a link
    planted at either name is replaced, never followed.

    The file stays open and locked (flock) while this process lives. A second start
    with the same pidfile (two ``make up`` at once) is refused here, before it could
    replace the file and then remove it when its socket turns out to be taken, which
    left the running process without a pidfile.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    holder = pidfile_holder(path)
    if holder is not None:
        raise AlreadyRunning(f"another process (pid {holder}) holds the pidfile \"{path}\"",
                             hint="stop it first, or give this one another --pidfile")
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh file: nobody else has it
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    os.replace(tmp, path)
    _HELD[path] = fd


def pidfile_holder(path: str) -> int | None:
    """The pid written in ``path`` while a live process (this one too) holds its lock;
    None when nobody does (a stale file, or none)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pidfile(path) or -1
    finally:
        os.close(fd)
    return None


def remove_pidfile(path: str | None) -> None:
    if path and read_pidfile(path) == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    fd = _HELD.pop(path, None) if path else None
    if fd is not None:
        os.close(fd)


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
              min_backoff: float = 0.5, max_backoff: float = 30.0,
              max_start_failures: int = MAX_START_FAILURES) -> int:
    """Run ``run_child`` in a forked child and restart it when it dies, with backoff.

    SIGTERM/SIGINT are forwarded to the child and end the loop. Each child gets a
    readiness pipe of its own (the ``ready_fd`` it is passed); the first child's report is
    handed on to ``ready_fd``. A child that exits with EXIT_CONFIG (bad configuration,
    another runtime running) is not restarted, and neither is one that failed
    ``max_start_failures`` starts in a row (it exited before it reported ready): the
    supervisor then exits 1. The backoff resets once a child has run for a minute.
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
    start_failures = 0
    while not state["stop"]:
        started = time.monotonic()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            # kept to report a crash: the runtime closes write_fd once it reported
            report_fd = os.dup(write_fd)
            try:
                os.close(read_fd)
                if ready_fd is not None:
                    os.close(ready_fd)  # only the supervisor reports to the waiting parent
                code = run_child(write_fd)
            except BaseException as exc:  # an import error, a bug: logged, not lost
                message = f"error: the runtime failed: {type(exc).__name__}: {exc}"
                log.error("runtime_crashed", error=message, exc_info=True)
                with contextlib.suppress(OSError):
                    os.write(report_fd, (message.replace("\n", " ") + "\n").encode())
            finally:
                os._exit(code)
        os.close(write_fd)
        state["child"] = pid
        log.info("supervisor_started_child", pid=pid)
        report = _read_report(read_fd)
        if ready_fd is not None:
            notify_ready(ready_fd, report or "error: the runtime exited before it was ready")
            ready_fd = None
        status = _wait(pid)
        state["child"] = 0
        code = os.waitstatus_to_exitcode(status)
        if state["stop"]:
            break
        if code == EXIT_CONFIG:
            log.error("supervisor_giving_up", pid=pid, exit_code=code,
                      reason="configuration error")
            return code
        start_failures = 0 if report == "ok" else start_failures + 1
        if start_failures >= max_start_failures:
            log.error("supervisor_giving_up", pid=pid, exit_code=code,
                      reason=f"{start_failures} starts in a row failed", last_error=report)
            return 1
        if time.monotonic() - started > 60:
            backoff = min_backoff
        log.warning("supervisor_restarting", pid=pid, exit_code=code, backoff_s=backoff,
                    start_failures=start_failures)
        _sleep_unless_stopped(backoff, state)
        backoff = min(backoff * 2, max_backoff)
    log.info("supervisor_stopped")
    return 0


def _read_report(fd: int) -> str:
    """The child's readiness line ("ok" or an error), or "" if it exited without one."""
    data = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while not data.endswith(b"\n") and len(data) < 65536:
            chunk = pipe.read(4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()


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
