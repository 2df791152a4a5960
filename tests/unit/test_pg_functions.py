"""pglocalai.pg.functions, the Python behind the azure_local_ai SQL functions.

No PostgreSQL here: the functions take GD (a dict) and plain values, and talk to a
real runtime (fake engine) over a real Unix socket. The PL/Python bodies of the
SQL script that hold logic of their own (_load) run in the server's Python, with
a fake GD, the way PL/Python wraps them. tests/integration/test_sql.py and the
pg_regress tests cover the same paths inside the server.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import E5, ROOT, Runtime, install_package

from pglocalai import errors
from pglocalai.client import Client
from pglocalai.pg import functions as f

SQL = ROOT / "extension" / "sql" / "azure_local_ai--1.0.0.sql"


@pytest.fixture()
def server() -> Iterator[Runtime]:
    with Runtime(thread=True) as rt:
        yield rt


def parse(literal: str) -> list[float]:
    """What array_in makes of a real[] literal: each number rounded to float32."""
    assert literal.startswith("{") and literal.endswith("}")
    values = [float(x) for x in literal[1:-1].split(",")]
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def reference(socket: str, texts: list[str]) -> list[list[float]]:
    with Client(socket) as c:
        return c.embed(E5, texts)


def pending(gd: dict[str, Any]) -> tuple[str, str, str | None, str | None]:
    return gd.pop(f.ERROR_KEY)


# -- formatting -----------------------------------------------------------------------------------


def test_literals_round_trip_float32_exactly() -> None:
    rng = random.Random(7)
    values = [rng.uniform(-1, 1) for _ in range(3 * 384)]
    values[:6] = [0.0, -0.0, 1e-38, 3.4e38, 1.401298464324817e-45, -0.1]
    raw = struct.pack(f"<{len(values)}f", *values)
    out = f.literals(384, raw)
    assert len(out) == 3
    back = struct.pack(f"<{3 * 384}f", *(x for lit in out for x in parse(lit)))
    assert back == raw  # what array_in parses is bit-identical to what the runtime sent


def test_literals_refuse_an_empty_dimension() -> None:
    with pytest.raises(errors.ProtocolMismatch):
        f.literals(0, b"")


def test_timeout_zero_means_no_runtime_limit_and_negative_is_refused() -> None:
    assert f.timeout_of(0) is None
    assert f.timeout_of(250) == 250
    with pytest.raises(errors.InvalidArgument) as info:
        f.timeout_of(-1)
    assert info.value.sqlstate == "22023" and "0 for no limit" in (info.value.hint or "")


# -- create_embeddings(text) ----------------------------------------------------------------------


def test_embed_text_is_the_runtime_vector(server: Runtime) -> None:
    gd: dict[str, Any] = {}
    literal = f.embed_text(gd, E5, "Grüße 🙂", 3600000, server.socket)
    assert parse(literal) == reference(server.socket, ["Grüße 🙂"])[0]
    assert f.ERROR_KEY not in gd
    # the connection is kept for the session, one per address
    assert list(gd[f.CLIENTS_KEY]) == [server.socket]
    assert f.client(gd, server.socket) is gd[f.CLIENTS_KEY][server.socket]


def test_unknown_model_returns_none_and_a_pending_error_with_the_installed_models(
        server: Runtime) -> None:
    gd: dict[str, Any] = {}
    assert f.embed_text(gd, "no-such-model:v1", "x", 1000, server.socket) is None
    sqlstate, message, _, hint = pending(gd)
    assert sqlstate == "22023" and "no-such-model:v1" in message and E5 in (hint or "")


def test_unreachable_runtime_says_how_to_start_it(tmp_path: Path) -> None:
    gd: dict[str, Any] = {}
    socket = str(tmp_path / "nothing-here.sock")
    assert f.embed_text(gd, E5, "x", 1000, socket) is None
    sqlstate, message, detail, hint = pending(gd)
    assert sqlstate == "08001" and socket in message and "does not exist" in (detail or "")
    assert "pglocalai serve" in (hint or "") and "azure_local_ai.runtime_socket" in (hint or "")


def test_socket_setting_must_be_an_absolute_path() -> None:
    gd: dict[str, Any] = {}
    assert f.embed_text(gd, E5, "x", 1000, "relative.sock") is None
    assert pending(gd)[:2] == ("22023", "azure_local_ai.runtime_socket must be an absolute path")


def test_runtime_timeout_is_57014() -> None:
    with Runtime(thread=True, delay_ms=300) as bg:
        gd: dict[str, Any] = {}
        assert f.embed_text(gd, E5, "slow", 20, bg.socket) is None
        sqlstate, message, _, hint = pending(gd)
        assert sqlstate == "57014" and "timed out" in message and hint


def test_a_pending_interrupt_stops_the_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # Inside the server the flag is QueryCancelPending, read through ctypes; it is set here by
    # hand (tests/integration/test_sql.py cancels a real statement).
    flag = threading.Event()
    monkeypatch.setattr(f, "_interrupt_pending", flag.is_set)
    with Runtime(thread=True, delay_ms=2000) as bg:
        gd: dict[str, Any] = {}
        threading.Timer(0.2, flag.set).start()
        assert f.embed_text(gd, E5, "never answered", 0, bg.socket) is None
        assert pending(gd)[0] == "57014"
        conn = gd[f.CLIENTS_KEY][bg.socket]
        assert conn._sock is None  # its reply would arrive out of turn: the connection is dropped


def test_outside_the_server_there_is_no_interrupt_flag() -> None:
    assert f._interrupt_reader() is None
    f.check_interrupt()  # a no-op


def test_loading_the_package_imports_only_what_it_runs_on() -> None:
    # every new session that embeds pays for this import; typing, dataclasses (and with it
    # inspect) and ctypes cost it ~20 ms, for annotations and a rarely needed flag reader
    src = str(Path(f.__file__).resolve().parents[2])
    code = (f"import sys; sys.path.insert(0, {src!r}); import pglocalai.pg.functions; "
            "print(' '.join(m for m in ('typing', 'dataclasses', 'inspect', 'ctypes') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": os.environ.get("PATH", "")})
    assert out.stdout.split() == []


# -- create_embeddings(text[] [, ids]) ------------------------------------------------------------


def test_embed_many_keeps_order_batches_and_nulls(server: Runtime) -> None:
    inputs = ["one", None, "three", "", None, None, None, "eight", "nine"]
    texts = [t for t in inputs if t is not None]
    expected = dict(zip(texts, reference(server.socket, texts), strict=True))
    for batch_size in (1, 2, 3, 128):
        rows = list(f.embed_many({}, E5, inputs, None, batch_size, 3600000,
                                 server.socket))
        assert [r[0] for r in rows] == list(range(1, len(inputs) + 1))
        for text, (_, literal) in zip(inputs, rows, strict=True):
            if text is None:
                assert literal is None
            else:
                assert parse(literal) == expected[text]


def test_embed_many_streams_with_at_most_two_batches_in_flight(server: Runtime) -> None:
    inputs = [f"text {i}" for i in range(40)]
    rows = f.embed_many({}, E5, inputs, len(inputs), 4, 0, server.socket)
    first = next(rows)
    assert first[0] == 1
    with Client(server.socket) as c:
        # ten batches in all; before the first row only two requests had been sent
        assert c.stats()["totals"]["requests"] <= 2
    assert len(list(rows)) == 39


@pytest.mark.parametrize(("inputs", "ids_count", "batch_size", "timeout_ms", "message"), [
    (["a"], None, 0, 1000, "batch_size must be at least 1"),
    (["a"], None, -3, 1000, "batch_size must be at least 1"),
    (["a", "b"], 3, 128, 1000, "inputs and ids must have the same length"),
    (["a"], None, 128, -1, "timeout_ms must not be negative"),
    ([["a", "b"], ["c", "d"]], None, 128, 1000, "inputs must be a one-dimensional array"),
])
def test_embed_many_bad_arguments_yield_one_failed_row(
        server: Runtime, inputs: list[Any], ids_count: int | None, batch_size: int,
        timeout_ms: int, message: str) -> None:
    gd: dict[str, Any] = {}
    rows = list(f.embed_many(gd, E5, inputs, ids_count, batch_size, timeout_ms,
                             server.socket))
    assert rows == [(None, None)]
    assert pending(gd)[:2] == ("22023", message)


def test_ids_length_mismatch_says_both_lengths(server: Runtime) -> None:
    gd: dict[str, Any] = {}
    list(f.embed_many(gd, E5, ["a"], 0, 128, 1000, server.socket))
    _, _, detail, hint = pending(gd)
    assert detail == "inputs has 1 element, ids has 0" and hint


def test_all_null_and_empty_inputs_need_no_runtime(tmp_path: Path) -> None:
    socket = str(tmp_path / "nothing-here.sock")
    assert list(f.embed_many({}, E5, [None, None], 2, 1, 1000, socket)) == [(1, None), (2, None)]
    assert list(f.embed_many({}, E5, [], 0, 1, 1000, socket)) == []


def test_embed_many_unknown_model_fails_before_any_row(server: Runtime) -> None:
    gd: dict[str, Any] = {}
    assert list(f.embed_many(gd, "nope:v1", ["a", "b"], None, 1, 1000,
                             server.socket)) == [(None, None)]
    assert pending(gd)[0] == "22023"


def test_calls_after_a_runtime_restart_succeed_in_the_same_session(tmp_path: Path) -> None:
    gd: dict[str, Any] = {}
    with Runtime(thread=True, base=tmp_path) as bg:
        socket = bg.socket
        assert f.embed_text(gd, E5, "before", 1000, socket)
        assert len(list(f.embed_many(gd, E5, ["a", "b"], None, 1, 1000, socket))) == 2
    assert f.embed_text(gd, E5, "while down", 1000, socket) is None
    assert pending(gd)[0] == "08001"
    with Runtime(thread=True, base=tmp_path):
        assert f.embed_text(gd, E5, "after", 1000, socket)
        rows = list(f.embed_many(gd, E5, ["a", "b"], None, 1, 1000, socket))
        assert [r[0] for r in rows] == [1, 2] and all(r[1] for r in rows)


# -- the other calls ------------------------------------------------------------------------------


def test_settings_models_tokens_stats(server: Runtime) -> None:
    gd: dict[str, Any] = {}
    socket = server.socket
    settings = json.loads(f.request(gd, "get_settings", "{}", 1000, socket))
    assert set(settings) == {"intra_op_parallelism", "inter_op_parallelism", "spin_control"}
    assert json.loads(f.request(gd, "get_settings", '{"keys": ["spin_control"]}', 1000,
                                socket)) == {"spin_control": settings["spin_control"]}
    assert f.request(gd, "get_settings", '{"keys": ["nope"]}', 1000, socket) is None
    assert pending(gd)[0] == "22023"

    listed = json.loads(f.request(gd, "list_models", "{}", 0, socket))
    models = {m["model_uri"]: m for m in listed}
    # exactly the columns of azure_local_ai.list_models()
    assert set(models[E5]) == {"model_uri", "dimensions", "max_tokens", "variant", "variants",
                               "loaded"}
    assert models[E5]["dimensions"] == 384 and models[E5]["variant"] in models[E5]["variants"]

    meta = json.loads(f.request(gd, "model_metadata", json.dumps({"model": E5}), 0, socket))
    assert meta["max_tokens"] == 512
    count = f.request(gd, "token_count", json.dumps({"model": E5, "input": "héllo"}), 0, socket)
    assert json.loads(count) == 2 + len("héllo".encode())  # the fake engine: one token per byte
    assert f.embed_text(gd, E5, "counted", 0, socket)
    stats = json.loads(f.request(gd, "runtime_stats", "{}", 0, socket))
    assert stats["totals"]["requests"] == 1 and stats["totals"]["texts"] == 1

    assert f.request(gd, "no_such_operation", "{}", 0, socket) is None
    assert pending(gd)[:2] == ("22023", 'unknown operation "no_such_operation"')


def test_version_reports_an_unreachable_runtime_instead_of_failing(
        server: Runtime, tmp_path: Path) -> None:
    gd: dict[str, Any] = {}
    up = json.loads(f.request(gd, "version", "{}", 0, server.socket))
    assert re.fullmatch(r"azure_local_ai \S+, runtime \S+ at " + re.escape(server.socket),
                        up)
    down = json.loads(f.request(gd, "version", "{}", 0, str(tmp_path / "none.sock")))
    assert "runtime not reachable at" in down and f.ERROR_KEY not in gd


def test_set_setting_needs_an_administrator(server: Runtime) -> None:
    gd: dict[str, Any] = {}
    socket = server.socket
    assert f.set_setting(gd, "spin_control", "false", socket, False) is None
    sqlstate, message, detail, hint = pending(gd)
    assert sqlstate == "42501" and message.startswith("permission denied")
    assert "azure_local_ai_admin" in (detail or "") and "azure_local_ai_admin" in (hint or "")
    changed = json.loads(f.set_setting(gd, "spin_control", "false", socket, True))
    assert changed["spin_control"] is False


# -- azure_local_ai_internal.py_load: the bootstrap body, run as PL/Python would -------------

LOADER = r"""
import json, re, sys
sql = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r"function azure_local_ai_internal\.py_load\(lib_dir text, version text\).*?"
              r"\$python\$\n(.*?)\$python\$", sql, re.S)
