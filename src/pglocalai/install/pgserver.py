"""The PostgreSQL server and cluster an install targets.

The server (binaries, extension folder) is chosen by its ``pg_config``; the cluster (data,
configuration, port, owner) by Debian's postgresql-common (``pg_lsclusters``), which both
the distribution's packages and PGDG's use.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pglocalai.errors import InvalidArgument
from pglocalai.install import InstallError

PG_CONFIG_GLOB = "/usr/lib/postgresql/*/bin/pg_config"


@dataclass(frozen=True)
class PgServer:
    """One installed PostgreSQL server, as its pg_config describes it."""

    pg_config: Path
    bindir: Path
    sharedir: Path
    major: str

    @classmethod
    def find(cls, pg_config: str | None = None) -> PgServer:
        """The server of ``pg_config``; without one, the only server installed."""
        if not pg_config:
            found = sorted(glob.glob(PG_CONFIG_GLOB))
            if not found:
                raise InstallError("no PostgreSQL server found",
                                   detail=f"nothing matches {PG_CONFIG_GLOB}",
                                   hint="install one, e.g. apt-get install postgresql")
            if len(found) > 1:
                raise InvalidArgument("several PostgreSQL servers are installed",
                                      detail="found " + ", ".join(found),
                                      hint="choose one with --pg-config")
            pg_config = found[0]
        path = Path(pg_config)
        if not os.access(path, os.X_OK):
            raise InvalidArgument(f"\"{path}\" is not an executable pg_config",
                                  hint="pass the pg_config of the server, e.g. "
                                       "/usr/lib/postgresql/17/bin/pg_config")
        out = subprocess.run([str(path), "--bindir", "--sharedir", "--version"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        version = out[2].split()[1]  # "PostgreSQL 15.14 (Debian 15.14-0+deb12u1)"
        return cls(path, Path(out[0]), Path(out[1]), version.split(".")[0])

    @property
    def extension_dir(self) -> Path:
        return self.sharedir / "extension"

    def check_prerequisites(self) -> list[str]:
        """Refuse a server without PL/Python 3; warnings for what is only recommended."""
        if not (self.extension_dir / "plpython3u.control").is_file():
            raise InstallError(f"PL/Python 3 is not installed for PostgreSQL {self.major}",
                               detail=f"no plpython3u.control in {self.extension_dir}",
                               hint=f"apt-get install postgresql-plpython3-{self.major}")
        warnings = []
        if not (self.extension_dir / "vector.control").is_file():
            warnings.append(f"pgvector is not installed for PostgreSQL {self.major}: "
                            "embeddings work, vector columns and searches need it")
        return warnings


@dataclass(frozen=True)
class Cluster:
    """One cluster of postgresql-common: ``<version>/<name>``."""

    version: str
    name: str
    port: int
    configdir: Path
    socketdir: str
    datadir: Path
    owner: str
    owner_ids: tuple[int, int]
    running: bool

    @property
    def id(self) -> str:
        """``15-main``: names the runtime's unit, socket folder and state folder."""
        return f"{self.version}-{self.name}"

    @classmethod
    def find(cls, spec: str) -> Cluster:
        version, _, name = spec.partition("/")
        if not version or not name:
            raise InvalidArgument(f"\"{spec}\" is not a cluster", hint="e.g. --cluster 17/main")
        for entry in _lsclusters():
            if str(entry["version"]) == version and entry["cluster"] == name:
                uid = int(entry["owneruid"])
                gid = int(entry.get("ownergid", pwd.getpwuid(uid).pw_gid))
                return cls(version=version, name=name, port=int(entry["port"]),
                           configdir=Path(entry["configdir"]), socketdir=entry["socketdir"],
                           datadir=Path(entry["pgdata"]), owner=pwd.getpwuid(uid).pw_name,
                           owner_ids=(uid, gid), running=bool(entry["running"]))
        raise InvalidArgument(f"cluster {spec} does not exist",
                              detail="pg_lsclusters does not list it",
                              hint="create it (pg_createcluster), or name an existing one "
                                   "with --cluster VERSION/NAME")

    @property
    def conf_d(self) -> Path:
        return self.configdir / "conf.d"

    def reload(self) -> None:
        if self.is_running():
            subprocess.run(["pg_ctlcluster", self.version, self.name, "reload"], check=True,
                           capture_output=True)

    def is_running(self) -> bool:
        return any(str(e["version"]) == self.version and e["cluster"] == self.name
                   and e["running"] for e in _lsclusters())

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the cluster's owner over its socket; the unaligned output."""
        done = subprocess.run(
            ["runuser", "-u", self.owner, "--", "psql", "-X", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", self.socketdir, "-p", str(self.port), "-d", database, "-c", sql],
            capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            raise InstallError(f"psql in cluster {self.version}/{self.name} failed",
                               detail=done.stderr.strip())
        return done.stdout

    def databases_with_extension(self, extension: str) -> list[str]:
        """Databases of the cluster where ``extension`` is created (the cluster must run)."""
        found = []
        for db in self.psql("SELECT datname FROM pg_database WHERE datallowconn "
                            "ORDER BY 1").split():
            if self.psql(f"SELECT 1 FROM pg_extension WHERE extname = '{extension}'",
                         db).strip():
                found.append(db)
        return found


def _lsclusters() -> list[dict[str, object]]:
    try:
        out = subprocess.run(["pg_lsclusters", "--json"], capture_output=True, text=True,
                             check=True).stdout
    except FileNotFoundError:
        raise InstallError("pg_lsclusters not found",
                           detail="pglocalai install manages clusters of postgresql-common",
                           hint="apt-get install postgresql-common") from None
    return list(json.loads(out or "[]"))
