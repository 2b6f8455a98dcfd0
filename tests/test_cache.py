"""ShmCache in one process: the table, eviction, limits, recovery paths, and a model check.

The multi-process tests (SIGKILLs, restarts) are in test_cache_procs.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import posix_ipc
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore.cache import CacheInUse, CacheLockTimeout, CacheNotFound, ShmCache
from kvstore.cache import layout as L
from kvstore.cache.lock import LOCK_INFO
from kvstore.cache.reader import reader_parts
from kvstore.cache.table import Table

SMALL = 256 << 10


def unique_name() -> str:
    return f"/kvs-t{os.getpid()}-{uuid.uuid4().hex[:10]}"


def remove_names(name: str) -> None:
    for unlink in (posix_ipc.unlink_shared_memory, posix_ipc.unlink_semaphore):
        with contextlib.suppress(posix_ipc.ExistentialError):
            unlink(name)


@pytest.fixture
def name() -> Iterator[str]:
    n = unique_name()
    try:
        yield n
    finally:
        remove_names(n)


@pytest.fixture
def cache(name: str) -> Iterator[ShmCache]:
    c = ShmCache.create(name, size_bytes=SMALL, max_value=1024, lock_timeout=0.1)
    try:
        yield c
    finally:
        c.close()


def dead_pid() -> int:
    """A pid that certainly belonged to a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def odd_slots(c: ShmCache) -> list[int]:
    """Slots and (as negative numbers) stripes left mid-change."""
    with (
        memoryview(c._mm) as buf,
        L.slot_column(buf, c._geo, 0) as seqs,
        L.stripe_versions(buf, c._geo) as sv,
    ):
        return [i for i, s in enumerate(seqs.tolist()) if s & 1] + [
            -1 - i for i, v in enumerate(sv.tolist()) if v & 1
        ]


def slot_offset(c: ShmCache, key: bytes) -> int:
    found, _ = c._table.find(key, xxhash.xxh3_64_intdigest(key))
    assert found >= 0
    return c._table.slot_off(found)


def test_put_get_delete_clear(cache: ShmCache) -> None:
    assert cache.get(b"a") is None
    cache.put(b"a", b"1")
    cache.put(b"b", b"")
    assert cache.get(b"a") == b"1"
    assert cache.get(b"b") == b""
    cache.put(b"a", b"22" * 100)
    assert cache.get(b"a") == b"22" * 100
    cache.delete(b"a")
    cache.delete(b"never-there")
    assert cache.get(b"a") is None and cache.get(b"b") == b""
    cache.clear()
    assert cache.get(b"b") is None
    s = cache.stats()
    assert s["entries"] == 0 and s["puts"] == 3 and s["deletes"] == 2 and s["clears"] == 1
    assert s["hits"] == 4 and s["misses"] == 3


def test_bytes_like_keys_and_values(cache: ShmCache) -> None:
    cache.put(bytearray(b"k"), memoryview(b"v1"))
    assert cache.get(b"k") == b"v1"
    assert cache.get(bytearray(b"k")) == b"v1"


def test_limits_not_cached(cache: ShmCache) -> None:
    cache.put(b"big", b"x" * 10)
    cache.put(b"big", b"x" * 1025)  # over max_value: not cached, and the old value is gone
    assert cache.get(b"big") is None
    cache.put(b"edge", b"y" * 1024)
    assert cache.get(b"edge") == b"y" * 1024
    cache.put(b"", b"empty key")
    assert cache.get(b"") is None
    long_key = b"k" * (L.MAX_KEY + 1)
    cache.put(long_key, b"v")
    assert cache.get(long_key) is None
    assert cache.stats()["rejected"] == 3


