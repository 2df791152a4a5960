"""``pglocalai serve`` as a real process: signals, stale sockets, supervision, daemon."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
from runtime_helpers import (
    serve_command,
    spawn,
    stop,
    subprocess_env,
    wait_healthy,
    wait_until,
)

from pglocalai.client import Client

E5 = "multilingual-e5-small:v1"


def serve_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["serve", "--engine", "fake", "--socket", str(tmp_path / "rt" / "s.sock"),
            "--state-dir", str(tmp_path / "state"), *extra]


def test_sigterm_stops_gracefully_and_removes_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "rt" / "s.sock"
    proc = spawn(*serve_args(tmp_path, "--log-format", "json"))
    try:
        wait_healthy(str(sock), proc)
        with Client(str(sock)) as c:
            assert len(c.embed(E5, ["hello"])) == 1
    finally:
        code = stop(proc)
    assert code == 0
    assert not sock.exists() and not Path(f"{sock}.lock").exists()
    events = [line for line in proc.stderr.read().decode().splitlines() if line.strip()]
    assert any('"event":"listening"' in e for e in events)
    assert any('"event":"stopped"' in e for e in events)


def test_stale_socket_is_removed_and_a_live_runtime_is_not_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "rt" / "s.sock"
    sock.parent.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # the file stays, nobody listens: what a crashed runtime leaves
    first = spawn(*serve_args(tmp_path))
    try:
        wait_healthy(str(sock), first)
        second = subprocess.run(serve_command(*serve_args(tmp_path)), env=subprocess_env(),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert "another runtime" in second.stderr
        wait_healthy(str(sock), first)  # the first one is untouched
    finally:
        assert stop(first) == 0


def test_non_loopback_tcp_is_refused_at_start(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123")
    secret.chmod(0o600)
    out = subprocess.run(serve_command(*serve_args(tmp_path, "--tcp", "0.0.0.0:0",
                                                   "--secret-file", str(secret))),
                         env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "non-loopback" in out.stderr


def test_no_outbound_connections(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123")
    secret.chmod(0o600)
    proc = spawn(*serve_args(tmp_path, "--tcp", "127.0.0.1:0", "--secret-file", str(secret),
                             "--preload", "all"))
    try:
        wait_healthy(str(tmp_path / "rt" / "s.sock"), proc)
        runtime = psutil.Process(proc.pid)
        listening = [c for c in runtime.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert len(listening) == 1 and listening[0].laddr.ip == "127.0.0.1"
        port = listening[0].laddr.port
        with Client(f"tcp://127.0.0.1:{port}", secret="0123456789abcdef0123") as c:
            c.embed(E5, ["served over tcp"])
        with Client(str(tmp_path / "rt" / "s.sock")) as c:
            c.embed("fake-tiny:v1", ["served over unix"])

        def only_listening() -> bool:
            conns = runtime.net_connections(kind="inet")
            return all(c.status == psutil.CONN_LISTEN for c in conns)

        wait_until(only_listening)
        for conn in runtime.net_connections(kind="all"):
            if conn.status != psutil.CONN_LISTEN and conn.raddr:
                # nothing but clients of our own sockets
                assert conn.family == socket.AF_UNIX or conn.laddr.port == port
    finally:
        assert stop(proc) == 0


def test_supervisor_restarts_a_killed_runtime_and_stops_on_sigterm(tmp_path: Path) -> None:
    sock = str(tmp_path / "rt" / "s.sock")
    pidfile = tmp_path / "pglocalai.pid"
    proc = spawn(*serve_args(tmp_path, "--supervise", "--pidfile", str(pidfile)))
    try:
        first = wait_healthy(sock, proc)
        assert first["supervisor_pid"] == proc.pid
        assert int(pidfile.read_text()) == proc.pid
        os.kill(first["pid"], signal.SIGKILL)  # leaves a stale socket behind
        wait_until(lambda: _health_pid(sock) not in (None, first["pid"]), timeout=60)
        with Client(sock) as c:
            assert len(c.embed(E5, ["after restart"])) == 1
    finally:
        assert stop(proc) == 0
    assert not Path(sock).exists() and not pidfile.exists()


def _health_pid(sock: str) -> int | None:
    try:
        with Client(sock, connect_timeout=0.5) as c:
            return int(c.health()["pid"])
    except Exception:  # noqa: BLE001 - not up yet
        return None


def test_daemon_status_stop(tmp_path: Path) -> None:
    sock = str(tmp_path / "rt" / "s.sock")
    pidfile = str(tmp_path / "pglocalai.pid")
    log_file = tmp_path / "runtime.log"
    started = subprocess.run(
        serve_command(*serve_args(tmp_path, "--daemon", "--supervise", "--pidfile", pidfile,
                                  "--log-file", str(log_file))),
        env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        status = subprocess.run(serve_command("status", "--socket", sock), env=subprocess_env(),
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and " ok " in status.stdout
    finally:
        stopped = subprocess.run(serve_command("stop", "--pidfile", pidfile),
                                 env=subprocess_env(), capture_output=True, text=True,
                                 timeout=60)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    status = subprocess.run(serve_command("status", "--socket", sock), env=subprocess_env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 3
    assert '"event":"listening"' in log_file.read_text()


def test_daemon_reports_a_failed_start(tmp_path: Path) -> None:
    out = subprocess.run(
        serve_command(*serve_args(tmp_path, "--daemon", "--socket-owner", "no-such-user-x")),
        env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "no-such-user-x" in out.stderr


@pytest.mark.parametrize("env_name", ["PGLOCALAI_WORKERS"])
def test_environment_configures_the_runtime(tmp_path: Path, env_name: str) -> None:
    proc = subprocess.Popen(serve_command(*serve_args(tmp_path)),
                            env=subprocess_env(**{env_name: "2"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_healthy(str(tmp_path / "rt" / "s.sock"), proc)
        with Client(str(tmp_path / "rt" / "s.sock")) as c:
            assert c.stats()["workers"] == 2
    finally:
        assert stop(proc) == 0


def test_sigterm_lets_running_work_finish(tmp_path: Path) -> None:
    import threading

    sock = str(tmp_path / "rt" / "s.sock")
    proc = spawn(*serve_args(tmp_path, "--fake-delay-ms", "600", "--workers", "1"))
    result: dict[str, object] = {}

    def slow_client() -> None:
        try:
            with Client(sock) as c:
                result["vectors"] = c.embed(E5, ["finish me"])
        except Exception as exc:  # noqa: BLE001 - checked below
            result["error"] = exc

    try:
        wait_healthy(sock, proc)
        worker = threading.Thread(target=slow_client)
        worker.start()
        wait_until(lambda: _queue_busy(sock))
        proc.terminate()
        worker.join(30)
    finally:
        code = stop(proc)
    assert code == 0
    assert "error" not in result, result.get("error")
    assert len(result["vectors"]) == 1  # type: ignore[arg-type]


def _queue_busy(sock: str) -> bool:
    with Client(sock) as c:
        model = c.stats()["models"].get(E5)
    return bool(model and model["requests"] >= 1 and model["batches"] == 0)


def test_a_taken_tcp_port_fails_the_start_and_leaves_no_socket(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("0123456789abcdef0123")
    secret.chmod(0o600)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        out = subprocess.run(
            serve_command(*serve_args(tmp_path, "--tcp", f"127.0.0.1:{port}",
                                      "--secret-file", str(secret))),
            env=subprocess_env(), capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert out.returncode == 2
    assert not (tmp_path / "rt" / "s.sock").exists()
    assert not (tmp_path / "rt" / "s.sock.lock").exists()
