"""Store (kvstore/storage) in one process: the API, atomicity, limits, map growth, and a
stateful property test against a dict model. Multi-process tests: test_storage_procs.py."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import kvstore.storage.store as store_mod
from kvstore.errors import LimitExceeded, StorageError, StorageFull
from kvstore.storage import MAX_KEY_SIZE, SnapshotInterrupted, Store


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "db", map_size=1 << 20)
    yield s
    s.close()


def test_path_created_private(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b"
    with Store(p):
        assert (p.stat().st_mode & 0o777) == 0o700
        assert ((p / "data.mdb").stat().st_mode & 0o077) == 0


def test_get_put_delete(store: Store) -> None:
    assert store.get(b"k") is None
    store.put(b"k", b"v1")
    assert store.get(b"k") == b"v1"
    store.put(b"k", b"v2")
    assert store.get(b"k") == b"v2"
    store.put(b"empty", b"")
    assert store.get(b"empty") == b""
    assert store.count() == 2
    assert store.delete(b"k") is True
    assert store.delete(b"k") is False
    assert store.get(b"k") is None
    assert store.count() == 1
    assert isinstance(store.get(b"empty"), bytes)


def test_scan_prefix_range_limit_order(store: Store) -> None:
    keys = [b"a", b"ab", b"abc", b"abd", b"b", b"ba", b"\x00", b"\xff", b"\xff\xff", b"a\xff"]
    for k in keys:
        store.put(k, k + b"!")
    everything = store.scan()
    assert [k for k, _ in everything] == sorted(keys)
    assert all(v == k + b"!" for k, v in everything)
    assert [k for k, _ in store.scan(b"a")] == [b"a", b"ab", b"abc", b"abd", b"a\xff"]
    assert [k for k, _ in store.scan(b"ab")] == [b"ab", b"abc", b"abd"]
    assert [k for k, _ in store.scan(b"\xff")] == [b"\xff", b"\xff\xff"]
    assert [k for k, _ in store.scan(start=b"ab", end=b"b")] == [b"ab", b"abc", b"abd", b"a\xff"]
    assert [k for k, _ in store.scan(b"a", start=b"abc")] == [b"abc", b"abd", b"a\xff"]
    assert [k for k, _ in store.scan(b"a", end=b"abd")] == [b"a", b"ab", b"abc"]
    # start before the prefix and end after it are clipped to the prefix
    assert [k for k, _ in store.scan(b"b", start=b"a", end=b"z")] == [b"b", b"ba"]
    assert [k for k, _ in store.scan(limit=3)] == sorted(keys)[:3]
    assert store.scan(limit=0) == []
    assert store.scan(b"zz") == []
    assert store.scan(start=b"b", end=b"b") == []
    assert store.scan(start=b"c", end=b"b") == []
    # a bound longer than any storable key still works
    assert [k for k, _ in store.scan(start=b"ab" + b"z" * 600)] == [
        b"a\xff",
        b"b",
        b"ba",
        b"\xff",
        b"\xff\xff",
    ]


def test_key_limits(store: Store) -> None:
    ok = b"k" * MAX_KEY_SIZE
    store.put(ok, b"v")
    assert store.get(ok) == b"v"
    assert store.scan(ok) == [(ok, b"v")]
    with pytest.raises(LimitExceeded, match="key is 600 bytes; the limit is 511"):
        store.put(b"x" * 600, b"v")
    with pytest.raises(LimitExceeded, match="key is 512 bytes; the limit is 511"):
        store.get(b"x" * 512)
    with pytest.raises(LimitExceeded, match="empty"):
        store.put(b"", b"v")
    with pytest.raises(LimitExceeded):
        store.delete(b"x" * 512)
    with pytest.raises(LimitExceeded):
        store.apply(1, lambda v: v.put(b"y" * 512, b"v"))
    with pytest.raises(LimitExceeded):
        store.replace_all([(b"ok", b"v"), (b"z" * 512, b"v")], 5)
    with pytest.raises(LimitExceeded):
        store.meta_set("m" * 512, b"v")
    # nothing was stored, and nothing was truncated
    assert store.scan() == [(ok, b"v")]
    assert store.applied_index() == 0


def test_apply_stores_data_and_index(store: Store) -> None:
    assert store.applied_index() == 0

    def fn(view) -> bytes | None:
        old = view.get(b"a")
        view.put(b"a", b"1")
        view.put(b"b", b"2")
        assert view.delete(b"b") is True
        assert view.delete(b"nope") is False
        return old

    assert store.apply(1, fn) is None
    assert store.applied_index() == 1
    assert store.scan() == [(b"a", b"1")]
    assert store.apply(7, lambda v: v.get(b"a")) == b"1"
    assert store.applied_index() == 7


def test_apply_is_atomic_when_fn_raises(store: Store) -> None:
    store.apply(3, lambda v: v.put(b"keep", b"1"))

    def bad(view) -> None:
        view.put(b"keep", b"changed")
        view.put(b"new", b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.apply(4, bad)
    assert store.applied_index() == 3
    assert store.scan() == [(b"keep", b"1")]


def test_apply_refuses_an_index_already_applied(store: Store) -> None:
    store.apply(5, lambda v: v.put(b"a", b"1"))
    for idx in (5, 4):
        with pytest.raises(ValueError, match="already applied"):
            store.apply(idx, lambda v: v.put(b"a", b"2"))
    assert store.get(b"a") == b"1"
    assert store.applied_index() == 5


def test_apply_view_dead_after_txn(store: Store) -> None:
    views = []
    store.apply(1, views.append)
    with pytest.raises(StorageError, match="after its transaction"):
        views[0].get(b"a")


def test_apply_many_group_commit(store: Store) -> None:
    results = store.apply_many(
        [(i, lambda v, i=i: v.put(b"k%d" % i, b"v%d" % i) or i * 10) for i in (1, 2, 4)]
    )
    assert results == [10, 20, 40]
    assert store.applied_index() == 4
    assert store.count() == 3
    assert store.apply_many([]) == []
    with pytest.raises(ValueError, match="increase"):
        store.apply_many([(6, lambda v: None), (6, lambda v: None)])

    def bad(view) -> None:
        raise KeyError("nope")

    with pytest.raises(KeyError):
        store.apply_many([(5, lambda v: v.put(b"k5", b"v")), (6, bad)])
    assert store.applied_index() == 4
    assert store.get(b"k5") is None


def test_log_append_truncates_conflicting_suffix(store: Store) -> None:
    assert store.log_bounds() == (0, 0)
    assert store.log_get(1, 10) == []
    store.log_append([(i, b"t1-%d" % i) for i in range(1, 11)], hard_state=b"hs1")
    assert store.log_bounds() == (1, 10)
    assert store.hard_state() == b"hs1"
    # a new leader overwrites from index 6: 7..10 of the old term must vanish
    store.log_append([(6, b"t2-6")])
    assert store.log_bounds() == (1, 6)
    assert store.log_get(1, 100) == [(i, b"t1-%d" % i) for i in range(1, 6)] + [(6, b"t2-6")]
    assert store.hard_state() == b"hs1"  # unchanged when not given
    store.log_append([(7, b"t2-7"), (8, b"t2-8")], hard_state=b"hs2")
    assert store.log_get(6, 8) == [(6, b"t2-6"), (7, b"t2-7")]
    assert store.log_get(8, 8) == []
    assert store.hard_state() == b"hs2"
    # overwrite everything from the first index
    store.log_append([(1, b"t3-1")])
    assert store.log_bounds() == (1, 1)
    for bad in ([(0, b"x")], [(2, b"a"), (4, b"b")], [(3, b"a"), (2, b"b")]):
        with pytest.raises(ValueError):
            store.log_append(bad)
    assert store.log_bounds() == (1, 1)


def test_log_get_max_bytes(store: Store) -> None:
    store.log_append([(i, b"x" * 100) for i in range(1, 11)])
    assert [i for i, _ in store.log_get(1, 11, max_bytes=250)] == [1, 2]
    assert [i for i, _ in store.log_get(3, 11, max_bytes=10)] == [3]  # always at least one
    assert len(store.log_get(1, 11, max_bytes=10_000)) == 10


def test_log_compact(store: Store) -> None:
    store.log_append([(i, b"e%d" % i) for i in range(1, 21)])
    store.log_compact(0)
    assert store.log_bounds() == (1, 20)
    store.log_compact(5)
    assert store.log_bounds() == (6, 20)
    assert store.log_get(1, 8) == [(6, b"e6"), (7, b"e7")]
    store.log_compact(5)
    assert store.log_bounds() == (6, 20)
    store.log_compact(20)
    assert store.log_bounds() == (0, 0)
    store.log_append([(21, b"e21")])
    assert store.log_bounds() == (21, 21)


def test_hard_state_and_meta_persist(tmp_path: Path) -> None:
    p = tmp_path / "db"
    with Store(p) as s:
        assert s.hard_state() is None
        s.set_hard_state(b"term=3,vote=n2")
        s.log_append([], hard_state=b"term=4,vote=n1")
        assert s.meta_get("cluster_id") is None
        s.meta_set("cluster_id", b"abc")
        s.meta_set("conf", b"n1,n2,n3")
        assert s.meta_delete("conf") is True
        assert s.meta_delete("conf") is False
        s.apply(9, lambda v: v.put(b"k", b"v"))
    with Store(p) as s:
        assert s.hard_state() == b"term=4,vote=n1"
        assert s.meta_get("cluster_id") == b"abc"
        assert s.meta_get("conf") is None
        assert s.applied_index() == 9
        assert s.get(b"k") == b"v"
        # meta and internal records never leak into the data
        assert s.scan() == [(b"k", b"v")]


def test_replace_all(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_mod, "_STAGING_BATCH_BYTES", 100)  # several staging txns
    store.apply(10, lambda v: [v.put(b"old%d" % i, b"o") for i in range(20)])
    store.log_append([(1, b"e1")])
    new = [(b"new%03d" % i, b"n%d" % i) for i in range(200)]
    store.replace_all(reversed(new), 500)  # a one-shot iterator, not sorted
    assert store.scan() == new
    assert store.applied_index() == 500
    assert store.log_bounds() == (1, 1)  # the log is the caller's business
    assert store.stats()["entries"] == 200
    # a failure midway leaves the old data and index in place
    with pytest.raises(LimitExceeded):
        store.replace_all(iter([(b"x", b"1"), (b"y" * 600, b"2")]), 900)
    assert store.scan() == new
    assert store.applied_index() == 500
    store.replace_all([], 600)
    assert store.count() == 0
    assert store.applied_index() == 600


def test_read_txn_snapshot_is_consistent(store: Store) -> None:
    store.apply(3, lambda v: [v.put(b"k%04d" % i, b"v") for i in range(1500)])
    with store.read_txn_snapshot() as (index, items):
        assert index == 3
        first = next(items)
        store.apply(4, lambda v: [v.delete(b"k%04d" % i) for i in range(0, 1500, 2)])
        store.put(b"zzz", b"late")
        rest = list(items)
    assert [first, *rest] == [(b"k%04d" % i, b"v") for i in range(1500)]
    assert store.count() == 751


def test_snapshot_interrupted_by_map_growth(tmp_path: Path) -> None:
    with Store(tmp_path / "db", map_size=256 << 10) as s:
        s.put(b"a", b"1")
        with s.read_txn_snapshot() as (_, items):
            s.apply(1, lambda v: [v.put(b"big%d" % i, b"x" * 4000) for i in range(200)])  # grows
            with pytest.raises(SnapshotInterrupted, match="start it again"):
                list(items)
        with s.read_txn_snapshot() as (index, items):
            assert index == 1 and len(list(items)) == 201


def test_map_grows_in_process(tmp_path: Path) -> None:
    with Store(tmp_path / "db", map_size=1 << 20) as s:
        for b in range(12):
            s.apply(
                b + 1, lambda v, b=b: [v.put(b"%02d-%04d" % (b, i), bytes([b]) * 1024) for i in range(1024)]
            )
        st = s.stats()
        assert st["map_size"] >= 16 << 20 and st["used_bytes"] > 12 << 20
        assert s.count() == 12 * 1024
        assert s.get(b"00-0000") == b"\x00" * 1024 and s.get(b"11-1023") == b"\x0b" * 1024


def test_growth_retries_even_if_fn_swallows_map_full(tmp_path: Path) -> None:
    calls = []

    def sloppy(view) -> None:
        calls.append(1)
        for i in range(300):
            try:
                view.put(b"k%d" % i, b"x" * 4000)
            except Exception:
                pass

    with Store(tmp_path / "db", map_size=256 << 10) as s:
        s.apply(1, sloppy)
        assert len(calls) > 1  # it ran again after the map grew
        assert s.count() == 300


def test_max_map_size_gives_storage_full_and_reads_survive(tmp_path: Path) -> None:
    with Store(tmp_path / "db", map_size=256 << 10, max_map_size=1 << 20) as s:
        acked = 0
        with pytest.raises(StorageFull) as ei:
            for b in range(1, 1000):
                s.apply(b, lambda v, b=b: [v.put(b"%04d-%d" % (b, i), b"x" * 1000) for i in range(16)])
                acked = b
        msg = str(ei.value)
        assert "max_map_size" in msg and "\n" not in msg
        assert acked > 10
        assert s.applied_index() == acked
        assert s.count() == acked * 16
        assert s.get(b"0001-0") == b"x" * 1000
        assert s.stats()["map_size"] <= 1 << 20
        # deleting is still possible, and frees room for new writes
        s.apply(acked + 1, lambda v: [v.delete(b"%04d-%d" % (b, i)) for b in range(1, 11) for i in range(16)])
        s.apply(acked + 2, lambda v: v.put(b"after", b"ok"))
        assert s.get(b"after") == b"ok"
    with pytest.raises(ValueError):
        Store(tmp_path / "db2", map_size=4 << 20, max_map_size=1 << 20)


def test_readers_in_threads_during_growth(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    with Store(tmp_path / "db", map_size=256 << 10) as s:
        s.put(b"anchor", b"A")

        reads = [0]

        def reader() -> None:
            try:
                # stop.wait paces the loop: readers that never pause starve the
                # writer of the GIL (py-lmdb's write-txn abort then takes seconds).
                while not stop.wait(0.0001):
                    assert s.get(b"anchor") == b"A"
                    s.scan(b"k", limit=5)
                    reads[0] += 1
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for b in range(1, 33):
                s.apply(b, lambda v, b=b: [v.put(b"k%02d-%03d" % (b, i), b"y" * 1000) for i in range(128)])
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
        assert not errors, errors
        assert reads[0] > 0
        assert s.stats()["map_size"] >= 4 << 20
        assert s.count() == 32 * 128 + 1


def test_gate_never_lets_a_reader_beside_a_remap() -> None:
    """The shared side of the Gate takes no lock; hammer it with a tiny GIL switch
    interval so threads interleave inside it, and check that a remap (exclusive) is
    never inside together with a reader, that nested shared entries work, and that
    neither side starves."""
    import sys

    from kvstore.storage.env import Gate

    gate = Gate()
    inside = {"shared": 0, "exclusive": 0}
    bad: list[str] = []
    stop = threading.Event()
    counts = {"shared": 0, "exclusive": 0}
    lock = threading.Lock()

    def reader() -> None:
        while not stop.is_set():
            gate.acquire_shared()
            gate.acquire_shared()  # nested: never waits
            with lock:
                inside["shared"] += 1
                if inside["exclusive"]:
                    bad.append("reader inside during a remap")
            with lock:
                inside["shared"] -= 1
                counts["shared"] += 1
            gate.release_shared()
            gate.release_shared()

    def remapper() -> None:
        while not stop.is_set():
            gate.acquire_exclusive()
            with lock:
                inside["exclusive"] += 1
                if inside["shared"] or inside["exclusive"] > 1:
                    bad.append(f"remap beside {inside}")
            with lock:
                inside["exclusive"] -= 1
                counts["exclusive"] += 1
            gate.release_exclusive()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=remapper) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline and not bad:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
        sys.setswitchinterval(old)
    assert not bad, bad[:3]
    assert not any(t.is_alive() for t in threads), "a thread is stuck in the gate"
    assert counts["shared"] > 100 and counts["exclusive"] > 100, counts
    gate.acquire_shared()
    try:
        with pytest.raises(StorageError, match="inside one of its own transactions"):
            gate.acquire_exclusive()
    finally:
        gate.release_shared()


def test_gate_reader_announcing_as_a_remap_starts_waits_for_it() -> None:
    """The race the lock-free shared side must win: a remap starts exactly while a
    reader enters (between its look at the flags and its announcement, if it looked
    first). The reader must not get in until the remap is done."""
    from kvstore.storage.env import Gate

    gate = Gate()
    remap_held, release_remap, entered = threading.Event(), threading.Event(), threading.Event()

    def remap() -> None:
        gate.acquire_exclusive()
        remap_held.set()
        release_remap.wait(10)
        gate.release_exclusive()

    class Announce(dict[int, int]):
        armed = True

        def __setitem__(self, k: int, v: int) -> None:
            if self.armed:  # the reader's first store: start the remap right here
                self.armed = False
                threading.Thread(target=remap).start()
                assert remap_held.wait(5)
            super().__setitem__(k, v)

    gate._holders = Announce()  # type: ignore[misc]

    def reader() -> None:
        gate.acquire_shared()
        entered.set()
        gate.release_shared()

    t = threading.Thread(target=reader)
    t.start()
    try:
        assert remap_held.wait(5)
        assert not entered.wait(0.3), "a reader got in while a remap held the gate"
    finally:
        release_remap.set()
    assert entered.wait(5), "the reader never got in after the remap"
    t.join(5)


def test_readonly_and_open_errors(tmp_path: Path) -> None:
    p = tmp_path / "db"
    with pytest.raises(StorageError, match="no store"):
        Store(p, readonly=True)
    with Store(p) as s:
        s.put(b"a", b"1")
        with pytest.raises(StorageError):
            Store(p)  # a second handle in one process would break LMDB's locks
    with Store(p, readonly=True) as r:
        assert r.get(b"a") == b"1"
        for write in (
            lambda: r.put(b"a", b"2"),
            lambda: r.apply(1, lambda v: None),
            lambda: r.log_append([(1, b"x")]),
            lambda: r.replace_all([], 1),
        ):
            with pytest.raises(StorageError, match="read-only"):
                write()
    s = Store(p)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        s.get(b"a")


# -- stateful model test --------------------------------------------------------------

keys = st.lists(st.sampled_from([0x00, 0x61, 0x62, 0xFF]), min_size=1, max_size=3).map(bytes)
values = st.binary(max_size=40) | st.just(b"v" * 3000)  # big values force page splits and growth


class StoreModel(RuleBasedStateMachine):
    base: Path  # set by the test below to its tmp_path

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(dir=self.base))
        self.store = Store(self.dir / "db", map_size=256 << 10, sync=False)
        self.data: dict[bytes, bytes] = {}
        self.applied = 0
        self.log: dict[int, bytes] = {}
        self.hs: bytes | None = None

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(k=keys, v=values)
    def put(self, k: bytes, v: bytes) -> None:
        self.store.put(k, v)
        self.data[k] = v

    @rule(k=keys)
    def delete(self, k: bytes) -> None:
        assert self.store.delete(k) == (k in self.data)
        self.data.pop(k, None)

    @rule(k=keys)
    def get(self, k: bytes) -> None:
        assert self.store.get(k) == self.data.get(k)

    @rule(
        prefix=st.binary(max_size=1) | keys,
        start=st.none() | keys,
        end=st.none() | keys,
        limit=st.none() | st.integers(0, 5),
    )
    def scan(self, prefix: bytes, start: bytes | None, end: bytes | None, limit: int | None) -> None:
        want = sorted(
            (k, v)
            for k, v in self.data.items()
            if k.startswith(prefix) and (start is None or k >= start) and (end is None or k < end)
        )
        if limit is not None:
            want = want[:limit]
        assert self.store.scan(prefix, start, end, limit) == want

    @rule(
        ops=st.lists(st.tuples(keys, st.none() | values), min_size=1, max_size=6),
        fail=st.booleans(),
        step=st.integers(1, 3),
    )
    def apply_batch(self, ops: list[tuple[bytes, bytes | None]], fail: bool, step: int) -> None:
        def fn(view, op: tuple[bytes, bytes | None]) -> None:
            k, v = op
            if v is None:
                view.delete(k)
            else:
                view.put(k, v)

        items = [
            (self.applied + step * (n + 1), lambda view, op=op: fn(view, op)) for n, op in enumerate(ops)
        ]
        if fail:

            def boom(view) -> None:
                raise RuntimeError("fail")

            items.append((items[-1][0] + 1, boom))
            with pytest.raises(RuntimeError):
                self.store.apply_many(items)
            return
        self.store.apply_many(items)
        for k, v in ops:
            if v is None:
                self.data.pop(k, None)
            else:
                self.data[k] = v
        self.applied = items[-1][0]

    @rule(back=st.integers(0, 4), n=st.integers(0, 4), hs=st.none() | st.binary(max_size=8))
    def log_append(self, back: int, n: int, hs: bytes | None) -> None:
        last = max(self.log) if self.log else 0
        first_kept = min(self.log) if self.log else 1
        start = max(first_kept, last + 1 - back)
        entries = [(start + i, b"e%d-%d" % (start + i, n)) for i in range(n)]
        self.store.log_append(entries, hs)
        if entries:
            for i in [i for i in self.log if i >= start]:
                del self.log[i]
            self.log.update(entries)
        if hs is not None:
            self.hs = hs

    @precondition(lambda self: bool(self.log))
    @rule(d=st.integers(0, 3))
    def log_compact(self, d: int) -> None:
        upto = min(self.log) + d
        self.store.log_compact(upto)
        for i in [i for i in self.log if i <= upto]:
            del self.log[i]

    @rule(items=st.dictionaries(keys, values, max_size=6), jump=st.integers(0, 5))
    def replace_all(self, items: dict[bytes, bytes], jump: int) -> None:
        self.applied += jump
        self.store.replace_all(items.items(), self.applied)
        self.data = dict(items)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = Store(self.dir / "db", map_size=256 << 10, sync=False)

    @invariant()
    def matches_model(self) -> None:
        assert self.store.applied_index() == self.applied
        assert self.store.count() == len(self.data)
        assert self.store.hard_state() == self.hs
        want_bounds = (min(self.log), max(self.log)) if self.log else (0, 0)
        assert self.store.log_bounds() == want_bounds
        assert self.store.log_get(0, 1 << 40) == sorted(self.log.items())


def test_store_matches_dict_model(tmp_path: Path) -> None:
    StoreModel.base = tmp_path
    run_state_machine_as_test(
        StoreModel,
        settings=settings(
            max_examples=40,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
