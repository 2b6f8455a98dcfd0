"""Store.replace_all reopens the LMDB environment (Env.reopen) to give back the heap LMDB
keeps for the pages a write txn dirtied: the store works on afterwards, threads reading
meanwhile never see an error or a mix, kept snapshot views are interrupted, a failed
reopen closes the store, and the heap really comes back."""

from __future__ import annotations

import ctypes
import platform
import threading
from pathlib import Path

import lmdb
import pytest

from kvstore.errors import StorageError
from kvstore.storage import SnapshotInterrupted, Store
from kvstore.storage.env import Env

N = 300  # keys in each generation of test data


def gen(g: int, n: int = N) -> list[tuple[bytes, bytes]]:
    """Generation g of the data: the same keys each time, values that say which g."""
    return [(b"k%05d" % i, b"g%d-%05d" % (g, i)) for i in range(n)]


def gen_of(value: bytes) -> int:
    return int(value[1 : value.index(b"-")])


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "db", map_size=1 << 20, sync=False)
    yield s
    s.close()


def test_store_works_after_replace_all(tmp_path: Path) -> None:
    p = tmp_path / "db"
    with Store(p, map_size=1 << 20) as s:
        s.apply(1, lambda v: [v.put(k, val) for k, val in gen(0)])
        s.log_append([(1, b"e1"), (2, b"e2")], b"hs")
        s.meta_set("conf", b"c1")
        old_handles = (s._data, s._log, s._sys, s._meta, s._staging)
        env_before = s._env.env
        s.replace_all(gen(1), 7)
        assert s._env.env is not env_before  # it really was reopened...
        new_handles = (s._data, s._log, s._sys, s._meta, s._staging)
        assert all(a is not b for a, b in zip(old_handles, new_handles, strict=True))  # ...with new handles
        # reads see the new data, and everything else as it was
        assert s.scan() == gen(1)
        assert s.get(b"k00000") == b"g1-00000"
        assert s.get_many([b"k00001", b"nope"]) == [b"g1-00001", None]
        assert s.count() == N
        assert s.applied_index() == 7
        assert s.log_bounds() == (1, 2) and s.log_get(1, 3) == [(1, b"e1"), (2, b"e2")]
        assert s.hard_state() == b"hs"
        assert s.meta_get("conf") == b"c1"
        st = s.stats()
        assert st["entries"] == N and st["log_entries"] == 2 and st["applied_index"] == 7
        # writes of every kind
        s.put(b"k99999", b"new")
        assert s.delete(b"k00000") is True
        s.apply(8, lambda v: v.put(b"applied", b"yes"))
        s.log_append([(3, b"e3")], b"hs2")
        s.log_compact(1)
        s.meta_set("conf", b"c2")
        assert s.meta_delete("conf") is True
        s.sync()
        assert s.reader_check() == 0
        with s.read_txn_snapshot() as (index, items):
            assert index == 8 and len(list(items)) == N + 1
        # and a second install, then the same again after closing and opening the store
        s.replace_all(gen(2, 50), 9)
        assert s.scan() == gen(2, 50)
        s.replace_all([], 10)
        assert s.count() == 0
        s.replace_all(gen(3), 11)
    with Store(p) as s:
        assert s.scan() == gen(3)
        assert s.applied_index() == 11
        assert s.log_get(1, 10) == [(2, b"e2"), (3, b"e3")]
        assert s.hard_state() == b"hs2" and s.meta_get("conf") is None