def test_eviction_keeps_memory_bounded(cache: ShmCache, name: str) -> None:
    n = 5000  # ~5000 * 136 bytes: several times the ring
    for i in range(n):
        cache.put(b"key-%05d" % i, b"%05d" % i * 20)
    s = cache.stats()
    assert os.fstat(cache._shm.fd).st_size == SMALL
    assert 0 < s["entries"] <= s["capacity"]
    assert s["evictions"] >= n - s["entries"]
    assert s["wraps"] >= 2
    present = [i for i in range(n) if cache.get(b"key-%05d" % i) is not None]
    for i in present:
        assert cache.get(b"key-%05d" % i) == b"%05d" % i * 20
    assert n - 1 in present  # the newest entry survives
    assert len(present) > s["ring_bytes"] // 136 // 2  # FIFO keeps most of what fits


def test_window_full_evicts_oldest(name: str) -> None:
    with ShmCache.create(name, size_bytes=SMALL, max_value=64, window=2) as c:
        for i in range(3 * c.stats()["capacity"]):
            c.put(b"%d" % i, b"v%d" % i)
        s = c.stats()
        assert s["entries"] <= s["capacity"] and s["evictions"] > 0
        assert c.get(b"%d" % (3 * s["capacity"] - 1)) is not None


def test_attach_shares_the_table(cache: ShmCache, name: str) -> None:
    with ShmCache.attach(name) as other:
        cache.put(b"k", b"from owner")
        assert other.get(b"k") == b"from owner"
        other.put(b"k2", b"from attached")
        assert cache.get(b"k2") == b"from attached"
        other.delete(b"k")
        assert cache.get(b"k") is None


def test_attach_missing_is_a_clear_error() -> None:
    with pytest.raises(FileNotFoundError, match="no shared-memory cache"):
        ShmCache.attach(unique_name())
    with pytest.raises(ValueError):
        ShmCache.attach("no-slash")


def test_name_for_is_stable_short_and_distinct(tmp_path: object) -> None:
    a = ShmCache.name_for(str(tmp_path), "n1")
    assert a == ShmCache.name_for(str(tmp_path) + "/.", "n1")
    assert a != ShmCache.name_for(str(tmp_path), "n2")
    assert a.startswith("/kvs-") and len(a) <= 31


def test_mode_0600_and_unlink_removes_everything(name: str) -> None:
    old = os.umask(0)
    try:
        c = ShmCache.create(name, size_bytes=SMALL)
    finally:
        os.umask(old)
    seg, sem = "/dev/shm/" + name[1:], "/dev/shm/sem." + name[1:]
    assert os.stat(seg).st_mode & 0o777 == 0o600
    assert os.stat(sem).st_mode & 0o777 == 0o600
    c.unlink()
    c.close()
    assert not os.path.exists(seg) and not os.path.exists(sem)
    c.unlink()  # idempotent


def test_unlink_retires_for_attached_readers(cache: ShmCache, name: str) -> None:
    cache.put(b"k", b"v")
    reader = ShmCache.attach(name)
    try:
        assert reader.get(b"k") == b"v"
        cache.unlink()
        assert reader.retired and reader.get(b"k") is None
        reader.put(b"k", b"v2")  # writes into a retired segment are dropped
        assert reader.get(b"k") is None
        with pytest.raises(CacheNotFound):
            ShmCache.attach(name)
    finally:
        reader.close()


def test_unlink_after_close_still_retires(name: str) -> None:
    owner = ShmCache.create(name, size_bytes=SMALL)
    owner.put(b"k", b"v")
    with ShmCache.attach(name) as reader:
        owner.close()  # the order the node shuts down in
        owner.unlink()
        assert reader.retired and reader.get(b"k") is None
    assert not os.path.exists("/dev/shm/" + name[1:])


def test_unlink_after_close_spares_a_newer_incarnation(name: str) -> None:
    old = ShmCache.create(name, size_bytes=SMALL)
    old.close()
    with ShmCache.attach(name) as other:
        L.OWNER.pack_into(other._mm, L.OWNER_OFF, 1, 0, 1, 1)  # as if a new owner (pid 1) took it over
    old.unlink()
    with ShmCache.attach(name) as c:
        assert not c.retired


