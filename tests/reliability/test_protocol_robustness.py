"""Protocol robustness against the real ONNX engine, with other clients served meanwhile.

tests/integration/test_fuzz.py sends hypothesis-generated frames to a fake-engine runtime
one client at a time, checking it between examples. This adds what a live service meets:
thousands of junk frames from several clients at once while a witness keeps embedding
(it must get every vector right, without an error), and a client that floods requests
without reading a reply (the runtime must push back instead of buffering without bound).
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import E5, Runtime, Witness, mib, wait_until

from pglocalai import protocol
from pglocalai.client import Client
from pglocalai.protocol import Frame, Kind

pytestmark = pytest.mark.runtime

JUNK_CLIENTS = 4
WARMUP_FRAMES = 4_000
STORM_FRAMES = 80_000  # in QUARTERS storms
QUARTERS = 4
# A leak grows with the frames, so in every quarter of the storm: the median quarter may
# add 1.25% of the runtime's RSS after the warm-up. The median leaves out two things that
# are not leaks: ONNX Runtime's arenas grow in doubling steps they keep (see fill_batches;
# CI saw a storm of 20,000 add 19.6 and 20.0 MiB after its warm-up), which a storm takes
# once, in one quarter; and memory the heap freed earlier but kept (tens of MiB), which
# absorbs what a leak takes first. The storm as a whole may add up to 10%.
RSS_GROWTH_QUARTER = 0.0125
RSS_GROWTH = 0.10
# What is allocated now (STATS: malloc's bytes in use, Python's small-object blocks) holds
# no freed-but-kept memory, so it sees leaks RSS misses. About 1 frame in 6 reaches a
# request handler (the rest is cut off as junk), ~3,500 a quarter. Without a leak the
# median quarter grew by at most 0.06 MB and 813 blocks (single quarters up to 1,940
# blocks: cyclic garbage waiting for the collector; +33 MB once for a moment: a request in
# flight). Put in on purpose, one small object per handled frame (median +4,200 blocks)
# and 1 KB per handled frame fail the test; over a storm of 40,000 frames, RSS alone
# missed the 1 KB leak.
HEAP_GROWTH_QUARTER = 1 << 20
BLOCKS_GROWTH_QUARTER = 2_500
FLOOD_REQUESTS = 20_000
FLOOD_BOUND = 100 << 20  # what a client that never reads may cost the runtime
WITNESS_TEXT = "a witness keeps asking while others misbehave"


@pytest.fixture(scope="module")
def target(model_store: Path) -> Iterator[Runtime]:
    with Runtime(model=True, store=model_store, socket_owner="postgres", preload=E5) as rt:
        yield rt


def frame(kind: int, request_id: int, head: bytes, version: int = protocol.PROTOCOL_VERSION,
          payload: bytes = b"") -> bytes:
    body = struct.pack("<BBII", version, kind, request_id, len(head)) + head + payload
    return struct.pack("<I", len(body)) + body


def junk(rng: random.Random) -> bytes:
    """One piece of junk: random, malformed, truncated, or valid but odd."""
    def embed(**header: Any) -> bytes:  # texts travel packed in the payload
        return protocol.encode(Frame(Kind.EMBED, rng.getrandbits(32), header))

    choice = rng.randrange(10)
    if choice == 0:
        return rng.randbytes(rng.randrange(1, 600))
    if choice == 1:  # a plausible prefix, then garbage
        return frame(rng.randrange(256), rng.getrandbits(32), rng.randbytes(rng.randrange(64)))
    if choice == 2:  # a valid request cut anywhere
        data = embed(model=E5, inputs=["cut " * rng.randrange(1, 30)])
        return data[: rng.randrange(len(data))]
    if choice == 3:  # lengths no frame has
        return struct.pack("<I", rng.choice([0, 3, 0xFFFFFFFF, protocol.MAX_FRAME_BYTES + 1]))
    if choice == 4:  # another protocol version
        return frame(Kind.HEALTH, 1, b"{}", version=rng.choice([0, 1, 255]))
    if choice == 5:  # JSON of the wrong shape
        head = rng.choice([b"[]", b"{", b"null", b'{"model":5}', b'{"inputs":"x"}',
                           b'{"model":"%s","inputs":[1,2]}' % E5.encode(),
                           b'{"model":"%s","inputs":["x"],"timeout_ms":"soon"}' % E5.encode(),
                           b'{"keys":{"a":1}}', b'{"key":"spin_control","value":"maybe"}'])
        return frame(rng.choice([Kind.EMBED, Kind.TOKEN_COUNT, Kind.GET_SETTINGS,
                                 Kind.SET_SETTING, Kind.MODEL_METADATA]), 7, head)
    if choice == 6:  # a reply kind sent as a request
        return frame(rng.choice([Kind.RESULT, Kind.EMBEDDINGS, Kind.ERROR]), 9, b"{}")
    if choice == 7:  # valid but odd requests, pipelined
        return b"".join([embed(model="nope:v1", inputs=["x"]), embed(model=E5, inputs=[]),
                         protocol.encode(Frame(Kind.TOKEN_COUNT, 3,
                                               {"model": E5, "inputs": ["long " * 2000]}))])
    if choice == 8:  # real work, then the client leaves without reading
        return embed(model=E5, inputs=[f"abandoned {i}" * rng.randrange(1, 8)
                                       for i in range(rng.randrange(1, 40))])
    return frame(Kind.AUTH, 1, json.dumps({"secret": "not needed on unix"}).encode())


def storm(sock_path: str, frames: int, seed: int) -> None:
    """``frames`` pieces of junk over short-lived connections, some reading, most not."""
    rng = random.Random(seed)
    sent = 0
    while sent < frames:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(sock_path)
            try:
                for _ in range(rng.randrange(1, 20)):
                    s.sendall(junk(rng))
                    sent += 1
                if rng.random() < 0.3:
                    s.shutdown(socket.SHUT_WR)
                    while s.recv(1 << 16):
                        pass
            except OSError:
                pass  # the runtime closes a stream that is out of step


def run_storm(sock_path: str, frames: int, seed: int) -> None:
    threads = [threading.Thread(target=storm, args=(sock_path, frames // JUNK_CLIENTS, seed + i))
               for i in range(JUNK_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a junk client hangs"


def fill_batches(sock_path: str) -> None:
    """Both workers at once on full batches, then a lone run: each session's ONNX Runtime
    arena grows to its working size.

    The arena grows in steps (doubling) and keeps what it took; a step taken during the
    storm would look like a leak of many MiB although the next storms need nothing more.
    The witness's lone texts may run on the wide session (all threads, when the cores are
    free), whose arena only a lone run touches: a long text runs there whenever no other
    run is in flight (its first run took ~9 MiB), so it is sent until one did.
    """
    texts = [f"passage {i}: " + "abandoned words fill the batch " * 4 for i in range(64)]

    def client(_n: int) -> None:
        with Client(sock_path) as c:
            for _ in range(3):
                c.embed_raw(E5, texts)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with Client(sock_path) as c:
        def wide_runs() -> int:
            return int(c.stats()["models"][E5].get("wide_runs", 0))

        before = wide_runs()
        for _ in range(20):  # the witness's run may be in flight at the moment
            c.embed_raw(E5, ["a lone long passage " * 60])
            if wide_runs() > before:
                break


def test_junk_from_many_clients_while_a_witness_is_served(target: Runtime,
                                                          figures: dict[str, Any]) -> None:
    proc = target.process()
    with Witness(target.socket, WITNESS_TEXT) as witness:
        run_storm(target.socket, WARMUP_FRAMES, seed=1)
        fill_batches(target.socket)
        wait_until(lambda: target.stats()["totals"]["queue_depth"] == 0, 60, "queue drained")
        base_fds, base_rss = proc.num_fds(), proc.memory_info().rss
        bad_before = target.stats()["bad_frames"]
        allocated = [_allocated(target.stats())]
        calls_before = witness.calls
        started = time.monotonic()
        quarters, rss = [], base_rss
        for seed in range(2, 2 + QUARTERS):
            run_storm(target.socket, STORM_FRAMES // QUARTERS, seed=seed)
            quarters.append(proc.memory_info().rss - rss)
            rss += quarters[-1]
            allocated.append(_allocated(target.stats()))
        seconds = time.monotonic() - started
        served = witness.calls - calls_before
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    assert target.pid() == proc.pid  # never crashed
    assert witness.errors == [], witness.errors[:5]
    assert served >= 1, "the witness was not served during the storm"
    stats = target.stats()
    assert stats["bad_frames"] > bad_before
    wait_until(lambda: proc.num_fds() <= base_fds, 30, "file descriptors back to the baseline")
    growth = proc.memory_info().rss - base_rss
    assert statistics.median(quarters) < RSS_GROWTH_QUARTER * base_rss, \
        f"rss grew in the quarters of the storm by {', '.join(map(mib, quarters))} " \
        f"from {mib(base_rss)}"
    assert growth < RSS_GROWTH * base_rss, f"rss grew by {mib(growth)} from {mib(base_rss)}"
    for key, limit in (("heap_in_use_bytes", HEAP_GROWTH_QUARTER),
                       ("python_blocks", BLOCKS_GROWTH_QUARTER)):
        steps = [b[key] - a[key] for a, b in itertools.pairwise(allocated)]
        assert statistics.median(steps) < limit, \
            f"{key} grew in the quarters of the storm by {steps} from {allocated[0][key]}"
    figures["junk_storm"] = {
        "junk_frames": STORM_FRAMES, "after_warmup_frames": WARMUP_FRAMES,
        "clients": JUNK_CLIENTS, "seconds": round(seconds, 1),
        "witness_calls_during_storm": served, "witness_errors": 0,
        "witness_slowest_call_s": round(witness.slowest, 2),
        "bad_frames_counted": stats["bad_frames"] - bad_before,
        "rss_mib_after_warmup": round(base_rss / 2**20, 1),
        "rss_growth_mib": round(growth / 2**20, 1),
        "rss_growth_mib_per_quarter": [round(q / 2**20, 1) for q in quarters],
        "fds_baseline": base_fds,
        "fds_after": proc.num_fds(),
        "allocated_after_warmup_and_each_quarter": allocated}


def _allocated(stats: dict[str, Any]) -> dict[str, int]:
    return {k: stats[k] for k in ("heap_in_use_bytes", "heap_free_bytes", "python_blocks")}


def test_a_client_that_never_reads_is_pushed_back(target: Runtime,
                                                  figures: dict[str, Any]) -> None:
    proc = target.process()
    base_fds, base_rss = proc.num_fds(), proc.memory_info().rss
    request = protocol.encode(Frame(Kind.EMBED, 1, {"model": E5, "inputs": ["flood"]}))
    greedy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    greedy.connect(target.socket)
    greedy.settimeout(5)
    sent = 0
    blocked = False
    try:
        try:
            for _ in range(FLOOD_REQUESTS):
                greedy.sendall(request)
                sent += 1
        except TimeoutError:
            blocked = True  # the runtime stopped reading: back-pressure
        peak = proc.memory_info().rss
        with Witness(target.socket, WITNESS_TEXT) as witness:
            wait_until(lambda: witness.calls >= 3 or witness.errors, 60, "witness served")
        assert witness.errors == []
    finally:
        greedy.close()
    assert blocked, f"all {sent} requests were accepted without reading a reply"
    assert peak - base_rss < FLOOD_BOUND, f"rss grew by {mib(peak - base_rss)}"
    # its abandoned work is dropped, its connection released
    wait_until(lambda: target.stats()["totals"]["queue_depth"] == 0, 60, "queue drained")
    wait_until(lambda: proc.num_fds() <= base_fds, 30, "file descriptors back to the baseline")
    assert target.pid() == proc.pid
    figures["client_that_never_reads"] = {
        "requests_accepted_before_push_back": sent, "of": FLOOD_REQUESTS,
        "rss_growth_mib": round((peak - base_rss) / 2**20, 1)}
