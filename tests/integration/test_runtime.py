"""The runtime over a real Unix socket: FakeEngine in a thread of this process."""

from __future__ import annotations

import json
import os
import pwd
import threading
from pathlib import Path

import numpy as np
import pytest
from support import (
    E5,
    FAKE_MODELS,
    FakeCatalog,
    FakeEngine,
    Runtime,
    connect_as,
    raw_connect,
    raw_frame,
    read_frame,
    run_threads,
    wait_until,
)

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.errors import (
    AuthenticationFailed,
    InvalidArgument,
    ModelNotInstalled,
    Overloaded,
    RequestTimeout,
    UnknownSetting,
)
from pglocalai.protocol import PROTOCOL_VERSION, Kind


def reference(texts: list[str], uri: str = E5) -> np.ndarray:
    engine = FakeEngine(next(m for m in FAKE_MODELS if m.uri == uri))
    return np.stack([engine.run(engine.tokenize([t]))[0] for t in texts])


def as_array(dim: int, raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").reshape(-1, dim)


def test_health_models_metadata() -> None:
    with Runtime(thread=True) as bg, Client(bg.socket) as c:
        health = c.health()
        assert health["status"] == "ok" and health["protocol"] == PROTOCOL_VERSION
        assert health["models_loaded"] == [] and health["uptime_s"] >= 0
        c.embed(E5, ["load it"])
        assert c.health()["models_loaded"] == [E5]
        models = {m["uri"]: m for m in c.list_models()}
        assert models[E5]["loaded"] is True and models[E5]["dimensions"] == 384
        assert set(models[E5]) >= {"uri", "dimensions", "max_tokens", "variants",
                                   "default_variant", "loaded", "variant"}
        assert models["fake-tiny:v1"]["loaded"] is False
        assert c.model_metadata(E5)["max_tokens"] == 512
        with pytest.raises(ModelNotInstalled) as info:
            c.embed("no-such-model:v9", ["x"])
        assert E5 in (info.value.hint or "")


def test_embed_order_empty_text_and_token_counts() -> None:
    texts = ["b" * 30, "", "a", "ü" * 700, "mixed 日本 🧪"]
    with Runtime(thread=True) as bg, Client(bg.socket) as c:
        dim, raw = c.embed_raw(E5, texts)
        np.testing.assert_allclose(as_array(dim, raw), reference(texts), atol=1e-6)
        counts = c.token_count(E5, texts)
        # full count with <s> and </s>, before truncation to 512
        assert counts == [32, 2, 3, 1402, 2 + len("mixed 日本 🧪".encode())]
        assert c.embed(E5, []) == []


def test_many_concurrent_clients_get_exactly_their_own_vectors() -> None:
    def client(n: int) -> None:
        with Client(bg.socket) as c:
            for i in range(15):
                texts = [f"client {n} request {i} text {j} " * (1 + (n * j + i) % 4)
                         for j in range(1 + (n + i) % 6)]
                dim, raw = c.embed_raw(E5, texts)
                np.testing.assert_allclose(as_array(dim, raw), reference(texts), atol=1e-5)

    with Runtime(thread=True, delay_ms=2) as bg:
        errors = run_threads(client, 16)
        with Client(bg.socket) as c:
            totals = c.stats()["totals"]
    assert not errors, errors[0]
    assert totals["requests"] == 16 * 15
    assert totals["batches"] < totals["requests"]  # cross-connection batching happened


def test_pipelined_requests_on_one_connection_come_back_in_order() -> None:
    chunks = [[f"chunk {i} text {j}" * (1 + j % 3) for j in range(1 + i % 7)] for i in range(40)]
    with Runtime(thread=True, delay_ms=1) as bg, Client(bg.socket) as c:
        got = list(c.embed_stream(E5, chunks, depth=8))
    assert len(got) == len(chunks)
    for chunk, (dim, raw) in zip(chunks, got, strict=True):
        np.testing.assert_allclose(as_array(dim, raw), reference(chunk), atol=1e-6)


def test_deadline_behind_a_slow_batch_times_out_and_is_dropped() -> None:
    with Runtime(thread=True, delay_ms=400, max_batch_size=1, workers=1) as bg:
        slow = threading.Thread(target=lambda: Client(bg.socket).embed(E5, ["slow"]))
        slow.start()
        with Client(bg.socket) as c:
            wait_until(lambda: c.stats()["models"].get(E5, {}).get("batches", 0) == 0
                       and bg.server.models.queues.get(E5) is not None
                       and bg.server.models.queues[E5].running == 1)
            with pytest.raises(RequestTimeout):
                c.embed(E5, ["hurry", "up"], timeout_ms=30)
            model = c.stats()["models"][E5]
            assert model["queue_depth"] == 0 and model["timeouts"] == 1
            slow.join()
            assert c.stats()["models"][E5]["batched_texts"] == 1  # "hurry", "up" never ran


def test_disconnect_drops_pending_work() -> None:
    with Runtime(thread=True, delay_ms=300, max_batch_size=1, workers=1) as bg:
        busy = threading.Thread(target=lambda: Client(bg.socket).embed(E5, ["busy"]))
        busy.start()
        with Client(bg.socket) as c:
            wait_until(lambda: E5 in bg.server.models.queues
                       and bg.server.models.queues[E5].running == 1)
            sock = raw_connect(bg.socket)
            head = json.dumps({"model": E5}).encode()
            texts = protocol.pack_texts([f"t{i}" for i in range(50)])
            sock.sendall(raw_frame(Kind.EMBED, 1, head, payload=texts))
            wait_until(lambda: c.stats()["models"][E5]["queue_depth"] == 50)
            sock.close()
            wait_until(lambda: c.stats()["models"][E5]["queue_depth"] == 0)
            busy.join()
            c.embed(E5, ["after"])
            model = c.stats()["models"][E5]
            assert model["cancelled"] == 1
            assert model["batched_texts"] == 2  # "busy" and "after", none of the 50


def test_settings_validation_persistence_and_concurrent_changes(tmp_path: Path) -> None:
    with Runtime(thread=True, base=tmp_path) as bg, Client(bg.socket) as c:
        c.embed(E5, ["loaded"])
        assert c.get_settings()["inter_op_parallelism"] == 1
        assert c.get_settings(["spin_control"]) == {"spin_control": True}
        with pytest.raises(UnknownSetting) as info:
            c.set_setting("threads", "2")
        assert "intra_op_parallelism" in (info.value.hint or "")
        with pytest.raises(InvalidArgument, match="spin_control"):
            c.set_setting("spin_control", "sometimes")
        assert c.set_setting("spin_control", "false")["spin_control"] is False
        def changer(n: int) -> None:
            with Client(bg.socket) as cc:
                for i in range(10):
                    cc.set_setting("intra_op_parallelism", str(1 + (n + i) % 4))
                    cc.embed(E5, [f"between {n} {i}"])

        errors = run_threads(changer, 6)
        assert not errors, errors[0]
        final = c.get_settings()
        engine = bg.server.models.queues[E5].engine
        assert engine.settings == final  # the loaded engine runs with what is reported
    on_disk = json.loads((tmp_path / "state" / "settings.json").read_text())
    assert on_disk == final
    with Runtime(thread=True, base=tmp_path) as bg2, Client(bg2.socket) as c:
        assert c.get_settings() == final  # reloaded at start


def test_lazy_load_happens_once_for_concurrent_first_requests() -> None:
    catalog = FakeCatalog(load_delay_ms=300)
    with Runtime(thread=True, catalog=catalog) as bg:
        errors = run_threads(lambda _n: Client(bg.socket).embed(E5, ["x"]), 8)
        assert not errors, errors[0]
        assert catalog.loads == {E5: 1}


def test_preload() -> None:
    with Runtime(thread=True, preload="all") as bg, Client(bg.socket) as c:
        assert sorted(c.health()["models_loaded"]) == sorted(m.uri for m in FAKE_MODELS)


def test_protocol_mismatch_keeps_the_connection_usable() -> None:
    with Runtime(thread=True) as bg:
        sock = raw_connect(bg.socket)
        sock.sendall(raw_frame(Kind.HEALTH, 5, b"{}", version=99))
        reply = read_frame(sock)
        assert reply is not None and reply.kind == Kind.ERROR
        assert reply.header["code"] == "protocol_mismatch" and reply.request_id == 5
        sock.sendall(raw_frame(Kind.HEALTH, 6, b"{}"))
        reply = read_frame(sock)
        assert reply is not None and reply.kind == Kind.RESULT and reply.request_id == 6


def test_invalid_utf8_and_bad_headers_get_bad_request() -> None:
    bad_bodies = [b'{"model":"\xff\xfe","inputs":["x"]}', b"[1]", b"{", b'{"model":1}',
                  b'{"model":"m:v1","inputs":"not a list"}',
                  b'{"model":"multilingual-e5-small:v1","inputs":["x"],"timeout_ms":-1}',
                  b'{"model":"multilingual-e5-small:v1","inputs":["\\ud800"]}']
    with Runtime(thread=True) as bg:
        sock = raw_connect(bg.socket)
        for i, body in enumerate(bad_bodies):
            sock.sendall(raw_frame(Kind.EMBED, 100 + i, body))
            reply = read_frame(sock)
            assert reply is not None and reply.kind == Kind.ERROR, body
            assert reply.header["code"] == "bad_request" and reply.request_id == 100 + i
        sock.sendall(raw_frame(Kind.EMBEDDINGS, 1, b"{}"))  # a reply kind is not a request
        reply = read_frame(sock)
        assert reply is not None and reply.header["code"] == "bad_request"
        with Client(bg.socket) as c:
            assert c.embed(E5, ["still serving"])


@pytest.mark.parametrize("length", [0, 3, 0xFFFFFFFF, 0x80000000, protocol.MAX_FRAME_BYTES + 1])
def test_impossible_length_closes_that_connection_only(length: int) -> None:
    with Runtime(thread=True) as bg:
        sock = raw_connect(bg.socket)
        sock.sendall(length.to_bytes(4, "little") + b"\x01" * 16)
        reply = read_frame(sock)
        assert reply is not None and reply.header["code"] == "bad_request"
        assert read_frame(sock) is None  # out of step: closed
        with Client(bg.socket) as c:
            assert c.health()["status"] == "ok"


def test_overloaded() -> None:
    with Runtime(thread=True, max_queue=10) as bg, Client(bg.socket) as c:
        with pytest.raises(Overloaded) as info:
            c.embed(E5, ["x"] * 11)
        assert info.value.hint
        assert len(c.embed(E5, ["x"] * 10)) == 10
        assert c.stats()["models"][E5]["overloaded"] == 1


def test_socket_and_directory_permissions() -> None:
    with Runtime(thread=True) as bg:
        sock_path = Path(bg.socket)
        assert sock_path.stat().st_mode & 0o777 == 0o600
        assert sock_path.parent.stat().st_mode & 0o777 == 0o700
    assert not sock_path.exists()  # removed at shutdown


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_socket_owner_may_connect_and_nobody_else() -> None:
    owner = pwd.getpwnam("nobody")
    with Runtime(thread=True, socket_owner="nobody") as bg:
        assert os.stat(bg.socket).st_uid == owner.pw_uid
        assert os.stat(os.path.dirname(bg.socket)).st_uid == owner.pw_uid
        assert connect_as(bg.socket, "nobody") == 0
        assert connect_as(bg.socket, "postgres") == 13  # EACCES


def test_tcp_on_loopback_requires_the_secret(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cret-s3cret-s3cret\n")
    secret_file.chmod(0o600)
    with Runtime(thread=True, tcp="127.0.0.1:0", secret_file=str(secret_file)) as bg:
        address = f"tcp://127.0.0.1:{bg.server.tcp_port()}"
        with Client(address, secret="s3cret-s3cret-s3cret") as c:
            assert len(c.embed(E5, ["over tcp"])[0]) == 384
        with pytest.raises(AuthenticationFailed, match="authentication failed"):
            Client(address, secret="wrong").health()
        with pytest.raises(AuthenticationFailed, match="authentication failed"):
            Client(address).health()
        import socket as socketlib

        raw = socketlib.create_connection(("127.0.0.1", bg.server.tcp_port()), timeout=10)
        raw.sendall(raw_frame(Kind.HEALTH, 1, b"{}"))  # no AUTH first
        reply = read_frame(raw)
        assert reply is not None and "authentication required" in reply.header["message"]
        assert read_frame(raw) is None
        with Client(bg.socket) as c:  # the Unix socket needs no secret
            assert c.health()["status"] == "ok"
