"""The runtime `make up` started runs as the server's user, from files that user can read.

Read from /proc, not from what the runtime says about itself: the supervisor (the pid in
the pidfile) and every child it forked must have no root id at all (real, effective,
saved, file system).
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import pytest
from install_support import required_setting

pytestmark = pytest.mark.pg


def ids(pid: int, field: str) -> list[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(.*)$", status, re.M)
    assert match, f"no {field} line in /proc/{pid}/status"
    return [int(x) for x in match.group(1).split()]


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(x) for x in (task / "children").read_text().split()]
    return found


def test_the_runtime_of_make_up_is_not_root() -> None:
    pidfile = Path(required_setting("PGLOCALAI_RUNTIME_PIDFILE"))
    supervisor = int(pidfile.read_text().strip())
    assert b"pglocalai" in Path(f"/proc/{supervisor}/cmdline").read_bytes()
    postgres = pwd.getpwnam("postgres")
    kids = children(supervisor)
    assert kids, "the supervisor has no runtime child"
    for pid in [supervisor, *kids]:
        assert ids(pid, "Uid") == [postgres.pw_uid] * 4, f"pid {pid}"
        assert ids(pid, "Gid") == [postgres.pw_gid] * 4, f"pid {pid}"
        groups = ids(pid, "Groups")
        assert 0 not in groups, f"pid {pid} keeps root's group"


def test_the_runtime_runs_code_and_models_postgres_can_read() -> None:
    """Its interpreter, package and model store are outside any folder postgres cannot
    enter, and none of it is writable by postgres (it could change its own code)."""
    pidfile = Path(required_setting("PGLOCALAI_RUNTIME_PIDFILE"))
    supervisor = int(pidfile.read_text().strip())
    argv = Path(f"/proc/{supervisor}/cmdline").read_bytes().split(b"\0")
    exe = Path(os.readlink(f"/proc/{supervisor}/exe"))
    models = Path(argv[argv.index(b"--models-dir") + 1].decode())
    program = Path(argv[1].decode())  # .../venv/bin/pglocalai
    postgres = pwd.getpwnam("postgres").pw_uid
    for path in (exe, program, models):
        for folder in [path, *path.parents]:
            info = folder.stat()
            assert info.st_uid != postgres or folder == Path("/"), f"{folder} is postgres's"
            assert not info.st_mode & 0o022, f"{folder} is writable by others"
        assert "/root/" not in str(path.resolve()) + "/"
