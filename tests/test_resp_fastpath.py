"""The RESP server's hot path (kvstore/local/fast.py): the same bytes as the general path,
cache misses read from the store together, read barriers kept where they are due, and
the doorkeeper that decides which store reads go into the cache."""

from __future__ import annotations

import random
import re
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import hiredis
import pytest

from kvstore.cache import ShmCache
from kvstore.errors import StorageError
from kvstore.local import framing
from kvstore.local.fast import LOW, MAX_PENDING, PROBE, WINDOW, memo_reads
from kvstore.local.framing import FrameError, RequestParser
from kvstore.local.resp import Limits
from kvstore.local.single import SingleNodeBackend
from kvstore.local.testing import DictCache, FlakyBackend, MemoryStore, ServerThread
from kvstore.statemachine import Set


def pack(*args: bytes) -> bytes:
    return hiredis.pack_command(args)  # type: ignore[no-any-return]


def raw_exchange(path: str, data: bytes | list[bytes], proto: int = 2) -> bytes:
    """Send `data`, half-close, return every byte the server sent until it closed.
    With proto 3, HELLO 3 first, on its own (its reply is not returned). A list is sent
    in chunks the server reads apart (a short pause after each)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        if proto != 2:
            s.sendall(pack(b"HELLO", b"%d" % proto))
            r = hiredis.Reader()
            while r.gets() is False:
                r.feed(s.recv(1 << 16))
        for c in [data] if isinstance(data, bytes) else data:
            s.sendall(c)
            if not isinstance(data, bytes):
                time.sleep(0.002)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        s.close()


def replies(path: str, data: bytes) -> list[Any]:
    r = hiredis.Reader()
    r.feed(raw_exchange(path, data))
    out = []
    while (x := r.gets()) is not False:
        out.append(x)
    return out


class CountingStore(MemoryStore):
    """Counts get and get_many calls; reads of `broken` keys fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = self.get_manys = 0
        self.broken: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:
        self.gets += 1
        if key in self.broken:
            raise StorageError("storage error (read): broken (test)")
        return super().get(key)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.get_manys += 1
        if self.broken.intersection(keys):
            raise StorageError("storage error (read): broken (test)")
        return super().get_many(keys)


