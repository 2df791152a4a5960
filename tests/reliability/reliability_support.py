"""Helpers of the reliability tests: runtimes of their own, PostgreSQL sessions, memory.

Destructive tests never touch the runtime that `make up` started: each starts a
``pglocalai serve`` of its own (real ONNX engine or the fake one) on a socket in a
fresh folder under /tmp that the server's user can reach, and points a session at it
with ``SET azure_local_ai.runtime_socket``. The socket's folder is created by the
runtime itself (0700, owned by postgres through ``--socket-owner``), which is what the
extension requires of a socket it connects to.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import psycopg

from pglocalai.client import Client
from pglocalai.errors import PglocalaiError

ROOT = Path(__file__).resolve().parents[2]
E5 = "multilingual-e5-small:v1"
MINILM = "all-minilm-l6-v2:v1"
PG_KEYS = {"PGHOST": "host", "PGPORT": "port", "PGUSER": "user", "PGDATABASE": "dbname"}


def run_env() -> dict[str, str]:
    """The variables `make up` wrote into .run/env (empty when it did not run)."""
    env_file = ROOT / ".run" / "env"
    values: dict[str, str] = {}
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            m = re.fullmatch(r"export (\w+)='(.*)'", line.strip())
            if m:
                values[m.group(1)] = m.group(2)
    return values


def setting(name: str) -> str | None:
    """An environment variable, else its value in .run/env."""
    return os.environ.get(name) or run_env().get(name)


def connection_params() -> dict[str, str]:
    return {key: value for env, key in PG_KEYS.items() if (value := setting(env))}


def models_dir() -> Path:
    """The model store `make model` filled (the runtime's default)."""
    explicit = setting("PGLOCALAI_MODELS")
    if explicit:
        return Path(explicit)
    home = setting("PGLOCALAI_HOME")
    return Path(home) / "models" if home else ROOT / ".run" / "models"


def installed(uri: str, store: Path | None = None) -> bool:
    folder = (store or models_dir()) / uri.replace(":", "@")
    return (folder / "metadata.json").is_file()


def required() -> bool:
    """In CI (and `make test`) a missing server or model is a failure, not a skip."""
    return bool(os.environ.get("CI") or os.environ.get("PGLOCALAI_REQUIRE_PG"))


# -- runtimes of our own --------------------------------------------------------------------------


class Runtime:
    """A ``pglocalai serve`` process on its own socket; clean up with :meth:`remove`, or use
    it as a context manager (``with Runtime(...) as rt``: started, then removed).

    ``wrapper`` prefixes the command (``["unshare", "-n", "--"]`` runs it without a network).
    """

    def __init__(self, *, engine: str = "onnx", supervise: bool = False,
                 store: Path | None = None, extra: Sequence[str] = (),
                 wrapper: Sequence[str] = ()) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pglocalai-rel-", dir="/tmp"))
        self.base.chmod(0o755)  # the server's user must traverse it to reach rt/
        self.socket = str(self.base / "rt" / "s.sock")
        self.state_dir = self.base / "state"
        self.log_file = self.base / "runtime.log"
        self.engine = engine
        self.supervise = supervise
        self.store = store or models_dir()
        self.extra = list(extra)
        self.wrapper = list(wrapper)
        self.proc: subprocess.Popen[bytes] | None = None
        self._children: set[int] = set()

    def command(self) -> list[str]:
        cmd = [*self.wrapper, sys.executable, "-m", "pglocalai.cli.main", "serve",
               "--engine", self.engine, "--socket", self.socket, "--socket-owner", "postgres",
               "--state-dir", str(self.state_dir), "--models-dir", str(self.store),
               "--log-file", str(self.log_file), *self.extra]
        return [*cmd, "--supervise"] if self.supervise else cmd

    def start(self, timeout: float = 120.0) -> Runtime:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGLOCALAI_")}
        env["PYTHONPATH"] = str(ROOT / "src")
        with open(self.base / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=subprocess.DEVNULL,
                                         stderr=err, cwd="/")
        self.wait_healthy(timeout)
        return self

    def health(self, connect_timeout: float = 2.0) -> dict[str, Any]:
        with Client(self.socket, connect_timeout=connect_timeout) as client:
            return client.health()

    def stats(self) -> dict[str, Any]:
        with Client(self.socket) as client:
            return client.stats()

    def wait_healthy(self, timeout: float = 120.0, not_pid: int | None = None) -> dict[str, Any]:
        """Health of the serving process, once it answers (and is not ``not_pid``)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"runtime exited with {self.proc.returncode}: "
                                   f"{self.diagnostics()}")
            with contextlib.suppress(PglocalaiError):
                health = self.health(0.5)
                self._children.add(int(health["pid"]))
                if health["pid"] != not_pid:
                    return health
            if time.monotonic() > deadline:
                raise TimeoutError(f"runtime on {self.socket} not healthy within {timeout} s: "
                                   f"{self.diagnostics()}")
            time.sleep(0.05)

    def pid(self) -> int:
        """The process that serves (the supervisor's child when supervised)."""
        return int(self.health()["pid"])

    def process(self) -> psutil.Process:
        return psutil.Process(self.pid())

    def kill_serving_process(self) -> int:
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        return pid

    def diagnostics(self) -> str:
        parts = []
        for name in ("stderr.log", "runtime.log"):
            path = self.base / name
            if path.exists():
                parts.append(f"{name}: " + " | ".join(path.read_text().splitlines()[-5:]))
        return "; ".join(parts) or "no log"

    def stop(self) -> int | None:
        """SIGTERM (graceful), SIGKILL after 30 s; returns the exit code."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                code = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                code = self.proc.wait(30)
            self.proc = None
        for pid in self._children:  # a child the supervisor could not stop
            with contextlib.suppress(psutil.Error):
                child = psutil.Process(pid)
                if self.socket in " ".join(child.cmdline()):
                    child.kill()
        return code

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Runtime:
        """Started; stopped and removed however the block ends, or if it never starts."""
        try:
            return self.start()
        except BaseException:
            self.remove()
            raise

    def __exit__(self, *exc: object) -> None:
        self.remove()


# -- PostgreSQL -----------------------------------------------------------------------------------


def connect(params: dict[str, str], socket: str | None = None) -> psycopg.Connection[Any]:
    """An autocommit session, pointed at ``socket`` when given."""
    conn = psycopg.connect(**params, autocommit=True, connect_timeout=10)
    if socket is not None:
        conn.execute("SELECT set_config('azure_local_ai.runtime_socket', %s, false)", (socket,))
    return conn


def backend(conn: psycopg.Connection[Any]) -> psutil.Process:
    return psutil.Process(conn.info.backend_pid)


# -- memory and waiting ---------------------------------------------------------------------------


def private_bytes(proc: psutil.Process) -> int:
    """Memory only this process holds (USS): a backend's RSS also counts shared buffers."""
    return int(proc.memory_full_info().uss)


class PeakSampler:
    """Samples a memory reading of some processes in a thread; ``peaks`` holds the maxima."""

    def __init__(self, readers: dict[str, Callable[[], int]], interval: float = 0.1) -> None:
        self.readers = readers
        self.interval = interval
        self.peaks = {name: 0 for name in readers}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, read in self.readers.items():
                with contextlib.suppress(psutil.Error):
                    self.peaks[name] = max(self.peaks[name], read())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.05)


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"
