"""The installer's pieces without a cluster: the manifest's rules (what an uninstall
removes, keeps or puts back), the systemd unit it writes, and its root-only file writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pglocalai.install import InstallError, fsops
from pglocalai.install.installer import _remove_entry
from pglocalai.install.manifest import Manifest
from pglocalai.install.service import RuntimeService, WorkerService

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the installer runs as root")


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pglocalai-inst-", dir="/tmp"))
    yield path
    fsops.remove_tree(path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def place(m: Manifest, path: Path, data: bytes) -> bool:
    return m.place(path, "file", sha(data), lambda: _current(path),
                   lambda: fsops.write_file(path, data))


def _current(path: Path) -> str | None:
    data = fsops.read_file(path)
    return None if data is None else sha(data)


def uninstall(m: Manifest) -> None:
    others = m.others()
    for entry in reversed(m.entries):
        _remove_entry(entry, others, lambda _msg: None)
    fsops.remove_file(m.path)


def test_created_files_go_and_files_that_were_there_stay_or_come_back(base: Path) -> None:
    root = base / "installs"
    m = Manifest("15/a", root=root)
    (base / "same").write_bytes(b"v1\n")  # make install-ext put the same content there
    (base / "older").write_bytes(b"v0\n")  # an older version was there
    assert place(m, base / "new", b"v1\n")
    assert not place(m, base / "same", b"v1\n")
    assert place(m, base / "older", b"v1\n")
    assert (base / "older").read_bytes() == b"v1\n"
    assert [e.state for e in Manifest.load("15/a", root).entries] == \
        ["created", "adopted", "replaced"]
    # a re-run writes nothing
    m2 = Manifest.load("15/a", root)
    assert m2 is not None
    assert not any(place(m2, base / n, b"v1\n") for n in ("new", "same", "older"))
    uninstall(m2)
    assert not (base / "new").exists()
    assert (base / "same").read_bytes() == b"v1\n"
    assert (base / "older").read_bytes() == b"v0\n"


def test_what_two_clusters_share_goes_with_the_last_one(base: Path) -> None:
    root = base / "installs"
    a, b = Manifest("15/a", root=root), Manifest("15/b", root=root)
    (base / "older").write_bytes(b"v0\n")
    place(a, base / "shared", b"x\n")
    place(a, base / "older", b"x\n")
    place(b, base / "shared", b"x\n")
    place(b, base / "older", b"x\n")
    assert [e.state for e in b.entries] == ["shared", "shared"]
    uninstall(a)
    assert (base / "shared").read_bytes() == b"x\n"  # b still uses it
    b = Manifest.load("15/b", root)  # type: ignore[assignment]
    assert b.entry(base / "older").state == "replaced"  # the backup was handed over
    uninstall(b)
    assert not (base / "shared").exists()
    assert (base / "older").read_bytes() == b"v0\n"


def test_a_file_changed_since_the_install_is_left(base: Path) -> None:
    m = Manifest("15/a", root=base / "installs")
    place(m, base / "conf", b"ours\n")
    (base / "conf").write_bytes(b"edited by the administrator\n")
    uninstall(m)
    assert (base / "conf").read_bytes() == b"edited by the administrator\n"


def test_a_link_at_the_target_is_replaced_not_followed(base: Path) -> None:
    victim = base / "victim"
    victim.write_bytes(b"root's\n")
    (base / "conf.d").mkdir()
    os.chown(base / "conf.d", 101 if _has_postgres() else 65534, 0)
    (base / "conf.d" / "pglocalai.conf").symlink_to(victim)
    fsops.write_file(base / "conf.d" / "pglocalai.conf", b"setting\n")
    assert not (base / "conf.d" / "pglocalai.conf").is_symlink()
    assert victim.read_bytes() == b"root's\n"
    (base / "conf.d" / "other.conf").symlink_to(victim)
    assert fsops.read_file(base / "conf.d" / "other.conf") is None  # a link is not read


def test_folders_others_can_write_are_refused(base: Path) -> None:
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(InstallError, match="refusing to write"):
        fsops.make_dirs(shared / "venv")
    (base / "link").symlink_to(base)
    with pytest.raises(InstallError, match="not a directory"):
        fsops.make_dirs(base / "link" / "venv")


def _has_postgres() -> bool:
    import pwd

    try:
        return pwd.getpwnam("postgres").pw_uid == 101
    except KeyError:
        return False


def test_the_systemd_unit_runs_the_runtime_as_the_clusters_owner() -> None:
    rt = RuntimeService("15-main", "postgres", "postgres", Path("/opt/pglocalai/venv"),
                        Path("/var/lib/pglocalai/models"))
    text = rt.unit_text()
    lines = text.splitlines()
    assert "User=postgres" in lines and "Group=postgres" in lines
    assert not any(line.startswith("User=root") for line in lines)
    assert "RuntimeDirectory=pglocalai-15-main" in lines
    assert "RestartPreventExitStatus=2" in lines and "StartLimitBurst=5" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start.startswith("ExecStart=/opt/pglocalai/venv/bin/pglocalai serve ")
    assert "--socket /run/pglocalai-15-main/pglocalai.sock" in exec_start
    assert "--daemon" not in exec_start and "--supervise" not in exec_start
    assert rt.unit_name == "pglocalai-15-main.service"


def test_the_worker_unit_serves_every_database_as_the_clusters_owner() -> None:
    rt = RuntimeService("15-main", "postgres", "postgres", Path("/opt/pglocalai/venv"),
                        Path("/var/lib/pglocalai/models"))
    worker = WorkerService(rt, "/var/run/postgresql", 5433)
    lines = worker.unit_text().splitlines()
    assert "User=postgres" in lines and "Group=postgres" in lines
    assert "Wants=pglocalai-15-main.service" in lines
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines and "TimeoutStopSec=30" in lines
    exec_start = next(line for line in lines if line.startswith("ExecStart="))
    assert exec_start == (
        "ExecStart=/opt/pglocalai/venv/bin/pglocalai worker --all-databases --socket "
        "/run/pglocalai-15-main/pglocalai.sock --dsn \"host=/var/run/postgresql port=5433 "
        "user=postgres dbname=postgres\"")
    assert worker.unit_name == "pglocalai-worker-15-main.service"
    assert worker.pidfile.parent == rt.state_dir and worker.log_file.parent == rt.state_dir