class Barriers(FlakyBackend):
    """Not barrier-free (the general path runs every read after a barrier); counts them."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.barriers = 0

    async def read_barrier(self) -> None:
        self.barriers += 1
        await super().read_barrier()


DATA = {b"k1": b"v1", b"k2": b"\x00\r\n binary", b"empty": b"", b"big": b"B" * 70_000}


def fill(st: ServerThread, uncached: Sequence[bytes] = ()) -> None:
    """The same data in every server; `uncached` keys are in the store only."""

    async def go() -> None:
        b = st.backend
        inner = getattr(b, "inner", b)
        for k, v in DATA.items():
            await inner.write(Set(k, v, False, False, False))
        for k in uncached:
            inner.cache.delete(k)

    st.call(go())


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerThread, ServerThread]]:
    """(fast, general): the same backend type, the second not barrier-free, so its reads
    all take the general path (after a barrier that costs nothing)."""
    fast = ServerThread(lambda: SingleNodeBackend(CountingStore(), DictCache()))
    general = ServerThread(lambda: Barriers(SingleNodeBackend(CountingStore(), DictCache())))
    with fast, general:
        fill(fast, uncached=[b"k2"])
        fill(general, uncached=[b"k2"])
        yield fast, general


REQUESTS = [
    pack(b"GET", b"k1"),
    pack(b"GET", b"k2"),  # in the store, not in the cache
    pack(b"GET", b"nope"),
    pack(b"GET", b"empty"),
    pack(b"GET", b"big"),  # over the cache's value limit: a store read
    pack(b"get", b"k1"),
    pack(b"Get", b"k1"),  # neither upper nor lower case: the general lookup
    pack(b"GET", b""),  # empty key: an error
    pack(b"GET", b"x" * 600),  # key over the limit: an error
    pack(b"GET"),  # wrong arity
    pack(b"GET", b"k1", b"k2"),
    pack(b"MGET", b"k1", b"nope", b"k2", b"k1", b"big"),
    pack(b"mget", b"k2"),
    pack(b"MGET", b"k1", b""),
    pack(b"MGET"),
    pack(b"PING"),
    pack(b"ping", b"hello"),
    b"*0\r\n",  # an empty array: skipped, no reply
]


@pytest.mark.parametrize("proto", [2, 3])
def test_same_bytes_as_the_general_path(servers: tuple[ServerThread, ServerThread], proto: int) -> None:
    fast, general = servers
    every = b"".join(REQUESTS)
    for data in [every, every * 3, *REQUESTS, pack(b"HELLO", b"%d" % proto) + every]:
        assert raw_exchange(fast.path, data, proto) == raw_exchange(general.path, data, proto)
    assert general.backend.barriers > 0  # the general path really ran
    assert fast.backend.store.get_manys > 0  # and the fast one read its misses together


def test_mixed_pipeline_keeps_order(servers: tuple[ServerThread, ServerThread]) -> None:
    fast, _ = servers
    k = b"order:1"
    wire = (
        pack(b"GET", k)
        + pack(b"SET", k, b"a")
        + pack(b"GET", k)
        + pack(b"MGET", k, b"k1")
        + pack(b"DEL", k)
        + pack(b"GET", k)
        + pack(b"GET", b"k1")
    )
    assert replies(fast.path, wire) == [None, b"OK", b"a", [b"a", b"v1"], 1, None, b"v1"]


def test_cache_misses_are_read_in_one_transaction_per_batch() -> None:
    store = CountingStore()
    n = 3 * MAX_PENDING + 5
    with ServerThread(lambda: SingleNodeBackend(store, DictCache(), fill_cache=False)) as st:
        keys = [b"m%03d" % i for i in range(n)]
        for i, k in enumerate(keys[::2]):
            store.data[k] = b"v%d" % i  # in the store only; the others absent
        store.gets = store.get_manys = 0
        got = replies(st.path, b"".join(pack(b"GET", k) for k in keys))
        assert got == [store.data.get(k) for k in keys]
        assert store.gets == 0
        # one read per MAX_PENDING misses, unless the pipeline arrived in several reads
        assert -(-n // MAX_PENDING) <= store.get_manys <= n // 2


def test_a_failed_store_read_gets_the_general_path_error(servers: tuple[ServerThread, ServerThread]) -> None:
    fast, general = servers
    for st in servers:
        inner = getattr(st.backend, "inner", st.backend)
        inner.store.data[b"sick"] = b"x"
        inner.store.broken.add(b"sick")
    try:
        wire = (
            pack(b"GET", b"k1") + pack(b"GET", b"sick") + pack(b"GET", b"k2") + pack(b"MGET", b"k1", b"sick")
        )
        got = replies(fast.path, wire)
        assert got[0] == b"v1" and got[2] == b"\x00\r\n binary"
        for r in (got[1], got[3]):
            assert isinstance(r, hiredis.ReplyError) and "broken (test)" in str(r)
        assert raw_exchange(fast.path, wire) == raw_exchange(general.path, wire)
    finally:
        for st in servers:
            inner = getattr(st.backend, "inner", st.backend)
            inner.store.broken.clear()


def test_reads_wait_for_the_barrier_unless_readonly() -> None:
    with ServerThread(lambda: Barriers(SingleNodeBackend(MemoryStore(), DictCache()))) as st:
        fill(st)
        b = st.backend
        assert replies(st.path, pack(b"GET", b"k1") * 3 + pack(b"MGET", b"k1")) == [b"v1"] * 3 + [[b"v1"]]
        assert b.barriers >= 1  # linearizable by default: the fast path did not take these
        before = b.barriers
        got = replies(
            st.path, pack(b"READONLY") + pack(b"GET", b"k1") * 3 + pack(b"READWRITE") + pack(b"GET", b"k1")
        )
        assert got == [b"OK"] + [b"v1"] * 3 + [b"OK", b"v1"]
        assert b.barriers == before + 1  # only the GET after READWRITE
        before = b.barriers
        assert replies(st.path, pack(b"PING") * 5) == [b"PONG"] * 5
        assert b.barriers == before


def test_doorkeeper_caches_a_store_read_on_its_second_miss() -> None:
    store, cache = MemoryStore(), DictCache()
    b = SingleNodeBackend(store, cache)
    store.data[b"a"] = b"1"
    assert b.get(b"a") == b"1" and b"a" not in cache.data  # first miss: remembered only
    assert b.get(b"a") == b"1" and cache.data[b"a"] == b"1"  # second: cached
    assert b.get(b"a") == b"1"
    store.data.update({b"x": b"2", b"y": b"3"})
    assert b.get_uncached([b"x", b"y", b"z"]) == [b"2", b"3", None]
    assert not {b"x", b"y", b"z"} & cache.data.keys()
    b._inflight[b"y"] = 1  # a write to y in flight: its read value may be stale, never cached
    assert b.get_uncached([b"x", b"y", b"z"]) == [b"2", b"3", None]
    assert cache.data.get(b"x") == b"2" and b"y" not in cache.data and b"z" not in cache.data


def test_doorkeeper_is_bounded() -> None:
    store, cache = MemoryStore(), DictCache()
    b = SingleNodeBackend(store, cache)
    keys = [b"k%06d" % i for i in range(3 * b.DOOR)]
    store.data.update(dict.fromkeys(keys, b"v"))
    for i in range(0, len(keys), 100):
        b.get_uncached(keys[i : i + 100])
        assert len(b._door) <= b.DOOR + 100
    assert not cache.data  # every key missed once: nothing cached


def test_one_get_recogniser_agrees_with_hiredis() -> None:
    """framing._ONE_GET takes a read that is exactly one GET; anything else, hiredis."""

    def parse(data: bytes, recognise: bool) -> tuple[list[Any], str | None, int]:
        saved = framing._ONE_GET
        if not recognise:
            framing._ONE_GET = re.compile(rb"(?!)")
        try:
            p, got, err = RequestParser(Limits()), [], None
            try:
                p.feed(data, got)
            except FrameError as e:
                err = str(e)
            return got, err, p.carry
        finally:
            framing._ONE_GET = saved

    rng = random.Random(7)
    for _ in range(3000):
        name = rng.choice([b"GET", b"get", b"Get", b"SET"])
        key = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 9, 10, 99, 100, 511, 999, 1000])))
        data = pack(name, key)
        data = rng.choice(
            [
                data,
                data + pack(b"PING"),  # more than one request
                data[:-1],  # cut short
                data[:-2] + b"xx",  # no CRLF after the key
                data.replace(b"$%d\r\n" % len(key), b"$0%d\r\n" % len(key), 1),  # leading zero
            ]
        )
        assert parse(data, True) == parse(data, False), data


@pytest.fixture
def shm() -> Iterator[ShmCache]:
    """A small ShmCache whose memo holds 64 entries."""
    c = ShmCache.create(f"/kvs-fp-{uuid.uuid4().hex[:10]}", size_bytes=1 << 20, memo_entries=64)
    try:
        yield c
    finally:
        c.close()
        c.unlink()


def test_memo_reads_skips_the_table_while_the_memo_misses(shm: ShmCache) -> None:
    lookups = 0
    lookup = shm.lookup

    def counting(key: bytes) -> bytes | None:
        nonlocal lookups
        lookups += 1
        return lookup(key)

    shm.lookup = counting  # type: ignore[method-assign]
    get, _, real_misses = memo_reads(shm)
    keys = [b"k%04d" % i for i in range(1000)]
    shm.put_many([(k, b"v" + k) for k in keys])
    rng = random.Random(5)
    for _ in range(LOW * WINDOW):  # far more keys than the memo holds: few memo hits
        k = rng.choice(keys)
        assert get(k) in (None, b"v" + k)  # None: "read the store"
    lookups = 0
    for _ in range(WINDOW):
        get(rng.choice(keys))
    assert lookups <= WINDOW // PROBE + 1  # only the probes looked in the table
    assert real_misses([b"nope"]) == set()  # the others did not look: not worth caching
    for _ in range(4 * WINDOW):  # a working set the memo holds: the probes memoise it
        k = rng.choice(keys[:20])
        assert get(k) in (None, b"v" + k)
    hot = [get(k) for k in keys[:20]]
    assert hot == [b"v" + k for k in keys[:20]]  # from the memo
    assert get(keys[500]) == b"v" + keys[500]  # and the table is read again


def test_reads_fill_a_cache_with_room_then_only_keys_read_again(shm: ShmCache) -> None:
    store = MemoryStore()
    b = SingleNodeBackend(store, shm)
    store.data.update({b"a": b"1", b"b": b"2", b"c": b"3"})
    assert b.get_uncached([b"a"]) == [b"1"]
    assert shm.get(b"a") == b"1"  # room: cached on its first miss
    filler = [(b"f%05d" % i, b"x" * 200) for i in range(20_000)]
    for i in range(0, len(filler), 1000):
        shm.put_many(filler[i : i + 1000])
    assert shm.evictions() > 0
    assert b.get_uncached([b"b"]) == [b"2"] and shm.get(b"b") is None  # full: remembered only
    assert b.get_uncached([b"b"]) == [b"2"] and shm.get(b"b") == b"2"  # its second miss


def test_reads_stay_right_through_every_cache_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """A small cache, a tiny memo and short windows: reads go through the table, skip it,
    probe it, fill it on misses (with room, then by the doorkeeper) while writes change
    and evict entries; every reply matches a model."""
    from kvstore.local import fast
    from kvstore.storage import Store

    monkeypatch.setattr(fast, "WINDOW", 32)
    monkeypatch.setattr(fast, "LOW", 2)
    monkeypatch.setattr(fast, "PROBE", 3)
    name = f"/kvs-fpm-{uuid.uuid4().hex[:10]}"

    def make() -> SingleNodeBackend:
        store = Store(tmp_path / "data", sync=False)
        cache = ShmCache.create(name, size_bytes=32 << 10, max_value=512, memo_entries=8)
        b = SingleNodeBackend(store, cache)
        b._owned = [store, cache]
        return b

    rng = random.Random(11)
    keys = [b"m%03d" % i for i in range(300)]
    model: dict[bytes, bytes] = {}
    with ServerThread(make) as st:
        for _ in range(300):
            wire, expected = b"", []
            hot = keys[: rng.choice([5, 50, 300])]
            for _ in range(rng.randrange(1, 20)):
                k = rng.choice(hot)
                op = rng.random()
                if op < 0.15:
                    v = bytes([rng.randrange(256)]) * rng.choice([1, 100, 700])  # 700: over max_value
                    wire += pack(b"SET", k, v)
                    model[k] = v
                    expected.append(b"OK")
                elif op < 0.2:
                    wire += pack(b"DEL", k)
                    expected.append(int(model.pop(k, None) is not None))
                elif op < 0.3:
                    ks = [rng.choice(hot) for _ in range(3)]
                    wire += pack(b"MGET", *ks)
                    expected.append([model.get(x) for x in ks])
                else:
                    wire += pack(b"GET", k)
                    expected.append(model.get(k))
            assert replies(st.path, wire) == expected
        assert st.backend.cache.stats()["evictions"] > 0
