"""pglocalai.pg.trust: which runtime socket a PostgreSQL backend talks to.

Real sockets, real folders, real processes of other users (root is needed to
create them: CI and `make test` run as root, and a run without root fails here
instead of skipping). What the backend does with a refusal (SQLSTATE 42501 and
no connection) is checked through pglocalai.pg.functions at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pglocalai import errors
from pglocalai.pg import functions as f
from pglocalai.pg import trust

NOBODY = 65534


def refusal(path: str | Path) -> str:
    with pytest.raises(errors.InsufficientPrivilege) as info:
        trust.connect_trusted(str(path), 1.0).close()
    assert info.value.sqlstate == "42501"
    return info.value.detail or ""


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """A folder only root can change, like /run/pglocalai."""
    assert os.geteuid() == 0, "these tests create folders and processes of other users"
    folder = tmp_path / "home"
    folder.mkdir(mode=0o700)
    return folder


@contextmanager
def listener(path: Path, uid: int = 0) -> Iterator[None]:
    """A process of user ``uid`` listening on ``path`` (a forked child)."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(ready_r)
            if uid:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(str(path))
            server.listen(8)
            os.write(ready_w, b"1")
            while True:
                conn, _ = server.accept()
                conn.close()
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1", "the listener did not start"
        yield
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(ready_r)


def test_a_socket_in_a_private_root_folder_is_trusted(home: Path) -> None:
    with listener(home / "s.sock"):
        trust.connect_trusted(str(home / "s.sock"), 1.0).close()


@pytest.mark.parametrize(("mode", "reason"), [(0o777, "every user"), (0o1777, "every user"),
                                              (0o770, "its group"), (0o775, "its group")])
def test_the_sockets_own_folder_must_not_be_writable_by_others(home: Path, mode: int,
                                                               reason: str) -> None:
    with listener(home / "s.sock"):
        home.chmod(mode)
        assert reason in refusal(home / "s.sock")


def test_a_sticky_folder_above_is_fine_a_group_writable_one_is_not(home: Path) -> None:
    private = home / "private"
    private.mkdir(mode=0o700)
    with listener(private / "s.sock"):
        home.chmod(0o1777)  # like /tmp above /tmp/private
        trust.connect_trusted(str(private / "s.sock"), 1.0).close()
        home.chmod(0o770)
        assert "its group" in refusal(private / "s.sock")


def test_an_acl_that_lets_another_user_write_is_refused(home: Path) -> None:
    # user_obj rwx, user:65534 rwx, group_obj r-x, mask rwx, other r-x (setfacl -m u:65534:rwx)
    entries = [(1, 7, -1), (2, 7, NOBODY), (4, 5, -1), (0x10, 7, -1), (0x20, 5, -1)]
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHi", t, p, u) for t, p, u in entries)
    with listener(home / "s.sock"):
        os.setxattr(home, "system.posix_acl_access", acl)
        assert "access control list" in refusal(home / "s.sock")


@pytest.mark.parametrize("shared", ["/tmp", "/dev/shm", "/run/lock"])
def test_shared_system_folders_are_refused(shared: str) -> None:
    if not os.path.isdir(shared):
        pytest.fail(f"{shared} does not exist on this machine: the refusal cannot be checked")
    path = Path(shared) / f"pglocalai-trust-test-{os.getpid()}.sock"
    with listener(path):
        try:
            assert "every user" in refusal(path) or "its group" in refusal(path)
        finally:
            path.unlink()


def test_a_folder_of_another_user_is_refused(home: Path) -> None:
    theirs = home / "theirs"
    theirs.mkdir(mode=0o700)
    with listener(theirs / "s.sock"):
        os.chown(theirs, NOBODY, NOBODY)
        assert "belongs to" in refusal(theirs / "s.sock")


def test_a_listener_of_another_user_is_refused_even_in_a_trusted_folder() -> None:
    # pytest's tmp_path sits in a folder only root may enter: nobody needs a way in
    home = Path(tempfile.mkdtemp(prefix="pglocalai-trust-"))
    home.chmod(0o733)  # let nobody create its socket, then take that right back
    try:
        _refuse_a_listener_of_another_user(home)
    finally:
        shutil.rmtree(home)


def _refuse_a_listener_of_another_user(home: Path) -> None:
    with listener(home / "s.sock", uid=NOBODY):
        home.chmod(0o700)
        assert "belongs to" in refusal(home / "s.sock")  # the socket file is theirs
        os.lchown(home / "s.sock", 0, 0)  # even with the file given to root: the peer counts
        detail = refusal(home / "s.sock")
        assert "the process listening on it" in detail and "nobody" in detail


def test_a_symlink_to_an_untrusted_folder_is_judged_by_its_target(home: Path,
                                                                  tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    with listener(shared / "s.sock"):
        shared.chmod(0o777)
        (home / "link").symlink_to(shared)
        assert "every user" in refusal(home / "link" / "s.sock")


def test_a_symlink_swapped_in_after_resolving_is_not_followed(home: Path, tmp_path: Path,
                                                              monkeypatch: Any) -> None:
    """The walk opens each folder with O_NOFOLLOW: a swap between resolving and opening fails."""
    good = home / "good"
    good.mkdir(mode=0o700)
    evil = tmp_path / "evil"
    evil.mkdir(mode=0o777)
    with listener(evil / "s.sock"):
        (home / "swapped").symlink_to(evil)
        # realpath saw a real folder "swapped"; by the time it is opened it is a symlink
        monkeypatch.setattr(trust.os.path, "realpath", lambda p: p)
        assert "changed while it was checked" in refusal(home / "swapped" / "s.sock")


def test_a_socket_swapped_for_a_symlink_is_refused(home: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir(mode=0o700)
    with listener(evil / "s.sock"):
        (home / "s.sock").symlink_to(evil / "s.sock")
        # realpath resolves it; the resolved path is then checked like any other
        trust.connect_trusted(str(home / "s.sock"), 1.0).close()
        evil.chmod(0o777)
        assert "every user" in refusal(home / "s.sock")


def test_the_backend_refuses_before_sending_anything(home: Path) -> None:
    """pglocalai.pg.functions: the refusal becomes a 42501 error and no text leaves."""
    received: list[bytes] = []
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(home / "s.sock"))
    server.listen(1)
    server.settimeout(0.2)
    home.chmod(0o777)
    gd: dict[str, Any] = {}
    assert f.embed_text(gd, "multilingual-e5-small:v1", "secret text", 1000,
                        str(home / "s.sock")) is None
    sqlstate, message, detail, hint = gd[f.ERROR_KEY]
    assert sqlstate == "42501" and "refusing to connect" in message and "every user" in detail
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        try:
            conn, _ = server.accept()
            received.append(conn.recv(1 << 16))
        except TimeoutError:
            pass
    server.close()
    assert received == []


def test_every_reconnect_is_checked_again(home: Path) -> None:
    """A session that connected once is still refused after the folder was opened up."""
    from pglocalai.client import Client

    with listener(home / "s.sock"):
        client = Client(str(home / "s.sock"), open_unix=trust.connect_trusted)
        client._connect()
        client.close()
        home.chmod(0o777)
        with pytest.raises(errors.InsufficientPrivilege):
            client._connect()