body = "".join("    " + line + "\n" for line in m.group(1).splitlines())
GD = {}
scope = {"GD": GD, "plpy": None}
exec("def _load(lib_dir, version):\n" + body, scope)
ok = scope["_load"](sys.argv[2], sys.argv[3])
module = GD.get("azure_local_ai")
print(json.dumps({"ok": ok, "error": GD.get("azure_local_ai.error"),
                  "module": module.__name__ if module else None,
                  "file": module.__file__ if module else None}))
"""


def load(lib_dir: Path, version: str) -> dict[str, Any]:
    """Run the py_load body in the server's Python (/usr/bin/python3), in a process of its own."""
    out = subprocess.run(["/usr/bin/python3", "-I", "-c", LOADER, str(SQL), str(lib_dir), version],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_load_imports_the_package_of_the_extension_version(tmp_path: Path) -> None:
    target = install_package(tmp_path / "lib", "1.0.0")
    result = load(tmp_path / "lib", "1.0.0")
    assert result["ok"] is True and result["error"] is None
    assert result["module"] == "pglocalai.pg.functions"
    assert result["file"] == str(target / "pg" / "functions.py")


def test_load_without_the_package_names_the_folder(tmp_path: Path) -> None:
    result = load(tmp_path / "empty", "1.0.0")
    sqlstate, message, _, hint = result["error"]
    assert result["ok"] is False and sqlstate == "58P01"
    assert str(tmp_path / "empty" / "1.0.0") in message and "install-ext" in hint


def test_load_refuses_another_package_version(tmp_path: Path) -> None:
    install_package(tmp_path / "lib", "1.0.0", package_version="0.9.0")
    sqlstate, message, _, hint = load(tmp_path / "lib", "1.0.0")["error"]
    assert sqlstate == "58000"
    assert message == "the pglocalai package 0.9.0 does not serve version 1.0.0 of the extension"
    assert "ALTER EXTENSION azure_local_ai UPDATE" in hint


@pytest.mark.parametrize(("writable", "mode", "reason"), [
    ("pglocalai/client.py", 0o666, "every user"), ("pglocalai/pg", 0o777, "every user"),
    (".", 0o777, "every user"), ("pglocalai/pg", 0o775, "its group"),
    ("pglocalai/protocol.py", 0o664, "its group")])
def test_load_refuses_code_that_other_users_can_change(tmp_path: Path, writable: str, mode: int,
                                                       reason: str) -> None:
    target = install_package(tmp_path / "lib", "1.0.0")
    (target.parent / writable).chmod(mode)
    result = load(tmp_path / "lib", "1.0.0")
    sqlstate, message, detail, _ = result["error"]
    assert result["ok"] is False and sqlstate == "42501"
    assert message.startswith("refusing to import Python code") and reason in detail


def test_load_refuses_code_that_an_acl_lets_others_change(tmp_path: Path) -> None:
    target = install_package(tmp_path / "lib", "1.0.0")
    # an access ACL granting a named user (uid 65534) write: user_obj, user:65534:rwx, group_obj,
    # mask, other, as the kernel stores it (setfacl -m u:65534:rwx)
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, uid) for tag, perm, uid in
                                          [(1, 7, 0xFFFFFFFF), (2, 7, 65534), (4, 5, 0xFFFFFFFF),
                                           (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF)])
    os.setxattr(target / "pg", "system.posix_acl_access", acl)
    result = load(tmp_path / "lib", "1.0.0")
    sqlstate, message, detail, _ = result["error"]
    assert result["ok"] is False and sqlstate == "42501"
    assert "access control list" in detail  # the ACL's mask shows as group write