def test_threads_during_replace_all_see_old_or_new_never_an_error(store: Store) -> None:
    store.replace_all(gen(0), 1)
    store.meta_set("conf", b"c")
    errors: list[BaseException] = []
    seen: set[int] = set()
    counts = {"get": 0, "scan": 0, "meta": 0, "interrupted": 0}
    stop = threading.Event()
    installed = [0]  # the last generation whose replace_all returned

    def check_gen(g: int, floor: int) -> None:
        # Old or new: never older than what was installed when the read began, never
        # newer than the install that may be under way now.
        top = installed[0] + 1
        assert floor <= g <= top, (g, floor, top)

    def reader(kind: str) -> None:
        try:
            i = 0
            while not stop.wait(0.0001):  # paced, else the writer thread starves of the GIL
                floor = installed[0]
                i = (i + 37) % N
                if kind == "get":
                    v = store.get(b"k%05d" % i)
                    assert v is not None and v.endswith(b"-%05d" % i)
                    check_gen(gen_of(v), floor)
                    vs = store.get_many([b"k%05d" % j for j in range(0, N, 50)])
                    gs = {gen_of(v) for v in vs if v is not None}
                    assert len(gs) == 1 and None not in vs, vs  # one txn: one generation
                    counts["get"] += 1
                elif kind == "scan":
                    items = store.scan()
                    g = gen_of(items[0][1])
                    assert items == gen(g), "a scan saw a mix or a part"
                    check_gen(g, floor)
                    seen.add(g)
                    assert store.count() == N
                    counts["scan"] += 1
                else:
                    assert store.meta_get("conf") == b"c"
                    assert store.hard_state() is None and store.log_bounds() == (0, 0)
                    assert store.applied_index() >= 1
                    counts["meta"] += 1
                    try:  # a kept view may be interrupted, never anything else
                        with store.read_txn_snapshot() as (_, it):
                            items = list(it)
                        assert items == gen(gen_of(items[0][1]))
                    except SnapshotInterrupted:
                        counts["interrupted"] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=reader, args=(k,)) for k in ("get", "get", "scan", "meta")]
    for t in threads:
        t.start()
    try:
        for g in range(1, 9):
            store.replace_all(gen(g), 1 + g)
            installed[0] = g
            if stop.wait(0.02):  # let the readers run against each generation
                break
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert not errors, errors
    assert counts["get"] and counts["scan"] and counts["meta"], counts
    assert len(seen) > 1, seen  # the scans did run across installs
    assert store.scan() == gen(8) and store.applied_index() == 9


def test_long_reads_open_across_replace_all_are_interrupted(store: Store) -> None:
    store.replace_all(gen(0, 2000), 1)
    view = store.snapshot_view()
    it = view.items()
    assert next(it) == (b"k00000", b"g0-00000")  # the first chunk is read
    lr = store._env.long_read()
    with store.read_txn_snapshot() as (index, items):
        assert index == 1
        store.replace_all(gen(1), 2)
        with pytest.raises(SnapshotInterrupted, match="start it again"):
            list(items)
    with pytest.raises(SnapshotInterrupted):
        list(it)  # the rest of a view already being read
    with pytest.raises(SnapshotInterrupted):
        list(view.items(after=b"k00100"))  # resuming a kept view
    view.close()
    with pytest.raises(SnapshotInterrupted):
        lr.run(lambda txn: txn.id())
    lr.close()
    assert not store._env.long_reads
    with store.read_txn_snapshot() as (index, items):  # starting over works
        assert index == 2 and list(items) == gen(1)


@pytest.mark.parametrize("where", ["open", "handles"])
def test_a_failed_reopen_closes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    p = tmp_path / "db"
    s = Store(p, map_size=1 << 20)
    try:
        s.replace_all(gen(0), 1)
        view = s.snapshot_view()
        if where == "open":

            def fail_open(self: Env, map_size: int) -> lmdb.Environment:
                raise lmdb.Error("injected open failure")

            monkeypatch.setattr(Env, "_open_writable", fail_open)
        else:

            def fail_handles() -> None:
                raise StorageError("injected open_db failure")

            monkeypatch.setattr(s, "_open_dbs", fail_handles)
        with pytest.raises(StorageError, match="cannot reopen the store .* closed now .*injected"):
            s.replace_all(gen(1), 2)
        monkeypatch.undo()
        for call in (
            lambda: s.get(b"k00000"),
            s.scan,
            lambda: s.put(b"a", b"b"),
            s.snapshot_view,
            lambda: s.replace_all([], 3),
            s.reader_check,
            s.sync,
        ):
            with pytest.raises(StorageError, match="closed"):
                call()
        with pytest.raises(SnapshotInterrupted):
            list(view.items())
        view.close()
    finally:
        s.close()
    with Store(p) as s:  # the install itself had committed
        assert s.scan() == gen(1) and s.applied_index() == 2


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def _trim() -> None:
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_replace_all_gives_back_lmdb_heap(tmp_path: Path) -> None:
    # Without the reopen, 300k items of 100 bytes leave ~38 MB more RssAnon behind (the
    # swap txn's page buffers on LMDB's free list); with it, ~2 MB. ~1.5 s.
    n = 300_000
    with Store(tmp_path / "db", map_size=64 << 20, sync=False) as s:
        s.replace_all([(b"warm", b"up")], 1)
        _trim()
        before = _rss_anon_kib()
        s.replace_all(((b"key%09d" % i, b"v" * 100) for i in range(n)), 2)
        _trim()
        after = _rss_anon_kib()
        assert s.count() == n
    grown_mib = (after - before) / 1024
    assert grown_mib < 20, f"RssAnon grew {grown_mib:.1f} MiB across replace_all of {n} items"
