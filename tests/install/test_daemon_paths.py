"""Privileged path operations of the runtime never follow a name another user can swap.

The runtime may run as root with a socket folder that belongs to postgres (tests, a
hand-run ``pglocalai serve --socket-owner postgres``): postgres can put a symbolic link at
any name in that folder. A link planted at the socket, at its lock file or at the folder
itself must make the start fail, and the file it points to must keep its owner and mode.
Also here: a supervised runtime that cannot start is given up on, not restarted forever.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pglocalai.errors import InvalidArgument
from pglocalai.service import daemon, socket_path

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack needs root as victim")


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder like /run/pglocalai's parent, plus a victim file root owns."""
    path = Path(tempfile.mkdtemp(prefix="pglocalai-paths-", dir="/tmp"))
    path.chmod(0o755)
    (path / "victim").write_text("root's secret\n")
    (path / "victim").chmod(0o600)
    yield path
    for child in sorted(path.rglob("*"), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


def postgres_ids() -> tuple[int, int]:
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def unchanged(victim: Path) -> bool:
    info = victim.stat()
    return (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)


def socket_folder(base: Path) -> Path:
    folder = base / "rt"
    folder.mkdir(mode=0o700)
    os.chown(folder, *postgres_ids())  # as make up leaves it: the server's user owns it
    return folder


def test_a_link_at_the_lock_file_is_refused(base: Path) -> None:
    folder = socket_folder(base)
    (folder / "s.sock.lock").symlink_to(base / "victim")
    with pytest.raises(InvalidArgument, match="symbolic link"):
        daemon.prepare_socket_path(str(folder / "s.sock"), "postgres")
    assert unchanged(base / "victim")


def test_a_link_at_the_socket_is_refused_not_followed(base: Path) -> None:
    folder = socket_folder(base)
    (folder / "s.sock").symlink_to(base / "victim")
    with pytest.raises(InvalidArgument, match="is not a socket"):
        daemon.prepare_socket_path(str(folder / "s.sock"), "postgres")
    assert unchanged(base / "victim")
    assert (folder / "s.sock").is_symlink()  # refused, not "cleaned up"


def test_a_link_swapped_in_after_bind_is_neither_chowned_nor_chmodded(base: Path) -> None:
    folder = socket_folder(base)
    path = str(folder / "s.sock")
    lock_fd = daemon.prepare_socket_path(path, "postgres")
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600  # from the umask, not a chmod
        os.unlink(path)  # what postgres could do: it owns the folder
        os.symlink(base / "victim", path)
        with pytest.raises(InvalidArgument, match="was replaced"):
            daemon.secure_socket(path, "postgres")
        assert unchanged(base / "victim")
    finally:
        listener.close()
        daemon.release_socket(path, lock_fd)
    assert unchanged(base / "victim")
    assert not os.path.lexists(path) and not os.path.lexists(path + ".lock")


def test_the_umask_is_restored_after_bind(base: Path) -> None:
    folder = socket_folder(base)
    path = str(folder / "s.sock")
    before = os.umask(0o022)
    try:
        lock_fd = daemon.prepare_socket_path(path, "postgres")
        assert os.umask(0o177) == 0o177  # read it: still the bind umask
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        daemon.secure_socket(path, "postgres")
        assert os.umask(0o022) == 0o022
        info = os.lstat(path)
        assert (info.st_uid, info.st_gid) == postgres_ids()
        assert stat.S_IMODE(info.st_mode) == 0o600
        listener.close()
        daemon.release_socket(path, lock_fd)
    finally:
        os.umask(before)


def test_a_linked_socket_folder_is_refused_and_its_target_untouched(base: Path) -> None:
    target = base / "etc-like"
    target.mkdir(mode=0o755)
    (base / "rt").symlink_to(target)
    with pytest.raises(InvalidArgument, match="not a directory"):
        daemon.prepare_socket_path(str(base / "rt" / "s.sock"), "postgres")
    info = target.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o755)
    assert list(target.iterdir()) == []  # no lock file was created through the link


def test_a_hard_link_at_the_lock_file_is_refused(base: Path) -> None:
    folder = socket_folder(base)
    os.link(base / "victim", folder / "s.sock.lock")
    with pytest.raises(InvalidArgument, match="not a plain file"):
        daemon.prepare_socket_path(str(folder / "s.sock"), "postgres")
    assert unchanged(base / "victim")