def test_unit_vectors_come_back_unit(server: Runtime) -> None:
    literal = f.embed_text({}, E5, "norm", 1000, server.socket)
    assert math.isclose(math.fsum(x * x for x in parse(literal)), 1.0, rel_tol=1e-5)


def test_a_large_batch_size_is_cut_at_the_protocol_limits(monkeypatch: pytest.MonkeyPatch,
                                                          server: Runtime) -> None:
    """batch_size 100,000 over 9,000 texts: requests of at most MAX_TEXTS_PER_REQUEST texts
    (and MAX_TEXT_BYTES), never a 54000 refusal; the rows still come back in order."""
    from pglocalai import protocol  # noqa: PLC0415

    sizes: list[int] = []
    real = Client.embed_stream

    def spy(self: Client, model: str, chunks: Any, timeout_ms: Any = None,
            depth: int = 2) -> Any:
        def counted() -> Any:
            for chunk in chunks:
                sizes.append(len(chunk))
                yield chunk
        return real(self, model, counted(), timeout_ms, depth)

    monkeypatch.setattr(Client, "embed_stream", spy)
    monkeypatch.setattr(protocol, "MAX_TEXT_BYTES", 4 * 2500 * 8)  # the byte cut too
    texts = [f"text {i:05d}" if i % 7 else None for i in range(9000)]
    rows = list(f.embed_many({}, E5, texts, None, 100_000, 60_000, server.socket))
    assert [r[0] for r in rows] == list(range(1, 9001))
    assert all((r[1] is None) == (t is None) for r, t in zip(rows, texts, strict=True))
    assert max(sizes) <= min(protocol.MAX_TEXTS_PER_REQUEST, 2500) and len(sizes) >= 4
