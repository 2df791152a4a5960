"""Run the installed runtime and vectorizer worker as the cluster's owner: systemd units where
systemd runs, else the project's supervisor (``pglocalai serve|worker --daemon --supervise``)
started through ``runuser``. In both, no process of theirs ever runs as root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pglocalai.errors import PglocalaiError
from pglocalai.install import STATE_ROOT, InstallError, fsops

UNIT_DIR = Path("/etc/systemd/system")


# The end of both units: no network but Unix sockets, a read-only system, no new privileges.
_SANDBOX = """\
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=yes
RestrictAddressFamilies=AF_UNIX
IPAddressDeny=any

[Install]
WantedBy=multi-user.target
"""


def systemd_runs() -> bool:
    """sd_booted(): systemd is PID 1 (a container or a chroot often has no systemd)."""
    return Path("/run/systemd/system").is_dir()


@dataclass(frozen=True)
class RuntimeService:
    """The runtime of one cluster: where it listens, keeps state and finds its code."""

    cluster_id: str  # 15-main
    user: str
    group: str
    venv: Path
    models_dir: Path

    @property
    def socket_dir(self) -> Path:
        return Path(f"/run/pglocalai-{self.cluster_id}")

    @property
    def socket(self) -> str:
        return str(self.socket_dir / "pglocalai.sock")

    @property
    def state_dir(self) -> Path:
        return Path(STATE_ROOT) / "clusters" / self.cluster_id

    @property
    def pidfile(self) -> Path:
        return self.state_dir / "runtime.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "runtime.log"

    @property
    def unit_name(self) -> str:
        return f"pglocalai-{self.cluster_id}.service"

    @property
    def unit_path(self) -> Path:
        return UNIT_DIR / self.unit_name

    def serve_args(self) -> list[str]:
        return [str(self.venv / "bin" / "pglocalai"), "serve", "--socket", self.socket,
                "--state-dir", str(self.state_dir), "--models-dir", str(self.models_dir)]

    # -- systemd --------------------------------------------------------------------------

    def unit_text(self) -> str:
        version, _, name = self.cluster_id.partition("-")
        return f"""\
# Written by `pglocalai install` for PostgreSQL cluster {version}/{name}; removed by
# `pglocalai uninstall`. The runtime runs as the cluster's owner: its socket (0600, in a
# 0700 folder systemd creates for that user) is reachable by the server and no one else.
[Unit]
Description=pglocalai embedding runtime for PostgreSQL {version}/{name}
Before=postgresql@{self.cluster_id}.service
# a runtime that keeps failing is given up on, not restarted forever
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=simple
User={self.user}
Group={self.group}
RuntimeDirectory=pglocalai-{self.cluster_id}
RuntimeDirectoryMode=0700
StateDirectory=pglocalai/clusters/{self.cluster_id}
StateDirectoryMode=0700
Environment=PGLOCALAI_LOG_FORMAT=json
ExecStart={" ".join(self.serve_args())}
KillSignal=SIGTERM
TimeoutStopSec=30
Restart=on-failure
RestartSec=2
# exit code 2 is a configuration error (or another runtime on the socket): do not loop
RestartPreventExitStatus=2
{_SANDBOX}"""

    # -- the project's supervisor ---------------------------------------------------------

    def supervisor_start(self) -> None:
        """Start ``serve --daemon --supervise`` as the owner; returns once it answers."""
        fsops.check_trusted_dir(self.socket_dir.parent)  # /run: only root may write there
        fsops.make_private_dir(self.socket_dir, self._ids())
        fsops.make_private_dir(self.state_dir, self._ids())
        start_supervised(self.user, self.state_dir, [*self.serve_args(), "--pidfile",
                         str(self.pidfile), "--log-file", str(self.log_file)],
                         "PGLOCALAI_LOG_FORMAT=json", what="the runtime", log=self.log_file)

    def supervisor_pid(self) -> int | None:
        """The supervisor's pid, if that process is alive, is pglocalai and runs as the user."""
        return supervised_pid(self.pidfile, self._ids()[0])

    def supervisor_stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM the supervisor (it stops its child); True if one was running."""
        return stop_supervised(self.supervisor_pid(), timeout)

    # -- either -----------------------------------------------------------------------------

    def answers(self) -> bool:
        from pglocalai.client import Client  # noqa: PLC0415

        try:
            with Client(self.socket, connect_timeout=2.0) as client:
                client.health()
            return True
        except PglocalaiError:
            return False

    def wait_answering(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                raise InstallError(f"the runtime does not answer on {self.socket}",
                                   hint=f"see {self.log_file} or journalctl -u "
                                        f"{self.unit_name}")
            time.sleep(0.2)

    def _ids(self) -> tuple[int, int]:
        import grp  # noqa: PLC0415
        import pwd  # noqa: PLC0415

        return pwd.getpwnam(self.user).pw_uid, grp.getgrnam(self.group).gr_gid


@dataclass(frozen=True)
class WorkerService:
    """The vectorizer worker of one cluster: ``pglocalai worker --all-databases`` serves every
    database of it that has a vectorizer, embedding through the cluster's runtime."""

    runtime: RuntimeService
    pg_host: str  # the cluster's socket folder
    pg_port: int

    @property
    def unit_name(self) -> str:
        return f"pglocalai-worker-{self.runtime.cluster_id}.service"

    @property
    def unit_path(self) -> Path:
        return UNIT_DIR / self.unit_name

    @property
    def pidfile(self) -> Path:
        return self.runtime.state_dir / "worker.pid"

    @property
    def log_file(self) -> Path:
        return self.runtime.state_dir / "worker.log"

    def worker_args(self) -> list[str]:
        dsn = f"host={self.pg_host} port={self.pg_port} user={self.runtime.user} dbname=postgres"
        return [str(self.runtime.venv / "bin" / "pglocalai"), "worker", "--all-databases",
                "--socket", self.runtime.socket, "--dsn", dsn]

    def unit_text(self) -> str:
        rt = self.runtime
        version, _, name = rt.cluster_id.partition("-")
        return f"""\
# Written by `pglocalai install` for PostgreSQL cluster {version}/{name}; removed by
# `pglocalai uninstall`. The vectorizer worker serves every database of the cluster that has a
# vectorizer (it looks every 10 s; systemctl reload: now), as the cluster's owner, over the
# cluster's socket, and embeds through the cluster's runtime.
[Unit]
Description=pglocalai vectorizer worker for PostgreSQL {version}/{name}
After=postgresql@{rt.cluster_id}.service {rt.unit_name}
Wants={rt.unit_name}

[Service]
Type=simple
User={rt.user}
Group={rt.group}
Environment=PGLOCALAI_WORKER_LOG_FORMAT=json
ExecStart={" ".join(self.worker_args()[:-1])} "{self.worker_args()[-1]}"
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM: the batches in hand are finished (or rolled back, their rows stay queued)
KillSignal=SIGTERM
TimeoutStopSec=30
# it waits for PostgreSQL and the runtime by itself; restarted only if it dies anyway
Restart=always
RestartSec=5
{_SANDBOX}"""

    def supervisor_start(self) -> None:
        """Start ``worker --daemon --supervise`` as the owner (it waits for the database)."""
        fsops.make_private_dir(self.runtime.state_dir, self.runtime._ids())
        start_supervised(self.runtime.user, self.runtime.state_dir, [
            *self.worker_args(), "--pidfile", str(self.pidfile), "--log-file",
            str(self.log_file)], what="the vectorizer worker", log=self.log_file)

    def supervisor_pid(self) -> int | None:
        return supervised_pid(self.pidfile, self.runtime._ids()[0])

    def supervisor_stop(self, timeout: float = 30.0) -> bool:
        return stop_supervised(self.supervisor_pid(), timeout)


