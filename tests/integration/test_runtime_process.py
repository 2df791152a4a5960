"""``pglocalai serve`` as a real process: signals, stale sockets, supervision, daemon.

The refusals at start (TCP without a secret or off loopback, a taken port) are in
tests/reliability/test_security.py.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import psutil
import pytest
from support import E5, Runtime, cli, wait_until

from pglocalai.client import Client

pytestmark = pytest.mark.runtime


def secret_file(folder: Path) -> str:
    secret = folder / "secret"
    secret.write_text("0123456789abcdef0123")
    secret.chmod(0o600)
    return str(secret)


def test_sigterm_stops_gracefully_and_removes_the_socket() -> None:
    with Runtime(log_format="json") as rt:
        with Client(rt.socket) as c:
            assert len(c.embed(E5, ["hello"])) == 1
        assert rt.stop() == 0
        assert not Path(rt.socket).exists() and not Path(f"{rt.socket}.lock").exists()
        events = rt.log().splitlines()
    assert any('"event":"listening"' in e for e in events)
    assert any('"event":"stopped"' in e for e in events)


def test_stale_socket_is_removed_and_a_live_runtime_is_not_replaced() -> None:
    first = Runtime()
    sock = Path(first.socket)
    sock.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: what a crashed runtime leaves
    with first:
        second = Runtime(base=first.base).run(timeout=60)
        assert second.returncode == 2
        assert "another runtime" in second.stderr
        first.wait_healthy()  # the first one is untouched
        assert first.stop() == 0


def test_no_outbound_connections() -> None:
    rt = Runtime(preload="all", tcp="127.0.0.1:0")
    rt.config["secret_file"] = secret_file(rt.base)
    with rt:
        runtime = rt.process()
        listening = [c for c in runtime.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert len(listening) == 1 and listening[0].laddr.ip == "127.0.0.1"
        port = listening[0].laddr.port
        with Client(f"tcp://127.0.0.1:{port}", secret="0123456789abcdef0123") as c:
            c.embed(E5, ["served over tcp"])
        with Client(rt.socket) as c:
            c.embed("fake-tiny:v1", ["served over unix"])

        def only_listening() -> bool:
            conns = runtime.net_connections(kind="inet")
            return all(c.status == psutil.CONN_LISTEN for c in conns)

        wait_until(only_listening)
        for conn in runtime.net_connections(kind="all"):
            if conn.status != psutil.CONN_LISTEN and conn.raddr:
                # nothing but clients of our own sockets
                assert conn.family == socket.AF_UNIX or conn.laddr.port == port
        assert rt.stop() == 0


def test_supervisor_restarts_a_killed_runtime_and_stops_on_sigterm() -> None:
    rt = Runtime(supervise=True)
    pidfile = rt.base / "pglocalai.pid"
    rt.config["pidfile"] = str(pidfile)
    with rt:
        first = rt.health()
        assert rt.proc is not None and first["supervisor_pid"] == rt.proc.pid
        assert int(pidfile.read_text()) == rt.proc.pid
        os.kill(first["pid"], signal.SIGKILL)  # leaves a stale socket behind
        rt.wait_healthy(60, not_pid=first["pid"])
        with Client(rt.socket) as c:
            assert len(c.embed(E5, ["after restart"])) == 1
        assert rt.stop() == 0
        assert not Path(rt.socket).exists() and not pidfile.exists()


def test_daemon_status_stop() -> None:
    rt = Runtime(daemon=True, supervise=True)
    pidfile = str(rt.base / "pglocalai.pid")
    rt.config["pidfile"] = pidfile
    try:
        started = rt.run()
        assert started.returncode == 0, started.stderr
        try:
            status = cli("status", "--socket", rt.socket)
            assert status.returncode == 0 and " ok " in status.stdout
        finally:
            stopped = cli("stop", "--pidfile", pidfile)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
        assert cli("status", "--socket", rt.socket).returncode == 3
        assert '"event":"listening"' in rt.log()
    finally:
        rt.remove()


def test_daemon_reports_a_failed_start() -> None:
    rt = Runtime(daemon=True, socket_owner="no-such-user-x")
    try:
        out = rt.run()
    finally:
        rt.remove()
    assert out.returncode == 1 and "no-such-user-x" in out.stderr


@pytest.mark.parametrize("env_name", ["PGLOCALAI_WORKERS"])
def test_environment_configures_the_runtime(env_name: str) -> None:
    with Runtime(env={env_name: "2"}) as rt:
        assert rt.stats()["workers"] == 2
        assert rt.stop() == 0


def test_sigterm_lets_running_work_finish() -> None:
    result: dict[str, object] = {}

    def slow_client(socket_path: str) -> None:
        try:
            with Client(socket_path) as c:
                result["vectors"] = c.embed(E5, ["finish me"])
        except Exception as exc:  # noqa: BLE001 - checked below
            result["error"] = exc

    with Runtime(delay_ms=600, workers=1) as rt:
        worker = threading.Thread(target=slow_client, args=(rt.socket,))
        worker.start()
        wait_until(lambda: _queue_busy(rt.socket))
        assert rt.proc is not None
        rt.proc.terminate()
        worker.join(30)
        assert rt.stop() == 0
    assert "error" not in result, result.get("error")
    assert len(result["vectors"]) == 1  # type: ignore[arg-type]


def _queue_busy(sock: str) -> bool:
    with Client(sock) as c:
        model = c.stats()["models"].get(E5)
    return bool(model and model["requests"] >= 1 and model["batches"] == 0)
