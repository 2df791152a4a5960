"""Property-based robustness: random, truncated and malformed frames sent to a real
runtime process. It never crashes, keeps serving other clients, leaks neither file
descriptors nor memory."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import E5, Runtime, raw_frame, read_frame, wait_until

from pglocalai.client import Client
from pglocalai.protocol import Kind

pytestmark = pytest.mark.runtime
FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


class Fuzzed:
    """The runtime under fuzzing, and a witness client it serves throughout."""

    def __init__(self, sock: str, pid: int) -> None:
        self.sock = sock
        self.process = psutil.Process(pid)
        self.witness = Client(sock)  # another client, served throughout

    def check_serving(self) -> None:
        assert self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        assert len(self.witness.embed(E5, ["still here"], timeout_ms=10_000)[0]) == 384

    def send(self, data: bytes, read_reply: bool = False) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.sock)
            try:
                s.sendall(data)
                if read_reply:
                    s.shutdown(socket.SHUT_WR)
                    while read_frame(s) is not None:
                        pass
            except (BrokenPipeError, ConnectionResetError):
                pass  # the runtime may close an out-of-step stream first

    def fds(self) -> int:
        return self.process.num_fds()


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Fuzzed]:
    with Runtime(preload="all", max_queue=5000) as rt:
        target = Fuzzed(rt.socket, rt.pid())
        target.check_serving()
        yield target
        target.witness.close()
        assert rt.stop() == 0  # and it still shuts down cleanly


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)

headers = st.fixed_dictionaries(
    {}, optional={"model": st.sampled_from([E5, "fake-tiny:v1", "nope:v1", ""]) | json_values,
                  "inputs": st.lists(st.text(max_size=60), max_size=8) | json_values,
                  "timeout_ms": st.sampled_from([None, 0, 1, 5000, -3]) | json_values,
                  "keys": st.lists(st.text(max_size=20), max_size=3) | json_values,
                  "key": st.sampled_from(["spin_control", "x"]) | json_values,
                  "value": json_values})


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes(fuzzed: Fuzzed, data: bytes) -> None:
    fuzzed.send(data)
    fuzzed.check_serving()


@FUZZ
@given(version=st.sampled_from([0, 1, 1, 1, 2, 255]), kind=st.integers(0, 255),
       request_id=st.integers(0, 2**32 - 1), head=st.binary(max_size=200),
       payload=st.binary(max_size=64), declared=st.none() | st.integers(0, 2**32 - 1),
       cut=st.none() | st.integers(0, 300))
def test_malformed_and_truncated_frames(fuzzed: Fuzzed, version: int, kind: int,
                                        request_id: int, head: bytes, payload: bytes,
                                        declared: int | None, cut: int | None) -> None:
    data = raw_frame(kind, request_id, head, version, payload, declared)
    if cut is not None:
        data = data[:cut]
    fuzzed.send(data, read_reply=cut is None)
    fuzzed.check_serving()


@FUZZ
@given(kind=st.sampled_from([k for k in Kind if k not in (Kind.SET_SETTING,)]),
       header=headers, count=st.integers(1, 3), cut=st.none() | st.integers(0, 200))
def test_valid_frames_with_arbitrary_json(fuzzed: Fuzzed, kind: Kind, header: dict[str, object],
                                          count: int, cut: int | None) -> None:
    head = json.dumps(header).encode()
    data = b"".join(raw_frame(int(kind), i, head) for i in range(count))
    if cut is not None:
        data = data[:cut]
    fuzzed.send(data, read_reply=cut is None)
    fuzzed.check_serving()


def test_no_leak_after_many_bad_clients(fuzzed: Fuzzed) -> None:
    """Warm up, then 2,000 more bad clients: fds back to baseline, memory stable."""
    junk = [b"\x00", b"\xff" * 9, raw_frame(1, 1, b'{"model":"\xff"}'),
            raw_frame(Kind.EMBED, 2, json.dumps({"model": E5, "inputs": ["x"] * 50}).encode()),
            raw_frame(1, 1, b"{}", version=9), raw_frame(1, 1, b"{}")[:7],
            raw_frame(Kind.EMBED, 3, json.dumps({"model": "nope:v1", "inputs": []}).encode())]

    def round_of_clients(n: int) -> None:
        for i in range(n):
            fuzzed.send(junk[i % len(junk)], read_reply=i % 2 == 0)

    round_of_clients(500)
    fuzzed.check_serving()
    baseline_fds = fuzzed.fds()
    baseline_rss = fuzzed.process.memory_info().rss
    round_of_clients(2000)
    fuzzed.check_serving()
    wait_until(lambda: fuzzed.fds() <= baseline_fds, 30)
    growth = fuzzed.process.memory_info().rss - baseline_rss
    assert growth < max(0.05 * baseline_rss, 4 << 20), f"rss grew by {growth} bytes"