# -- systemd units ----------------------------------------------------------------------------


def systemd_start(unit: str, *, restart: bool) -> None:
    """Load the unit files as written, restart ``unit`` if asked, and enable and start it."""
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    if restart:
        subprocess.run(["systemctl", "restart", unit], check=True)
    subprocess.run(["systemctl", "enable", "--now", unit], check=True, capture_output=True)


def systemd_stop(unit: str) -> None:
    subprocess.run(["systemctl", "disable", "--now", unit], check=False, capture_output=True)


# -- supervised processes (without systemd) -------------------------------------------------


def start_supervised(user: str, home: Path, args: list[str], *env: str, what: str,
                     log: Path) -> None:
    """``args --daemon --supervise`` as ``user``, with a clean environment plus ``env``."""
    clean = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", f"HOME={home}",
             *env]
    cmd = ["runuser", "-u", user, "--", *clean, *args, "--daemon", "--supervise"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd="/")
    if done.returncode != 0:
        raise InstallError(f"{what} did not start",
                           detail=(done.stderr or done.stdout).strip()[-2000:],
                           hint=f"see {log}")


def supervised_pid(pidfile: Path, uid: int | None) -> int | None:
    """The pid in ``pidfile`` if that process is alive, is pglocalai and (if given) runs as
    ``uid``: a stale pidfile never names another process."""
    data = fsops.read_file(pidfile)
    if not data or not data.strip().isdigit():
        return None
    pid = int(data.strip())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        owner = Path(f"/proc/{pid}").stat().st_uid
    except OSError:
        return None
    return pid if b"pglocalai" in cmdline and uid in (None, owner) else None


def stop_supervised(pid: int | None, timeout: float = 30.0) -> bool:
    """SIGTERM a supervisor (it stops its child), SIGKILL its process group after ``timeout``
    seconds; True if one was running."""
    if pid is None:
        return False
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if running(pid):
        with contextlib.suppress(ProcessLookupError):
            if group not in (0, 1, os.getpgrp()):  # the daemon's own group: it and its child
                os.killpg(group, signal.SIGKILL)
            os.kill(pid, signal.SIGKILL)
    return True


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited daemon waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
