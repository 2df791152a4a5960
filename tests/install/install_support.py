"""Helpers of the install tests: the `make up` settings, throwaway clusters of the
distribution's tools (pg_createcluster), and running commands as root or as postgres."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from support import E5 as E5  # re-exported: the install tests take them from here
from support import ROOT as ROOT
from support import missing, setting, wait_until


def required_setting(name: str) -> str:
    value = setting(name)
    if not value:
        missing(f"{name} is not set and not in .run/env")
    return value or ""


def need_root_and_tools() -> None:
    if os.geteuid() != 0:
        missing("the install tests run as root")
    for tool in ("pg_createcluster", "pg_dropcluster", "pg_lsclusters", "runuser"):
        if shutil.which(tool) is None:
            missing(f"{tool} not found (postgresql-common)")


def pg_major() -> str:
    majors = sorted(p.name for p in Path("/usr/lib/postgresql").iterdir()
                    if (p / "bin" / "postgres").exists())
    if not majors:
        missing("no PostgreSQL server under /usr/lib/postgresql")
    return os.environ.get("PGLOCALAI_PG_MAJOR") or majors[-1]


def free_port() -> int:
    """A TCP port nothing listens on now (the clusters listen on loopback only)."""
    for port in range(55600, 55700):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0 and \
                    not Path(f"/var/run/postgresql/.s.PGSQL.{port}").exists():
                return port
    raise RuntimeError("no free port in 55600-55699")


class ThrowawayCluster:
    """``pg_createcluster <major> <name>`` on a spare port; dropped by :meth:`drop`."""

    def __init__(self, name: str, *, extra: list[str] | None = None, start: bool = True) -> None:
        self.major = pg_major()
        self.name = f"{name}_{os.getpid()}"
        self.port = free_port()
        subprocess.run(["pg_dropcluster", "--stop", self.major, self.name], check=False,
                       capture_output=True)
        cmd = ["pg_createcluster", self.major, self.name, "-p", str(self.port)]
        if start:
            cmd.append("--start")
        subprocess.run([*cmd, *(["--"] + extra if extra else [])], check=True,
                       capture_output=True)
        self.spec = f"{self.major}/{self.name}"
        self.configdir = Path(f"/etc/postgresql/{self.major}/{self.name}")
        self.datadir = Path(f"/var/lib/postgresql/{self.major}/{self.name}")

    def psql(self, sql: str, database: str = "postgres", check: bool = True,
             port: int | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", "/var/run/postgresql", "-p", str(port or self.port), "-d", database,
             "-c", sql], capture_output=True, text=True, check=False, cwd="/")
        if check and done.returncode != 0:
            raise AssertionError(f"psql failed: {done.stderr}")
        return done

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", self.major, self.name], check=False,
                       capture_output=True)


def wait_for(predicate: object, timeout: float = 60.0, what: str = "condition") -> None:
    wait_until(predicate, timeout, what)  # type: ignore[arg-type]
