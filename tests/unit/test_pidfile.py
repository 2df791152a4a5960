"""The pidfile is held (flock) by the process that wrote it while that process lives.

Two starts with one pidfile (two `make up` at once) once left the running runtime without
its pidfile: the second replaced it, failed on the taken socket, and removed it on exit.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pglocalai.service import daemon

HOLD = """
import sys, time
from pglocalai.service import daemon
daemon.write_pidfile(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_start_is_refused_and_leaves_the_pidfile_alone(tmp_path: Path) -> None:
    path = str(tmp_path / "run" / "x.pid")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, path], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert daemon.pidfile_holder(path) == holder.pid
        with pytest.raises(daemon.AlreadyRunning, match=f"pid {holder.pid}"):
            daemon.write_pidfile(path)
        daemon.remove_pidfile(path)  # not ours: kept
        assert daemon.read_pidfile(path) == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone, its file stale: the next start takes it over
    deadline = time.monotonic() + 5
    while daemon.pidfile_holder(path) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.write_pidfile(path)
    assert daemon.read_pidfile(path) == daemon.os.getpid()
    assert daemon.pidfile_holder(path) == daemon.os.getpid()
    daemon.remove_pidfile(path)
    assert not Path(path).exists() and path not in daemon._HELD  # noqa: SLF001
