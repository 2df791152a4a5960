"""The memory figures of STATS: what is allocated now, as a leak witness sharper than RSS.
The runtime's platform is Debian (glibc), so the malloc figures are expected."""

from __future__ import annotations

from pglocalai.service.stats import Stats, heap_bytes


def test_heap_in_use_follows_what_is_allocated_and_freed() -> None:
    before = heap_bytes()["heap_in_use_bytes"]
    held = [bytearray(4096) for _ in range(4096)]  # 16 MiB through malloc
    during = heap_bytes()
    del held
    after = heap_bytes()["heap_in_use_bytes"]
    assert during["heap_in_use_bytes"] - before >= 16 << 20
    assert after - before < 1 << 20
    assert during["heap_free_bytes"] >= 0


def test_python_blocks_count_small_objects() -> None:
    before = heap_bytes()["python_blocks"]
    held = [object() for _ in range(20_000)]  # small objects: Python's allocator, not malloc
    assert heap_bytes()["python_blocks"] - before >= 19_000
    del held


def test_the_stats_reply_carries_them() -> None:
    stats = Stats()
    stats.model("m")
    reply = stats.snapshot({"m": 0})
    assert reply["python_blocks"] > 0 and reply["rss_bytes"] > 0
    assert reply["heap_in_use_bytes"] > 0  # glibc (Debian): mallinfo2 is there