def test_batches(cache: ShmCache) -> None:
    cache.put_many([(b"a", b"1"), (b"b", b"2"), (b"c", b"x" * 2000)])
    assert [cache.get(k) for k in (b"a", b"b", b"c")] == [b"1", b"2", None]
    cache.delete_many([b"a", b"c"])
    assert [cache.get(k) for k in (b"a", b"b")] == [None, b"2"]
    assert cache.stats()["deletes"] == 2


def test_create_again_rebuilds_in_place(cache: ShmCache, name: str) -> None:
    cache.put(b"k", b"old")
    reader = ShmCache.attach(name)
    try:
        again = ShmCache.create(name, size_bytes=SMALL, max_value=1024, lock_timeout=0.1)
        assert again.get(b"k") is None and again.stats()["entries"] == 0
        again.put(b"k", b"new")
        assert reader.get(b"k") == b"new" and not reader.retired  # same segment, still attached
        again.close()
        other = ShmCache.create(name, size_bytes=2 * SMALL)  # new geometry: replaced
        assert reader.retired and reader.get(b"k") is None
        other.put(b"k", b"newer")
        assert other.get(b"k") == b"newer"
        other.close()
    finally:
        reader.close()


def test_create_over_garbage_segment(name: str) -> None:
    junk = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=SMALL)
    os.write(junk.fd, b"not a cache" * 100)
    junk.close_fd()
    posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0).close()  # a wedged orphan semaphore
    with pytest.raises(CacheNotFound):
        ShmCache.attach(name)
    with ShmCache.create(name, size_bytes=SMALL, lock_timeout=0.1) as c:
        c.put(b"k", b"v")
        assert c.get(b"k") == b"v"


def test_create_refuses_segment_of_live_process(name: str) -> None:
    c = ShmCache.create(name, size_bytes=SMALL)
    try:
        L.OWNER.pack_into(c._mm, L.OWNER_OFF, os.getppid(), 0, 0, 1)  # pretend: another live owner
        with pytest.raises(CacheInUse, match=str(os.getppid())):
            ShmCache.create(name, size_bytes=SMALL)
    finally:
        c.close()


def test_stuck_odd_slot_reads_as_miss_quickly(cache: ShmCache) -> None:
    cache.put(b"k", b"v")
    off = slot_offset(cache, b"k")
    seq = L.U64.unpack_from(cache._mm, off)[0]
    L.U64.pack_into(cache._mm, off, seq + 1)  # a writer "died" mid-write
    t = time.perf_counter()
    assert cache.get(b"k") is None
    assert time.perf_counter() - t < 0.5  # 16 quick looks, not a wait (generous for busy machines)
    assert cache.stats()["torn_retries"] > 0
    cache.put(b"k", b"v2")  # the lock is free: no recovery, the writer simply rewrites the slot
    assert cache.get(b"k") == b"v2" and odd_slots(cache) == []


def _fake_dead_holder(c: ShmCache, pid: int) -> None:
    c._sem.acquire()
    epoch = c._lock.read_info()[3]
    LOCK_INFO.pack_into(c._mm, L.LOCK_OFF, pid, 0, 0, time.time(), epoch + 1)


@pytest.mark.parametrize("holder", ["dead pid", "pid 0"])
def test_dead_lock_holder_is_taken_over(cache: ShmCache, holder: str) -> None:
    cache.put(b"k", b"v")
    off = slot_offset(cache, b"k")
    L.U64.pack_into(cache._mm, off, L.U64.unpack_from(cache._mm, off)[0] + 1)
    _fake_dead_holder(cache, dead_pid() if holder == "dead pid" else 0)
    gen = cache.stats()["generation"]
    t = time.perf_counter()
    cache.put(b"other", b"x")
    took = time.perf_counter() - t
    assert took < 5 * cache._lock.timeout  # one timeout for a dead pid, two for pid 0
    s = cache.stats()
    assert s["lock_recoveries"] == 1 and s["generation"] > gen and s["lock_holder_pid"] == 0
    assert odd_slots(cache) == [] and cache.get(b"k") is None and cache.get(b"other") == b"x"
    cache.put(b"k", b"again")  # the lock works normally afterwards
    assert cache.get(b"k") == b"again"


