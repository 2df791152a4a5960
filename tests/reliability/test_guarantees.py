"""Guarantees of docs/security.md and docs/reliability.md that had no test of their own.

* the runtime's logs hold counts, never texts, even at debug level and on errors;
* settings.json is whole after the runtime is killed in the middle of writing it;
* one connection has at most 256 requests in flight: the runtime stops reading it.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time

import pytest
from support import Runtime, wait_until

from pglocalai.client import Client
from pglocalai.errors import PglocalaiError
from pglocalai.protocol import Frame, Kind, encode

pytestmark = pytest.mark.runtime

MARKER = "Zq7-confidential-marker"


def test_logs_never_hold_texts_even_at_debug_level() -> None:
    texts = [f"{MARKER} {i} " + "word " * i for i in range(40)]
    with Runtime(preload="all", log_level="debug") as rt, Client(rt.socket) as client:
        client.embed("multilingual-e5-small:v1", texts)
        client.token_count("multilingual-e5-small:v1", texts)
        for bad in ({"model": "multilingual-e5-small:v1", "inputs": [MARKER, 7]},  # not a string
                    {"model": f"nope-{MARKER}:v1", "inputs": [MARKER]},  # unknown model
                    {"model": "multilingual-e5-small:v1", "inputs": MARKER}):  # not a list
            with pytest.raises(PglocalaiError):
                client.request(Kind.EMBED, bad)
        with pytest.raises(PglocalaiError):
            client.set_setting("spin_control", MARKER)
        wait_until(lambda: "embed" in rt.log(), 10, "the runtime logged nothing at debug level")
        log = rt.log()
    assert "debug" in log.lower() or '"embed"' in log  # the debug lines were written
    lines = [line for line in log.splitlines() if "confidential" in line]
    # a model URI or a setting value the caller sent may be named; a text never is
    leaked = [line for line in lines if f"{MARKER} " in line]  # the texts embedded and counted
    bare = [line for line in lines  # the bad requests' texts, a lone marker in quotes
            if f'"{MARKER}"' in line and "nope-" not in line and "spin_control" not in line]
    assert not leaked and not bare, lines


def test_settings_file_is_whole_after_a_kill_in_the_middle_of_writing() -> None:
    """Kill -9 the runtime at random moments while administrators change settings."""
    rng = random.Random(7)
    with Runtime(supervise=True) as rt:
        path = rt.state_dir / "settings.json"
        written: list[int] = []
        for round_ in range(4):  # the supervisor's backoff doubles with each crash: 0.5 s .. 4 s
            stop = threading.Event()

            def writer(stop: threading.Event = stop) -> None:
                value = 1
                with Client(rt.socket) as client:
                    while not stop.is_set():
                        value = value % 2 + 1
                        try:
                            client.set_setting("inter_op_parallelism", str(value))
                            written.append(value)
                        except PglocalaiError:
                            time.sleep(0.005)  # the runtime is restarting

            thread = threading.Thread(target=writer)
            thread.start()
            time.sleep(rng.uniform(0.02, 0.2))
            killed = rt.kill_serving_process()
            stop.set()
            thread.join(30)
            rt.wait_healthy(60, not_pid=killed)
            stored = json.loads(path.read_text(encoding="utf-8"))  # whole JSON, or this fails
            assert stored["inter_op_parallelism"] in (1, 2), (round_, stored)
            # the restarted runtime serves what the file says
            with Client(rt.socket) as client:
                live = client.get_settings(["inter_op_parallelism"])
            assert live["inter_op_parallelism"] == stored["inter_op_parallelism"]
        assert written, "no setting was ever written"


def test_a_connection_with_256_requests_in_flight_is_no_longer_read() -> None:
    """A client that pipelines requests that cannot finish yet is not read past 256."""
    with Runtime(preload="all", delay_ms=20_000, workers=1) as rt:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(rt.socket)
        frames = b"".join(encode(Frame(Kind.EMBED, i + 1, {"model": "multilingual-e5-small:v1",
                                                           "inputs": ["x"]}))
                          for i in range(50_000))
        sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 3
        while sent < len(frames) and time.monotonic() < deadline:
            try:
                sent += sock.send(frames[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.5)  # let the runtime read all it is willing to
        read = rt.stats()["totals"]["requests"]
        sock.close()
    assert sent < len(frames), "every frame was taken: nothing pushed back"
    assert 0 < read <= 256, f"the runtime took {read} requests of one connection in flight"