def test_the_folder_is_fixed_through_its_descriptor(base: Path) -> None:
    folder = base / "rt"
    folder.mkdir(mode=0o755)
    lock_fd = daemon.prepare_socket_path(str(folder / "s.sock"), "postgres")
    try:
        info = folder.stat()
        assert (info.st_uid, info.st_gid) == postgres_ids()
        assert stat.S_IMODE(info.st_mode) == 0o700
    finally:
        daemon.release_socket(str(folder / "s.sock"), lock_fd)


def test_a_pidfile_link_is_replaced_not_followed(base: Path) -> None:
    pidfile = base / "runtime.pid"
    pidfile.symlink_to(base / "victim")
    daemon.write_pidfile(str(pidfile))
    assert not pidfile.is_symlink()
    assert pidfile.read_text().strip() == str(os.getpid())
    assert (base / "victim").read_text() == "root's secret\n"


# -- the supervisor ---------------------------------------------------------------------


def test_a_runtime_that_cannot_start_is_not_restarted_in_a_loop(tmp_path: Path) -> None:
    """Each child exits before it reports ready (as a runtime whose start fails in a way
    that is not a configuration error): the supervisor gives up after MAX_START_FAILURES."""
    starts = tmp_path / "starts"

    def child(ready_fd: int | None) -> int:
        with open(starts, "a") as fh:
            fh.write("x")
        return 1

    code = _in_fork(lambda: daemon.supervise(child, None, min_backoff=0.01, max_backoff=0.02))
    assert code == 1
    assert starts.read_text() == "x" * daemon.MAX_START_FAILURES


def test_a_runtime_that_started_is_restarted_after_it_dies(tmp_path: Path) -> None:
    """A child that reported ready and then died is restarted; the count of failed starts
    only grows with starts that never became ready."""
    starts = tmp_path / "starts"

    def child(ready_fd: int | None) -> int:
        with open(starts, "a") as fh:
            fh.write("x")
        n = len(starts.read_text())
        if n <= 3:
            daemon.notify_ready(ready_fd)  # ready, then dies: a crash, restarted
            return 1
        return 1  # from the 4th start on, it never becomes ready

    code = _in_fork(lambda: daemon.supervise(child, None, min_backoff=0.01, max_backoff=0.02))
    assert code == 1
    assert len(starts.read_text()) == 3 + daemon.MAX_START_FAILURES


def test_the_first_childs_error_reaches_the_waiting_parent(tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()

    def child(ready_fd: int | None) -> int:
        daemon.notify_ready(ready_fd, "error: no such model")
        return daemon.EXIT_CONFIG

    code = _in_fork(lambda: daemon.supervise(child, write_fd, min_backoff=0.01), close=write_fd)
    assert code == daemon.EXIT_CONFIG
    with os.fdopen(read_fd, "rb") as pipe:
        assert pipe.read() == b"error: no such model\n"


def test_a_child_that_raises_is_logged_and_reported(tmp_path: Path) -> None:
    """An exception in the runtime (an import error after a bad upgrade) reaches the waiting
    parent as an error line instead of vanishing with the child."""
    read_fd, write_fd = os.pipe()

    def child(ready_fd: int | None) -> int:
        raise ModuleNotFoundError("No module named 'pglocalai.service.gone'")

    code = _in_fork(lambda: daemon.supervise(child, write_fd, min_backoff=0.01,
                                             max_backoff=0.02), close=write_fd)
    assert code == 1
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    assert report.startswith("error: the runtime failed: ModuleNotFoundError"), report
    assert "pglocalai.service.gone" in report


def _in_fork(body: object, close: int | None = None) -> int:
    """Run the supervisor in a child process (it installs signal handlers), its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()  # type: ignore[operator]
        finally:
            os._exit(code)
    if close is not None:
        os.close(close)
    deadline = time.monotonic() + 60  # a supervisor that loops forever fails the test
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the supervisor was still restarting after 60 s")


def test_socket_path_is_where_the_daemon_finds_it() -> None:
    assert daemon.prepare_socket_path is socket_path.prepare_socket_path
