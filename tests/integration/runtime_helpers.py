"""Helpers shared by the runtime's integration tests: servers and raw sockets."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.errors import PglocalaiError
from pglocalai.protocol import Frame
from pglocalai.service.background import BackgroundServer
from pglocalai.service.config import ServiceConfig
from pglocalai.service.engine import FakeCatalog
from pglocalai.service.settings import Settings

SRC = str(Path(__file__).resolve().parents[2] / "src")


def fake_config(tmp_path: Path, **kw: Any) -> ServiceConfig:
    opts: dict[str, Any] = {"socket": str(tmp_path / "rt" / "pglocalai.sock"),
                            "state_dir": str(tmp_path / "state"), "engine": "fake"}
    opts.update(kw)
    return ServiceConfig(**opts)


def fake_server(tmp_path: Path, catalog: FakeCatalog | None = None,
                **kw: Any) -> BackgroundServer:
    cfg = fake_config(tmp_path, **kw)
    return BackgroundServer(cfg, catalog or FakeCatalog(), Settings.load(Path(cfg.state_dir)))


def raw_connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    return sock


def raw_frame(kind: int, request_id: int, head: bytes, version: int = 1,
              payload: bytes = b"") -> bytes:
    body = struct.pack("<BBII", version, kind, request_id, len(head)) + head + payload
    return struct.pack("<I", len(body)) + body


def read_frame(sock: socket.socket) -> Frame | None:
    """The next frame, or None when the server closed the connection."""
    prefix = _recv(sock, 4)
    if prefix is None:
        return None
    body = _recv(sock, protocol.body_length(prefix))
    return None if body is None else protocol.decode_body(body)


def _recv(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return buf


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pglocalai.cli.main", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGLOCALAI_")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def spawn(*args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(serve_command(*args), env=subprocess_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_healthy(address: str, proc: subprocess.Popen[bytes] | None = None,
                 timeout: float = 60.0, **client_kw: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"runtime exited with {proc.returncode}: "
                               f"{proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with Client(address, **client_kw) as client:
                return client.health()
        except PglocalaiError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"runtime at {address} not healthy: {last}")


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


def run_threads(target: Callable[[int], object], count: int) -> list[BaseException]:
    """Run ``target(0)`` ... ``target(count - 1)`` in threads at once; what they raised."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            target(n)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
