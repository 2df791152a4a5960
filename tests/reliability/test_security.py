"""Security: who may reach the runtime, change it, change its models; what it reaches itself.

Complements tests/integration (socket modes of a runtime in a thread, TCP secrets with the
fake engine, --tcp 0.0.0.0 refused) and extension/test/sql/settings.sql (set_setting
privileges): here the deployment `make up` created is checked as it runs, the TCP refusals
are checked at start-up of a real process, and the runtime is shown to need no network.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from support import (
    E5,
    MINILM,
    ROOT,
    Runtime,
    cli,
    connect,
    connect_as,
    missing,
)

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.errors import AuthenticationFailed

SECRET = "a-shared-secret-of-32-characters"


def postgres_uid() -> int:
    return pwd.getpwnam("postgres").pw_uid


def check_private_folder(folder: Path) -> None:
    info = folder.stat()
    assert info.st_uid == postgres_uid(), f"{folder} does not belong to postgres"
    assert stat.S_IMODE(info.st_mode) == 0o700, f"{folder} is {oct(info.st_mode)}"
    # nobody else can swap the folder: every ancestor is root's or postgres's and is not
    # writable by everyone (unless sticky, like /tmp)
    for parent in folder.parents:
        pinfo = parent.stat()
        assert pinfo.st_uid in (0, postgres_uid()), f"{parent} belongs to uid {pinfo.st_uid}"
        assert not (pinfo.st_mode & stat.S_IWOTH and not pinfo.st_mode & stat.S_ISVTX), parent


def test_the_deployed_sockets_are_reachable_by_postgres_only(pg_db: dict[str, str],
                                                            deployed_socket: str) -> None:
    runtime_socket, pg_socket_dir = deployed_socket, pg_db["host"]
    sock = Path(runtime_socket)
    check_private_folder(sock.parent)
    info = sock.stat()
    assert stat.S_ISSOCK(info.st_mode) and info.st_uid == postgres_uid()
    assert stat.S_IMODE(info.st_mode) & 0o077 == 0, oct(info.st_mode)
    assert connect_as(runtime_socket, "postgres") == 0
    assert connect_as(runtime_socket, "nobody") == 13  # EACCES
    # the cluster: a private socket folder and no TCP listener at all
    check_private_folder(Path(pg_socket_dir))
    with connect(pg_db) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        assert conn.execute("SHOW unix_socket_permissions").fetchone() == ("0700",)
    # the runtime holds no network socket: it listens on its Unix socket only
    with Client(runtime_socket) as client:
        health = client.health()
    for pid in (health["pid"], health.get("supervisor_pid")):
        if pid:
            assert psutil.Process(pid).net_connections(kind="inet") == []


def test_a_plain_role_pointing_at_a_socket_that_is_not_a_runtime_gets_a_clear_error(
        pg_db: dict[str, str]) -> None:
    """Any role may SET the socket; a trusted socket of another service (the cluster's own)
    only yields an error in that role's session, at once."""
    with connect(pg_db) as conn:
        pg_socket = conn.execute("SELECT current_setting('unix_socket_directories') || '/.s.PGSQL.'"
                                 " || current_setting('port')").fetchone()[0]
        role = f"reliability_probe_{os.getpid()}"
        conn.execute(f"CREATE ROLE {role}")
        try:
            conn.execute(f"SET ROLE {role}")
            conn.execute("SELECT set_config('azure_local_ai.runtime_socket', %s, false)",
                         (pg_socket,))
            for query in ("SELECT azure_local_ai.create_embeddings(%s, 'x')",
                          "SELECT * FROM azure_local_ai.create_embeddings(%s, ARRAY['x'])"):
                with pytest.raises(psycopg.Error) as info:
                    conn.execute(query, (E5,))
                assert info.value.diag.sqlstate in ("08001", "08P01")
            conn.execute("RESET azure_local_ai.runtime_socket")
            assert conn.execute("SELECT array_length(azure_local_ai.create_embeddings(%s, 'x'),"
                                " 1)", (E5,)).fetchone() == (384,)
        finally:
            conn.execute("RESET ROLE")
            conn.execute(f"DROP ROLE {role}")


# -- TCP ------------------------------------------------------------------------------------------


def own_address() -> str:
    """A non-loopback IPv4 address of this machine (binding it must be refused)."""
    for addresses in psutil.net_if_addrs().values():
        for addr in addresses:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return addr.address
    return "10.0.0.1"


def secret_file(folder: Path, text: str = SECRET, mode: int = 0o600) -> str:
    path = folder / "secret"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


START_REFUSALS: dict[str, tuple[Any, str]] = {
    "any ipv4 address": (lambda d: ["--tcp", "0.0.0.0:0", "--secret-file", secret_file(d)],
                         "refusing to listen on non-loopback address 0.0.0.0"),
    "any ipv6 address": (lambda d: ["--tcp", "[::]:0", "--secret-file", secret_file(d)],
                         "refusing to listen on non-loopback address ::"),
    "this machine's address": (lambda d: ["--tcp", f"{own_address()}:0", "--secret-file",
                                          secret_file(d)], "refusing to listen on non-loopback"),
    "no secret": (lambda d: ["--tcp", "127.0.0.1:0"], "--tcp needs --secret-file"),
    "secret readable by everyone": (
        lambda d: ["--tcp", "127.0.0.1:0", "--secret-file", secret_file(d, mode=0o644)],
        "is readable by everyone"),
    "short secret": (lambda d: ["--tcp", "127.0.0.1:0", "--secret-file", secret_file(d, "short")],
                     "the shared secret must be at least 16 characters"),
    "missing secret file": (lambda d: ["--tcp", "127.0.0.1:0", "--secret-file",
                                       str(d / "nothing-here")], "cannot read the secret file"),
}


@pytest.mark.runtime
@pytest.mark.parametrize("case", sorted(START_REFUSALS))
def test_tcp_is_refused_at_start_unless_loopback_with_a_secret(case: str) -> None:
    make_args, message = START_REFUSALS[case]
    rt = Runtime(socket_owner="postgres")
    try:
        rt.args = make_args(rt.base)
        out = rt.run()
        assert out.returncode == 2, (out.returncode, out.stderr)  # not restarted either
        assert message in out.stderr
        assert not Path(rt.socket).exists()  # nothing left behind
        assert not Path(f"{rt.socket}.lock").exists()
    finally:
        rt.remove()


@pytest.mark.runtime
def test_a_taken_tcp_port_fails_the_start_and_leaves_no_socket() -> None:
    rt = Runtime(socket_owner="postgres")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        try:
            port = taken.getsockname()[1]
            rt.args = ["--tcp", f"127.0.0.1:{port}", "--secret-file", secret_file(rt.base)]
            out = rt.run()
            assert out.returncode == 2 and "address already in use" in out.stderr.lower()
            assert not Path(rt.socket).exists() and not Path(f"{rt.socket}.lock").exists()
        finally:
            rt.remove()


@pytest.mark.runtime
def test_tcp_serves_only_on_loopback_and_only_with_the_secret(model_store: Path) -> None:
    rt = Runtime(model=True, store=model_store, socket_owner="postgres", preload=E5)
    try:
        rt.args += ["--tcp", "127.0.0.1:0", "--secret-file", secret_file(rt.base)]
        proc = rt.start().process()
        listening = [c for c in proc.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert [c.laddr.ip for c in listening] == ["127.0.0.1"]
        port = listening[0].laddr.port
        address = f"tcp://127.0.0.1:{port}"
        for wrong in (None, "", "a-shared-secret-of-32-characterz", SECRET[:-1]):
            with pytest.raises(AuthenticationFailed, match="authentication failed"):
                Client(address, secret=wrong).health()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(protocol.encode(protocol.Frame(protocol.Kind.EMBED, 1, {
                "model": E5, "inputs": ["no secret"]})))
            reply = raw.recv(1 << 16)
            assert b"authentication required" in reply and raw.recv(1 << 16) == b""
        with Client(address, secret=SECRET) as client:
            assert len(client.embed(E5, ["over loopback tcp"])[0]) == 384
        # after serving: the listener and the accepted connections only, nothing outbound
        for conn in proc.net_connections(kind="inet"):
            assert conn.laddr.ip == "127.0.0.1" and conn.laddr.port == port, conn
    finally:
        rt.remove()


# -- no network -----------------------------------------------------------------------------------


@pytest.mark.runtime
def test_the_runtime_serves_without_any_network(pg_db: dict[str, str],
                                               model_store: Path) -> None:
    probe = subprocess.run(["unshare", "-n", "--", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        # under `make test` this is a failure: the guarantee would go unchecked
        missing(f"cannot create a network namespace here: {probe.stderr!r}")
    rt = Runtime(model=True, store=model_store, wrapper=["unshare", "-n", "--"], preload="all",
                 socket_owner="postgres")
    try:
        proc = rt.start().process()
        # it runs in a namespace of its own, where only a down loopback exists
        assert os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        with connect(pg_db, rt.socket) as conn:
            for uri in (E5, MINILM):
                assert conn.execute("SELECT array_length(azure_local_ai.create_embeddings(%s,"
                                    " 'no network needed'), 1)", (uri,)).fetchone() == (384,)
            assert conn.execute("SELECT count(*) FROM azure_local_ai.list_models()"
                                ).fetchone()[0] >= 2
        assert proc.net_connections(kind="inet") == []
    finally:
        rt.remove()


# -- the model store ------------------------------------------------------------------------------


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in root.rglob("*"))


def test_model_installation_and_removal_are_refused_to_other_users(model_store: Path) -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None or shutil.which("runuser") is None:
        pytest.fail("needs the system python3 and runuser")
    base = Path(tempfile.mkdtemp(prefix="pglocalai-rel-store-", dir="/tmp"))
    try:
        base.chmod(0o755)
        # the CLI's modules where another user can read them (the checkout may be private)
        shutil.copytree(ROOT / "src" / "pglocalai", base / "lib" / "pglocalai",
                        ignore=shutil.ignore_patterns("__pycache__"))
        models = base / "models"
        folder = models / MINILM.replace(":", "@")
        folder.mkdir(parents=True)
        for name in ("metadata.json", "tokenizer.json"):  # enough to list and to remove
            shutil.copyfile(model_store / folder.name / name, folder / name)
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        before = snapshot(models)

        def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["runuser", "-u", "nobody", "--", "env", f"PYTHONPATH={base / 'lib'}", python,
                 "-m", "pglocalai.cli.main", "model", *args, "--models-dir", str(models)],
                capture_output=True, text=True, timeout=120, cwd="/")

        for args in (("remove", MINILM), ("install", E5, "--force"),
                     ("install", "--from-hf", str(base), "--uri", "other-model:v1")):
            out = as_nobody(*args)
            assert out.returncode == 4, (args, out.stderr)
            assert out.stderr.startswith(
                f'error: permission denied to change the model store "{models}"'), out.stderr
            assert "Traceback" not in out.stderr
            assert snapshot(models) == before
        # reading is allowed
        listed = as_nobody("list")
        assert listed.returncode == 0 and MINILM in listed.stdout
        # and the owner may change the store (the refusal above is about the user)
        owner = cli("model", "remove", MINILM, "--models-dir", str(models))
        assert owner.returncode == 0, owner.stderr
        assert not folder.exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