def test_live_holder_makes_writers_wait_then_time_out(name: str) -> None:
    c = ShmCache.create(name, size_bytes=SMALL, lock_timeout=0.05, lock_wait=0.3)
    try:
        _fake_dead_holder(c, os.getpid())  # alive: must not be taken over
        t = time.perf_counter()
        with pytest.raises(CacheLockTimeout):
            c.put(b"k", b"v")
        assert 0.25 < time.perf_counter() - t < 2.0
        assert c.stats()["lock_recoveries"] == 0
        c._lock.release()
        c.put(b"k", b"v")
        assert c.get(b"k") == b"v"
    finally:
        c.close()


def test_readers_never_wait_for_the_lock(cache: ShmCache) -> None:
    for i in range(200):
        cache.put(b"%d" % i, b"v%d" % i)
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with cache._locked():
            held.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(5)
        start = time.perf_counter()
        for i in range(200):
            assert cache.get(b"%d" % i) == b"v%d" % i
        assert time.perf_counter() - start < 2.0  # the lock is held throughout: waiting would hang
    finally:
        done.set()
        t.join()


def test_interrupted_write_leaves_no_odd_slot(cache: ShmCache, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.put(b"k", b"v1")

    def interrupted(point: str) -> None:
        if point == "slot_odd":
            raise KeyboardInterrupt

    monkeypatch.setattr(cache, "_stall", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cache.put(b"k", b"v2")
    assert odd_slots(cache) == [] and cache.stats()["lock_holder_pid"] == 0
    assert cache.get(b"k") is None  # the half-written slot was cleared, not left odd
    monkeypatch.undo()
    cache.put(b"k", b"v3")
    assert cache.get(b"k") == b"v3"


class Interleaved(bytearray):
    """A stand-in for the segment whose slicing can run a writer first: it puts a write
    exactly between the reader's header read and its copy of the value."""

    at: int = -1  # when a slice starts here, run `writer` first (once)
    writer: Callable[[], None] = staticmethod(lambda: None)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice) and i.start == self.at:
            self.at = -1
            self.writer()
        return super().__getitem__(i)


@pytest.mark.parametrize("where", ["home slot", "further in the window"])
def test_seqlock_rejects_a_value_overwritten_while_copied(name: str, where: str) -> None:
    with ShmCache.create(name, size_bytes=SMALL) as c:
        key = b"key"
        if where != "home slot":  # another key takes the home slot first
            home = (xxhash.xxh3_64_intdigest(key) >> L.SLOT_SHIFT) & (c._geo.nslots - 1)
            other = next(
                b"o%d" % i
                for i in range(10**6)
                if (xxhash.xxh3_64_intdigest(b"o%d" % i) >> L.SLOT_SHIFT) & (c._geo.nslots - 1) == home
            )
            c.put(other, b"other")
        c.put(key, b"old value")
        buf = Interleaved(c._mm[:])
        geo = c._geo
    table = Table(buf, geo, stall=lambda point: None)  # type: ignore[arg-type]
    r = reader_parts(buf, geo, False, 0, 0)  # type: ignore[arg-type]
    get, counters, release = r.get, r.counters, r.release
    _, d, k, v, _, _ = L.SLOT.unpack_from(
        buf, table.slot_off(table.find(key, xxhash.xxh3_64_intdigest(key))[0])
    )

    def writer() -> None:  # the writer replaces the value, and the ring head overruns the old record
        table.put(key, b"new value")
        buf[d:v] = b"\xee" * (v - d)

    buf.at, buf.writer = k, writer
    assert get(key) == b"new value"  # not b"\xee..." copied from the overrun record
    assert buf.at == -1 and counters()["torn_retries"] == (0 if where == "home slot" else 1)
    release()


def test_corrupt_ring_is_reset(cache: ShmCache) -> None:
    cache.put(b"a", b"1")
    head = L.U64.unpack_from(cache._mm, L.HEAD_OFF)[0]
    L.REC.pack_into(cache._mm, cache._geo.ring_off + head, 3, 0)  # a record length that cannot be
    cache.put(b"b", b"2")
    assert cache.stats()["resets"] == 1
    assert cache.get(b"a") is None and cache.get(b"b") == b"2"


def test_verified_reads(name: str) -> None:
    with ShmCache.create(name, size_bytes=SMALL, verify_reads=True, memo_entries=0) as c:
        c.put(b"k", b"v" * 50)
        assert c.get(b"k") == b"v" * 50
        off = slot_offset(c, b"k")
        d, k, v = L.READ.unpack_from(c._mm, off)[1:]
        c._mm[k] ^= 1  # flip a value bit behind the writer's back: the checksum catches it
        assert c.get(b"k") is None


def test_memo_never_serves_a_changed_slot(cache: ShmCache, name: str) -> None:
    with ShmCache.attach(name, memo_entries=8) as reader:
        cache.put(b"k", b"v1")
        assert reader.get(b"k") == b"v1"
        assert reader.get(b"k") == b"v1" and reader.stats()["memo_entries"] == 1
        cache.put(b"k", b"v2")
        assert reader.get(b"k") == b"v2"
        cache.delete(b"k")
        assert reader.get(b"k") is None and reader.stats()["memo_entries"] == 0
        cache.put(b"k", b"v3")
        assert reader.get(b"k") == b"v3"
        cache.clear()
        assert reader.get(b"k") is None
        cache.put(b"k", b"v4")
        assert reader.get(b"k") == b"v4"
        for i in range(3000):  # evicted by the ring head
            cache.put(b"other-%d" % i, b"x" * 100)
        assert cache.get(b"k") is None and reader.get(b"k") is None
        for i in range(100):
            reader.get(b"other-%d" % (2999 - i))
        assert 0 < reader.stats()["memo_entries"] <= 8  # bounded
        cache.unlink()
        assert reader.get(b"other-2999") is None  # retired


def test_closed_cache_refuses_reads(name: str) -> None:
    c = ShmCache.create(name, size_bytes=SMALL)
    c.close()
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.get(b"k")


# ---------------------------------------------------------------- model check

KEYS = [b"k%d" % i for i in range(12)]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(max_size=1100)),
        st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just(b"")),
        st.tuples(st.just("get"), st.sampled_from(KEYS), st.just(b"")),
        st.tuples(st.just("clear"), st.just(b""), st.just(b"")),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, window=st.integers(1, 4))
def test_model(ops: list[tuple[str, bytes, bytes]], window: int) -> None:
    """The cache answers the model's value or None, never anything else; a fresh put is readable."""
    n = unique_name()
    try:
        c = ShmCache.create(n, size_bytes=32 << 10, max_value=1024, window=window)
        reader = ShmCache.attach(n, memo_entries=4)  # a second handle, with a small memo
        model: dict[bytes, bytes] = {}
        for op, key, value in ops:
            if op == "put":
                c.put(key, value)
                model[key] = value
                if len(value) <= 1024:
                    assert c.get(key) == value
            elif op == "delete":
                c.delete(key)
                model.pop(key, None)
            elif op == "clear":
                c.clear()
            got = c.get(key) if key else None
            assert got is None or got == model.get(key)
            for k in KEYS:
                for handle in (c, reader):
                    got = handle.get(k)
                    assert got is None or got == model.get(k)
        assert odd_slots(c) == []
        reader.close()
        c.close()
    finally:
        remove_names(n)
