"""One way to start a runtime of the test's own: a process or a thread, fake or real model.

The runtime `make up` started is never touched: each ``Runtime`` listens on a socket in a
fresh folder. A session points at it with ``connect(params, rt.socket)``; for that the
socket must belong to the server's user (``socket_owner="postgres"``).

>>> with Runtime(preload="all") as rt, Client(rt.socket) as c:   # fake engine, a process
...     c.health()
>>> with Runtime(thread=True) as rt:                             # fake engine, in a thread
...     rt.server.models.queues
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from pglocalai.client import Client
from pglocalai.errors import PglocalaiError
from pglocalai.service.background import BackgroundServer
from pglocalai.service.catalog import StoreCatalog
from pglocalai.service.config import ServiceConfig
from pglocalai.service.settings import Settings
from pglocalai.testing.fake_engine import FAKE_MODELS, FakeCatalog, FakeEngine
from support.env import E5, Repeating, needs, pglocalai_command, private_dir, subprocess_env

__all__ = ["FAKE_MODELS", "FakeCatalog", "FakeEngine", "Runtime", "Witness", "fake_serve_command"]


def fake_serve_command(delay_ms: float = 0.0) -> list[str]:
    """How a runtime with the fake engine is started: the one place that knows."""
    cmd = [sys.executable, "-m", "pglocalai.testing.serve"]
    return [*cmd, "--fake-delay-ms", str(delay_ms)] if delay_ms else cmd


def flags(options: dict[str, Any]) -> list[str]:
    """``{"max_batch_size": 1, "supervise": True}`` as ``--max-batch-size 1 --supervise``."""
    out: list[str] = []
    for name, value in options.items():
        if value is None or value is False:
            continue
        out.append("--" + name.replace("_", "-"))
        if value is not True:
            out.append(str(value))
    return out


class Runtime:
    """A runtime on a private socket; a context manager (started, then stopped and removed).

    ``model``: the real engine on the model store ``store`` (else the fake engine, each batch
    taking ``delay_ms``). ``thread``: in a thread of this process (``.server`` reachable;
    ``catalog`` may replace the engine's catalog), else a ``pglocalai serve`` process
    (``wrapper`` prefixes its command, ``args`` and ``env`` are added). ``config``: the
    runtime's options by their ServiceConfig names (``workers=1``, ``preload="all"``).
    ``base`` keeps the folder (state, logs) of an earlier runtime; it is then not removed.
    """

    def __init__(self, *, model: bool = False, thread: bool = False, store: Path | None = None,
                 delay_ms: float = 0.0, catalog: Any = None, base: Path | None = None,
                 args: Sequence[str] = (), wrapper: Sequence[str] = (),
                 env: dict[str, str] | None = None, **config: Any) -> None:
        self._own_base = base is None
        self.base = private_dir() if base is None else base
        self.socket = str(self.base / "rt" / "s.sock")
        self.state_dir = self.base / "state"
        self.log_file = self.base / "runtime.log"
        self.model, self.thread, self.store = model, thread, store
        self.delay_ms = delay_ms
        self.catalog = catalog
        self.args, self.wrapper, self.env = list(args), list(wrapper), env or {}
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.background: BackgroundServer | None = None
        self._children: set[int] = set()

    # -- starting ---------------------------------------------------------------------------------

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"socket": self.socket, "state_dir": str(self.state_dir)}
        if self.model:
            opts["models_dir"] = str(self.store)
        if not self.thread:
            opts["log_file"] = str(self.log_file)
        return {**opts, **self.config}

    def command(self) -> list[str]:
        """The ``pglocalai serve`` command line of this runtime."""
        serve = pglocalai_command("serve") if self.model else fake_serve_command(self.delay_ms)
        return [*self.wrapper, *serve, *flags(self.options()), *self.args]

    def start(self, timeout: float = 120.0) -> Runtime:
        if self.model:
            needs("model")
        if self.thread:
            self._start_thread(timeout)
            return self
        needs("runtime")
        with open(self.base / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(self.command(), env=subprocess_env(**self.env),
                                         stdout=subprocess.DEVNULL, stderr=err, cwd="/")
        self.wait_healthy(timeout)
        return self

    def _start_thread(self, timeout: float) -> None:
        if self.catalog is None:
            self.catalog = (StoreCatalog(self.store) if self.model
                            else FakeCatalog(delay_ms=self.delay_ms))
        cfg = ServiceConfig(**self.options())
        self.background = BackgroundServer(cfg, self.catalog, Settings.load(self.state_dir))
        self.background.start(timeout)

    def run(self, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the command to its end (a start that must fail, or ``--daemon``)."""
        needs("runtime")
        return subprocess.run(self.command(), env=subprocess_env(**self.env), cwd="/",
                              capture_output=True, text=True, timeout=timeout)

    # -- looking at it ----------------------------------------------------------------------------

    @property
    def server(self) -> Any:
        """The server object of a runtime in a thread."""
        assert self.background is not None and self.background.server is not None
        return self.background.server

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

    def log(self) -> str:
        """What the runtime logged (a process logs into ``log_file``)."""
        return self.log_file.read_text() if self.log_file.exists() else ""

    def diagnostics(self) -> str:
        parts = []
        for name in ("stderr.log", "runtime.log"):
            path = self.base / name
            if path.exists():
                parts.append(f"{name}: " + " | ".join(path.read_text().splitlines()[-5:]))
        return "; ".join(parts) or "no log"

    # -- stopping ---------------------------------------------------------------------------------

    def stop(self) -> int | None:
        """SIGTERM (graceful), SIGKILL after 30 s; the exit code of a process."""
        if self.background is not None:
            self.background.stop()
            self.background = None
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
        if self._own_base:
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


class Witness(Repeating):
    """A well-behaved client that keeps calling a runtime while others misbehave.

    Every ``interval`` it makes each call of ``kinds`` (``embed``: one text, its vector
    checked against the first; ``token_count``; ``get_setting``). ``calls`` counts the
    calls that succeeded, ``errors`` keeps every failure (each one is a finding) and
    ``slowest`` is the longest call in seconds.

    >>> with Witness(rt.socket) as witness:
    ...     misbehave()
    >>> assert not witness.errors
    """

    def __init__(self, sock: str, text: str = "witness", kinds: Sequence[str] = ("embed",),
                 interval: float = 0.02) -> None:
        super().__init__()
        self.interval = interval
        self.client = Client(sock)
        self.text, self.kinds = text, tuple(kinds)
        self.expected = np.asarray(self.client.embed(E5, [text])[0])
        self.calls = 0
        self.errors: list[str] = []
        self.slowest = 0.0

    def call(self, kind: str) -> None:
        if kind == "embed":
            vec = np.asarray(self.client.embed(E5, [self.text], timeout_ms=30_000)[0])
            if float(vec @ self.expected) < 0.9999:
                raise AssertionError(f"wrong vector (cosine {float(vec @ self.expected)})")
        elif kind == "token_count":
            self.client.token_count(E5, [self.text], timeout_ms=30_000)
        else:
            self.client.get_settings(["spin_control"], timeout_ms=30_000)

    def step(self) -> None:
        for kind in self.kinds:
            started = time.monotonic()
            try:
                self.call(kind)
                self.calls += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                self.errors.append(f"{kind}: {exc!r}")
            self.slowest = max(self.slowest, time.monotonic() - started)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.client.close()
